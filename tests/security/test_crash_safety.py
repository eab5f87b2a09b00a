"""Crash safety of LocalBackend: a writer killed with SIGKILL at any instant leaves either the old
version with all its metadata or the new one with all of its, and nothing that blocks later writes.

Writers run in child processes. The deterministic tests install ``local._crash_hook`` in the child
(a test seam that is ``None`` in normal use), which stops the writer right after the named step of
the commit so the test kills it exactly there; the random tests kill at random moments, as in issue 19.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from unistore import InvalidKeyError, LocalBackend, StorageError
from unistore.service._state import StateStore
from unistore.service._uploads import UploadSessions
from unistore.testing import free_port

SECRET = "crash-secret-0123456789abcdef"

# The child: one put under a hook that reports every commit step and stops at ``stop_at``.
WRITER = textwrap.dedent(
    """
    import asyncio, json, sys, time
    import unistore.backends.local as local
    from unistore import LocalBackend

    base, sidecars, stop_at, spec = sys.argv[1], sys.argv[2] == "sidecars", sys.argv[3], json.loads(sys.argv[4])

    class NoXattr(LocalBackend):
        def _probe_xattr(self):
            return False

    store = (NoXattr if sidecars else LocalBackend)(base_path=base, fsync=True, url_secret=spec["secret"])

    def hook(step, key):
        print("step", step, flush=True)
        if step == stop_at:
            sys.stdin.readline()  # wait here to be killed (or told to go on)

    local._crash_hook = hook
    if spec.get("copy_from"):
        asyncio.run(store.copy(spec["copy_from"], spec["key"]))
    else:
        asyncio.run(
            store.put_object(
                spec["key"], spec["body"].encode(), content_type=spec["ct"], metadata=spec["meta"],
                cache_control=spec["cc"],
            )
        )
    print("done", flush=True)
    """
)


@dataclass(frozen=True)
class Version:
    body: bytes
    ct: str | None = None
    meta: dict[str, str] | None = None
    cc: str | None = None

    def spec(self, key: str, copy_from: str | None = None) -> str:
        doc = {"key": key, "body": self.body.decode(), "ct": self.ct, "meta": self.meta, "cc": self.cc}
        return json.dumps({**doc, "secret": SECRET, "copy_from": copy_from})

    async def write(self, store: LocalBackend, key: str) -> None:
        await store.put_object(key, self.body, content_type=self.ct, metadata=self.meta, cache_control=self.cc)

    def seen(self, key: str) -> tuple[bytes, str, dict[str, str], str | None]:
        from unistore._types import guess_content_type

        return self.body, self.ct or guess_content_type(key), self.meta or {}, self.cc


OLD_META = Version(b"old version, with metadata", "text/x-old", {"gen": "old", "len": "26"}, "max-age=60")
NEW_META = Version(b"the new version, with its own metadata", "text/x-new", {"gen": "new"}, "no-store")
PLAIN = Version(b"a version without metadata")
TRANSITIONS = {
    "meta-to-meta": (OLD_META, NEW_META),
    "meta-to-plain": (OLD_META, PLAIN),
    "plain-to-meta": (PLAIN, NEW_META),
}


class NoXattr(LocalBackend):
    def _probe_xattr(self) -> bool:
        return False


def _store(base: Path, sidecars: bool) -> LocalBackend:
    return (NoXattr if sidecars else LocalBackend)(base_path=str(base), fsync=False, url_secret=SECRET)


class Writer:
    """A child process running one put, stopped after step ``stop_at``."""

    def __init__(
        self, base: Path, sidecars: bool, stop_at: str, key: str, version: Version, copy_from: str | None = None
    ) -> None:
        mode = "sidecars" if sidecars else "xattr"
        args = [sys.executable, "-c", WRITER, str(base), mode, stop_at, version.spec(key, copy_from)]
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.steps: list[str] = []

    def run_to(self, stop_at: str | None) -> bool:
        """Read the child's steps until it reports ``stop_at`` (True) or finishes (False)."""
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, step = line.strip().partition(" ")
            if word == "done":
                break
            self.steps.append(step)
            if step == stop_at:
                return True
        assert self.proc.wait(30) == 0
        return False

    def kill(self) -> None:
        self.proc.kill()
        assert self.proc.wait(30) == -signal.SIGKILL

    def resume(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()


def _steps_of(base: Path, sidecars: bool, key: str, version: Version) -> list[str]:
    w = Writer(base, sidecars, "", key, version)
    assert not w.run_to(None)
    return w.steps


def _leftovers(root: Path) -> list[str]:
    rels = (str(p.relative_to(root)) for p in root.rglob(".unistore*") if p.is_file())
    return sorted(r for r in rels if not r.startswith(".unistore/"))


async def _seen(store: LocalBackend, key: str) -> tuple[bytes, str, dict[str, str], str | None]:
    info = await store.head(key)
    async with await store.open(key) as dl:
        body = await dl.read()
        assert dl.info == info  # one version: what head says is what open serves
    return body, info.content_type, dict(info.metadata), info.cache_control


EXPECTED_STEPS = {
    # xattr mode: the record rides on the temp file; one rename commits both
    # (a replaced version with a record may have had a sidecar: its removal is tried after the commit)
    (False, "meta-to-meta"): ["temp-written", "temp-synced", "data-renamed", "old-sidecar-removed", "dir-synced"],
    (False, "meta-to-plain"): ["temp-written", "temp-synced", "data-renamed", "old-sidecar-removed", "dir-synced"],
    (False, "plain-to-meta"): ["temp-written", "temp-synced", "data-renamed", "dir-synced"],
    # sidecar mode: the new sidecar before the data rename, the replaced one's removal after it
    (True, "meta-to-meta"): [
        "temp-written", "sidecar-written", "temp-synced", "data-renamed", "old-sidecar-removed", "dir-synced",
    ],
    (True, "meta-to-plain"): ["temp-written", "temp-synced", "data-renamed", "old-sidecar-removed", "dir-synced"],
    (True, "plain-to-meta"): ["temp-written", "sidecar-written", "temp-synced", "data-renamed", "dir-synced"],
}  # fmt: skip


@pytest.mark.parametrize("transition", sorted(TRANSITIONS))
@pytest.mark.parametrize("sidecars", [False, True], ids=["xattr", "sidecars"])
async def test_a_writer_killed_after_any_commit_step_leaves_one_whole_version(
    tmp_path: Path, sidecars: bool, transition: str
) -> None:
    from unistore.backends.local._meta import sidecar_path

    old, new = TRANSITIONS[transition]
    store = _store(tmp_path / "s", sidecars)
    if not sidecars and not store._xattr:
        pytest.skip("this file system keeps no user xattrs: the store runs in sidecar mode (tested too)")
    await old.write(store, "probe/k")
    steps = _steps_of(store.root, sidecars, "probe/k", new)
    assert steps == EXPECTED_STEPS[sidecars, transition]
    for i, step in enumerate(steps):
        key = f"k{i}/obj"
        await old.write(store, key)
        old_etag = (await store.head(key)).etag
        w = Writer(store.root, sidecars, step, key, new)
        assert w.run_to(step), step
        w.kill()
        committed = steps.index(step) >= steps.index("data-renamed")
        seen = await _seen(store, key)
        assert seen == (new if committed else old).seen(key), step
        if not committed:
            assert (await store.head(key)).etag == old_etag, step  # the old version, untouched
        assert await store.list_keys(f"k{i}/") == [key]
        # a later write succeeds, and the sweep removes whatever the kill left
        third = Version(b"written after the crash", "text/x-third", {"gen": "third"})
        await third.write(store, key)
        assert await _seen(store, key) == third.seen(key), step
        assert await store.sweep(older_than=0) >= 0
        data = store.root / key
        live = [Path(sidecar_path(str(data), data.stat().st_ino)).name] if sidecars else []
        assert _leftovers(store.root / f"k{i}") == live, step  # nothing but the live version's sidecar
        assert await _seen(store, key) == third.seen(key), step


@pytest.mark.parametrize("sidecars", [False, True], ids=["xattr", "sidecars"])
async def test_a_copy_killed_after_any_commit_step_leaves_one_whole_version(tmp_path: Path, sidecars: bool) -> None:
    store = _store(tmp_path / "s", sidecars)
    await NEW_META.write(store, "src/obj")
    for step in EXPECTED_STEPS[sidecars or not store._xattr, "meta-to-meta"]:
        key = f"copy-{step}/obj"
        await OLD_META.write(store, key)
        w = Writer(store.root, sidecars, step, key, NEW_META, copy_from="src/obj")
        assert w.run_to(step), step
        w.kill()
        committed = step not in ("temp-written", "sidecar-written", "temp-synced")
        assert await _seen(store, key) == (NEW_META if committed else OLD_META).seen(key), step
        await PLAIN.write(store, key)
        assert await _seen(store, key) == PLAIN.seen(key)


# --- the random kill loop of issue 19 -----------------------------------------------------------

RANDOM_WRITER = textwrap.dedent(
    """
    import asyncio, os, sys, unistore
    b = unistore.easy_storage(backend="local", base_path=sys.argv[1])
    parent = os.getppid()
    async def main():
        i = 0
        while os.getppid() == parent:  # never outlive the test
            body = (b"A" if i % 2 else b"B") * (1 << 18) * (1 + i % 3)
            await b.put("crash/obj", body, "application/x-crash", metadata={"n": str(i), "len": str(len(body))})
            i += 1
            if i == 2:
                print("ready", flush=True)
    asyncio.run(main())
    """
)


async def _kill_loop(base: Path, kills: int, seed: int) -> list[int]:
    """Kill the writer ``kills`` times at random moments; after each kill, check the object
    and its metadata describe the same committed version. Returns the versions seen."""
    rng = random.Random(seed)
    seen = []
    store = LocalBackend(base_path=str(base), fsync=False, url_secret=SECRET)
    for _ in range(kills):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", RANDOM_WRITER, str(base), stdout=asyncio.subprocess.PIPE
        )
        assert proc.stdout is not None
        assert (await asyncio.wait_for(proc.stdout.readline(), 30)) == b"ready\n"
        await asyncio.sleep(rng.uniform(0, 0.15))
        proc.kill()
        await proc.wait()
        info = await store.head("crash/obj")
        body = await store.get("crash/obj")
        assert info.content_type == "application/x-crash", info
        assert set(info.metadata) == {"n", "len"}, info
        n = int(info.metadata["n"])
        assert len(body) == info.size == int(info.metadata["len"]) == (1 << 18) * (1 + n % 3), info
        assert body == (b"A" if n % 2 else b"B") * len(body)
        seen.append(n)
    return seen


