"""Dedup's own behaviour: one body per content, counts, sweeps, metrics, refused input."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import io
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from unistore import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    MemoryBackend,
    PreconditionFailedError,
    StorageBackend,
    UnsupportedError,
)
from unistore._errors import UnavailableError
from unistore._keys import reserved_keys
from unistore._types import Capabilities, ObjectInfo
from unistore.layers import Compress, Dedup, DedupObjectInfo, Layer
from unistore.layers._dedup import DEDUP_PREFIX
from unistore.testing._s3servers import S3Server

LATER = timedelta(hours=2)


async def _internal(mem: StorageBackend) -> list[str]:
    with reserved_keys():
        return [k async for k in mem.iter_keys(DEDUP_PREFIX)]


async def _chunks(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def test_equal_bodies_are_stored_once_whatever_the_body_type(tmp_path: Path) -> None:
    mem = MemoryBackend()
    store = Dedup(mem, metrics=False)
    data = os.urandom(3 * 1024 * 1024 + 5)  # past the in-memory spool
    path = tmp_path / "src.bin"
    path.write_bytes(data)
    bodies = [data, bytearray(data), memoryview(data), io.BytesIO(data), path, _chunks(data)]
    infos = [await store.put_object(f"copy/{i}", body) for i, body in enumerate(bodies)]
    sha = hashlib.sha256(data).hexdigest()
    assert all(isinstance(i, DedupObjectInfo) and i.sha256 == sha and i.size == len(data) for i in infos)
    assert len({i.etag for i in infos}) == len(infos)  # every write is its own version
    blobs = [k for k in await _internal(mem) if "/blobs/" in k]
    with reserved_keys():
        assert len(blobs) == 1 and (await mem.head(blobs[0])).size == len(data)
    assert await store.refcount(sha) == len(bodies)
    for i in range(len(bodies)):
        assert await store.get(f"copy/{i}") == data
    assert (await store.get_metadata("copy/0"))["sha256"] == sha


async def test_counts_follow_overwrites_deletes_and_copies() -> None:
    mem = MemoryBackend()
    store = Dedup(mem, metrics=False)
    a, b = hashlib.sha256(b"A").hexdigest(), hashlib.sha256(b"B").hexdigest()
    await store.put_object("x", b"A")
    await store.put_object("y", b"A")
    await store.copy("x", "z")
    assert await store.refcount(a) == 3
    await store.put_object("y", b"B")  # overwrite: the old reference goes at once
    assert (await store.refcount(a), await store.refcount(b)) == (2, 1)
    assert await store.delete("x") and not await store.delete("x")
    assert await store.refcount(a) == 1
    assert await store.get("z") == b"A"
    await store.delete("z")
    assert await store.refcount(a) == 0
    report = await store.sweep()  # the body is younger than grace: kept
    assert report.bodies_removed == 0 and report.bodies == 2
    report = await store.sweep(now=datetime.now(UTC) + LATER)
    assert (report.bodies_removed, report.bytes_reclaimed, report.bodies, report.references) == (1, 1, 1, 1)
    assert await store.get("y") == b"B"


async def test_sweep_reports_logical_and_physical_bytes_and_metrics() -> None:
    registry = CollectorRegistry()
    store = Dedup(MemoryBackend(), metrics=registry)
    body = b"x" * 1000
    for i in range(5):
        await store.put_object(f"k{i}", body)
    await store.put_object("other", b"y" * 10)
    report = await store.sweep()
    assert (report.logical_bytes, report.physical_bytes) == (5010, 1010)

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"backend": "MemoryBackend", **labels})

    assert value("unistore_dedup_logical_bytes_total") == 5010
    assert value("unistore_dedup_physical_bytes_total") == 1010
    assert value("unistore_dedup_puts_total", outcome="deduplicated") == 4
    assert value("unistore_dedup_puts_total", outcome="stored") == 2
    assert value("unistore_dedup_stored_logical_bytes") == 5010
    assert value("unistore_dedup_stored_physical_bytes") == 1010
    for i in range(5):
        await store.delete(f"k{i}")
    await store.sweep(now=datetime.now(UTC) + LATER)
    assert value("unistore_dedup_reclaimed_bytes_total") == 1000
    assert value("unistore_dedup_stored_physical_bytes") == 10


async def test_bad_input_is_refused_before_anything_is_written() -> None:
    mem = MemoryBackend()
    store = Dedup(mem, metrics=False)
    with pytest.raises(InvalidMetadataError):
        await store.put_object("k", b"data", metadata={"x-dedup-sha256": "0" * 64})
    with pytest.raises(InvalidMetadataError):  # fits alone, not beside the layer's own names
        await store.put_object("k", b"data", metadata={"note": "n" * 1990})
    with pytest.raises(InvalidArgumentError):
        await store.put_object("k", b"data", content_type="text/plain\r\nX: 1")
    with pytest.raises(InvalidKeyError):
        await store.put_object("../k", b"data")
    with pytest.raises(InvalidKeyError):
        await store.put_object(DEDUP_PREFIX + "blobs/aa/x", b"data")
    with pytest.raises(TypeError):
        await store.put_object("k", "text")  # type: ignore[arg-type]
    assert await _internal(mem) == [] and await mem.list_keys() == []
    await store.put_object("k", b"v1")
    with pytest.raises(InvalidMetadataError):
        await store.replace_metadata("k", {"x-dedup-ref": "mine"})


async def test_a_failed_conditional_write_leaves_no_marker() -> None:
    mem = MemoryBackend()
    store = Dedup(mem, metrics=False)
    await store.put_object("k", b"first")
    with pytest.raises(FileExistsError):
        await store.put_object("k", b"second", mode="create")
    assert await store.refcount(hashlib.sha256(b"second").hexdigest()) == 0
    assert await store.get("k") == b"first"


async def test_urls_are_refused_and_put_returns_the_key() -> None:
    store = Dedup(MemoryBackend(base_url="http://files.test/f"), metrics=False)
    assert await store.put("reports/a b.pdf", b"%PDF") == "reports/a%20b.pdf"
    assert not store.capabilities.signed_urls and store.capabilities.conditional_put
    with pytest.raises(UnsupportedError):
        await store.get_url("reports/a b.pdf")


async def test_objects_written_before_the_layer_read_as_they_are() -> None:
    mem = MemoryBackend()
    await mem.put_object("plain.txt", b"written without Dedup", metadata={"a": "1"})
    store = Dedup(mem, metrics=False)
    assert await store.get("plain.txt") == b"written without Dedup"
    assert not isinstance(await store.head("plain.txt"), DedupObjectInfo)
    await store.copy("plain.txt", "copied.txt")
    assert await store.get("copied.txt") == b"written without Dedup"
    info = await store.put_object("dedup.txt", b"deduplicated")
    await store.copy("plain.txt", "dedup.txt")  # over a deduplicated key: its reference goes
    assert await store.get("dedup.txt") == b"written without Dedup"
    assert await store.refcount(info.sha256) == 0  # type: ignore[attr-defined]
    assert await store.delete("plain.txt")


async def test_needs_conditional_writes() -> None:
    with pytest.raises(ConfigurationError):
        Dedup(_NoConditions(MemoryBackend()))
    with pytest.raises(ConfigurationError):
        Dedup(MemoryBackend(), grace=0)


class _NoConditions(Layer):
    """A store without atomic conditional writes (as Cloudinary)."""

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        return dataclasses.replace(self.inner.capabilities, conditional_put=False)


async def test_above_compress_bodies_are_compressed_once() -> None:
    mem = MemoryBackend()
    store = Dedup(Compress(mem, metrics=False), metrics=False)
    text = b"the same log line\n" * 10_000
    await store.put_object("a.log", text)
    await store.put_object("b.log", text)
    blobs = [k for k in await _internal(mem) if "/blobs/" in k]
    with reserved_keys():
        assert len(blobs) == 1 and (await mem.head(blobs[0])).size < len(text) // 10
    assert await store.get("b.log") == text


async def test_s3_listing_reports_logical_sizes(seaweed: S3Server) -> None:
    """S3 listings carry no metadata: the layer asks for each manifest's size."""
    s3 = seaweed.backend()
    try:
        store = Dedup(s3, metrics=False)
        prefix = f"dedup-{os.urandom(4).hex()}/"
        await store.put_object(prefix + "big", b"z" * 5000)
        await store.put_object(prefix + "small", b"z")
        assert [(i.key, i.size) async for i in store.iter_objects(prefix)] == [
            (prefix + "big", 5000),
            (prefix + "small", 1),
        ]
        assert await store.list_keys(prefix) == [prefix + "big", prefix + "small"]
    finally:
        await s3.aclose()


