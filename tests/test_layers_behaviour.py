"""Behaviour of Retry, RateLimit, Cache and Idempotency beyond the conformance suite."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from functools import partial

import pytest

from test_layers_chaos import CountingMemory
from unistore import MemoryBackend, NotFoundError, RateLimitedError, UnavailableError
from unistore.layers import (
    Cache,
    Faults,
    Idempotency,
    IdempotencyKeyReusedError,
    Layer,
    Observe,
    RateLimit,
    Retry,
    idempotency_key,
    stack,
)
from unistore.testing import no_sleep


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


async def gen(data: bytes) -> AsyncIterator[bytes]:
    yield data[:3]
    yield data[3:]


# --- stack ---------------------------------------------------------------------------------


def test_stack_is_outermost_first_and_reflects_the_inner_store() -> None:
    memory = MemoryBackend()
    store = stack(memory, partial(Observe, metrics=False), Cache, partial(Retry, attempts=2))
    assert isinstance(store, Layer)
    assert [type(x).__name__ for x in store.layers()] == ["Observe", "Cache", "Retry", "MemoryBackend"]
    assert store.capabilities == memory.capabilities and store.name == "MemoryBackend"


# --- Retry --------------------------------------------------------------------------------


async def test_retry_gives_up_after_attempts_and_honours_retry_after() -> None:
    clock = Clock()
    memory = CountingMemory()
    await memory.put_object("k", b"x")
    faults = Faults(memory, error_rate={"head": 1.0}, rate_limited_share=1.0, retry_after=0.7)
    retry = Retry(faults, attempts=4, base_delay=0.01, max_delay=0.02, sleep=clock.sleep, clock=clock, seed=1)
    with pytest.raises(RateLimitedError):
        await retry.head("k")
    assert faults.counts["error"] == 4
    assert clock.slept == [0.7, 0.7, 0.7]  # retry_after wins over the smaller jittered delay


async def test_retry_full_jitter_within_bounds_and_deadline() -> None:
    clock = Clock()
    faults = Faults(MemoryBackend(), error_rate={"ping": 1.0}, rate_limited_share=0.0)
    retry = Retry(faults, attempts=100, base_delay=1.0, max_delay=8.0, deadline=20.0, sleep=clock.sleep, clock=clock)
    with pytest.raises(UnavailableError):
        await retry.ping()
    caps = [min(8.0, 2.0**i) for i in range(len(clock.slept))]
    assert all(0 <= d <= cap for d, cap in zip(clock.slept, caps, strict=True))
    assert sum(clock.slept) <= 20.0 and len(clock.slept) < 99  # the deadline stopped it, not the attempts


async def test_retry_never_retries_client_errors() -> None:
    memory = CountingMemory()
    retry = Retry(memory, sleep=no_sleep)
    with pytest.raises(NotFoundError):
        await retry.get("missing")
    assert memory.calls["missing"] == 1


async def test_retry_does_not_replay_a_consumed_stream() -> None:
    memory = CountingMemory()
    faults = Faults(memory, error_rate={"put": 1.0}, after_effect_rate=1.0)
    retry = Retry(faults, sleep=no_sleep)
    with pytest.raises(UnavailableError, match="after the write took effect"):
        await retry.put_object("k", gen(b"streamed"))
    assert memory.effects["put"] == 1 and await memory.get("k") == b"streamed"


async def test_retry_rewinds_a_seekable_file() -> None:
    memory = CountingMemory()
    faults = Faults(memory, error_rate={"put": 0.5}, after_effect_rate=1.0, seed=3, rate_limited_share=0.0)
    retry = Retry(faults, attempts=10, sleep=no_sleep)
    f = io.BytesIO(b"prefix|file body")
    f.seek(7)
    await retry.put_object("k", f)
    assert await memory.get("k") == b"file body"
    assert faults.counts["after_effect"] >= 1 and memory.effects["put"] == faults.counts["after_effect"] + 1


async def test_retry_replays_an_unstarted_stream() -> None:
    memory = CountingMemory()
    faults = Faults(memory, error_rate={"put": 0.5}, seed=5)  # errors before the effect: body untouched
    retry = Retry(faults, attempts=10, sleep=no_sleep)
    for i in range(10):
        await retry.put_object(f"k{i}", gen(b"payload"))
    assert faults.counts["error"] > 0 and memory.effects["put"] == 10


# --- RateLimit ----------------------------------------------------------------------------


async def test_permit_is_held_for_a_streamed_download() -> None:
    memory = MemoryBackend(chunk_size=1024)
    await memory.put_object("big", b"x" * 10_000)
    limit = RateLimit(memory, max_concurrency=1, wait=False, busy_retry_after=0.25)
    dl = await limit.open("big")
    assert limit.in_flight == 1
    with pytest.raises(RateLimitedError) as exc:
        await limit.head("big")
    assert exc.value.retry_after == 0.25
    await dl.aclose()
    assert limit.in_flight == 0
    assert (await limit.head("big")).size == 10_000
    assert len(await (await limit.open("big")).read()) == 10_000  # exhaustion releases too
    assert limit.in_flight == 0


async def test_token_bucket_fails_fast_or_waits() -> None:
    clock = Clock()
    memory = MemoryBackend()
    await memory.put_object("k", b"x")
    fast = RateLimit(memory, rate=10.0, burst=2, wait=False, clock=clock)
    await fast.head("k")
    await fast.head("k")
    with pytest.raises(RateLimitedError) as exc:
        await fast.head("k")
    assert exc.value.retry_after == pytest.approx(0.1)
    clock.now += 0.1
    await fast.head("k")
    waiting = RateLimit(memory, rate=10.0, burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await waiting.head("k")
    assert clock.slept == [pytest.approx(0.1), pytest.approx(0.1)]


async def test_concurrency_limit_queues_when_waiting() -> None:
    memory = MemoryBackend()
    await memory.put_object("k", b"x")
    limit = RateLimit(memory, max_concurrency=2)
    peak = 0

    class Probe(Layer):
        async def head(self, key: str):  # type: ignore[no-untyped-def]
            nonlocal peak
            peak = max(peak, limit.in_flight)
            await asyncio.sleep(0.001)
            return await self.inner.head(key)

    limit.inner = Probe(memory)
    await asyncio.gather(*(limit.head("k") for _ in range(20)))
    assert peak == 2 and limit.in_flight == 0


# --- Cache --------------------------------------------------------------------------------


async def test_cache_hits_ranges_ttl_revalidation_and_invalidation() -> None:
    clock = Clock()
    memory = CountingMemory()
    await memory.put_object("k", b"0123456789")
    cache = Cache(memory, ttl=10.0, clock=clock)
    assert await cache.get("k") == b"0123456789"
    assert await cache.get("k") == b"0123456789"
    from unistore import ByteRange

    assert await (await cache.open("k", range=ByteRange(2, 5))).read() == b"234"
    assert memory.calls["k"] == 2 and cache.hits == 2  # one put, one fill
    clock.now += 11
    assert await cache.get("k") == b"0123456789"  # revalidated: 304, no body
    assert cache.revalidations == 1 and cache.hits == 3
    await memory.put_object("k", b"changed behind the cache")
    assert await cache.get("k") == b"0123456789"  # within the TTL: served as is
    clock.now += 11
    assert await cache.get("k") == b"changed behind the cache"
    await cache.put_object("k", b"through the layer")
    assert await cache.get("k") == b"through the layer"
    await cache.delete("k")
    with pytest.raises(NotFoundError):
        await cache.get("k")


async def test_cache_lru_bound_and_object_size_bound() -> None:
    memory = MemoryBackend()
    cache = Cache(memory, max_bytes=250, max_object_size=100)
    for i in range(4):
        await memory.put_object(f"k{i}", bytes([i]) * 100)
    await memory.put_object("huge", b"h" * 101)
    for i in range(3):
        await cache.get(f"k{i}")
    await cache.get("k0")  # k0 most recent: k1 is the next victim
    await cache.get("k3")
    await cache.get("huge")
    assert cache.cached_bytes == 200
    assert sorted([k async for k in cache.store.iter_keys()]) == ["k0", "k3"]


# --- Idempotency --------------------------------------------------------------------------


async def test_idempotent_write_takes_effect_once() -> None:
    memory = CountingMemory()
    store = Idempotency(memory)
    with idempotency_key("op-1"):
        first = await store.put_object("k", b"body")
        again = await store.put_object("k", gen(b"body"))  # same bytes as a stream: same digest
    assert again == first and memory.effects["put"] == 1
    with idempotency_key("op-1"), pytest.raises(IdempotencyKeyReusedError) as exc:
        await store.put_object("k", b"other body")
    assert isinstance(exc.value, ValueError) and exc.value.status == 422
    with idempotency_key("op-2"):
        results = await asyncio.gather(*(store.put_object("k2", b"same") for _ in range(10)))
    assert len({r.etag for r in results}) == 1 and memory.effects["put"] == 2
    await store.put_object("k", b"no key: always a write")
    assert memory.effects["put"] == 3


async def test_idempotency_records_expire_and_failed_writes_are_forgotten() -> None:
    clock = Clock()
    memory = CountingMemory()
    store = Idempotency(Faults(memory, error_rate={"put": 1.0}), ttl=60, clock=clock)
    with idempotency_key("op"), pytest.raises(UnavailableError):
        await store.put_object("k", b"v")
    store.inner = memory
    with idempotency_key("op"):
        await store.put_object("k", b"v")
        await store.put_object("k", b"v")
    assert memory.effects["put"] == 1
    clock.now += 61
    with idempotency_key("op"):
        await store.put_object("k", b"v")
    assert memory.effects["put"] == 2
