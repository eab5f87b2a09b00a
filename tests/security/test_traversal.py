"""Traversal out of a LocalBackend's base directory: symbolic links planted in the tree
(statically at every position, and swapped in and out by another process while reads,
writes, deletes and listings run), hard links, special files and the store's own files.

Every access is decided on the descriptors opened (``openat2`` with
``RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS``, or a ``O_NOFOLLOW`` walk from the base's
descriptor): tests run both ways."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import platform
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from unistore import ConfigurationError, InvalidKeyError, LocalBackend, NotFoundError
from unistore.backends.local import _beneath
from unistore.backends.local._meta import sidecar_path

SECRET = "traversal-test-secret-0123456789"
RACE_SECONDS = 2.5

# Exchanges ROOT/race (a real directory) and ROOT/race.link (a symbolic link to the outside
# directory) atomically with renameat2(RENAME_EXCHANGE), as fast as it can until the time is up,
# so ``race`` is always one or the other; leaves the real directory in place.
_SWAPPER = """
import ctypes, os, sys, time
race, outside, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
os.symlink(outside, race + ".link")
def exchange():
    if libc.renameat2(-100, race.encode(), -100, (race + ".link").encode(), 2) != 0:
        raise OSError(ctypes.get_errno(), "renameat2")
end = time.monotonic() + seconds
n = 0
print("go", flush=True)
while time.monotonic() < end:
    exchange()
    exchange()
    n += 1
os.unlink(race + ".link")
print(n, flush=True)
"""


@pytest.fixture(params=["openat2", "walk"])
def resolution(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run the test with ``openat2`` (where the kernel has it) and with the fallback walk."""
    if request.param == "walk":
        monkeypatch.setattr(_beneath, "USE_OPENAT2", False)
    elif not _openat2_here():
        pytest.skip("no openat2 here (not Linux >= 5.6 on x86_64/aarch64)")
    return str(request.param)


def _openat2_here() -> bool:
    """Whether openat2 is used; on Linux >= 5.6 x86_64/aarch64 it must be (a broken probe
    would silently leave every store on the slower walk)."""
    _beneath.Beneath("/")
    kernel = tuple(int(x) for x in platform.release().split(".")[:2] if x.isdigit())
    if sys.platform == "linux" and platform.machine() in ("x86_64", "aarch64") and kernel >= (5, 6):
        assert _beneath.openat2_available(), "openat2 probe failed on a kernel that has it"
    return bool(_beneath.openat2_available())


@pytest.fixture
async def store(tmp_path: Path, resolution: str) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET)
    yield backend
    await backend.aclose()


class _SidecarLocal(LocalBackend):
    """As on a file system without user extended attributes: records go to sidecar files."""

    def _probe_xattr(self) -> bool:
        return False


@pytest.fixture
async def sidecar_store(tmp_path: Path, resolution: str) -> AsyncIterator[LocalBackend]:
    backend = _SidecarLocal(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET)
    yield backend
    await backend.aclose()


def _sidecar(store: LocalBackend, key: str) -> Path:
    data = store.root / key
    return Path(sidecar_path(str(data), data.stat().st_ino))


def _outside(tmp_path: Path) -> Path:
    """A directory beside the store holding files named like the store's keys."""
    out = tmp_path / "outside"
    (out / "sub").mkdir(parents=True)
    for name in ("victim", "d", "only-outside", "sub/victim"):
        (out / name).write_bytes(b"OUTSIDE " + name.encode())
    (out / "empty").mkdir()
    hour_ago = time.time() - 3600
    for name in (".unistore.tmp.dead", ".unistore.1f.victim.vm", "sub/.unistore.tmp.dead"):
        (out / name).write_bytes(b"{}")  # what a sweep removes in its own tree
        os.utime(out / name, (hour_ago, hour_ago))
    return out


def _snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    """Every entry under ``root``: inode and content (files) or ``b"<dir>"``."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        out[str(p.relative_to(root))] = (st.st_ino, p.read_bytes() if stat.S_ISREG(st.st_mode) else b"<dir>")
    return out


@contextlib.contextmanager
def _swapping(root: Path, name: str, outside: Path, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """A child process swapping ``root/name`` between a directory and a link to ``outside``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SWAPPER, str(root / name), str(outside), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "go"
        yield proc
    finally:
        proc.wait(timeout=seconds + 30)
    assert proc.returncode == 0


