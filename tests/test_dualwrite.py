"""DualWrite: the conformance suite over (memory, memory) and (local, S3), and its own behaviour."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from unistore import LocalBackend, MemoryBackend, ObjectInfo, StorageBackend, UnavailableError
from unistore._types import Body
from unistore.layers import DualWrite, Faults, Layer
from unistore.testing import BackendConformance
from unistore.testing._s3servers import S3Server, seaweedfs


class TestDualWriteMemory(BackendConformance):
    list_count = 500

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return DualWrite(served_memory, MemoryBackend(), outbox=MemoryBackend(), metrics=False)


class TestDualWriteLocalAndS3(BackendConformance):
    """Primary = local files, secondary = S3 (SeaweedFS)."""

    list_count = 300

    @pytest.fixture
    async def backend(self, served_local: LocalBackend, seaweed: S3Server) -> AsyncIterator[StorageBackend]:
        secondary = seaweed.backend()
        yield DualWrite(served_local, secondary, outbox=MemoryBackend(), metrics=False)
        await secondary.aclose()


# --- behaviour ---------------------------------------------------------------------------------


async def _same(primary: StorageBackend, secondary: StorageBackend, prefix: str = "") -> None:
    """The secondary holds exactly the primary's user objects, byte for byte, with their metadata."""
    keys = [k async for k in primary.iter_keys(prefix) if not k.startswith(".unistore")]
    assert [k async for k in secondary.iter_keys(prefix)] == keys
    for key in keys:
        a, b = await primary.head(key), await secondary.head(key)
        assert await primary.get(key) == await secondary.get(key), key
        assert (a.content_type, dict(a.metadata), a.cache_control) == (
            b.content_type,
            dict(b.metadata),
            b.cache_control,
        )


async def test_writes_and_deletes_reach_both() -> None:
    primary, secondary = MemoryBackend(), MemoryBackend()
    dw = DualWrite(primary, secondary, metrics=False)
    info = await dw.put_object("a.txt", b"one", metadata={"v": "1"}, cache_control="no-cache")
    assert info == await primary.head("a.txt")  # the primary's result is returned

    async def stream() -> AsyncIterator[bytes]:
        yield b"str"
        yield b"eamed"

    await dw.put_object("b.bin", stream(), content_type="application/x-test")
    await dw.copy("a.txt", "c.txt")
    await dw.replace_metadata("c.txt", {"v": "2"})
    await _same(primary, secondary)
    assert await secondary.get("b.bin") == b"streamed"
    assert await dw.remove("a.txt")
    assert not await secondary.exists("a.txt")
    assert await dw.outbox() == []


async def test_secondary_failure_is_queued_and_replayed() -> None:
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    secondary = Faults(real_secondary, error_rate=1.0)
    registry = CollectorRegistry()
    dw = DualWrite(primary, secondary, metrics=registry)
    await dw.put("k1", b"v1")  # the caller never sees the secondary's failures
    await dw.put("k2", b"v2")
    await real_secondary.put("gone", b"x")
    await primary.put("gone", b"x")
    assert await dw.delete("gone")
    entries = await dw.outbox()
    assert sorted(e.key for e in entries) == ["gone", "k1", "k2"]
    assert all(e.attempts == 1 and "injected fault" in e.error for e in entries)
    label = {"backend": "MemoryBackend"}
    assert registry.get_sample_value("unistore_dualwrite_outbox_depth", label) == 3
    assert registry.get_sample_value("unistore_dualwrite_replay_failures_total", label) == 3
    assert (registry.get_sample_value("unistore_dualwrite_replication_lag_seconds", label) or 0) > 0
    assert await dw.list_keys() == ["k1", "k2"]  # the outbox is never listed

    assert await dw.replay() == 3  # still down: entries stay, attempts counted
    assert {e.attempts for e in await dw.outbox()} == {2}

    secondary.enabled = False
    assert await dw.replay() == 0
    await _same(primary, real_secondary)
    assert await dw.outbox() == []
    assert registry.get_sample_value("unistore_dualwrite_outbox_depth", label) == 0
    assert registry.get_sample_value("unistore_dualwrite_replication_lag_seconds", label) == 0


async def test_outbox_survives_a_restart() -> None:
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    first = DualWrite(primary, Faults(real_secondary, error_rate=1.0), metrics=False)
    for i in range(5):
        await first.put(f"r/{i}", f"v{i}".encode())
    # a new process: a new DualWrite over the same primary (and so the same outbox)
    second = DualWrite(primary, real_secondary, metrics=False)
    assert len(await second.outbox()) == 5
    assert await second.replay() == 0
    await _same(primary, real_secondary)


