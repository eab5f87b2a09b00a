"""Replicate: the conformance suite over it, its behaviour, and real replicas going down and
coming back (local files -> SeaweedFS, SeaweedFS -> fake-gcs-server)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from unistore import (
    ConfigurationError,
    GCSBackend,
    InvalidKeyError,
    LocalBackend,
    MemoryBackend,
    ObjectInfo,
    StorageBackend,
    UnavailableError,
)
from unistore._types import Body
from unistore.layers import Faults, Layer, Replicate
from unistore.testing import BackendConformance, free_port
from unistore.testing._s3servers import S3Server, seaweedfs


class TestReplicateMemory(BackendConformance):
    list_count = 300

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return Replicate(served_memory, MemoryBackend(), outbox=MemoryBackend(), replay_interval=None, metrics=False)


class TestReplicateLocalToS3(BackendConformance):
    """Source = local files (served over HTTP), replica = S3 (SeaweedFS); after each test the
    replica holds what the source holds under the test's prefix."""

    list_count = 200

    @pytest.fixture
    async def backend(
        self, served_local: LocalBackend, seaweed: S3Server, prefix: str
    ) -> AsyncIterator[StorageBackend]:
        replica = seaweed.backend()
        rep = Replicate(served_local, replica, outbox=MemoryBackend(), replay_interval=None, metrics=False)
        yield rep
        try:  # whatever the test did, the replica ends as the source after one round
            assert await rep.replay() == 0
            await _same(served_local, replica, prefix)
        finally:
            await replica.aclose()


async def _same(source: StorageBackend, replica: StorageBackend, prefix: str = "") -> None:
    """The replica holds exactly the source's user objects, byte for byte, with their metadata."""
    keys = sorted([k async for k in source.iter_keys(prefix) if not k.startswith(".unistore")])
    assert sorted([k async for k in replica.iter_keys(prefix) if not k.startswith(".unistore")]) == keys
    for key in keys:
        a, b = await source.head(key), await replica.head(key)
        assert await source.get(key) == await replica.get(key), key
        assert (a.content_type, dict(a.metadata), a.cache_control) == (
            b.content_type,
            dict(b.metadata),
            b.cache_control,
        )


