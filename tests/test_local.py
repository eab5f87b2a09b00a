"""LocalBackend on a real file system: atomicity across processes (several uvicorn workers
share one directory), the persisted URL secret, crash leftovers, the store's own files,
directories and symlinks, hand-placed files, fsync, bounded memory and a free event loop.

Multi-process tests run workers from a spawn-context pool through separate LocalBackend
instances on one directory; a shared barrier starts them together."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import multiprocessing
import os
import random
import signal
import stat
import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator
from multiprocessing.pool import Pool
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from unistore import (
    AlreadyExistsError,
    ByteRange,
    IfMatch,
    InvalidKeyError,
    LocalBackend,
    LocalSettings,
    NotFoundError,
    NotModifiedError,
    PreconditionFailedError,
    QuotaExceededError,
)

SECRET = "local-test-secret-0123456789"
WORKERS = 4
MiB = 1024 * 1024

# --- worker side (runs in spawned processes) ---------------------------------------------

_barrier: Any = None


def _init_worker(barrier: Any) -> None:
    global _barrier
    _barrier = barrier


def _together() -> None:
    """Block until every worker of the pool reached this point (start the race together)."""
    _barrier.wait(timeout=60)


def _increment_worker(root: str, key: str, tasks: int, n: int) -> int:
    """``tasks`` concurrent tasks each add 1 to the counter ``n`` times with If-Match;
    returns how many writes lost a race and were retried."""

    async def main() -> int:
        backend = LocalBackend(base_path=root, fsync=False, url_secret=SECRET)

        async def task() -> int:
            retries = 0
            for _ in range(n):
                while True:
                    dl = await backend.open(key)
                    value = int(await dl.read())
                    try:
                        await backend.put_object(key, b"%d" % (value + 1), mode=IfMatch(dl.info.etag))
                        break
                    except PreconditionFailedError:
                        retries += 1
            return retries

        _together()
        try:
            return sum(await asyncio.gather(*(task() for _ in range(tasks))))
        finally:
            await backend.aclose()

    return asyncio.run(main())


def _create_worker(root: str, keys: list[str], wid: int) -> list[str]:
    """Try a create-only write of every key (in a worker-specific order, 8 at a time);
    return the keys this worker created."""

    async def main() -> list[str]:
        backend = LocalBackend(base_path=root, fsync=False, url_secret=SECRET)
        order = keys[:]
        random.Random(wid).shuffle(order)
        won: list[str] = []
        sem = asyncio.Semaphore(8)

        async def one(k: str) -> None:
            async with sem:
                try:
                    await backend.put_object(k, b"%d" % wid, metadata={"writer": wid}, mode="create")
                    won.append(k)
                except AlreadyExistsError:
                    pass

        _together()
        try:
            await asyncio.gather(*(one(k) for k in order))
        finally:
            await backend.aclose()
        return won

    return asyncio.run(main())


def _body_of(wid: int) -> bytes:
    return bytes([65 + wid]) * (150_000 + 7919 * wid)


async def _chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


def _overwrite_worker(root: str, keys: list[str], wid: int, rounds: int) -> int:
    """Overwrite every key ``rounds`` times with this worker's body and metadata."""

    async def main() -> int:
        backend = LocalBackend(base_path=root, fsync=False, url_secret=SECRET, chunk_size=32 * 1024)
        body = _body_of(wid)
        meta = {"writer": wid, "sha": hashlib.sha256(body).hexdigest()[:16]}
        _together()
        try:
            for r in range(rounds):
                await asyncio.gather(
                    *(
                        backend.put_object(k, _chunked(body, 16 * 1024), metadata=dict(meta, round=r))
                        for k in keys
                    )
                )
        finally:
            await backend.aclose()
        return rounds * len(keys)

    return asyncio.run(main())


def _secret_worker(root: str, key: str, now: float) -> str:
    """Start a backend with no url_secret on ``root`` (all workers at once) and sign a URL."""
    _together()
    backend = LocalBackend(base_path=root, fsync=False, base_url="http://127.0.0.1:1/files")
    return backend.signer.sign(key, expires_in=600, now=now)


def _sign_worker(root: str, key: str, base_url: str) -> str:
    async def main() -> str:
        backend = LocalBackend(base_path=root, base_url=base_url)
        try:
            return await backend.get_url(key, expires_in=300)
        finally:
            await backend.aclose()

    return asyncio.run(main())