async def test_separate_outbox_store() -> None:
    primary, real_secondary, box = MemoryBackend(), MemoryBackend(), MemoryBackend()
    dw = DualWrite(primary, Faults(real_secondary, error_rate=1.0), outbox=box, metrics=False)
    await dw.put("x", b"1")
    assert [k async for k in primary.iter_keys()] == ["x"]
    assert len([k async for k in box.iter_keys(".unistore")]) == 1
    assert await DualWrite(primary, real_secondary, outbox=box, metrics=False).replay() == 0
    assert await real_secondary.get("x") == b"1"


async def test_old_outbox_entry_never_overwrites_a_newer_secondary_object() -> None:
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    secondary = Faults(real_secondary, error_rate=1.0)
    dw = DualWrite(primary, secondary, metrics=False)
    await dw.put("doc", b"old")  # secondary down: queued
    secondary.enabled = False
    await dw.put("doc", b"new")  # secondary back: written directly
    assert await real_secondary.get("doc") == b"new"
    assert len(await dw.outbox()) == 1
    assert await dw.replay() == 0  # replays the primary's current object, never the queued one
    assert await real_secondary.get("doc") == b"new"
    assert await dw.outbox() == []


async def test_a_stale_copy_loses_its_conditional_write() -> None:
    """A sync that read an old primary version while a newer one reached the secondary fails its
    conditional write and starts over: the newer object is never replaced by the older."""
    primary, secondary = MemoryBackend(), MemoryBackend()
    dw = DualWrite(primary, secondary, metrics=False)
    await dw.put("k", b"v1")
    writes: list[bytes] = []
    real_put = secondary.put_object

    async def racing_put(key: str, body: object, **kw: object) -> object:
        if not writes:  # the first sync round: a newer version lands on both stores meanwhile
            writes.append(b"raced")
            await primary.put("k", b"v3")
            await real_put("k", b"v3")
        return await real_put(key, body, **kw)  # type: ignore[arg-type]

    await primary.put("k", b"v2")
    secondary.put_object = racing_put  # type: ignore[method-assign]
    await dw.sync("k")
    assert await secondary.get("k") == b"v3" == await primary.get("k")


async def test_concurrent_writes_with_a_flapping_secondary_converge() -> None:
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    secondary = Faults(real_secondary, error_rate=0.5, seed=7)
    dw = DualWrite(primary, secondary, metrics=False)
    rng = random.Random(3)

    async def writer(n: int) -> None:
        for i in range(30):
            key = f"hot/{rng.randrange(3)}"
            if rng.random() < 0.15:
                await dw.delete(key)
            else:
                await dw.put(key, f"{n}-{i}".encode())
            if rng.random() < 0.2:
                secondary.enabled = not secondary.enabled
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(n) for n in range(8)))
    assert secondary.counts["error"] > 0
    secondary.enabled = False
    assert await dw.replay() == 0
    await _same(primary, real_secondary, "hot/")


async def test_background_replayer_drains_the_outbox() -> None:
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    secondary = Faults(real_secondary, error_rate=1.0)
    dw = DualWrite(primary, secondary, replay_interval=0.02, metrics=False)
    await dw.put("bg", b"data")
    secondary.enabled = False
    for _ in range(200):
        if await real_secondary.exists("bg") and not await dw.outbox():
            break
        await asyncio.sleep(0.02)
    assert await real_secondary.get("bg") == b"data"
    await dw.aclose()
    assert dw._task is not None and dw._task.done()


async def test_primary_failure_fails_the_caller_and_skips_the_secondary() -> None:
    primary, secondary = MemoryBackend(), MemoryBackend()
    dw = DualWrite(Faults(primary, error_rate={"put": 1.0}), secondary, metrics=False)
    from unistore import UnavailableError
    from unistore._errors import RateLimitedError

    with pytest.raises((UnavailableError, RateLimitedError)):
        await dw.put("p", b"x")
    assert not await secondary.exists("p")


def test_bad_options_are_refused() -> None:
    from unistore import ConfigurationError

    with pytest.raises(ConfigurationError):
        DualWrite(MemoryBackend(), MemoryBackend(), outbox_prefix="outbox/", metrics=False)
    with pytest.raises(ConfigurationError):
        DualWrite(MemoryBackend(), MemoryBackend(), replay_interval=0, metrics=False)