async def _random_kills(tmp_path: Path, kills: int) -> None:
    lanes = 2
    results = await asyncio.gather(*(_kill_loop(tmp_path / f"lane{i}", kills // lanes, i) for i in range(lanes)))
    assert all(len(r) == kills // lanes for r in results)
    for i in range(lanes):
        store = LocalBackend(base_path=str(tmp_path / f"lane{i}"), fsync=False, url_secret=SECRET)
        await store.sweep(older_than=0)
        assert _leftovers(store.root) == [], "temp files of killed writers are swept"
        await store.put("crash/obj", b"after", "text/plain")
        assert await store.delete("crash/obj")
        await store.put("crash", b"the directory left by the writers is gone")
        assert await store.get("crash") == b"the directory left by the writers is gone"


async def test_random_kills_never_lose_metadata(tmp_path: Path) -> None:
    await _random_kills(tmp_path, 24)


@pytest.mark.slow
async def test_500_random_kills_never_lose_metadata(tmp_path: Path) -> None:
    await _random_kills(tmp_path, 500)


# --- leftovers of killed writers (issue 11, item 13) ---------------------------------------------


def _killed_writer(root: Path, key: str, stop_at: str = "temp-written", sidecars: bool = False) -> None:
    w = Writer(root, sidecars, stop_at, key, NEW_META)
    assert w.run_to(stop_at)
    w.kill()


STREAMER = textwrap.dedent(
    """
    import asyncio, os, sys
    from unistore import LocalBackend

    parent = os.getppid()

    async def body():
        while os.getppid() == parent:  # never outlive the test
            yield b"x" * 65536
            await asyncio.sleep(0.01)

    store = LocalBackend(base_path=sys.argv[1], url_secret="crash-secret-0123456789abcdef")
    asyncio.run(store.put_object(sys.argv[2], body(), metadata={"m": "1"}))
    """
)


def _killed_mid_stream(root: Path, key: str) -> None:
    """Kill a writer while it streams ``key`` into its temp file (no test seam needed)."""
    proc = subprocess.Popen([sys.executable, "-c", STREAMER, str(root), key])
    try:
        deadline = time.monotonic() + 30
        parent = (root / key).parent
        while not any(p.stat().st_size for p in parent.glob(".unistore.tmp.*")) if parent.is_dir() else True:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        proc.kill()
        proc.wait(30)


def _age(root: Path, seconds: float, rels: list[str] | None = None) -> None:
    """Make leftovers (default: all) look ``seconds`` old, as if the kill happened that long ago.
    (Age them only once no more writer will start: a writer's first write sweeps too.)"""
    then = time.time() - seconds
    for rel in _leftovers(root) if rels is None else rels:
        os.utime(root / rel, (then, then))


async def test_put_onto_a_directory_left_only_with_leftovers_succeeds(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", False)
    await store.put("crash/obj", b"committed")
    _killed_mid_stream(store.root, "crash/obj")  # its temp file stays in crash/
    (store.root / "crash" / "empty" / "deeper").mkdir(parents=True)
    assert await store.delete("crash/obj")
    assert (store.root / "crash").is_dir()
    await store.put("crash", b"the key is free again", "text/plain", {"m": "1"})
    assert await store.get("crash") == b"the key is free again"
    assert (await store.head("crash")).metadata == {"m": "1"}
    assert await store.list_keys() == ["crash"]


async def test_put_onto_a_directory_with_a_live_writer_or_an_object_is_refused(tmp_path: Path) -> None:
    store = _store(tmp_path / "s", False)
    live = Writer(store.root, False, "temp-written", "busy/obj", NEW_META)
    assert live.run_to("temp-written")  # alive, holding its temp file in busy/
    try:
        with pytest.raises(InvalidKeyError):
            await store.put("busy", b"x")
    finally:
        live.resume()
    assert not live.run_to(None)
    assert await _seen(store, "busy/obj") == NEW_META.seen("busy/obj")  # the live writer was not harmed
    sidecars = _store(tmp_path / "s", True)  # an object whose sidecar sits beside it
    await OLD_META.write(sidecars, "full/obj")
    with pytest.raises(InvalidKeyError):
        await sidecars.put("full", b"x")
    assert await _seen(sidecars, "full/obj") == OLD_META.seen("full/obj")  # its metadata untouched


@pytest.mark.parametrize("sidecars", [False, True], ids=["xattr", "sidecars"])
async def test_sweep_removes_stale_leftovers_and_never_a_live_writers(tmp_path: Path, sidecars: bool) -> None:
    store = _store(tmp_path / "s", sidecars)
    if not sidecars and not store._xattr:
        pytest.skip("this file system keeps no user xattrs: the store runs in sidecar mode (tested too)")
    await OLD_META.write(store, "kept/obj")
    _killed_writer(store.root, "a/one", sidecars=sidecars)
    _killed_writer(store.root, "b/c/two", sidecars=sidecars)
    _killed_writer(store.root, "kept/obj", "sidecar-written" if sidecars else "temp-synced", sidecars)
    live = Writer(store.root, sidecars, "temp-written", "live/obj", NEW_META)
    assert live.run_to("temp-written")
    kept = _leftovers(store.root / "kept") if sidecars else []
    try:
        old = _leftovers(store.root)
        alive = [p for p in old if p.startswith("live/")]  # the paused writer's temp file
        # the committed version's own sidecar is not a leftover
        kept_sidecar = [f"kept/{p}" for p in kept if _is_live_sidecar(store.root, "kept/obj", p)]
        dead = sorted(set(old) - set(alive) - set(kept_sidecar))
        assert len(dead) == (4 if sidecars else 3), dead  # 3 temps (+ 1 sidecar of a version never committed)
        _killed_writer(store.root, "a/fresh", sidecars=sidecars)  # a recent one: too young to be judged
        _age(store.root, 3600, old)
        assert await store.sweep() == len(dead)
        left = _leftovers(store.root)
        assert sorted(set(left) - set(kept_sidecar) - set(alive)) == [p for p in left if p.startswith("a/")], left
        assert len(left) == 2 + len(kept_sidecar), left
        assert not (store.root / "b").exists()  # directories the sweep emptied are removed
    finally:
        live.resume()
    assert not live.run_to(None)  # the live writer commits after the sweep
    assert await _seen(store, "live/obj") == NEW_META.seen("live/obj")
    assert await _seen(store, "kept/obj") == OLD_META.seen("kept/obj")
    _age(store.root, 3600)
    assert await store.sweep() == 1  # the fresh one, now old
    assert all(p.endswith(".vm") for p in _leftovers(store.root))  # only live versions' sidecars
    assert len(_leftovers(store.root)) == (2 if sidecars else 0)
    assert await store.list_keys() == ["kept/obj", "live/obj"]


def _is_live_sidecar(root: Path, key: str, name: str) -> bool:
    from unistore.backends.local._meta import sidecar_path

    data = root / key
    return Path(sidecar_path(str(data), data.stat().st_ino)).name == name


async def test_the_first_write_sweeps_in_the_background(tmp_path: Path) -> None:
    root = tmp_path / "s"
    _store(root, False)
    _killed_mid_stream(root, "old/leftover")
    _age(root, 3600)
    store = _store(root, False)
    await store.put("trigger", b"x")
    deadline = time.monotonic() + 10
    while _leftovers(root) or (root / "old").exists():  # the temp file, then its emptied directory
        assert time.monotonic() < deadline, _leftovers(root)
        await asyncio.sleep(0.05)


# --- the service over LocalBackend, killed mid-request ------------------------------------------

SERVICE = textwrap.dedent(
    """
    import os, sys, threading, time
    import unistore.backends.local as local

    stop_at, marker = os.environ["CRASH_STOP_AT"], os.environ["CRASH_MARKER"]
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:  # never outlive the test
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()

    def hook(step, key):
        if step == stop_at and not key.startswith(".unistore"):  # objects only, not the service's records
            with open(marker, "w") as f:
                f.write(step)
            time.sleep(3600)  # killed here

    local._crash_hook = hook
    if os.environ.get("CRASH_SIDECARS"):  # as on a file system without user xattrs
        local.LocalBackend._probe_xattr = lambda self: False
    from unistore.service.__main__ import main

    main(["--port", sys.argv[1], "--no-auth"])
    """
)


@contextlib.contextmanager
def _service(
    base: Path, stop_at: str = "", sidecars: bool = False
) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """``unistore serve`` over a LocalBackend at ``base`` that stops (to be killed) after ``stop_at``."""
    port = free_port()
    marker = base.parent / f"marker-{port}"
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "STORAGE_BASE_PATH": str(base),
        "CRASH_STOP_AT": stop_at,
        "CRASH_MARKER": str(marker),
        "CRASH_SIDECARS": "1" if sidecars else "",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVICE, str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, "the service did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/_ops/health").status_code == 200:
                    break
            time.sleep(0.05)
        yield url, proc, marker
    finally:
        proc.kill()
        proc.wait(30)


def _killed_during(request: Callable[[], httpx.Response], proc: subprocess.Popen[bytes], marker: Path) -> None:
    """Send ``request``; once the service stops at its crash point, SIGKILL it. The client must
    see the connection die, never an answer."""
    outcome: list[object] = []

    def send() -> None:
        try:
            outcome.append(request())
        except httpx.TransportError as exc:
            outcome.append(exc)

    t = threading.Thread(target=send)
    t.start()
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert t.is_alive() and time.monotonic() < deadline, f"the crash point was never reached: {outcome}"
        time.sleep(0.01)
    proc.kill()
    proc.wait(30)
    t.join(30)
    marker.unlink()
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.TransportError), outcome


def _headers(v: Version) -> dict[str, str]:
    h = {f"x-meta-{k}": val for k, val in (v.meta or {}).items()}
    h.update({"content-type": v.ct or "application/octet-stream", **({"cache-control": v.cc} if v.cc else {})})
    return h


@pytest.mark.parametrize(
    "sidecars", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["as-the-fs-allows", "sidecars"]
)
def test_service_killed_mid_put_at_every_commit_step(tmp_path: Path, sidecars: bool) -> None:
    base = tmp_path / "store"
    store = _store(base, sidecars)
    steps = EXPECTED_STEPS[sidecars or not store._xattr, "meta-to-meta"]
    for step in steps:
        key = f"svc/{step}"
        asyncio.run(OLD_META.write(store, key))
        with _service(base, step, sidecars) as (url, proc, marker):
            put = functools.partial(
                httpx.put, f"{url}/v1/objects/{key}", content=NEW_META.body, headers=_headers(NEW_META), timeout=30
            )
            _killed_during(put, proc, marker)
        committed = steps.index(step) >= steps.index("data-renamed")
        assert asyncio.run(_seen(store, key)) == (NEW_META if committed else OLD_META).seen(key), step
    with _service(base, "", sidecars) as (url, _, _):  # a restarted service serves each version whole
        for step in steps:
            key = f"svc/{step}"
            v = NEW_META if steps.index(step) >= steps.index("data-renamed") else OLD_META
            r = httpx.get(f"{url}/v1/objects/{key}")
            assert (r.content, r.headers["content-type"], r.headers["x-meta-gen"]) == (v.body, v.ct, v.meta["gen"])
            assert r.headers["cache-control"] == v.cc
            assert httpx.put(f"{url}/v1/objects/{key}", content=b"later", headers=_headers(PLAIN)).status_code == 201
    asyncio.run(store.sweep(older_than=0))
    assert _leftovers(base) == []  # the later writes have no metadata: no sidecar either


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_service_killed_while_completing_an_upload(tmp_path: Path) -> None:
    base = tmp_path / "store"
    store = _store(base, False)
    parts = [b"a" * 1000, b"b" * 500]
    manifest = {"parts": [{"number": i + 1, "sha256": _sha(p)} for i, p in enumerate(parts)]}
    sessions = {}
    for step in ("temp-written", "data-renamed"):
        key = f"up/{step}"
        with _service(base, step) as (url, proc, marker):
            body = {"key": key, "content_type": "application/x-joined", "metadata": {"owner": "me"}}
            sid = httpx.post(f"{url}/v1/uploads", json=body).json()["upload_id"]
            for n, data in enumerate(parts, start=1):
                assert httpx.put(f"{url}/v1/uploads/{sid}/parts/{n}", content=data).status_code == 200
            _killed_during(
                functools.partial(httpx.post, f"{url}/v1/uploads/{sid}/complete", json=manifest), proc, marker
            )
        sessions[key] = sid
        if step == "temp-written":
            assert not asyncio.run(store.exists(key))  # nothing visible before the commit
        else:
            info = asyncio.run(store.head(key))  # committed: the data with all of its metadata
            assert (info.content_type, dict(info.metadata)) == (
                "application/x-joined",
                {"owner": "me", "schema_version": "1"},
            )
    with _service(base) as (url, _, _):  # completing again after the restart finishes the job
        for key, sid in sessions.items():
            r = httpx.post(f"{url}/v1/uploads/{sid}/complete", json=manifest)
            assert r.status_code == 201, r.text
            got = httpx.get(f"{url}/v1/objects/{key}")
            assert got.content == b"".join(parts) and got.headers["content-type"] == "application/x-joined"
            assert got.headers["x-meta-owner"] == "me"


class _CrashBeforeDigest(StateStore):
    """State whose writes of part digests fail, as if the process died right before them
    (a fault no real store produces on demand; the parts themselves go to the real store)."""

    armed = False

    async def put_object(self, key: str, body: Any, **options: Any) -> Any:
        if self.armed and key.endswith(".sha256"):
            raise KeyboardInterrupt("killed before the digest was written")
        return await super().put_object(key, body, **options)


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_a_part_is_never_listed_with_another_bodys_digest(tmp_path: Path) -> None:
    """A part retried after a crash between writing the part and its digest must not be listed
    with the digest of the body it replaced (the same class as issue 19: data and its metadata
    committed separately)."""
    store = _store(tmp_path / "s", False)
    state = _CrashBeforeDigest(store)
    sessions = UploadSessions(store, state, ttl=600, max_part_size=1 << 20)
    session = await sessions.create("joined.bin", metadata={"owner": "me"})
    first, second = b"A" * 100, b"B" * 100
    await sessions.upload_part(session, 1, _chunks(first), expected={})
    state.armed = True
    with pytest.raises(KeyboardInterrupt):
        await sessions.upload_part(session, 1, _chunks(second), expected={})
    state.armed = False
    listed = {p.number: p.checksum for p in await sessions.list_parts(session)}
    assert listed.get(1) in (None, _sha(second)), "part 1 holds the second body but is listed with the first's digest"
    with pytest.raises(StorageError):
        await sessions.complete(session, [(1, _sha(first))])
    await sessions.upload_part(session, 1, _chunks(second), expected={})  # the client's retry
    info = await sessions.complete(session, [(1, _sha(second))])
    assert await store.get("joined.bin") == second and info.metadata == {"owner": "me", "schema_version": "1"}


async def test_a_secret_writer_killed_before_publishing_leaves_nothing_that_matters(tmp_path: Path) -> None:
    root = tmp_path / "s"
    (root / ".unistore").mkdir(parents=True)
    leftover = root / ".unistore" / ".unistore.tmp.0123456789abcdef"
    leftover.write_bytes(b"half a secr")  # a process killed between creating and linking its secret
    store = LocalBackend(base_path=str(root), fsync=False)
    assert store.signer  # the secret is made when first needed
    secret = (root / ".unistore" / "url-secret").read_bytes()
    assert len(secret) >= 32 and secret != b"half a secr"
    again = LocalBackend(base_path=str(root)).signer
    assert again.sign("k", expires_in=60, now=1e9) == store.signer.sign("k", expires_in=60, now=1e9)
    _age(root, 3600, [".unistore/.unistore.tmp.0123456789abcdef"])
    assert await store.sweep() == 1 and not leftover.exists()
    assert (root / ".unistore" / "url-secret").read_bytes() == secret


async def test_sweep_removes_a_sidecar_whose_inode_now_belongs_to_another_file(tmp_path: Path) -> None:
    from unistore.backends.local._meta import sidecar_path

    store = _store(tmp_path / "s", True)
    await OLD_META.write(store, "d/live")  # sidecar mode: its sidecar must survive every sweep
    await PLAIN.write(store, "d/plain")
    plain = store.root / "d" / "plain"
    ino = plain.stat().st_ino
    orphan = sidecar_path(str(plain), ino)  # left by a version that died; its inode reused since
    _write(orphan, json.dumps({"v": 3, "etag": "gone", "ino": ino, "size": 1, "mt": 1, "name": "plain"}))
    _age(store.root, 3600)
    assert await store.sweep() == 1
    assert os.path.basename(orphan) not in os.listdir(plain.parent)
    assert await _seen(store, "d/live") == OLD_META.seen("d/live")
    assert await _seen(store, "d/plain") == PLAIN.seen("d/plain")


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
