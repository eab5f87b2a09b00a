"""Chaos: 10,000 mixed operations through Retry over Faults at a 20% fault rate."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from unistore import (
    ByteRange,
    Download,
    IfMatch,
    MemoryBackend,
    NotFoundError,
    PreconditionFailedError,
    TransientError,
)
from unistore.layers import Faults, Retry, RetryEvent
from unistore.testing import chaos_stack, no_sleep


class CountingMemory(MemoryBackend):
    """A real memory store that counts effects (committed writes and deletes) and calls per key."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.effects: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    async def open(self, key: str, **kw: Any) -> Download:
        self.calls[key] += 1
        return await super().open(key, **kw)

    async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
        self.calls[key] += 1
        info = await super().put_object(key, body, **kw)
        self.effects["put"] += 1
        return info

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        self.calls[key] += 1
        existed = await super().remove(key, if_match=if_match)
        self.effects["remove"] += existed
        return existed


def payload(version: int, size: int) -> bytes:
    """Self-describing content: any read can be checked against the version it claims."""
    seed = hashlib.sha256(str(version).encode()).digest()
    head = f"{version:010d}:".encode()
    body = (seed * (size // 32 + 1))[: max(0, size - len(head))]
    return head + body


def check(data: bytes) -> int:
    version = int(data[:10])
    assert data == payload(version, len(data)), "corrupted or spliced read"
    return version


async def chunked(data: bytes, n: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), n):
        yield data[i : i + n]


async def test_ten_thousand_operations_at_twenty_percent_faults() -> None:
    memory = CountingMemory(chunk_size=16 * 1024)
    faults = Faults(memory, seed=20, error_rate=0.2, cut_rate=0.2, sleep=no_sleep)
    retry = Retry(faults, attempts=20, sleep=no_sleep, seed=20)
    retries: list[RetryEvent] = []
    retry.add_listener(retries.append)
    user: Counter[str] = Counter()
    versions = iter(range(1, 10**9))
    sizes = [0, 40, 3_000, 70_000, 150_000]

    async def worker(w: int, ops: int) -> None:
        rng = random.Random(w)
        keys = [f"w{w}/k{i}" for i in range(4)]
        state: dict[str, int | None] = dict.fromkeys(keys)
        etags: dict[str, str] = {}
        for _ in range(ops):
            key = rng.choice(keys)
            op = rng.choices(
                ["put", "stream", "get", "range", "head", "delete", "missing", "stale", "list"],
                [18, 8, 25, 10, 10, 8, 7, 7, 7],
            )[0]
            current = state[key]
            if op in ("put", "stream"):
                version = next(versions)
                data = payload(version, rng.choice(sizes))
                body: Any = data if op == "put" else chunked(data, 8_192)
                info = await retry.put_object(key, body)
                assert info.size == len(data)
                state[key], etags[key] = version, info.etag
                user["put"] += 1
            elif op in ("get", "range", "head"):
                if current is None:
                    with pytest.raises(NotFoundError):
                        await retry.head(key)
                    continue
                if op == "head":
                    assert (await retry.head(key)).etag == etags[key]
                elif op == "get":
                    assert check(await retry.get(key)) == current
                else:
                    full = await retry.get(key)
                    assert check(full) == current
                    start = rng.randrange(len(full)) if full else 0
                    if full:
                        async with await retry.open(key, range=ByteRange(start)) as dl:
                            assert b"".join([c async for c in dl]) == full[start:]
                user["read"] += 1
            elif op == "delete":
                existed = await retry.delete(key)
                assert existed == (current is not None)
                user["remove"] += existed
                state[key] = None
            elif op == "missing":
                before = memory.calls[f"w{w}/missing"]
                with pytest.raises(NotFoundError):
                    await retry.get(f"w{w}/missing")
                assert memory.calls[f"w{w}/missing"] == before + 1, "a 404 was retried"
            elif op == "stale":
                if current is None:
                    continue
                before = memory.calls[key]
                with pytest.raises(PreconditionFailedError):
                    await retry.put_object(key, b"never", mode=IfMatch("stale-etag"))
                assert memory.calls[key] == before + 1, "a 412 was retried"
            else:
                listed = await retry.list_keys(f"w{w}/")
                assert listed == sorted(k for k in keys if state[k] is not None)

    await asyncio.gather(*(worker(w, 625) for w in range(16)))  # 10,000 operations
    assert memory.effects["put"] == user["put"], "a write took effect twice"
    assert memory.effects["remove"] == user["remove"]
    assert faults.counts["error"] > 2_000 and faults.counts["cut"] > 300, faults.counts
    assert len(retries) >= faults.counts["error"] + faults.counts["cut"] - 10


async def test_resume_never_splices_two_versions() -> None:
    memory = MemoryBackend(chunk_size=1024)
    v1, v2 = payload(1, 100_000), payload(2, 100_000)
    await memory.put_object("k", v1)

    async def overwrite_then_resume(_: float) -> None:
        await memory.put_object("k", v2)

    retry = Retry(Faults(memory, cut_rate=1.0, cut_after=30_000), sleep=overwrite_then_resume)
    got = bytearray()

    async def read() -> None:
        async with await retry.open("k") as dl:
            async for chunk in dl:
                got.extend(chunk)

    with pytest.raises(PreconditionFailedError, match="changed during the read"):
        await read()
    assert bytes(got) == v1[:30_000]


class ShrunkOnResume(MemoryBackend):
    """Overwrites its object with a shorter version just before the first resumed read reaches it,
    and counts the resumed (``if_match``) reads that reach it."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.resumes = 0

    async def open(self, key: str, **kw: Any) -> Download:
        if kw.get("if_match") is not None:
            if self.resumes == 0:
                await self.put_object(key, payload(2, 100_000))
            self.resumes += 1
        return await super().open(key, **kw)


@pytest.mark.parametrize("error_rate", [0.0, 0.2])
async def test_resume_of_a_changed_object_ends_the_read_at_once(error_rate: float) -> None:
    """The chaos stack cuts every stream; the object changes before the resume: one request, one clear error."""
    memory = ShrunkOnResume(chunk_size=4096)
    v1 = payload(1, 200_000)
    await memory.put_object("k", v1)
    stack = chaos_stack(memory, seed=3, error_rate=error_rate, cut_rate=1.0)
    got = bytearray()

    async def read() -> None:
        async with await stack.open("k") as dl:
            async for chunk in dl:
                got.extend(chunk)

    with pytest.raises(PreconditionFailedError, match="changed during the read") as exc:
        await read()
    assert not isinstance(exc.value, TransientError)
    assert memory.resumes == 1, "the doomed if_match request was resent"
    assert v1.startswith(bytes(got)) and len(got) < len(v1)


async def test_resume_continues_from_the_break() -> None:
    memory = MemoryBackend(chunk_size=4096)
    data = payload(7, 300_000)
    await memory.put_object("k", data)
    faults = Faults(memory, cut_rate=1.0, cut_after=25_000)
    retry = Retry(faults, attempts=3, sleep=no_sleep)  # 12 breaks: the budget renews after progress
    assert await retry.get("k") == data
    assert faults.counts["cut"] == 12
    async with await retry.open("k", range=ByteRange(1000, 200_000)) as dl:
        assert b"".join([c async for c in dl]) == data[1000:200_000]
