"""S3 multipart: streamed parallel uploads, resumable upload sessions, multipart copy.

A streamed upload holds at most ``max_concurrency`` parts in flight plus the one
being filled, so memory stays within ``part_size * (max_concurrency + 1)`` for
any object size. Any failure (the body source, a part, the completion) aborts
the upload, so no parts are left behind to be billed.

Resumable sessions (:class:`S3Uploads`) keep all their state on the server: a
session is its key and upload id, serialised as :attr:`UploadSession.token`, so
another process (or the same one after a restart) can upload more parts, list
what is stored, and complete it. Completion checks the caller's manifest of part
checksums against what the server stored before the object becomes visible.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._base import iter_body
from .._errors import IntegrityError, InvalidArgumentError, StorageError
from .._keys import validate_key
from .._types import Body, ObjectInfo, WriteMode
from ._s3wire import http_date, iso_date, xml_children, xml_find, xml_root

if TYPE_CHECKING:
    from .s3 import S3Backend

__all__ = ["PartFailure", "PartInfo", "S3Uploads", "UploadSession", "copy_object", "upload_file", "upload_stream"]

MiB = 1024 * 1024
MIN_PART = 5 * MiB
MAX_PARTS = 10_000
_SLICE = MiB


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One stored part: its number, size, etag and checksum (base64 SHA-256 or MD5, per ``checksum``)."""

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


