"""Folder listings (``iter_entries``) through Retry, RateLimit, Faults and Cache use the store's own
listing: one inner call for the whole listing, never one ``iter_objects`` per folder."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from unistore import CommonPrefix, MemoryBackend, ObjectInfo, StorageBackend
from unistore._errors import RateLimitedError, UnavailableError
from unistore.layers import Cache, Faults, RateLimit, Retry
from unistore.testing import no_sleep


class Counting(MemoryBackend):
    """A memory store counting its listing calls; ``fail_at`` raises a transient error once at each
    of those positions of an ``iter_entries`` listing (counted across calls)."""

    def __init__(self, fail_at: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.calls = {"entries": 0, "objects": 0}
        self.cursors: list[str | None] = []
        self._fail_at = set(fail_at)
        self._served = 0

    def iter_objects(self, *args: Any, **kw: Any) -> AsyncIterator[ObjectInfo]:
        self.calls["objects"] += 1
        return super().iter_objects(*args, **kw)

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        self.calls["entries"] += 1
        self.cursors.append(start_after)
        async for entry in super().iter_entries(prefix, delimiter=delimiter, start_after=start_after):
            if self._served in self._fail_at:
                self._fail_at.discard(self._served)
                raise UnavailableError("connection reset mid-listing", backend=self.name)
            self._served += 1
            yield entry


async def _fill(store: MemoryBackend, folders: int = 10) -> list[str]:
    for i in range(folders):
        for j in range(3):
            await store.put_object(f"d{i:02d}/k{j}", b"x")
        await store.put_object(f"f{i:02d}.txt", b"x")
    return sorted([f"d{i:02d}/" for i in range(folders)] + [f"f{i:02d}.txt" for i in range(folders)])


def _name(entry: ObjectInfo | CommonPrefix) -> str:
    return entry.prefix if isinstance(entry, CommonPrefix) else entry.key


LAYERS = {
    "retry": lambda s: Retry(s, sleep=no_sleep),
    "ratelimit": lambda s: RateLimit(s, max_concurrency=2, rate=1000.0),
    "faults": lambda s: Faults(s, latency=0.0, latency_rate=1.0, sleep=no_sleep),
    "cache": lambda s: Cache(s, max_bytes=1 << 20),
}


@pytest.mark.parametrize("layer", LAYERS)
async def test_a_folder_listing_is_one_inner_listing(layer: str) -> None:
    inner = Counting()
    expected = await _fill(inner)
    store: StorageBackend = LAYERS[layer](inner)
    assert [_name(e) async for e in store.iter_entries("")] == expected
    assert inner.calls == {"entries": 1, "objects": 0}
    assert [_name(e) async for e in store.iter_entries("", start_after="d04/")] == [n for n in expected if n > "d04/"]


@pytest.mark.parametrize("fail_at", [(0,), (3,), (4,), (7, 8), (19,)])
async def test_retry_resumes_a_folder_listing_from_its_last_entry(fail_at: tuple[int, ...]) -> None:
    inner = Counting(fail_at)
    expected = await _fill(inner)
    names = [_name(e) async for e in Retry(inner, sleep=no_sleep).iter_entries("")]
    assert names == expected  # nothing repeated, nothing skipped
    assert inner.calls == {"entries": 1 + len(fail_at), "objects": 0}
    # each retry resumes from the last entry yielded: an object's key or a folder's prefix
    assert inner.cursors[1:] == [expected[i - 1] if i else None for i in fail_at]


async def test_ratelimit_takes_one_token_per_listing_page() -> None:
    inner = MemoryBackend()
    for i in range(2500):
        await inner.put_object(f"d{i:04d}/k", b"x")
    now = [0.0]
    limited = RateLimit(inner, rate=1.0, burst=3, wait=False, clock=lambda: now[0])
    assert len([e async for e in limited.iter_entries("")]) == 2500  # pages of 1,000: three tokens
    with pytest.raises(RateLimitedError):
        [e async for e in limited.iter_entries("")]
    now[0] = 2.0
    tight = RateLimit(inner, rate=1.0, burst=2, wait=False, clock=lambda: 0.0)
    with pytest.raises(RateLimitedError):
        [e async for e in tight.iter_entries("")]


async def test_faults_inject_into_folder_listings() -> None:
    inner = Counting()
    await _fill(inner)
    faulty = Faults(inner, error_rate={"list": 1.0}, rate_limited_share=0.0, sleep=no_sleep)
    with pytest.raises(UnavailableError):
        [e async for e in faulty.iter_entries("")]
    assert inner.calls == {"entries": 0, "objects": 0} and faulty.counts["error"] == 1
    # under Retry the injected failure is retried, and the listing is still one inner call
    inner.calls["entries"] = 0
    healed = Retry(Faults(inner, error_rate={"list": 0.5}, seed=3, sleep=no_sleep), attempts=20, sleep=no_sleep)
    assert len([e async for e in healed.iter_entries("")]) == 20
    assert inner.calls == {"entries": 1, "objects": 0}