class _SlowUpload(Layer):
    """Holds body uploads until ``go`` is set."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.uploading = asyncio.Event()
        self.go = asyncio.Event()

    async def put_object(self, key: str, body: Any, **options: Any) -> ObjectInfo:
        if key.startswith(DEDUP_PREFIX + "blobs/"):
            self.uploading.set()
            await self.go.wait()
        return await self.inner.put_object(key, body, **options)


async def test_a_put_slower_than_half_the_grace_period_restores_its_reference() -> None:
    """A sweep took the reference of a put still uploading (it looked crashed); before writing
    its record the put finds itself older than grace / 2 and writes its reference again."""
    mem = MemoryBackend()
    slow = _SlowUpload(mem)
    store = Dedup(slow, grace=0.2, metrics=False)
    put = asyncio.create_task(store.put_object("slow.bin", b"slow body"))
    await slow.uploading.wait()
    report = await store.sweep(now=datetime.now(UTC) + LATER)
    assert report.stale_markers_removed == 1
    await asyncio.sleep(0.15)
    slow.go.set()
    info = await put
    assert await store.refcount(info.sha256) == 1  # type: ignore[attr-defined]
    report = await store.sweep(now=datetime.now(UTC) + LATER, body_grace=0)
    assert report.bodies_removed == 0 and report.references == 1
    assert await store.get("slow.bin") == b"slow body"


class _BrokenBody(Layer):
    """Every removal of one body fails (a permission problem, say)."""

    def __init__(self, inner: StorageBackend, sha: str) -> None:
        super().__init__(inner)
        self.sha = sha

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        if key.endswith("/" + self.sha) and "/blobs/" in key:
            raise UnavailableError("cannot remove this one", key=key)
        return await self.inner.remove(key, if_match=if_match)


async def test_one_body_that_cannot_be_removed_does_not_stop_the_sweep() -> None:
    mem = MemoryBackend()
    store = Dedup(_BrokenBody(mem, hashlib.sha256(b"stuck").hexdigest()), metrics=False)
    for key, body in (("a", b"stuck"), ("b", b"free 1"), ("c", b"free 2")):
        await store.put_object(key, body)
        await store.delete(key)
    report = await store.sweep(now=datetime.now(UTC) + LATER)
    assert (report.errors, report.bodies_removed, report.bodies) == (1, 2, 1)
    assert not [k for k in await _internal(mem) if "/sweeping/" in k]  # its claim is released


class _LostReply(Layer):
    """The first record write lands, a delete of the key runs to its end, then the write reports
    412: what a Retry below Dedup surfaces when it replays a write whose reply was lost."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.during: Any = None

    async def put_object(self, key: str, body: Any, **options: Any) -> ObjectInfo:
        info = await self.inner.put_object(key, body, **options)
        if self.during is not None and not key.startswith(DEDUP_PREFIX):
            during, self.during = self.during, None
            await during()
            raise PreconditionFailedError("the replayed write found its own version", key=key)
        return info


async def test_a_write_that_landed_behind_a_412_and_was_deleted_is_not_rewritten_unprotected() -> None:
    """The delete released the landed record's reference; the put must not write that reference
    again (no marker would protect the body): it writes the record under a new one."""
    mem = MemoryBackend()
    lost = _LostReply(mem)
    store = Dedup(lost, metrics=False)
    deleted: list[bool] = []

    async def delete() -> None:
        deleted.append(await store.delete("k"))

    lost.during = delete
    info = await store.put_object("k", b"payload")
    assert deleted == [True]
    sha = info.sha256  # type: ignore[attr-defined]
    assert await store.refcount(sha) == 1
    report = await store.sweep(now=datetime.now(UTC) + LATER, body_grace=0)
    assert report.bodies_removed == 0 and report.references == 1
    assert await store.get("k") == b"payload"