@dataclass(frozen=True, slots=True)
class UploadSession:
    """A resumable upload: everything needed to resume it is in :attr:`token`."""

    key: str
    upload_id: str
    checksum: str = "md5"
    """The part checksum the session was opened with; every part and the completion use it."""

    @property
    def token(self) -> str:
        """An opaque string that :meth:`S3Uploads.resume` turns back into this session."""
        raw = json.dumps({"k": self.key, "u": self.upload_id, "c": self.checksum}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _part_checksum(mode: str, chunks: Sequence[bytes]) -> tuple[dict[str, str], str | None]:
    """The checksum header of one part and the value the server will report for it."""
    if mode == "none":
        return {}, None
    h = hashlib.md5(usedforsecurity=False) if mode == "md5" else hashlib.sha256()
    for c in chunks:
        h.update(c)
    digest = base64.b64encode(h.digest()).decode()
    if mode == "md5":
        return {"content-md5": digest}, digest
    return {"x-amz-checksum-sha256": digest}, digest


async def _body(chunks: Sequence[Any]) -> AsyncIterator[Any]:
    """Feed a part to the socket in slices of at most 1 MiB, so the transport never
    buffers a second copy of a whole part (aiohttp drains between writes)."""
    for c in chunks:
        if len(c) <= _SLICE:
            yield c
        else:
            view = memoryview(c)
            for i in range(0, len(view), _SLICE):
                yield view[i : i + _SLICE]


async def _upload_part(
    backend: S3Backend, key: str, upload_id: str, number: int, chunks: Sequence[bytes], size: int, mode: str
) -> PartInfo:
    if size >= MiB:
        headers, checksum = await asyncio.to_thread(_part_checksum, mode, chunks)
    else:
        headers, checksum = _part_checksum(mode, chunks)
    headers.update(backend._read_headers)  # SSE-C: every part carries the key
    headers["content-length"] = str(size)
    body: Any = chunks[0] if len(chunks) == 1 and size <= _SLICE else _body(chunks)
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


async def _create(backend: S3Backend, key: str, headers: Mapping[str, str], mode: str) -> str:
    h = dict(headers)
    if mode == "sha256":
        h["x-amz-checksum-algorithm"] = "SHA256"
    r = await backend._send(
        "POST", backend._object_path(key), op="create_multipart", key=key, query={"uploads": ""}, headers=h
    )
    return xml_find(xml_root(r.body), "UploadId")


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
    for p in sorted(parts, key=lambda p: p.number):
        extra = f"<ChecksumSHA256>{p.checksum}</ChecksumSHA256>" if mode == "sha256" and p.checksum else ""
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
    root = xml_root(r.body)  # S3 may answer 200 with an error document
    if root.tag.endswith("Error"):
        from ._s3wire import error_from_response

        raise error_from_response(
            500,
            r.headers,
            r.body,
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


async def _exact_parts(first: list[bytes], rest: AsyncIterator[bytes], part_size: int) -> AsyncIterator[list[Any]]:
    """Re-cut a stream into parts of exactly ``part_size`` bytes (the last may be shorter).

    A chunk that spans parts is sliced through a memoryview, so a large ``bytes`` body
    is cut without copying (each piece is a view of the caller's buffer).
    """
    buf: list[Any] = []
    size = 0

    async def source() -> AsyncIterator[bytes]:
        for c in first:
            yield c
        async for c in rest:
            yield c

    async for chunk in source():
        view = memoryview(chunk) if len(chunk) > part_size - size else None
        pos = 0
        while pos < len(chunk):
            take = min(len(chunk) - pos, part_size - size)
            piece = chunk if view is None else view[pos : pos + take]
            buf.append(piece)
            size += take
            pos += take
            if size == part_size:
                yield buf
                buf, size = [], 0
    if buf:
        yield buf


async def upload_stream(
    backend: S3Backend,
    key: str,
    headers: dict[str, str],
    cond: Mapping[str, str],
    first: list[bytes],
    first_size: int,
    rest: AsyncIterator[bytes],
    content_type: str,
    metadata: Mapping[str, str],
) -> ObjectInfo:
    """Upload a stream as parallel parts; abort on any failure (the body's own errors included)."""
    s = backend.settings
    mode = s.checksum
    upload_id = await _create(backend, key, headers, mode)
    slots = asyncio.Semaphore(s.max_concurrency)
    parts: list[PartInfo] = []
    size = 0
    try:
        async with asyncio.TaskGroup() as tg:

            async def send(number: int, chunks: list[bytes], n: int) -> None:
                try:
                    parts.append(await _upload_part(backend, key, upload_id, number, chunks, n, mode))
                finally:
                    slots.release()

            pieces = _exact_parts(first, rest, s.part_size).__aiter__()
            number = 0
            while True:
                await slots.acquire()  # before reading the next part: at most max_concurrency parts in memory
                try:
                    chunks = await pieces.__anext__()
                except StopAsyncIteration:
                    slots.release()
                    break
                n = sum(len(c) for c in chunks)
                number += 1
                if number > MAX_PARTS:
                    slots.release()
                    raise InvalidArgumentError(
                        f"object needs more than {MAX_PARTS} parts: raise part_size", key=key, backend=backend.name
                    )
                size += n
                tg.create_task(send(number, chunks, n))
                del chunks
        done = await _complete(backend, key, upload_id, parts, cond, cond.get("if-none-match") == "*", mode)
    except BaseException as exc:
        await asyncio.shield(_abort_quietly(backend, key, upload_id))
        if isinstance(exc, BaseExceptionGroup):
            first_error = exc.exceptions[0]
            raise first_error from None
        raise
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

    Nothing is buffered per part but the 1 MiB being sent (and, with a checksum, a
    first pass over the part's range to hash it), so memory does not grow with
    ``part_size`` or concurrency. A file that shrinks meanwhile fails the upload.
    """
    s = backend.settings
    mode = s.checksum
    part_size = s.part_size
    count = -(-size // part_size)
    if count > MAX_PARTS:
        raise InvalidArgumentError(f"object needs more than {MAX_PARTS} parts: raise part_size", key=key)
    upload_id = await _create(backend, key, headers, mode)
    slots = asyncio.Semaphore(s.max_concurrency)
    fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
    parts: list[PartInfo] = []

    def read(offset: int, length: int) -> bytes:
        data = os.pread(fd, length, offset)
        if len(data) != length:
            raise IntegrityError("the file changed size during the upload", key=key, operation="put")
        return data

    def digest(offset: int, length: int) -> tuple[dict[str, str], str | None]:
        h = hashlib.md5(usedforsecurity=False) if mode == "md5" else hashlib.sha256()
        for pos in range(offset, offset + length, _SLICE):
            h.update(read(pos, min(_SLICE, offset + length - pos)))
        value = base64.b64encode(h.digest()).decode()
        return ({"content-md5": value} if mode == "md5" else {"x-amz-checksum-sha256": value}), value

    async def ranged(offset: int, length: int) -> AsyncIterator[bytes]:
        for pos in range(offset, offset + length, _SLICE):
            yield await asyncio.to_thread(read, pos, min(_SLICE, offset + length - pos))

    async def send(number: int) -> None:
        async with slots:
            offset = (number - 1) * part_size
            length = min(part_size, size - offset)
            part_headers, checksum = ({}, None) if mode == "none" else await asyncio.to_thread(digest, offset, length)
            part_headers.update(backend._read_headers)
            part_headers["content-length"] = str(length)
            try:
                r = await backend._send(
                    "PUT",
                    backend._object_path(key),
                    op="upload_part",
                    key=key,
                    query={"partNumber": str(number), "uploadId": upload_id},
                    headers=part_headers,
                    body=ranged(offset, length),
                )
            except StorageError as exc:
                backend._part_failed(PartFailure(key, upload_id, number, exc))
                raise
            parts.append(PartInfo(number, length, r.headers.get("ETag", "").strip('"'), checksum))

    try:
        async with asyncio.TaskGroup() as tg:
            for number in range(1, count + 1):
                tg.create_task(send(number))
        done = await _complete(backend, key, upload_id, parts, cond, cond.get("if-none-match") == "*", mode)
    except BaseException as exc:
        await asyncio.shield(_abort_quietly(backend, key, upload_id))
        if isinstance(exc, BaseExceptionGroup):
            raise exc.exceptions[0] from None
        raise
    finally:
        await asyncio.to_thread(os.close, fd)
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


async def _abort_quietly(backend: S3Backend, key: str, upload_id: str) -> None:
    with contextlib.suppress(StorageError):
        await _abort(backend, key, upload_id)


async def copy_object(backend: S3Backend, src: ObjectInfo, dst: str) -> ObjectInfo:
    """Server-side copy of ``src`` to ``dst`` with its content type and metadata."""
    s = backend.settings
    source = "/" + backend.bucket + "/" + backend._object_path(src.key).removeprefix(backend._bucket_path)
    copy_headers = {"x-amz-copy-source": source, "x-amz-copy-source-if-match": f'"{src.etag}"'}
    if backend._read_headers:
        for name, value in backend._read_headers.items():
            copy_headers[name.replace("x-amz-", "x-amz-copy-source-", 1)] = value
    if src.size <= s.multipart_copy_threshold:
        headers = {**copy_headers, **backend._write_extra, "x-amz-metadata-directive": "COPY"}
        r = await backend._send("PUT", backend._object_path(dst), op="copy", key=dst, headers=headers)
        root = xml_root(r.body)
        if root.tag.endswith("Error"):
            from ._s3wire import error_from_response

            raise error_from_response(
                500, r.headers, r.body, key=dst, operation="copy", backend=backend.name, bucket=backend.bucket
            )
        etag, date = xml_find(root, "ETag").strip('"'), iso_date(xml_find(root, "LastModified"))
    else:
        full = await backend.head(src.key)
        write_headers, _, _ = backend._write_headers(
            dst, full.content_type, full.metadata, full.cache_control, full.content_disposition
        )
        upload_id = await _create(backend, dst, write_headers, "none")
        try:
            parts = []
            for number, start in enumerate(range(0, src.size, s.copy_part_size), 1):
                end = min(start + s.copy_part_size, src.size) - 1
                h = {**copy_headers, "x-amz-copy-source-range": f"bytes={start}-{end}", **backend._read_headers}
                r = await backend._send(
                    "PUT",
                    backend._object_path(dst),
                    op="copy_part",
                    key=dst,
                    query={"partNumber": str(number), "uploadId": upload_id},
                    headers=h,
                )
                parts.append(PartInfo(number, end + 1 - start, xml_find(xml_root(r.body), "ETag").strip('"')))
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


class S3Uploads:
    """Resumable multipart upload sessions of one :class:`S3Backend` (``backend.uploads``)."""

    def __init__(self, backend: S3Backend) -> None:
        self._b = backend

    async def start(
        self,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> UploadSession:
        """Open a session for ``key``; nothing is visible until :meth:`complete`."""
        validate_key(key)
        headers, _, _ = self._b._write_headers(key, content_type, metadata, cache_control, content_disposition)
        mode = self._b.settings.checksum
        return UploadSession(key, await _create(self._b, key, headers, mode), mode)

    def resume(self, token: str) -> UploadSession:
        """The session a :attr:`UploadSession.token` stands for (in any process)."""
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            session = UploadSession(str(raw["k"]), str(raw["u"]), str(raw.get("c", "md5")))
            if session.checksum not in ("md5", "sha256", "none"):
                raise ValueError(session.checksum)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidArgumentError("malformed upload session token", backend=self._b.name) from exc
        validate_key(session.key)
        return session

    async def upload_part(self, session: UploadSession, number: int, data: Body) -> PartInfo:
        """Store part ``number`` (1..10000; any order, in parallel, from any process).

        Every part but the last must be at least 5 MiB (S3's rule); with
        ``equal_parts`` every part but the last must be exactly ``part_size``.
        Re-uploading a number replaces that part.
        """
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgumentError(f"part number must be 1..{MAX_PARTS}", key=session.key, backend=self._b.name)
        chunks = [c async for c in iter_body(data)]
        size = sum(len(c) for c in chunks)
        if size > self._b.settings.part_size and self._b._equal_parts:
            raise InvalidArgumentError("part larger than part_size", key=session.key, backend=self._b.name)
        return await _upload_part(self._b, session.key, session.upload_id, number, chunks, size, session.checksum)

    async def list_parts(self, session: UploadSession) -> list[PartInfo]:
        """The parts stored so far, by number (what a resuming client still has to send)."""
        parts: list[PartInfo] = []
        query = {"uploadId": session.upload_id, "max-parts": "1000"}
        while True:
            r = await self._b._send(
                "GET", self._b._object_path(session.key), op="list_parts", key=session.key, query=query
            )
            root = xml_root(r.body)
            for p in xml_children(root, "Part"):
                etag = xml_find(p, "ETag").strip('"')
                checksum = xml_find(p, "ChecksumSHA256") or None
                if checksum is None and session.checksum == "md5" and len(etag) == 32:
                    try:
                        checksum = base64.b64encode(bytes.fromhex(etag)).decode()
                    except ValueError:
                        checksum = None
                parts.append(PartInfo(int(xml_find(p, "PartNumber")), int(xml_find(p, "Size", "0")), etag, checksum))
            marker = xml_find(root, "NextPartNumberMarker")
            if xml_find(root, "IsTruncated") != "true" or not marker:
                return sorted(parts, key=lambda p: p.number)
            query = {**query, "part-number-marker": marker}

    async def complete(
        self,
        session: UploadSession,
        manifest: Sequence[tuple[int, str]] | Sequence[PartInfo],
        *,
        mode: WriteMode = "overwrite",
    ) -> ObjectInfo:
        """Check ``manifest`` — ``(number, checksum)`` pairs or :class:`PartInfo` — against the
        stored parts, then make the object visible. A missing part or a checksum that
        differs raises :class:`IntegrityError` and leaves the session open for a retry."""
        from .s3 import _condition_headers

        wanted = [p if isinstance(p, PartInfo) else PartInfo(int(p[0]), -1, "", p[1]) for p in manifest]
        if not wanted:
            raise InvalidArgumentError("empty manifest", key=session.key, backend=self._b.name)
        stored = {p.number: p for p in await self.list_parts(session)}
        chosen: list[PartInfo] = []
        for want in sorted(wanted, key=lambda p: p.number):
            part = stored.get(want.number)
            if part is None:
                raise IntegrityError(
                    f"part {want.number} was never uploaded",
                    key=session.key,
                    backend=self._b.name,
                    operation="complete",
                )
            known = part.checksum is not None and want.checksum is not None
            if (known and want.checksum != part.checksum) or (want.etag and want.etag != part.etag):
                raise IntegrityError(
                    f"part {want.number} differs from the stored part",
                    key=session.key,
                    backend=self._b.name,
                    operation="complete",
                )
            if session.checksum == "sha256" and part.checksum is None:
                if want.checksum is None:
                    raise IntegrityError(
                        f"part {want.number} needs its SHA-256 in the manifest (the server does not report it)",
                        key=session.key,
                        backend=self._b.name,
                        operation="complete",
                    )
                part = PartInfo(part.number, part.size, part.etag, want.checksum)  # the server verifies it
            chosen.append(part)
        if self._b._equal_parts and len({p.size for p in chosen[:-1]}) > 1:
            raise IntegrityError("parts differ in size (equal_parts)", key=session.key, backend=self._b.name)
        cond = _condition_headers(mode)
        await _complete(self._b, session.key, session.upload_id, chosen, cond, mode == "create", session.checksum)
        return await self._b.head(session.key)

    async def abort(self, session: UploadSession) -> None:
        """Discard the session and every stored part."""
        await _abort(self._b, session.key, session.upload_id)

    async def list(self, prefix: str = "") -> list[tuple[UploadSession, datetime]]:
        """Sessions still open under ``prefix``, with when each was started."""
        base = self._b.settings.prefix
        query = {"uploads": "", "prefix": base + prefix}
        out: list[tuple[UploadSession, datetime]] = []
        while True:
            r = await self._b._send("GET", self._b._bucket_path, op="list_uploads", query=query)
            root = xml_root(r.body)
            for u in xml_children(root, "Upload"):
                session = UploadSession(xml_find(u, "Key")[len(base) :], xml_find(u, "UploadId"), "")
                out.append((session, iso_date(xml_find(u, "Initiated"))))
            if xml_find(root, "IsTruncated") != "true":
                return out
            query = {
                **query,
                "key-marker": xml_find(root, "NextKeyMarker"),
                "upload-id-marker": xml_find(root, "NextUploadIdMarker"),
            }
