"""S3 multipart: streamed parallel uploads, file uploads from byte ranges, multipart copy.

A streamed upload holds at most ``max_concurrency`` parts in memory (a slot is
taken before the next part is read); a file is read straight from each part's
byte range. Any failure (the body source, a part, the completion) aborts the
upload, so no parts are left behind to be billed. The resumable sessions built
on the same requests are in ``_sessions``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..._errors import IntegrityError, InvalidArgumentError, StorageError
from ..._types import ObjectInfo
from ._fast import FileRange
from ._wire import CHECKSUM_ALGORITHMS, checksum_header, http_date, iso_date, xml_find
from ._xml import parse_xml, xml_result

if TYPE_CHECKING:
    from . import S3Backend

__all__ = [
    "PartFailure",
    "PartInfo",
    "copy_object",
    "copy_part",
    "copy_source",
    "copy_whole",
    "part_size_for",
    "stream_part_size",
    "upload_file",
    "upload_stream",
]

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PART = 5 * 1024 * MiB
MAX_PARTS = 10_000
MAX_OBJECT = 5 * 1024**4  # S3's largest object
GROWTH_STEP = 800  # a stream of unknown size doubles its part size every GROWTH_STEP parts


def part_size_for(size: int, part_size: int) -> int:
    """The part size for an object of known ``size``: ``part_size``, or, when ``MAX_PARTS`` parts of it
    cannot hold ``size``, the smallest whole MiB that can (at most 5 GiB). Over 5 TiB (S3's largest
    object) is an :class:`InvalidArgumentError`.

    >>> part_size_for(100 * 1024**3, 8 * MiB) // MiB  # 100 GiB in 8 MiB parts would take 12,800
    11
    """
    if size > MAX_OBJECT:
        raise InvalidArgumentError(f"an S3 object is at most 5 TiB; this one is {size} bytes")
    need = -(-size // MAX_PARTS)
    return min(MAX_PART, max(part_size, -(-need // MiB) * MiB))


def stream_part_size(number: int, part_size: int) -> int:
    """The size of part ``number`` (1-based) of a stream of unknown size: ``part_size``, doubled every
    ``GROWTH_STEP`` parts, at most 5 GiB; so ``MAX_PARTS`` parts hold 5 TiB even from 5 MiB, while a
    small stream keeps small parts (the memory a stream holds is its part size times the parts in flight).

    >>> [stream_part_size(n, 8 * MiB) // MiB for n in (1, 800, 801, 1601, 10_000)]
    [8, 8, 16, 32, 5120]
    """
    return min(MAX_PART, part_size << ((number - 1) // GROWTH_STEP))


_SLICE = 256 * 1024


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One stored part: its number, size, etag and checksum (base64 CRC-32, SHA-256 or MD5, per ``checksum``)."""

    number: int
    size: int
    etag: str
    checksum: str | None = None


@dataclass(frozen=True, slots=True)
class PartFailure:
    """A part upload that failed (what ``S3Backend.add_part_listener`` callbacks receive)."""

    key: str
    upload_id: str
    number: int
    error: StorageError


async def _body(chunks: list[Any]) -> AsyncIterator[Any]:
    """Feed a part to the socket in slices of at most 256 KiB, so the transport never
    buffers a second copy of a whole part (aiohttp drains between writes). Each chunk is
    taken out of ``chunks`` as it is sent (a part is never resent: a failed one fails the
    upload), so a part's memory is freed while it is sent, not when the server answers."""
    chunks.reverse()
    while chunks:
        c = chunks.pop()
        if len(c) <= _SLICE:
            yield c
        else:
            view = memoryview(c)
            for i in range(0, len(view), _SLICE):
                yield view[i : i + _SLICE]
            view.release()
        del c


async def _put_part(
    backend: S3Backend,
    key: str,
    upload_id: str,
    number: int,
    body: Any,
    size: int,
    headers: dict[str, str],
    checksum: str | None,
) -> PartInfo:
    """Send one part; a failure is reported to the part listeners, then raised."""
    headers.update(backend._read_headers)  # SSE-C: every part carries the key
    headers["content-length"] = str(size)
    try:
        r = await backend._send(
            "PUT",
            backend._object_path(key),
            op="upload_part",
            key=key,
            query={"partNumber": str(number), "uploadId": upload_id},
            headers=headers,
            body=body,
        )
    except StorageError as exc:
        backend._part_failed(PartFailure(key, upload_id, number, exc))
        raise
    return PartInfo(number, size, r.headers.get("ETag", "").strip('"'), checksum)


async def _upload_part(
    backend: S3Backend, key: str, upload_id: str, number: int, chunks: list[bytes], size: int, mode: str
) -> PartInfo:
    """Send one part held in memory (hashed in a thread above 1 MiB); ``chunks`` is emptied as it is sent."""
    if size >= MiB:
        headers, checksum = await asyncio.to_thread(checksum_header, mode, chunks)
    else:
        headers, checksum = checksum_header(mode, chunks)
    body: Any = chunks[0] if len(chunks) == 1 and size <= _SLICE else _body(chunks)
    return await _put_part(backend, key, upload_id, number, body, size, headers, checksum)


async def _create(backend: S3Backend, key: str, headers: Mapping[str, str], mode: str) -> str:
    h = dict(headers)
    if mode in CHECKSUM_ALGORITHMS:
        h["x-amz-checksum-algorithm"] = CHECKSUM_ALGORITHMS[mode]
    r = await backend._send(
        "POST", backend._object_path(key), op="create_multipart", key=key, query={"uploads": ""}, headers=h
    )
    return xml_find(parse_xml(r.body, operation="create_multipart", backend=backend.name, key=key), "UploadId")


async def _complete(
    backend: S3Backend,
    key: str,
    upload_id: str,
    parts: Sequence[PartInfo],
    cond: Mapping[str, str],
    create: bool,
    mode: str,
) -> _Completed:
    items = []
    tag = "Checksum" + CHECKSUM_ALGORITHMS.get(mode, "")
    for p in sorted(parts, key=lambda p: p.number):
        extra = f"<{tag}>{p.checksum}</{tag}>" if mode in CHECKSUM_ALGORITHMS and p.checksum else ""
        items.append(f'<Part><PartNumber>{p.number}</PartNumber><ETag>"{p.etag}"</ETag>{extra}</Part>')
    xml = f"<CompleteMultipartUpload>{''.join(items)}</CompleteMultipartUpload>".encode()
    headers = {"content-type": "application/xml", **cond, **backend._read_headers}
    r = await backend._send(
        "POST",
        backend._object_path(key),
        op="complete_multipart",
        key=key,
        query={"uploadId": upload_id},
        headers=headers,
        body=xml,
        create=create,
    )
    root = xml_result(
        r.body,
        r.headers,
        key=key,
        operation="complete_multipart",
        backend=backend.name,
        bucket=backend.bucket,
        create=create,
    )
    return _Completed(xml_find(root, "ETag").strip('"'), http_date(r.headers.get("Date")))


@dataclass(frozen=True, slots=True)
class _Completed:
    etag: str
    date: datetime


async def _abort(backend: S3Backend, key: str, upload_id: str) -> None:
    await backend._send(
        "DELETE", backend._object_path(key), op="abort_multipart", key=key, query={"uploadId": upload_id}
    )


async def _exact_parts(
    first: list[bytes], rest: AsyncIterator[bytes], part_size: Callable[[int], int]
) -> AsyncIterator[list[Any]]:
    """Re-cut a stream into parts of exactly ``part_size(number)`` bytes (the last may be shorter).

    A chunk that spans parts is sliced through a memoryview, so a large ``bytes`` body
    is cut without copying (each piece is a view of the caller's buffer).
    """
    buf: list[Any] = []
    size, number = 0, 1
    target = part_size(number)

    async def source() -> AsyncIterator[bytes]:
        first.reverse()
        while first:  # popped, so the first part is freed once sent, not when the upload ends
            yield first.pop()
        async for c in rest:
            yield c

    async for chunk in source():
        view = memoryview(chunk) if len(chunk) > target - size else None
        pos = 0
        while pos < len(chunk):
            take = min(len(chunk) - pos, target - size)
            piece = chunk if view is None else view[pos : pos + take]
            buf.append(piece)
            size += take
            pos += take
            if size == target:
                yield buf
                buf, size, number = [], 0, number + 1
                target = part_size(number)
    if buf:
        yield buf


async def _upload(
    backend: S3Backend,
    key: str,
    upload_id: str,
    mode: str,
    cond: Mapping[str, str],
    send_parts: Callable[[asyncio.TaskGroup], Awaitable[None]],
    parts: list[PartInfo],
) -> _Completed:
    """Run ``send_parts`` (which starts part tasks in the group), then complete; abort on any failure."""
    try:
        async with asyncio.TaskGroup() as tg:
            await send_parts(tg)
        return await _complete(backend, key, upload_id, parts, cond, cond.get("if-none-match") == "*", mode)
    except BaseException as exc:
        await asyncio.shield(_abort_quietly(backend, key, upload_id))
        if isinstance(exc, BaseExceptionGroup):
            raise exc.exceptions[0] from None
        raise


def _uploaded(
    key: str, size: int, done: _Completed, headers: Mapping[str, str], content_type: str, metadata: Mapping[str, str]
) -> ObjectInfo:
    return ObjectInfo(
        key=key,
        size=size,
        etag=done.etag,
        last_modified=done.date,
        content_type=content_type,
        metadata=dict(metadata),
        cache_control=headers.get("cache-control"),
        content_disposition=headers.get("content-disposition"),
    )


async def upload_stream(
    backend: S3Backend,
    key: str,
    headers: dict[str, str],
    cond: Mapping[str, str],
    first: list[bytes],
    rest: AsyncIterator[bytes],
    content_type: str,
    metadata: Mapping[str, str],
    total: int | None = None,
) -> ObjectInfo:
    """Upload a stream as parallel parts; abort on any failure (the body's own errors included).
    ``total`` (the size, when known) fixes the part size (:func:`part_size_for`); a stream of unknown
    size grows its parts (:func:`stream_part_size`), except where parts must be equal (R2)."""
    s = backend.settings
    if total is not None:
        fixed = part_size_for(total, s.part_size)
        sizes: Callable[[int], int] = lambda _: fixed  # noqa: E731
    elif backend._equal_parts:
        sizes = lambda _: s.part_size  # noqa: E731
    else:
        sizes = lambda n: stream_part_size(n, s.part_size)  # noqa: E731
    mode = s.checksum
    upload_id = await _create(backend, key, headers, mode)
    slots = asyncio.Semaphore(s.max_concurrency)
    parts: list[PartInfo] = []
    size = 0

    async def send(number: int, chunks: list[bytes], n: int) -> None:
        try:
            parts.append(await _upload_part(backend, key, upload_id, number, chunks, n, mode))
        finally:
            chunks.clear()  # freed now, even if the HTTP client still holds its body (until a GC pass)
            slots.release()

    async def send_parts(tg: asyncio.TaskGroup) -> None:
        nonlocal size
        pieces = _exact_parts(first, rest, sizes).__aiter__()
        number = 0
        while True:
            await slots.acquire()  # before reading the next part: at most max_concurrency parts in memory
            try:
                chunks = await pieces.__anext__()
            except StopAsyncIteration:
                slots.release()
                return
            number += 1
            if number > MAX_PARTS:
                slots.release()
                raise InvalidArgumentError(
                    f"object needs more than {MAX_PARTS} parts: raise part_size"
                    + (" (parts must be equal here, so they cannot grow)" if backend._equal_parts else ""),
                    key=key,
                    backend=backend.name,
                )
            n = sum(len(c) for c in chunks)
            size += n
            tg.create_task(send(number, chunks, n))

    done = await _upload(backend, key, upload_id, mode, cond, send_parts, parts)
    return _uploaded(key, size, done, headers, content_type, metadata)


async def upload_file(
    backend: S3Backend,
    key: str,
    path: str,
    size: int,
    headers: dict[str, str],
    cond: Mapping[str, str],
    content_type: str,
    metadata: Mapping[str, str],
) -> ObjectInfo:
    """Upload a file as parallel parts read straight from their byte ranges.

    Over plain TCP the kernel sends each range (``sendfile``: no copy through Python);
    over TLS it is read and sent 1 MiB at a time. With a checksum, a first pass reads
    the range in 1 MiB slices to hash it. Memory does not grow with ``part_size`` or
    concurrency. A file that shrinks meanwhile fails the upload.
    """
    s = backend.settings
    mode = s.checksum
    part_size = part_size_for(size, s.part_size)
    count = -(-size // part_size)
    upload_id = await _create(backend, key, headers, mode)
    slots = asyncio.Semaphore(s.max_concurrency)
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    parts: list[PartInfo] = []

    def read(offset: int, length: int) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise IntegrityError("the file changed size during the upload", key=key, operation="put")
        return data

    def slices(offset: int, length: int) -> Iterator[memoryview]:
        """The range in 1 MiB slices, each read into the same buffer (valid until the next)."""
        view = memoryview(bytearray(min(_SLICE, length)))
        for pos in range(offset, offset + length, _SLICE):
            want = min(_SLICE, offset + length - pos)
            if os.preadv(fd, [view[:want]], pos) != want:
                raise IntegrityError("the file changed size during the upload", key=key, operation="put")
            yield view[:want]

    def digest(offset: int, length: int) -> tuple[dict[str, str], str | None]:
        return checksum_header(mode, slices(offset, length))

    async def ranged(offset: int, length: int) -> AsyncIterator[bytes]:
        for pos in range(offset, offset + length, _SLICE):
            yield await asyncio.to_thread(read, pos, min(_SLICE, offset + length - pos))

    async def send(number: int) -> None:
        async with slots:
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            part_headers, checksum = ({}, None) if mode == "none" else await asyncio.to_thread(digest, offset, length)
            # sent by the kernel (sendfile) over plain TCP, else read in 1 MiB slices as it goes
            body = FileRange(fd, offset, length, functools.partial(ranged, offset, length))
            parts.append(await _put_part(backend, key, upload_id, number, body, length, part_headers, checksum))

    async def send_parts(tg: asyncio.TaskGroup) -> None:
        for number in range(1, count + 1):
            tg.create_task(send(number))

    try:
        done = await _upload(backend, key, upload_id, mode, cond, send_parts, parts)
    finally:
        await asyncio.to_thread(os.close, fd)
    return _uploaded(key, size, done, headers, content_type, metadata)


async def _abort_quietly(backend: S3Backend, key: str, upload_id: str) -> None:
    with contextlib.suppress(StorageError):
        await _abort(backend, key, upload_id)


def copy_source(source: S3Backend, info: ObjectInfo) -> dict[str, str]:
    """The headers naming ``info`` (a key of ``source``'s bucket) as a copy's source, conditional on its etag."""
    path = "/" + source.bucket + "/" + source._object_path(info.key).removeprefix(source._bucket_path)
    headers = {"x-amz-copy-source": path, "x-amz-copy-source-if-match": f'"{info.etag}"'}
    for name, value in source._read_headers.items():
        headers[name.replace("x-amz-", "x-amz-copy-source-", 1)] = value
    return headers


async def copy_whole(
    backend: S3Backend,
    source: S3Backend,
    info: ObjectInfo,
    dst: str,
    *,
    cond: Mapping[str, str] | None = None,
    replace: Mapping[str, str] | None = None,
) -> tuple[str, datetime]:
    """CopyObject of ``info`` (in ``source``'s bucket, which may be another bucket of the same server)
    to ``dst``: the copy's etag and date. ``replace``: these write headers instead of the source's
    metadata (``x-amz-metadata-directive: REPLACE``). ``cond``: precondition headers on ``dst``
    (``If-None-Match: *`` raises :class:`AlreadyExistsError` when ``dst`` exists)."""
    headers = {**copy_source(source, info), **backend._write_extra, "x-amz-metadata-directive": "COPY"}
    if replace is not None:
        headers.update(replace)
        headers["x-amz-metadata-directive"] = "REPLACE"
    headers.update(cond or {})
    create = (cond or {}).get("if-none-match") == "*"
    r = await backend._send("PUT", backend._object_path(dst), op="copy", key=dst, headers=headers, create=create)
    root = xml_result(
        r.body, r.headers, key=dst, operation="copy", backend=backend.name, bucket=backend.bucket, create=create
    )
    return xml_find(root, "ETag").strip('"'), iso_date(xml_find(root, "LastModified"))


async def copy_part(
    backend: S3Backend, source: S3Backend, info: ObjectInfo, dst: str, upload_id: str, number: int, start: int, end: int
) -> PartInfo:
    """UploadPartCopy: bytes ``[start, end)`` of ``info`` (in ``source``'s bucket) as part ``number`` of
    ``dst``'s upload ``upload_id``, conditional on the source's etag."""
    headers = {**copy_source(source, info), **backend._read_headers}
    if info.size:
        headers["x-amz-copy-source-range"] = f"bytes={start}-{end - 1}"
    r = await backend._send(
        "PUT",
        backend._object_path(dst),
        op="copy_part",
        key=dst,
        query={"partNumber": str(number), "uploadId": upload_id},
        headers=headers,
    )
    root = xml_result(r.body, r.headers, key=dst, operation="copy_part", backend=backend.name, bucket=backend.bucket)
    return PartInfo(number, end - start, xml_find(root, "ETag").strip('"'))


async def copy_object(backend: S3Backend, src: ObjectInfo, dst: str) -> ObjectInfo:
    """Server-side copy of ``src`` to ``dst`` with its content type and metadata."""
    s = backend.settings
    if src.size <= s.multipart_copy_threshold:
        etag, date = await copy_whole(backend, backend, src, dst)
    else:
        full = await backend.head(src.key)
        write_headers, _, _ = backend._write_headers(
            dst, full.content_type, full.metadata, full.cache_control, full.content_disposition
        )
        upload_id = await _create(backend, dst, write_headers, "none")
        try:
            parts = []
            for number, start in enumerate(range(0, src.size, s.copy_part_size), 1):
                end = min(start + s.copy_part_size, src.size)
                parts.append(await copy_part(backend, backend, src, dst, upload_id, number, start, end))
            done = await _complete(backend, dst, upload_id, parts, {}, False, "none")
        except BaseException:
            await asyncio.shield(_abort_quietly(backend, dst, upload_id))
            raise
        etag, date = done.etag, done.date
    return ObjectInfo(
        key=dst,
        size=src.size,
        etag=etag,
        last_modified=date,
        content_type=src.content_type,
        metadata=src.metadata,
        cache_control=src.cache_control,
        content_disposition=src.content_disposition,
    )
