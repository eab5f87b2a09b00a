"""The conformance suite over each layer on memory, and over the full chaos stack on memory and local."""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from unistore import LocalBackend, MemoryBackend, ObjectInfo, StorageBackend
from unistore._types import Body
from unistore.layers import Cache, Faults, Idempotency, Observe, RateLimit, Retry, idempotency_key
from unistore.testing import BackendConformance, chaos_stack, no_sleep
from unistore.testing._s3servers import S3Server


class LayerConformance(BackendConformance):
    """The suite over a layer: the backends' own suites already list 2,500 keys; 500 keep this one fast."""

    list_count = 500


class TestRetry(LayerConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return Retry(served_memory, sleep=no_sleep)


class TestRateLimit(LayerConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return RateLimit(served_memory, max_concurrency=8, rate=1_000_000.0, burst=10_000)


class TestFaultsLatencyOnly(LayerConformance):
    """Faults with only (zero-length) latency injected is transparent."""

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return Faults(served_memory, latency=0.0, latency_rate=0.5, sleep=no_sleep)


class TestObserve(LayerConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        logger = logging.getLogger(f"unistore.test.{uuid.uuid4().hex}")
        logger.setLevel(logging.DEBUG)
        logger.propagate = False
        logger.addHandler(logging.NullHandler())
        return Observe(served_memory, metrics=CollectorRegistry(), tracer=True, logger=logger, hot_threshold=5)


class TestCache(LayerConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return Cache(served_memory, max_bytes=256 * 1024, max_object_size=64 * 1024)


class TestCacheAlwaysRevalidating(LayerConformance):
    """ttl=0: every read of a cached object revalidates with if_none_match."""

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return Cache(served_memory, ttl=0.0)


class _KeyedIdempotency(Idempotency):
    """Every write carries a fresh idempotency key, so each goes through hashing, spooling and records."""

    async def put_object(self, key: str, body: Body, **kw: Any) -> ObjectInfo:  # type: ignore[override]
        with idempotency_key(uuid.uuid4().hex):
            return await super().put_object(key, body, **kw)


class TestIdempotency(LayerConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return _KeyedIdempotency(served_memory)


class TestChaosStackMemory(LayerConformance):
    """Observe → RateLimit → Cache → Retry → Faults(20% errors, 20% cut streams) → memory."""

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend, request: pytest.FixtureRequest) -> StorageBackend:
        return chaos_stack(served_memory, seed=_seed(request))


class TestChaosStackLocal(LayerConformance):
    """The same stack on the local file system."""

    @pytest.fixture
    def backend(self, served_local: LocalBackend, request: pytest.FixtureRequest) -> StorageBackend:
        return chaos_stack(served_local, seed=_seed(request))


_WALK_ORDER = pytest.mark.xfail(strict=True, reason="SeaweedFS lists in directory-walk order (see test_s3_conformance)")


class TestChaosStackS3(LayerConformance):
    """The same stack on S3 (SeaweedFS, real SigV4 and conditional requests)."""

    @pytest.fixture
    async def backend(self, seaweed: S3Server, request: pytest.FixtureRequest) -> AsyncIterator[StorageBackend]:
        store = seaweed.backend()
        yield chaos_stack(store, seed=_seed(request))
        await store.aclose()

    @_WALK_ORDER
    async def test_list_order_and_prefix_boundaries(self, backend: StorageBackend, prefix: str) -> None:
        await super().test_list_order_and_prefix_boundaries(backend, prefix)

    @_WALK_ORDER
    async def test_list_start_after(self, backend: StorageBackend, prefix: str) -> None:
        await super().test_list_start_after(backend, prefix)

    @_WALK_ORDER
    async def test_tricky_keys_round_trip(self, backend: StorageBackend, prefix: str) -> None:
        await super().test_tricky_keys_round_trip(backend, prefix)

    @_WALK_ORDER
    async def test_delimited_listing_is_one_level_with_cursors(self, backend: StorageBackend, prefix: str) -> None:
        await super().test_delimited_listing_is_one_level_with_cursors(backend, prefix)


def _seed(request: pytest.FixtureRequest) -> int:
    """A fault seed fixed per test, so a failing run replays exactly."""
    return zlib.crc32(request.node.nodeid.encode())