# --- the race: a directory swapped with a symbolic link while every operation runs ------------


async def test_symlink_swap_race_never_escapes(tmp_path: Path, store: LocalBackend) -> None:
    outside = _outside(tmp_path)
    before = _snapshot(outside)
    await store.put("race/victim", b"inside")
    await store.put("race/sub/victim", b"inside sub")
    counts = {"inside": 0, "missing": 0, "escaped": 0, "writes": 0, "listed_outside": 0}

    async def reads(proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            for k in ("race/victim", "race/sub/victim"):
                try:
                    data = await store.get(k)
                except NotFoundError:
                    counts["missing"] += 1
                    continue
                counts["inside" if data.startswith(b"inside") else "escaped"] += 1

    async def writes(proc: subprocess.Popen[str], n: int) -> None:
        i = 0
        while proc.poll() is None:
            i += 1
            for k in (f"race/w{n}-{i}", f"race/sub/w{n}-{i}", "race/d", "race/sub/new/x"):
                with contextlib.suppress(NotFoundError, InvalidKeyError):
                    await store.put(k, b"written")
                    counts["writes"] += 1
            for k in ("race/d", "race/only-outside", "race/sub/victim-gone", "race/sub/new/x"):
                await store.delete(k)

    async def lists(proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            keys = await store.list_keys("race/")
            keys += [o.key async for o in store.iter_objects("race/sub/")]
            counts["listed_outside"] += sum(k.endswith("only-outside") for k in keys)
            with contextlib.suppress(NotFoundError):
                await store.head("race/only-outside")
                counts["listed_outside"] += 1

    async def sweeps(proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            await store.sweep(older_than=0)

    with _swapping(store.root, "race", outside, RACE_SECONDS) as proc:
        await asyncio.gather(reads(proc), reads(proc), writes(proc, 1), writes(proc, 2), lists(proc), sweeps(proc))

    assert counts["escaped"] == 0 and counts["listed_outside"] == 0, counts
    assert counts["inside"] > 100 and counts["missing"] > 100 and counts["writes"] > 10, counts  # the race ran
    assert _snapshot(outside) == before  # nothing written, replaced, created or removed outside
    assert await store.get("race/victim") == b"inside"


async def test_symlink_swap_race_over_http(tmp_path: Path, served_local: LocalBackend, resolution: str) -> None:
    outside = _outside(tmp_path)
    name = f"race-{uuid.uuid4().hex[:8]}"
    await served_local.put(f"{name}/victim", b"inside")
    url = served_local.signer.sign(f"{name}/victim", expires_in=600)
    counts = {200: 0, 404: 0, "escaped": 0}

    async def fetch(client: httpx.AsyncClient, proc: subprocess.Popen[str]) -> None:
        while proc.poll() is None:
            r = await client.get(url)
            assert r.status_code in (200, 404), r.status_code
            counts[r.status_code] += 1
            counts["escaped"] += r.content.startswith(b"OUTSIDE")

    async with httpx.AsyncClient(timeout=30) as client:
        with _swapping(served_local.root, name, outside, RACE_SECONDS) as proc:
            await asyncio.gather(*(fetch(client, proc) for _ in range(6)))
    assert counts["escaped"] == 0, counts
    assert counts[200] > 20 and counts[404] > 20, counts  # the race ran


# --- symbolic links planted at every position ---------------------------------------------------

_KEY = "a/b/c/f.txt"


@pytest.mark.parametrize("position", range(4))
async def test_a_planted_link_at_any_position_is_never_followed(
    tmp_path: Path, store: LocalBackend, position: int
) -> None:
    """A link replacing component ``position`` of ``a/b/c/f.txt`` (3: the file itself), pointing
    at an outside tree that has the rest of the path: nothing reads, writes or lists through it."""
    parts = _KEY.split("/")
    outside = tmp_path / "outside"
    target = outside.joinpath(*parts[position + 1 :]) if position < 3 else outside / "f.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(b"OUTSIDE")
    (target.parent / "g.txt").write_bytes(b"OUTSIDE")
    link = store.root.joinpath(*parts[: position + 1])
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(outside if position < 3 else target, link)
    if position < 3:
        assert (link / "/".join(parts[position + 1 :])).read_bytes() == b"OUTSIDE"  # a path would follow
    before = _snapshot(outside)

    assert not await store.exists(_KEY)
    for call in (store.get, store.head, store.get_url):
        with pytest.raises(NotFoundError):
            await call(_KEY)
    assert await store.delete(_KEY) is False
    assert [k async for k in store.iter_keys()] == []
    assert [o.key async for o in store.iter_objects("a/")] == []
    assert await store.list_keys("/".join(parts[: position + 1]) + "/") == []
    if position < 3:
        for k in (_KEY, "/".join(parts[: position + 1]) + "/new/deeper.txt"):
            with pytest.raises(InvalidKeyError):
                await store.put(k, b"planted")
    else:  # writing the file's key replaces the link itself, never its target
        await store.put(_KEY, b"mine", metadata={"m": "1"})
        assert await store.get(_KEY) == b"mine" and not link.is_symlink()
        assert await store.delete(_KEY)
    assert _snapshot(outside) == before


async def test_links_inside_the_store_are_not_followed_either(store: LocalBackend) -> None:
    await store.put("real/f.txt", b"real")
    os.symlink(store.root / "real", store.root / "alias")
    os.symlink("f.txt", store.root / "real" / "rel-link")
    for k in ("alias/f.txt", "real/rel-link"):
        with pytest.raises(NotFoundError):
            await store.get(k)
    assert await store.list_keys() == ["real/f.txt"]


async def test_a_linked_sidecar_is_not_read(tmp_path: Path, sidecar_store: LocalBackend) -> None:
    """A sidecar replaced by a link to a crafted record naming the data file is ignored."""
    store = sidecar_store
    info = await store.put_object("s/x.txt", b"data", content_type="text/plain", metadata={"a": "1"})
    sidecar = _sidecar(store, "s/x.txt")
    crafted = tmp_path / "crafted.meta"
    crafted.write_bytes(sidecar.read_bytes().replace(b"text/plain", b"text/html"))
    sidecar.unlink()
    os.symlink(crafted, sidecar)
    got = await store.head("s/x.txt")
    assert got.content_type != "text/html" and got.etag != info.etag


# --- the store's own files ------------------------------------------------------------------


@pytest.mark.parametrize("plant", ["internal-dir", "secret-link", "secret-fifo"])
def test_the_stores_own_files_are_not_taken_through_links(tmp_path: Path, resolution: str, plant: str) -> None:
    root = tmp_path / "store"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "url-secret").write_bytes(b"known-to-the-attacker")
    if plant == "internal-dir":
        root.mkdir()
        os.symlink(outside, root / ".unistore")
    else:
        (root / ".unistore" / "locks").mkdir(parents=True)
        if plant == "secret-link":
            os.symlink(outside / "url-secret", root / ".unistore" / "url-secret")
        else:
            os.mkfifo(root / ".unistore" / "url-secret")
    before = _snapshot(outside)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            LocalBackend(base_path=str(root))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=start, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():  # blocked opening the FIFO: open its other end so the thread ends
        os.close(os.open(root / ".unistore" / "url-secret", os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening the store blocked on a FIFO")
    # neither hangs nor signs with a planted secret
    assert len(failure) == 1 and isinstance(failure[0], ConfigurationError), failure
    assert _snapshot(outside) == before


# --- hard links and special files -------------------------------------------------------------


async def test_writes_and_deletes_never_change_a_hard_linked_file(tmp_path: Path, store: LocalBackend) -> None:
    """A hard link is the file itself (served like any file placed by hand), but writes replace
    the name and deletes unlink it: the other name's content is never touched."""
    outside = _outside(tmp_path)
    os.link(outside / "victim", store.root / "hard")
    before = _snapshot(outside)
    assert await store.get("hard") == b"OUTSIDE victim"
    await store.put("hard", b"new")
    assert await store.get("hard") == b"new"
    os.link(outside / "d", store.root / "hard2")
    assert await store.delete("hard2")
    assert not (store.root / "hard2").exists()
    assert _snapshot(outside) == before


async def _never_blocks(coro: object) -> None:
    await asyncio.wait_for(coro, timeout=5)  # type: ignore[arg-type]


async def test_special_files_are_not_objects_and_never_block(store: LocalBackend) -> None:
    os.mkfifo(store.root / "fifo")
    (store.root / "d").mkdir()
    os.mkfifo(store.root / "d" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(store.root / "sock"))
        with contextlib.suppress(PermissionError):
            os.mknod(store.root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
        for k in ("fifo", "d/fifo", "sock", "null", "fifo/x"):
            for call in (store.get, store.head):
                with pytest.raises(NotFoundError):
                    await _never_blocks(call(k))
            assert await store.delete(k) is False
        assert await store.list_keys() == []
        with pytest.raises(InvalidKeyError):
            await store.put("fifo/x", b"x")
        await store.put("d/fifo", b"replaced")  # the name is replaced; nothing opens the FIFO
        assert await store.get("d/fifo") == b"replaced"


async def test_a_fifo_planted_as_a_sidecar_does_not_block_readers(sidecar_store: LocalBackend) -> None:
    store = sidecar_store
    await store.put("m.txt", b"data", metadata={"a": "1"})
    sidecar = _sidecar(store, "m.txt")
    sidecar.unlink()
    os.mkfifo(sidecar)
    try:
        got = await asyncio.wait_for(store.get("m.txt"), timeout=5)
    finally:  # a reader blocked opening the FIFO: a file for its retries, and a writer to release it
        held = store.root / "held-fifo"
        os.rename(sidecar, held)
        sidecar.write_bytes(b"{}")
        with contextlib.suppress(OSError):  # ENXIO: no reader waits
            os.close(os.open(held, os.O_WRONLY | os.O_NONBLOCK))
    assert got == b"data"


# --- Beneath itself -----------------------------------------------------------------------------


def test_beneath_refuses_links_and_escapes_at_every_position(
    tmp_path: Path, resolution: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []
    real = _beneath._OPENAT2.open
    monkeypatch.setattr(_beneath._OPENAT2, "open", lambda *a: calls.append(a) or real(*a))
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"in")
    (tmp_path / "f").write_bytes(b"out")
    os.symlink(root / "a", root / "la")
    os.symlink(root / "a" / "b", root / "a" / "lb")
    os.symlink(root / "a" / "b" / "f", root / "a" / "b" / "lf")
    fs = _beneath.Beneath(str(root))
    fd = fs.open("a/b/f", os.O_RDONLY)
    assert os.read(fd, 9) == b"in"
    os.close(fd)
    for rel in ("la/b/f", "a/lb/f", "a/b/lf", "../f", "a/../../f"):
        assert _errno(fs.open, rel, os.O_RDONLY) in (*_beneath.NOT_THERE, errno.EXDEV), rel
    for rel in ("la", "a/lb", "la/b"):
        assert _errno(fs.open_dir, rel) in _beneath.NOT_THERE, rel
        assert _errno(fs.make_dirs, rel + "/new") in _beneath.NOT_THERE, rel
    os.close(fs.make_dirs("a/n1/n2"))
    assert (root / "a" / "n1" / "n2").is_dir() and not (root / "a" / "b" / "n1").exists()
    assert bool(calls) is (resolution == "openat2")  # the walk never calls openat2


def _errno(opener: Callable[..., int], *args: object) -> int | None:
    """The errno ``opener(*args)`` fails with (``None`` if it opens: the descriptor is closed)."""
    try:
        os.close(opener(*args))
    except OSError as exc:
        return exc.errno
    return None


async def test_ping_moves_to_a_replaced_base_directory(tmp_path: Path) -> None:
    """The store keeps the base directory it opened; a health check (``ping``) moves it to a
    directory that replaced it at ``base_path``."""
    backend = LocalBackend(base_path=str(tmp_path / "store"), url_secret=SECRET)
    await backend.put("a/x", b"old")
    (tmp_path / "store").rename(tmp_path / "moved")
    assert await backend.get("a/x") == b"old"  # still the directory it opened
    (tmp_path / "store").mkdir()
    await backend.ping()
    assert not await backend.exists("a/x")
    await backend.put("a/x", b"new")
    assert (tmp_path / "store" / "a" / "x").read_bytes() == b"new"
    assert (tmp_path / "moved" / "a" / "x").read_bytes() == b"old"
    await backend.aclose()
