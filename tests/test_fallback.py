"""ReadFallback: the conformance suite over (memory, memory) and (local, S3), and its own behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from unistore import (
    CommonPrefix,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    ObjectInfo,
    PermissionDeniedError,
    StorageBackend,
)
from unistore._types import ByteRange, Download
from unistore.layers import ReadFallback
from unistore.testing import BackendConformance
from unistore.testing._s3servers import S3Server


class TestFallbackMemory(BackendConformance):
    list_count = 500

    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> StorageBackend:
        return ReadFallback(served_memory, MemoryBackend(), promote=True)


class TestFallbackLocalOverS3(BackendConformance):
    """New = local files, old = S3 (SeaweedFS); writes land on local, so listings are in key order."""

    list_count = 300

    @pytest.fixture
    async def backend(self, served_local: LocalBackend, seaweed: S3Server) -> AsyncIterator[StorageBackend]:
        old = seaweed.backend()
        yield ReadFallback(served_local, old)
        await old.aclose()


# --- behaviour ---------------------------------------------------------------------------------


async def _pair(promote: bool = False) -> tuple[MemoryBackend, MemoryBackend, ReadFallback]:
    new, old = MemoryBackend(), MemoryBackend()
    return new, old, ReadFallback(new, old, promote=promote)


async def test_reads_fall_back_to_old_and_new_wins() -> None:
    new, old, store = await _pair()
    await old.put_object("a.txt", b"old-a", metadata={"v": "1"}, cache_control="max-age=60", content_type="text/plain")
    await old.put_object("b", b"old-b")
    await new.put_object("b", b"new-b")
    assert await store.get("a.txt") == b"old-a"
    assert await store.get("b") == b"new-b"
    assert (await store.head("a.txt")).cache_control == "max-age=60"
    assert (await store.get_metadata("a.txt"))["v"] == "1"
    assert await store.exists("a.txt") and not await store.exists("c")
    async with await store.open("a.txt", range=ByteRange(1, 3)) as dl:
        assert await dl.read() == b"ld"
    with pytest.raises(NotFoundError):
        await store.get("c")
    assert not await new.exists("a.txt")  # no promotion unless asked


async def test_promote_copies_into_new_with_everything() -> None:
    new, old, store = await _pair(promote=True)
    await old.put_object(
        "p.bin", b"payload", metadata={"schema_version": "3"}, content_type="image/png", cache_control="no-cache"
    )
    assert await store.get("p.bin") == b"payload"
    info = await new.head("p.bin")
    assert (info.content_type, info.cache_control, dict(info.metadata)) == (
        "image/png",
        "no-cache",
        {"schema_version": "3"},
    )
    with pytest.raises(NotFoundError):
        await store.get("missing")


class _PausingOld(MemoryBackend):
    """An old store whose reads wait on ``gate`` after starting: a writer can run in between."""

    def __init__(self) -> None:
        super().__init__()
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def open(self, key: str, **kw: object) -> Download:  # type: ignore[override]
        dl = await super().open(key, **kw)  # type: ignore[arg-type]
        self.started.set()
        await self.gate.wait()
        return dl


async def test_promote_never_overwrites_a_newer_write() -> None:
    new, old = MemoryBackend(), _PausingOld()
    store = ReadFallback(new, old, promote=True)
    await old.put_object("k", b"v1-old")
    reader = asyncio.create_task(store.get("k"))
    await old.started.wait()
    await store.put("k", b"v2-newer")  # acknowledged while the promotion is reading the old copy
    old.gate.set()
    assert await reader == b"v2-newer"  # the read returns the newer object, not the one it started on
    assert await new.get("k") == b"v2-newer"
    assert await store.get("k") == b"v2-newer"


async def test_racing_writers_never_see_an_older_version_after_a_newer_one() -> None:
    _new, old, store = await _pair(promote=True)
    keys = [f"r/{i}" for i in range(50)]
    for k in keys:
        await old.put_object(k, b"0")

    async def writer(k: str) -> None:
        for n in range(1, 4):
            await store.put_object(k, str(n).encode())
            await asyncio.sleep(0)

    async def reader(k: str) -> list[int]:
        seen = []
        for _ in range(6):
            seen.append(int(await store.get(k)))
            await asyncio.sleep(0)
        return seen

    results = await asyncio.gather(*(writer(k) for k in keys), *(reader(k) for k in keys))
    for seen in results[len(keys) :]:
        assert seen == sorted(seen)  # type: ignore[type-var]
    for k in keys:
        assert await store.get(k) == b"3"


async def test_delete_removes_from_both_so_nothing_resurfaces() -> None:
    new, old, store = await _pair()
    await old.put_object("d", b"old")
    await new.put_object("d", b"new")
    await old.put_object("only-old", b"x")
    assert await store.delete("d") is True
    assert not await store.exists("d") and not await old.exists("d")
    assert await store.delete("only-old") is True
    assert await store.delete("only-old") is False
    assert not await old.exists("only-old")


async def test_writes_go_to_new_only() -> None:
    new, old, store = await _pair()
    await store.put("w", b"x")
    assert await new.get("w") == b"x" and not await old.exists("w")
    await old.put_object("src", b"from-old", metadata={"a": "1"})
    await store.copy("src", "dst")
    assert await new.get("dst") == b"from-old" and not await old.exists("dst")
    info = await store.replace_metadata("src", {"b": "2"})
    assert dict(info.metadata) == {"b": "2"} and await new.get("src") == b"from-old"
    assert dict((await old.head("src")).metadata) == {"a": "1"}


async def test_listings_merge_without_duplicates() -> None:
    new, old, store = await _pair()
    for k in ("a", "c", "dir/x", "e"):
        await old.put_object(k, b"old")
    for k in ("b", "c", "dir/y", "f"):
        await new.put_object(k, b"new!")
    assert await store.list_keys() == ["a", "b", "c", "dir/x", "dir/y", "e", "f"]
    infos = [i async for i in store.iter_objects()]
    assert [i.key for i in infos] == ["a", "b", "c", "dir/x", "dir/y", "e", "f"]
    assert next(i.size for i in infos if i.key == "c") == 4  # new's entry wins
    assert [k async for k in store.iter_keys(start_after="c")] == ["dir/x", "dir/y", "e", "f"]
    entries = [e.prefix if isinstance(e, CommonPrefix) else e.key async for e in store.iter_entries()]
    assert entries == ["a", "b", "c", "dir/", "e", "f"]


async def test_sign_url_points_at_the_store_that_has_the_key(tmp_path: Path) -> None:
    new = MemoryBackend(base_url="http://new.example/files", url_secret="s" * 32)
    old = LocalBackend(base_path=str(tmp_path), base_url="http://old.example/files", url_secret="s" * 32)
    store = ReadFallback(new, old)
    await old.put_object("o", b"x")
    assert (await store.get_url("o")).startswith("http://old.example/")
    await store.put_object("n", b"y")
    assert (await store.get_url("n")).startswith("http://new.example/")
    assert (await store.sign_url("absent")).startswith("http://new.example/")
    await store.aclose()


class _ReadOnly(MemoryBackend):
    async def put_object(self, key: str, body: object, **kw: object) -> ObjectInfo:  # type: ignore[override]
        raise PermissionDeniedError("read-only", key=key)


async def test_a_failed_promotion_is_served_from_old(caplog: pytest.LogCaptureFixture) -> None:
    old = MemoryBackend()
    store = ReadFallback(_ReadOnly(), old, promote=True)
    await old.put_object("k", b"from old")
    assert await store.get("k") == b"from old"
    assert "promoting 'k'" in caplog.text