def _slow_writer(root: str, key: str) -> None:
    """Stream an endless body into ``key`` (killed by the test half-way)."""

    async def body() -> AsyncIterator[bytes]:
        while True:
            yield b"N" * 65536
            await asyncio.sleep(0.01)

    async def main() -> None:
        backend = LocalBackend(base_path=root, fsync=False, url_secret=SECRET, chunk_size=65536)
        await backend.put_object(key, body())

    asyncio.run(main())


# --- test side ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(WORKERS)
    p = ctx.Pool(WORKERS, initializer=_init_worker, initargs=(barrier,))
    try:
        yield p
    finally:
        p.terminate()
        p.join()


def _store_files(root: Path) -> list[str]:
    """Every file under ``root`` (relative), the store's own files included."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink())


def _temp_files(root: Path) -> list[str]:
    return [f for f in _store_files(root) if os.path.basename(f).startswith(".unistore.tmp.")]


def _temp_size(path: Path) -> int:
    """The size of a temp file, 0 once it is gone (a starting store's probe file lives for microseconds)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _touch(directory: Path, names: list[str] | list[bytes], data: bytes = b"") -> None:
    """Create files by hand (``bytes`` names may be any file name, even invalid UTF-8)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        with open(os.path.join(os.fsencode(directory), os.fsencode(name)), "wb") as f:
            f.write(data)


async def _wait_ready(result: Any, limit: float = 120) -> None:
    deadline = time.monotonic() + limit
    while not result.ready():
        assert time.monotonic() < deadline, "workers did not finish"
        await asyncio.sleep(0.02)


# --- across processes -------------------------------------------------------------------


async def test_if_match_counter_across_processes(pool: Pool, local: LocalBackend) -> None:
    key = "counters/hits"
    await local.put_object(key, b"0")
    tasks, n = 2, 12
    res = pool.starmap_async(_increment_worker, [(str(local.root), key, tasks, n)] * WORKERS)
    await _wait_ready(res)
    retries = sum(res.get())
    assert int(await local.get(key)) == WORKERS * tasks * n
    assert retries > 0, "the workers never raced; the test proves nothing"
    assert _temp_files(local.root) == []


async def test_create_only_across_processes_has_one_winner_per_key(pool: Pool, local: LocalBackend) -> None:
    keys = [f"race/{i:03d}" for i in range(60)]
    res = pool.starmap_async(_create_worker, [(str(local.root), keys, wid) for wid in range(WORKERS)])
    await _wait_ready(res)
    won = res.get()
    winners: dict[str, int] = {}
    for wid, ks in enumerate(won):
        for k in ks:
            assert k not in winners, f"{k} created by {winners[k]} and {wid}"
            winners[k] = wid
    assert sorted(winners) == keys
    assert len([w for w in won if w]) >= 2, "one worker won everything; the race did not happen"
    for k, wid in winners.items():
        assert await local.get(k) == b"%d" % wid
        assert (await local.head(k)).metadata == {"writer": str(wid)}
    assert await local.list_keys("race/") == keys


async def test_concurrent_overwrites_across_processes_keep_data_and_metadata_together(
    pool: Pool, local: LocalBackend
) -> None:
    keys = ["mix/a", "mix/b"]
    for k in keys:
        await local.put_object(k, _body_of(0), metadata={"writer": 0, "sha": "initial", "round": -1})
    res = pool.starmap_async(_overwrite_worker, [(str(local.root), keys, wid, 12) for wid in range(WORKERS)])
    reads = 0
    seen_writers = set()
    while not res.ready():
        for k in keys:
            async with await local.open(k) as dl:
                data = await dl.read()
            writer = int(dl.info.metadata["writer"])
            # the body read through one handle is exactly the body described by the metadata
            assert data == _body_of(writer), f"{k}: body of another writer than {writer}"
            assert dl.info.size == len(data)
            info = await local.head(k)
            assert info.size == len(_body_of(int(info.metadata["writer"])))
            seen_writers.add(writer)
            reads += 1
    res.get()
    assert reads > 0 and len(seen_writers) >= 2
    for k in keys:
        data = await local.get(k)
        info = await local.head(k)
        writer = int(info.metadata["writer"])
        assert data == _body_of(writer)
        assert info.metadata["sha"] == hashlib.sha256(data).hexdigest()[:16]
        assert info.metadata["round"] == "11"
    assert _temp_files(local.root) == []
    assert await local.list_keys() == keys


# --- the URL secret -------------------------------------------------------------------


def _secret_path(root: Path) -> Path:
    return root / ".unistore" / "url-secret"


async def test_generated_secret_is_persisted_private_and_shared(tmp_path: Path, pool: Pool) -> None:
    root = tmp_path / "store"
    a = LocalBackend(base_path=str(root), fsync=False)
    path = _secret_path(root)
    assert not path.exists()  # created when the first URL is signed, never by merely opening the store
    old_umask = os.umask(0)  # even with a permissive umask the secret is private
    try:
        assert a.signer is a.signer
    finally:
        os.umask(old_umask)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes().strip()) >= 32

    b = LocalBackend(base_path=str(root), fsync=False)  # a restart, or a second worker
    url = a.signer.sign("docs/report.pdf", expires_in=600, now=1_000_000)
    assert b.signer.sign("docs/report.pdf", expires_in=600, now=1_000_000) == url
    params = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    b.signer.verify("docs/report.pdf", expires=params["expires"], signature=params["signature"], now=1_000_001)
    # another process on the same directory signs the same URL
    other = pool.apply(_secret_worker_unsynced, (str(root), "docs/report.pdf", 1_000_000))
    assert other == LocalBackend(base_path=str(root), base_url="http://127.0.0.1:1/files").signer.sign(
        "docs/report.pdf", expires_in=600, now=1_000_000
    )
    # a different store gets a different secret
    c = LocalBackend(base_path=str(tmp_path / "other"), fsync=False)
    assert c.signer.sign("docs/report.pdf", expires_in=600, now=1_000_000) != url
    for backend in (a, b, c):
        await backend.aclose()


def _secret_worker_unsynced(root: str, key: str, now: float) -> str:
    backend = LocalBackend(base_path=root, fsync=False, base_url="http://127.0.0.1:1/files")
    return backend.signer.sign(key, expires_in=600, now=now)


def test_workers_starting_together_agree_on_one_secret(tmp_path: Path, pool: Pool) -> None:
    root = str(tmp_path / "fresh")
    urls = pool.starmap(_secret_worker, [(root, "k", 1_000_000)] * WORKERS)
    assert len(set(urls)) == 1
    assert stat.S_IMODE(_secret_path(Path(root)).stat().st_mode) == 0o600
    assert _temp_files(Path(root)) == []


async def test_explicit_secret_is_used_and_not_written(tmp_path: Path) -> None:
    root = tmp_path / "store"
    a = LocalBackend(base_path=str(root), url_secret=SECRET)
    assert not _secret_path(root).exists()
    b = LocalBackend(base_path=str(tmp_path / "elsewhere"), url_secret=SECRET)
    assert a.signer.sign("k", expires_in=60, now=5) == b.signer.sign("k", expires_in=60, now=5)


async def test_url_signed_by_another_process_works_after_restart(tmp_path: Path, pool: Pool) -> None:
    import httpx
    from fastapi import FastAPI

    from unistore import add_storage
    from unistore.testing import free_port, running_server

    root = tmp_path / "store"
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/files"
    first = LocalBackend(base_path=str(root), base_url=base_url)
    await first.put("shared/report.pdf", b"%PDF-1.7 shared", "application/pdf")
    await first.aclose()
    url = pool.apply(_sign_worker, (str(root), "shared/report.pdf", base_url))  # "worker 2"
    served = LocalBackend(base_path=str(root), base_url=base_url)  # "worker 3", after a restart
    app = FastAPI()
    add_storage(app, served, serve_files=True)
    with running_server(app, port):
        async with httpx.AsyncClient() as client:
            r = await client.get(url)
            assert r.status_code == 200 and r.content == b"%PDF-1.7 shared"
            assert str(root) not in url and ".unistore" not in url
            assert (await client.get(url.replace("signature=", "signature=x"))).status_code == 403


# --- crash leftovers and the store's own files --------------------------------------------


async def test_killed_writer_leaves_no_visible_trace(tmp_path: Path, local: LocalBackend) -> None:
    await local.put("up/big.bin", b"old version", "text/plain", {"v": "1"})
    await local.put("up/other.txt", b"other")
    before = await local.head("up/big.bin")
    proc = multiprocessing.get_context("spawn").Process(target=_slow_writer, args=(str(local.root), "up/big.bin"))
    proc.start()
    try:
        deadline = time.monotonic() + 30
        while True:  # wait until the writer is mid-stream: its temp file holds data
            temps = [t for t in _temp_files(local.root) if _temp_size(local.root / t) >= 3 * 65536]
            if temps:
                break
            assert proc.is_alive() and time.monotonic() < deadline, "writer never started"
            await asyncio.sleep(0.01)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    assert _temp_files(local.root), "the crash leftover is on disk"
    assert await local.list_keys() == ["up/big.bin", "up/other.txt"]
    assert [i.key async for i in local.iter_objects("up/")] == ["up/big.bin", "up/other.txt"]
    assert await local.get("up/big.bin") == b"old version"
    assert await local.head("up/big.bin") == before
    # the store keeps working around the leftover
    await local.put("up/big.bin", b"new version")
    assert await local.get("up/big.bin") == b"new version"
    assert await local.delete("up/big.bin") and await local.delete("up/other.txt")
    assert await local.list_keys() == []


async def test_hand_made_temp_files_are_invisible(local: LocalBackend) -> None:
    await local.put("d/keep.txt", b"keep")
    for rel in (".unistore.tmp.0123456789abcdef", "d/.unistore.tmp.deadbeefdeadbeef", "d/.unistore.gone.meta"):
        (local.root / rel).write_bytes(b"partial")
    (local.root / "e").mkdir()
    (local.root / "e" / ".unistore.tmp.1111111111111111").write_bytes(b"partial")
    assert await local.list_keys() == ["d/keep.txt"]
    assert await local.list_keys(".") == [] and await local.list_keys("d/.") == []
    assert [i.key async for i in local.iter_objects()] == ["d/keep.txt"]
    with pytest.raises(InvalidKeyError):
        await local.get("d/.unistore.tmp.deadbeefdeadbeef")
    assert not await local.exists("d/gone")  # a stray sidecar is not an object
    assert not await local.exists("e")


async def test_folder_listing_shows_no_store_files_and_no_empty_folders(local: LocalBackend) -> None:
    await local.put_object("d/keep.txt", b"keep", content_type="text/x-kept", metadata={"a": "1"})
    await local.put_object("d/sub/deep/k", b"k")
    for rel in (".unistore.tmp.0123456789abcdef", "d/.unistore.tmp.deadbeefdeadbeef", "d/.unistore.gone.meta"):
        (local.root / rel).write_bytes(b"partial")
    (local.root / "d" / "inflight" / "x").mkdir(parents=True)  # a put in progress: only a temp file so far
    (local.root / "d" / "inflight" / "x" / ".unistore.tmp.1111111111111111").write_bytes(b"partial")
    (local.root / "d" / "empty").mkdir()
    os.symlink(local.root / "d" / "sub", local.root / "d" / "link")  # never followed, never shown

    def names(entries: list[Any]) -> list[str]:
        return [getattr(e, "prefix", None) or e.key for e in entries]

    assert names([e async for e in local.iter_entries("")]) == ["d/"]
    level = [e async for e in local.iter_entries("d/")]
    assert names(level) == ["d/keep.txt", "d/sub/"]
    assert level[0].content_type == "text/x-kept" and level[0].metadata == {"a": "1"}  # the stored fields
    assert names([e async for e in local.iter_entries("d/.")]) == []
    assert names([e async for e in local.iter_entries("d/sub/")]) == ["d/sub/deep/"]


async def test_user_keys_never_collide_with_store_files(local: LocalBackend) -> None:
    names = [
        "x", "x.meta", "x.meta.json", "x.json", "x.tmp", "x.tmp.1", ".x.meta", "_x.meta", "meta", "tmp",
        "unistore.x.meta", "unistore.tmp.0123456789abcdef", "unistore/url-secret", "locks/000.lock",
    ]  # fmt: skip
    for i, k in enumerate(names):
        await local.put(k, f"body {i}".encode(), f"text/x-{i}", {"n": i})
    for i, k in enumerate(names):
        assert await local.get(k) == f"body {i}".encode(), k
        info = await local.head(k)
        assert (info.content_type, dict(info.metadata)) == (f"text/x-{i}", {"n": str(i)}), k
    assert await local.list_keys() == sorted(names)
    # on disk: every file is an object or lives in the reserved namespace
    for rel in _store_files(local.root):
        if not any(seg.startswith(".unistore") for seg in rel.split("/")):
            assert rel in names, rel
    # removing one leaves every look-alike and its metadata in place
    assert await local.delete("x")
    for i, k in enumerate(names[1:], start=1):
        assert (await local.head(k)).metadata == {"n": str(i)}


async def test_directories_are_never_objects(local: LocalBackend) -> None:
    (local.root / "empty").mkdir()
    (local.root / "deep" / "er" / "est").mkdir(parents=True)
    await local.put("dir/file.txt", b"f")
    assert await local.list_keys() == ["dir/file.txt"]
    assert [i.key async for i in local.iter_objects()] == ["dir/file.txt"]
    for k in ("empty", "deep", "deep/er", "dir"):
        assert not await local.exists(k)
        with pytest.raises(NotFoundError):
            await local.get(k)
        with pytest.raises(NotFoundError):
            await local.head(k)
        assert await local.delete(k) is False
    assert (local.root / "dir" / "file.txt").is_file()


async def test_object_and_directory_of_the_same_name_conflict_safely(local: LocalBackend) -> None:
    await local.put("a", b"object a", "text/plain", {"m": "a"})
    with pytest.raises(InvalidKeyError):
        await local.put("a/b", b"child")
    with pytest.raises(InvalidKeyError):
        await local.put_object("a/b/c", _chunked(b"streamed child", 4))
    assert await local.get("a") == b"object a" and (await local.head("a")).metadata == {"m": "a"}
    assert await local.list_keys() == ["a"]

    await local.put("p/q", b"child q")
    for attempt in (b"object p", _chunked(b"streamed p", 3)):
        with pytest.raises(InvalidKeyError):
            await local.put_object("p", attempt)
    assert await local.get("p/q") == b"child q"
    assert await local.list_keys() == ["a", "p/q"]
    assert _temp_files(local.root) == []


async def test_empty_parent_directories_are_removed_after_delete(local: LocalBackend) -> None:
    await local.put("a/b/c/d.txt", b"1")
    await local.put("x/y/1.txt", b"1")
    await local.put("x/z/2.txt", b"2")
    assert await local.delete("a/b/c/d.txt")
    assert not (local.root / "a").exists()
    assert await local.delete("x/y/1.txt")
    assert not (local.root / "x" / "y").exists() and (local.root / "x" / "z" / "2.txt").is_file()
    assert await local.delete("x/z/2.txt")
    assert sorted(os.listdir(local.root)) == [".unistore"]  # the root itself stays
    await local.put("a/b/c/d.txt", b"again")  # and directories come back on demand
    assert await local.get("a/b/c/d.txt") == b"again"


async def test_writes_racing_directory_cleanup_never_fail(local: LocalBackend) -> None:
    """A delete removes emptied parents while a write creates a sibling directory under
    them: the write must win the race, never fail with "no such object"."""
    for r in range(40):
        await asyncio.gather(*(local.put_object(f"r{j}/x/y/old", b"o") for j in range(6)))
        results = await asyncio.gather(
            *(op for j in range(6) for op in (local.delete(f"r{j}/x/y/old"), local.put_object(f"r{j}/x/z/new", b"n")))
        )
        assert results[0::2] == [True] * 6, r
        assert [await local.get(f"r{j}/x/z/new") for j in range(6)] == [b"n"] * 6
        assert await local.list_keys() == [f"r{j}/x/z/new" for j in range(6)]
        assert await asyncio.gather(*(local.delete(f"r{j}/x/z/new") for j in range(6))) == [True] * 6
    assert sorted(os.listdir(local.root)) == [".unistore"]


async def test_hand_placed_file_is_served_with_stat_etag(local: LocalBackend) -> None:
    (local.root / "docs").mkdir()
    path = local.root / "docs" / "readme.md"
    path.write_bytes(b"# hello")
    info = await local.head("docs/readme.md")
    assert (info.size, info.metadata) == (7, {})
    assert info.content_type == "text/markdown"
    assert info.etag and (await local.head("docs/readme.md")).etag == info.etag
    assert await local.get("docs/readme.md") == b"# hello"
    assert await local.list_keys("docs/") == ["docs/readme.md"]
    with pytest.raises(NotModifiedError):
        await local.open("docs/readme.md", if_none_match=info.etag)
    path.write_bytes(b"# hello, edited by hand")
    edited = await local.head("docs/readme.md")
    assert edited.etag != info.etag and edited.size == 23
    with pytest.raises(PreconditionFailedError):
        await local.put_object("docs/readme.md", b"stale", mode=IfMatch(info.etag))
    await local.put_object("docs/readme.md", b"managed", metadata={"a": 1}, mode=IfMatch(edited.etag))
    assert (await local.head("docs/readme.md")).metadata == {"a": "1"}
    assert await local.delete("docs/readme.md")


async def test_file_replaced_by_hand_drops_stale_metadata(local: LocalBackend) -> None:
    await local.put("r.json", b'{"v": 1}', "application/vnd.custom", {"owner": "alice"})
    managed = await local.head("r.json")
    replacement = local.root / "replacement"
    replacement.write_bytes(b'{"v": 2, "by": "hand"}')
    os.replace(replacement, local.root / "r.json")  # a new inode: the sidecar no longer describes it
    info = await local.head("r.json")
    assert info.metadata == {} and info.etag != managed.etag
    assert info.content_type == "application/json"
    async with await local.open("r.json") as dl:
        assert await dl.read() == b'{"v": 2, "by": "hand"}' and dl.info == info
    (local.root / ".unistore.r.json.meta").write_bytes(b"{not json")  # a corrupt sidecar is ignored too
    assert (await local.head("r.json")).metadata == {}


async def test_hand_placed_names_that_are_not_keys_are_not_listed(local: LocalBackend) -> None:
    """Every listed key can be read back: names no key can have are skipped."""
    _touch(local.root, [b"back\\slash", b"ctl\x01", b"\xff\xfe.bin", b"%2e%2e", b"C:drive", b"pct%41", b"ok.txt"], b"x")
    _touch(local.root / "dir\\x", ["inside"])
    deep = local.root.joinpath(*["d" * 250] * 5)  # keys below would be longer than 1024 bytes
    _touch(deep, ["f"])
    _touch(local.root.joinpath(*["d" * 250] * 3), ["g"])
    keys = await local.list_keys()
    assert keys == ["/".join(["d" * 250] * 3 + ["g"]), "ok.txt", "pct%41"]
    for k in keys:
        assert await local.get(k) == (b"x" if "/" not in k else b"")


async def test_fifo_is_not_an_object(local: LocalBackend) -> None:
    os.mkfifo(local.root / "pipe")
    assert await local.list_keys() == []
    assert not await local.exists("pipe")
    try:
        with pytest.raises(NotFoundError):
            await asyncio.wait_for(local.get("pipe"), 10)  # never blocks waiting for a writer
    finally:
        with contextlib.suppress(OSError):  # release a reader stuck in open() (without the fix)
            os.close(os.open(local.root / "pipe", os.O_WRONLY | os.O_NONBLOCK))
    assert await local.delete("pipe") is False


async def test_long_segments_keep_their_own_metadata(local: LocalBackend) -> None:
    stem = "é" * 120  # 240 bytes: sidecar names are shortened past this length
    keys = [f"long/{stem}{tail}" for tail in ("", "a", "ab", "abcdefghijklmno")]
    for i, k in enumerate(keys):
        await local.put(k, b"%d" % i, f"text/x-{i}", {"i": i})
    for i, k in enumerate(keys):
        info = await local.head(k)
        assert (info.content_type, dict(info.metadata)) == (f"text/x-{i}", {"i": str(i)})
        assert await local.get(k) == b"%d" % i
    assert await local.list_keys("long/") == sorted(keys)
    assert await local.delete(keys[0])
    assert (await local.head(keys[1])).metadata == {"i": "1"}


# --- symlinks -------------------------------------------------------------------------


async def test_symlinks_are_neither_listed_nor_followed(tmp_path: Path, local: LocalBackend) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(b"secret")
    os.symlink(outside, local.root / "dirlink")
    os.symlink(outside / "secret.txt", local.root / "filelink")
    (local.root / "real").mkdir()
    os.symlink(outside, local.root / "real" / "nested")
    await local.put("real/file.txt", b"real")

    assert await local.list_keys() == ["real/file.txt"]
    for prefix in ("dirlink/", "dirlink/s", "real/nested/", "filelink"):
        assert await local.list_keys(prefix) == [], prefix
    for k in ("filelink", "dirlink/secret.txt", "real/nested/secret.txt"):
        assert not await local.exists(k), k
        with pytest.raises(NotFoundError):
            await local.get(k)
        with pytest.raises(NotFoundError):
            await local.head(k)
        with pytest.raises(NotFoundError):
            await local.get_url(k)
        assert await local.delete(k) is False, k
    for k in ("dirlink/new.txt", "real/nested/new.txt", "dirlink/sub/new.txt"):
        with pytest.raises(InvalidKeyError):
            await local.put(k, b"planted")
        with pytest.raises(InvalidKeyError):
            await local.put_object(k, _chunked(b"planted", 3))
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_bytes() == b"secret"
    # writing the key of a file symlink replaces the link, never its target
    await local.put("filelink", b"mine")
    assert await local.get("filelink") == b"mine"
    assert not (local.root / "filelink").is_symlink()
    assert (outside / "secret.txt").read_bytes() == b"secret"


# --- settings, fsync, quota -------------------------------------------------------------


@pytest.mark.parametrize("fsync", [True, False])
async def test_fsync_on_and_off(tmp_path: Path, fsync: bool) -> None:
    backend = LocalBackend(base_path=str(tmp_path / "s"), fsync=fsync, url_secret=SECRET)
    assert backend.settings.fsync is fsync
    with pytest.raises(dataclasses.FrozenInstanceError):
        backend.settings.fsync = not fsync  # type: ignore[misc]
    info = await backend.put_object("f/a.bin", b"x" * 1000, metadata={"k": "v"})
    info2 = await backend.put_object("f/a.bin", _chunked(b"y" * 300_000, 65536), mode=IfMatch(info.etag))
    assert await backend.get("f/a.bin") == b"y" * 300_000
    assert (await backend.head("f/a.bin")).etag == info2.etag
    assert await backend.delete("f/a.bin") and await backend.list_keys() == []
    await backend.aclose()


def test_fsync_is_the_default() -> None:
    assert LocalSettings().fsync is True


async def test_max_size_on_local(tmp_path: Path) -> None:
    backend = LocalBackend(base_path=str(tmp_path / "s"), fsync=False, url_secret=SECRET, max_object_size=MiB)
    await backend.put("q.bin", b"a" * MiB, "application/octet-stream", {"v": "1"})  # exactly the limit
    before = await backend.head("q.bin")
    with pytest.raises(QuotaExceededError) as exc:
        await backend.put("q.bin", b"b" * (MiB + 1))
    assert exc.value.status == 413
    pulled = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal pulled
        while True:
            pulled += 1
            yield b"c" * 65536

    with pytest.raises(QuotaExceededError):
        await backend.put_object("q.bin", endless())
    assert pulled <= MiB // 65536 + 2  # stopped as soon as the limit was passed
    assert await backend.head("q.bin") == before and await backend.get("q.bin") == b"a" * MiB
    with pytest.raises(QuotaExceededError):
        await backend.put_object("new.bin", endless())
    assert not await backend.exists("new.bin")
    assert _temp_files(backend.root) == []
    await backend.aclose()


# --- memory and the event loop ------------------------------------------------------------


async def test_large_streams_keep_memory_bounded(local: LocalBackend) -> None:
    size = 256 * MiB
    base = os.urandom(MiB)
    expected = hashlib.sha256()

    async def source() -> AsyncIterator[bytes]:
        sent = 0
        i = 0
        while sent < size:
            n = min(size - sent, 300_001)  # odd chunk sizes, unaligned with the backend's
            start = (i * 7919) % (MiB - n) if n < MiB else 0
            chunk = base[start : start + n]
            expected.update(chunk)
            sent += n
            i += 1
            yield chunk

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = await local.put_object("big/blob.bin", source())
        _, write_peak = tracemalloc.get_traced_memory()
        assert info.size == size

        tracemalloc.reset_peak()
        got = hashlib.sha256()
        n = 0
        async with await local.open("big/blob.bin") as dl:
            assert dl.content_length == size
            async for chunk in dl:
                got.update(chunk)
                n += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == size and got.digest() == expected.digest()
    assert write_peak < 32 * MiB, f"streamed write peaked at {write_peak / MiB:.1f} MiB"
    assert read_peak < 32 * MiB, f"streamed read peaked at {read_peak / MiB:.1f} MiB"
    assert await local.delete("big/blob.bin")


class _Ticker:
    """Measures the longest time the event loop went without running a short timer."""

    def __init__(self) -> None:
        self.max_gap = 0.0
        self.ticks = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        last = loop.time()
        while not self._stop.is_set():
            await asyncio.sleep(0.002)
            now = loop.time()
            self.max_gap = max(self.max_gap, now - last)
            self.ticks += 1
            last = now

    async def __aenter__(self) -> _Ticker:
        self._task = asyncio.create_task(self._run())
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task


async def test_listing_20000_files_does_not_block_the_event_loop(local: LocalBackend) -> None:
    names = [f"f{i:05d}.txt" for i in range(20_000)]
    _touch(local.root / "many", names)
    for i in range(200):  # and a tree of small directories
        (local.root / "tree" / f"d{i:03d}").mkdir(parents=True)
        (local.root / "tree" / f"d{i:03d}" / "x").write_bytes(b"")

    gaps = []
    for _ in range(3):  # a busy machine may stall one run; a blocking listing stalls every run
        async with _Ticker() as ticker:
            keys = await local.list_keys("many/", limit=50_000)
            tree = await local.list_keys("tree/", limit=50_000)
            infos = 0
            async for _ in local.iter_objects("many/f1"):
                infos += 1
        assert keys == [f"many/{n}" for n in names]
        assert tree == [f"tree/d{i:03d}/x" for i in range(200)]
        assert infos == 10_000
        assert ticker.ticks > 10
        gaps.append(ticker.max_gap)
        if ticker.max_gap < 0.1:
            break
    assert min(gaps) < 0.1, f"event loop blocked for {min(gaps) * 1000:.0f} ms or more in every run"


async def test_unquoted_key_in_url_never_reveals_the_path(local: LocalBackend) -> None:
    await local.put("dir/ünï code.txt", b"x")
    url = await local.get_url("dir/ünï code.txt")
    assert str(local.root) not in unquote(url)
    assert unquote(urlsplit(url).path).endswith("/dir/ünï code.txt")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_stream_reads_one_chunk_ahead_and_closes_its_file_however_it_ends(tmp_path: Path) -> None:
    """The next chunk is read while the caller holds this one; a reader that stops early, or is
    cancelled while a read is under way, still has its file closed once that read is over."""
    backend = LocalBackend(base_path=tmp_path, fsync=False, chunk_size=65536)
    data = os.urandom(5 * 65536 + 7)
    await backend.put_object("big.bin", data)
    before = _open_fds()
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        reads.append(offset)
        return real_pread(fd, n, offset)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "pread", counting_pread)
        async with await backend.open("big.bin") as dl:
            async for _ in dl:
                for _ in range(100):  # the second chunk is being read while the caller holds the first
                    if len(reads) == 2:
                        break
                    await asyncio.sleep(0.005)
                assert reads == [0, 65536]
                break
    async with await backend.open("big.bin") as dl:
        got = [bytes(c) async for c in dl]
    assert b"".join(got) == data and [len(c) for c in got[:5]] == [65536] * 5
    for stop_after in (1, 3):
        async with await backend.open("big.bin") as dl:
            n = 0
            async for _ in dl:
                n += 1
                if n == stop_after:
                    break
    dl = await backend.open("big.bin")

    async def read_all() -> bytes:
        return b"".join([bytes(c) async for c in dl])

    task = asyncio.create_task(read_all())
    await asyncio.sleep(0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await dl.aclose()
    for _ in range(100):  # the read under way finishes in its thread, then the file is closed
        if _open_fds() == before:
            break
        await asyncio.sleep(0.01)
    assert _open_fds() == before
    async with await backend.open("big.bin", range=ByteRange(65530, 3 * 65536 + 2)) as dl:
        assert await dl.read() == data[65530 : 3 * 65536 + 2]