async def test_local_primary_s3_secondary_outage_and_restart(tmp_path: Path, seaweed: S3Server) -> None:
    """Real stores: the outbox lives in the local primary's files; a new instance (a restarted
    process) drains it into SeaweedFS once it is reachable again."""
    prefix = f"dw-{uuid.uuid4().hex[:8]}/"
    primary = LocalBackend(base_path=str(tmp_path / "primary"), fsync=False)
    real_secondary = seaweed.backend()
    try:
        down = Faults(real_secondary, error_rate=1.0)
        first = DualWrite(primary, down, metrics=False)
        await first.put(prefix + "a", b"first", metadata={"n": "1"})
        await first.put(prefix + "a", b"second", metadata={"n": "2"})  # written twice while down
        await first.put(prefix + "b/ü.txt", b"", content_type="text/plain")
        await real_secondary.put(prefix + "stale", b"x")
        await primary.put(prefix + "stale", b"x")
        await first.delete(prefix + "stale")
        assert len(await first.outbox()) == 3

        restarted = DualWrite(LocalBackend(base_path=str(tmp_path / "primary"), fsync=False), real_secondary)
        assert await restarted.replay() == 0
        await _same(primary, real_secondary, prefix)
        assert await real_secondary.get(prefix + "a") == b"second"
        assert await restarted.list_keys(prefix) == [prefix + "a", prefix + "b/ü.txt"]
    finally:
        await real_secondary.aclose()


class _RacingSecondary(Layer):
    """Runs ``race`` once, just before its first write lands (a concurrent writer's turn)."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.race: Callable[[], Awaitable[None]] | None = None
        self.down = False

    async def put_object(self, key: str, body: Body, **kw: Any) -> ObjectInfo:
        if self.down:
            raise UnavailableError("secondary down", key=key)
        race, self.race = self.race, None
        if race is not None:
            await race()
        return await self.inner.put_object(key, body, **kw)


async def test_an_entry_rewritten_during_replay_is_kept() -> None:
    """A write whose secondary copy fails while a replay of the same key is under way rewrites
    the key's entry; the replay then leaves the entry for the next round instead of removing it."""
    primary, real_secondary = MemoryBackend(), MemoryBackend()
    secondary = _RacingSecondary(real_secondary)
    dw = DualWrite(primary, secondary, metrics=False)
    secondary.down = True
    await dw.put("k", b"v1")
    secondary.down = False

    async def newer_write_fails_on_secondary() -> None:
        secondary.down = True
        await dw.put("k", b"v2")
        secondary.down = False

    secondary.race = newer_write_fails_on_secondary
    assert await dw.replay() == 1  # the replay copied v1; the entry (now for v2) stays
    assert [e.attempts for e in await dw.outbox()] == [2]
    assert await dw.replay() == 0
    assert await real_secondary.get("k") == b"v2" == await primary.get("k")


async def test_secondary_server_stopped_and_restarted(tmp_path: Path) -> None:
    """A real outage: SeaweedFS is stopped while the application writes, then started again on
    the same data. No caller fails, and the outbox drains into the restarted server."""
    primary = LocalBackend(base_path=str(tmp_path / "primary"), fsync=False)
    data = tmp_path / "weed"
    with seaweedfs(data) as server:
        server.create_bucket("dual-write")
        secondary = server.backend("dual-write")
        dw = DualWrite(primary, secondary, metrics=False)
        await dw.put("before.txt", b"replicated live")
        await dw.put("twice.txt", b"v1")
        assert await secondary.get("twice.txt") == b"v1"
    # the server is down now
    started = time.monotonic()
    await dw.put("during.txt", b"queued")
    await dw.put("twice.txt", b"v2")  # newer than what the secondary holds
    await dw.delete("before.txt")
    assert time.monotonic() - started < 30
    assert sorted(e.key for e in await dw.outbox()) == ["before.txt", "during.txt", "twice.txt"]
    await secondary.aclose()
    with seaweedfs(data) as server:  # back, on new ports, with the same data
        secondary = server.backend("dual-write")
        try:
            assert await secondary.get("twice.txt") == b"v1"  # the outage kept it behind
            restarted = DualWrite(primary, secondary, metrics=False)
            assert await restarted.replay() == 0
            await _same(primary, secondary)
            assert await secondary.get("twice.txt") == b"v2"
        finally:
            await secondary.aclose()


async def test_upload_urls_are_watched_until_they_expire(seaweed: S3Server) -> None:
    """An upload through a signed URL bypasses the layer: the key is watched by every replay
    until the URL expires, so the upload reaches the secondary whenever it happens."""
    primary, secondary, box = seaweed.backend(), MemoryBackend(), MemoryBackend()
    dw = DualWrite(primary, secondary, outbox=box, metrics=False)
    key = f"upload-{uuid.uuid4().hex[:8]}.bin"
    try:
        url = await dw.sign_url(key, method="PUT", expires_in=60)
        assert await dw.replay() == 0  # nothing uploaded yet: nothing to copy, nothing failed
        async with httpx.AsyncClient() as client:
            response = await client.put(url, content=b"uploaded directly")
            assert response.status_code < 300, response.text
        await dw.replay()
        assert await secondary.get(key) == b"uploaded directly"
        [entry] = await dw.outbox()  # still watched: the URL can be used again until it expires
        assert entry.key == key and entry.attempts == 0 and entry.watch_until > time.time() + 60
    finally:
        await primary.remove(key)
        await primary.aclose()