class _Recorder(Layer):
    """Remembers every body that landed on the inner store, per key; can be switched down,
    and runs ``race`` once just before its next write lands."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.landed: dict[str, list[bytes]] = {}
        self.down = False
        self.race: Callable[[], Awaitable[None]] | None = None

    async def put_object(self, key: str, body: Body, **kw: Any) -> ObjectInfo:
        if self.down:
            raise UnavailableError("replica down", key=key)
        race, self.race = self.race, None
        data = body if isinstance(body, bytes) else b"".join([c async for c in body])  # type: ignore[union-attr]
        if race is not None:
            await race()
        info = await self.inner.put_object(key, data, **kw)
        self.landed.setdefault(key, []).append(data)
        return info

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        if self.down:
            raise UnavailableError("replica down", key=key)
        return await self.inner.remove(key, if_match=if_match)


async def test_writes_reach_the_replica_only_when_replayed() -> None:
    source, replica = MemoryBackend(), MemoryBackend()
    rep = Replicate(source, replica, replay_interval=None, metrics=False)
    info = await rep.put_object("a.txt", b"one", metadata={"v": "1"}, cache_control="no-cache")
    assert info == await source.head("a.txt")
    await rep.copy("a.txt", "b.txt")
    await rep.replace_metadata("b.txt", {"v": "2"})
    assert not await replica.exists("a.txt")  # asynchronous: nothing copied yet
    assert sorted(e.key for e in await rep.outbox()) == ["a.txt", "b.txt"]
    assert all(e.pending_until == 0 and e.attempts == 0 for e in await rep.outbox())
    assert await rep.replay() == 0
    await _same(source, replica)
    assert await rep.replay() == 0  # nothing left: a second round does nothing
    assert await rep.delete("a.txt")
    assert await replica.exists("a.txt")
    assert await rep.replay() == 0
    assert not await replica.exists("a.txt")
    assert await rep.list_keys() == ["b.txt"]  # the outbox is never listed


async def test_replica_down_metrics_and_recovery() -> None:
    source, real = MemoryBackend(), MemoryBackend()
    replica = Faults(real, error_rate=1.0)
    registry = CollectorRegistry()
    rep = Replicate(source, replica, replay_interval=None, metrics=registry)
    label = {"backend": "MemoryBackend"}
    for i in range(3):
        await rep.put(f"k{i}", f"v{i}".encode())
    assert registry.get_sample_value("unistore_replicate_outbox_depth", label) == 3
    await asyncio.sleep(0.01)
    assert (registry.get_sample_value("unistore_replicate_replication_lag_seconds", label) or 0) > 0
    assert await rep.replay() == 3
    assert registry.get_sample_value("unistore_replicate_replay_failures_total", label) == 3
    assert {e.attempts for e in await rep.outbox()} == {1}
    assert "injected fault" in (await rep.outbox())[0].error
    assert not await real.exists("k0")

    replica.enabled = False  # back
    assert await rep.replay() == 0
    await _same(source, real)
    assert registry.get_sample_value("unistore_replicate_outbox_depth", label) == 0
    assert registry.get_sample_value("unistore_replicate_replication_lag_seconds", label) == 0


async def test_an_old_copy_never_overwrites_a_newer_one() -> None:
    """Two replayers (two processes sharing the outbox): the slow one read v1 from the source;
    before its copy lands, v2 is written and the fast one copies v2. The slow copy's
    conditional write fails, it starts over, and the replica never goes back to v1."""
    source, real = MemoryBackend(), MemoryBackend()
    replica = _Recorder(real)
    slow = Replicate(source, replica, replay_interval=None, metrics=False)
    fast = Replicate(source, real, replay_interval=None, metrics=False)
    await slow.put("doc", b"v1")

    async def newer_write_replicated_first() -> None:
        await fast.put("doc", b"v2")
        assert await fast.replay() == 0
        assert await real.get("doc") == b"v2"

    replica.race = newer_write_replicated_first
    assert await slow.replay() == 1  # its entry was rewritten by the newer write: left for the next round
    assert await real.get("doc") == b"v2" == await source.get("doc")
    assert replica.landed["doc"] == [b"v2"]  # the slow v1 copy never landed
    assert await slow.outbox() == []


async def test_replaying_an_old_entry_again_is_harmless() -> None:
    source, replica = MemoryBackend(), MemoryBackend()
    rep = Replicate(source, replica, replay_interval=None, metrics=False)
    await rep.put("k", b"v1")
    entries_v1 = await rep.outbox()
    await rep.put("k", b"v2")
    assert await rep.replay() == 0
    # at-least-once: the same entry delivered again (a replayer that crashed before removing it)
    await rep._record(entries_v1[0].key, None, previous=entries_v1[0])
    assert await rep.replay() == 0
    assert await replica.get("k") == b"v2"


async def test_a_crash_mid_write_is_copied_once_settled() -> None:
    """A process killed after recording the key but before finishing its write leaves a pending
    entry: replays leave it alone until ``settle`` has passed, then copy what the source holds."""
    source, replica = MemoryBackend(), MemoryBackend()
    crashed = Replicate(source, replica, replay_interval=None, settle=0.3, metrics=False)
    await crashed._record("k", None, pending_until=time.time() + crashed.settle, strict=True)
    await source.put("k", b"landed just before the crash")  # the write, then no "done" record
    restarted = Replicate(source, replica, replay_interval=None, settle=0.3, metrics=False)
    assert await restarted.replay() == 1  # still pending: maybe still under way
    assert not await replica.exists("k")
    await asyncio.sleep(0.35)
    assert await restarted.replay() == 0
    assert await replica.get("k") == b"landed just before the crash"


async def test_a_failed_source_write_is_raised_and_changes_nothing() -> None:
    source, replica = MemoryBackend(), MemoryBackend()
    await source.put("k", b"old")
    await replica.put("k", b"old")
    rep = Replicate(
        Faults(source, error_rate={"put": 1.0}), replica, outbox=MemoryBackend(), replay_interval=None, metrics=False
    )
    with pytest.raises(Exception, match="injected"):
        await rep.put("k", b"new")
    assert [e.pending_until for e in await rep.outbox()] == [0.0]  # done, so synced next round
    assert await rep.replay() == 0
    assert await replica.get("k") == b"old"


async def test_an_unwritable_outbox_fails_the_write_before_the_source() -> None:
    source, replica = MemoryBackend(), MemoryBackend()
    rep = Replicate(
        source, replica, outbox=Faults(MemoryBackend(), error_rate=1.0), replay_interval=None, metrics=False
    )
    with pytest.raises(Exception, match="injected"):
        await rep.put("k", b"v")
    assert not await source.exists("k")  # never written without a record to replicate it


async def test_background_replayer_copies_right_after_a_write() -> None:
    source, replica = MemoryBackend(), MemoryBackend()
    rep = Replicate(source, replica, replay_interval=30, metrics=False)  # woken by each write
    await rep.put("bg", b"data")
    for _ in range(200):
        if await replica.exists("bg"):
            break
        await asyncio.sleep(0.01)
    assert await replica.get("bg") == b"data"
    await rep.aclose()
    assert rep._task is not None and rep._task.done()


async def test_concurrent_writers_with_a_flapping_replica_converge() -> None:
    source, real = MemoryBackend(), MemoryBackend()
    replica = Faults(real, error_rate=0.5, seed=11)
    rep = Replicate(source, replica, replay_interval=None, metrics=False)
    rng = random.Random(5)

    async def writer(n: int) -> None:
        for i in range(30):
            key = f"hot/{rng.randrange(3)}"
            if rng.random() < 0.15:
                await rep.delete(key)
            else:
                await rep.put(key, f"{n}-{i}".encode())
            if rng.random() < 0.3:
                await rep.replay()
            if rng.random() < 0.2:
                replica.enabled = not replica.enabled

    await asyncio.gather(*(writer(n) for n in range(6)))
    assert replica.counts["error"] > 0
    replica.enabled = False
    assert await rep.replay() == 0
    await _same(source, real, "hot/")


async def test_an_invalid_key_is_refused_before_anything_is_recorded() -> None:
    """A key no store accepts never reaches the outbox (it would fail every replay forever)."""
    source, replica, box = MemoryBackend(), MemoryBackend(), MemoryBackend()
    rep = Replicate(source, replica, outbox=box, replay_interval=None, metrics=False)
    with pytest.raises(InvalidKeyError):
        await rep.put("../escape", b"x")
    with pytest.raises(InvalidKeyError):
        await rep.copy("a", "a/../../b")
    assert await rep.outbox() == [] and await box.list_keys(".unistore") == []


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigurationError):
        Replicate(MemoryBackend(), MemoryBackend(), outbox_prefix="outbox/", metrics=False)
    with pytest.raises(ConfigurationError):
        Replicate(MemoryBackend(), MemoryBackend(), replay_interval=0, metrics=False)
    with pytest.raises(ConfigurationError):
        Replicate(MemoryBackend(), MemoryBackend(), settle=0, metrics=False)


# --- real servers ------------------------------------------------------------------------------


async def test_local_to_seaweedfs_with_the_replica_stopped_and_restarted(tmp_path: Path) -> None:
    """SeaweedFS is stopped while the application writes, then started again on the same data:
    no write fails, and the outbox (in the local source) drains into the restarted server."""
    source = LocalBackend(base_path=str(tmp_path / "source"), fsync=False)
    data = tmp_path / "weed"
    with seaweedfs(data) as server:
        server.create_bucket("replica")
        replica = server.backend("replica")
        rep = Replicate(source, replica, replay_interval=None, metrics=False)
        await rep.put("before.txt", b"replicated live", metadata={"n": "1"})
        await rep.put("twice.txt", b"v1")
        assert await rep.replay() == 0
        assert await replica.get("twice.txt") == b"v1"
    # the server is down now
    await rep.put("during/ü.txt", b"", content_type="text/plain")
    await rep.put("twice.txt", b"v2")
    await rep.delete("before.txt")
    assert await rep.replay() == 3
    assert sorted((e.key, e.attempts) for e in await rep.outbox()) == [
        ("before.txt", 1),
        ("during/ü.txt", 1),
        ("twice.txt", 1),
    ]
    assert rep.lag() > 0
    await replica.aclose()
    with seaweedfs(data) as server:  # back, on new ports, with the same data
        replica = server.backend("replica")
        try:
            assert await replica.get("twice.txt") == b"v1"  # the outage kept it behind
            restarted = Replicate(
                LocalBackend(base_path=str(tmp_path / "source"), fsync=False), replica, replay_interval=None
            )
            assert await restarted.replay() == 0
            await _same(source, replica)
            assert await replica.get("twice.txt") == b"v2"
            assert restarted.lag() == 0
        finally:
            await replica.aclose()


async def test_s3_to_gcs_with_the_replica_unreachable(seaweed: S3Server, fake_gcs: dict[str, str]) -> None:
    """S3 (SeaweedFS, which also holds the outbox) -> GCS (fake-gcs-server). While GCS is
    unreachable the writes succeed and queue; a restarted replicator with GCS back drains them,
    in the background, and the replica ends identical."""
    prefix = f"rep-{uuid.uuid4().hex[:8]}/"
    source = seaweed.backend()
    nowhere = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=f"http://127.0.0.1:{free_port()}")
    gcs = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"])
    outbox_prefix = f".unistore/replicate-{prefix}"
    try:
        down = Replicate(source, nowhere, outbox_prefix=outbox_prefix, replay_interval=None, metrics=False)
        for i in range(20):
            await down.put(f"{prefix}{i:02}.json", f'{{"n": {i}}}'.encode(), content_type="application/json")
        await down.put(f"{prefix}00.json", b'{"n": "newer"}', content_type="application/json")
        await down.delete(f"{prefix}19.json")
        assert await down.replay() == 20
        assert [k async for k in gcs.iter_keys(prefix)] == []

        back = Replicate(source, gcs, outbox_prefix=outbox_prefix, replay_interval=0.05, metrics=False)
        back.start()
        for _ in range(600):  # polls the outbox store: nothing to wait on in this process
            if not await back.outbox():
                break
            await asyncio.sleep(0.05)
        assert await back.outbox() == []
        await _same(source, gcs, prefix)
        assert await gcs.get(f"{prefix}00.json") == b'{"n": "newer"}'
        assert not await gcs.exists(f"{prefix}19.json")
        await back.aclose()
    finally:
        for store in (seaweed.backend(), GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"])):
            async for key in store.iter_keys(prefix):
                await store.remove(key)
            await store.aclose()
        await nowhere.aclose()


def test_sigkill_mid_write_loses_nothing(tmp_path: Path) -> None:
    """A writer killed (SIGKILL) at random points, many times: every write that reached the
    source reaches the replica after the next replay, since the key is recorded before the write."""
    import os
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    source, replica = tmp_path / "source", tmp_path / "replica"
    rng = random.Random(4)
    for i in range(30):
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("_replicate_worker.py")), str(source), str(replica), str(i)],
            env=env,
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stdout.readline() == b"writing\n"
        time.sleep(rng.uniform(0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()

    async def check() -> None:
        src = LocalBackend(base_path=str(source), fsync=False)
        rep = Replicate(src, LocalBackend(base_path=str(replica), fsync=False), replay_interval=None, metrics=False)
        await asyncio.sleep(0.25)  # the last kill's pending entry has settled
        assert await rep.replay() == 0
        assert len(await src.list_keys("k/")) > 5
        await _same(src, rep.replica, "k/")

    asyncio.run(check())


async def test_the_background_replayer_does_not_inherit_the_first_writers_context() -> None:
    """The replayer is started by the first write; it must not run every later copy with that
    write's context variables (its storage class, idempotency key, request id...)."""
    import contextvars

    tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag", default="none")
    seen: list[str] = []

    class Spy(Layer):
        async def put_object(self, key: str, body: Body, **kw: Any) -> ObjectInfo:
            seen.append(tag.get())
            return await self.inner.put_object(key, body, **kw)

    source, replica = MemoryBackend(), MemoryBackend()
    rep = Replicate(source, Spy(replica), replay_interval=30, metrics=False)
    token = tag.set("first request")
    await rep.put("a", b"1")  # starts the replayer
    tag.reset(token)
    for _ in range(200):
        if await replica.exists("a"):
            break
        await asyncio.sleep(0.01)
    await rep.aclose()
    assert seen == ["none"]
