"""S3-compatible object storage: AWS S3, MinIO, SeaweedFS, Cloudflare R2, Backblaze B2, Wasabi, DO Spaces.

The data path speaks the S3 REST protocol directly with SigV4 signing
(``_wire``): requests and downloads over a lean HTTP/1.1 keep-alive pool (``_fast``),
streamed uploads over one pooled aiohttp session per event loop. Per request
that costs a fraction of botocore's CPU and less than obstore's (see
``docs/design.md``, "S3 backend", for the measurement). botocore is used only where it adds something: the standard AWS
credential chain (profiles, SSO, IMDS, session tokens) and the raw client
escape hatch ``backend._client`` for provider-specific calls.

Deviations from the common contract, all S3's own:

* The etag is the server's (an MD5 for simple uploads): writing the same bytes
  twice gives the same etag, and metadata-only differences do not change it.
* ``remove`` needs a HEAD before the DELETE (S3 answers 204 either way) and deletes
  that version with If-Match, so one of several concurrent deletes reports ``True``.
  For servers that ignore If-Match on DELETE set ``conditional_delete=False``.
* Listings carry size, etag and date but not content type or metadata.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

from ..._base import BaseBackend, check_listing_args, iter_body, path_size, quote_etag, settings_from
from ..._errors import (
    ConfigurationError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    UnavailableError,
    UnsupportedError,
)
from ..._keys import validate_key
from ..._types import (
    Body,
    ByteRange,
    Capabilities,
    CommonPrefix,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    current_storage_class,
    guess_content_type,
    normalize_metadata,
)
from .._extras import require_extra
from . import _auth
from ._fast import FastStream
from ._http import FAST_MAX, S3Connection
from ._multipart import PartFailure, PartInfo
from ._sessions import S3Uploads, UploadSession
from ._settings import S3Settings, check_s3_class
from ._wire import (
    checksum_header,
    decode_meta,
    encode_meta,
    http_date,
    iso_date,
    xml_find,
)
from ._wire import (
    condition_headers as _condition_headers,
)
from ._xml import ENCODED, ListPage, parse_xml, usable_key, xml_result

__all__ = ["PartFailure", "PartInfo", "S3Backend", "S3Settings", "S3Uploads", "UploadSession"]

MiB = 1024 * 1024
_COPY_LIMIT = 5 * 1024**3  # the largest object one CopyObject may copy
_SMALL_READ = 256 * 1024  # a GET at most this long is read at once and its connection released


class S3Backend(BaseBackend):
    """One bucket of an S3-compatible store (see the module docstring for deviations)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
        presigned_put=True,
        server_side_copy=True,
        max_object_size=5 * 1024**4,
    )

    def __init__(self, settings: S3Settings | None = None, **options: Any) -> None:
        require_extra("S3Backend", "s3", "aiohttp", "aioboto3")  # imported on first use
        self.settings = s = settings_from(S3Settings, settings, options)
        self.bucket = s.bucket
        self.default_expires_in = s.url_expiration
        self._conn = conn = S3Connection(s, self.name)
        # the connection's parts, used by the multipart and URL helpers
        self._send = conn.send
        self._object_path = conn.object_path
        self.credentials = conn.credentials
        self._signer, self._host, self._origin = conn.signer, conn.host, conn.origin
        self._bucket_path, self._read_headers, self._write_extra = conn.bucket_path, conn.read_headers, conn.write_extra
        self._bucket_exists = False  # a HEAD that succeeded, or the bucket seen after a HEAD's 404
        self._equal_parts = s.equal_parts if s.equal_parts is not None else "r2.cloudflarestorage.com" in conn.origin
        if not s.conditional_delete:
            self.capabilities = replace(type(self).capabilities, conditional_delete=False)  # type: ignore[misc]
        self._boto: Any = None  # aiobotocore client context, created on first use of _client
        self._boto_client: Any = None
        self._client = _auth.BotoProxy(self)
        self._part_listeners: list[Callable[[PartFailure], object]] = []

    def add_part_listener(self, callback: Callable[[PartFailure], object]) -> None:
        """Call ``callback`` for every multipart part that fails (``Observe`` counts them)."""
        self._part_listeners.append(callback)

    def _part_failed(self, failure: PartFailure) -> None:
        for callback in self._part_listeners:
            callback(failure)

    @property
    def uploads(self) -> S3Uploads:
        """Resumable multipart upload sessions (start, upload parts, list, complete, abort)."""

        return S3Uploads(self)

    def __repr__(self) -> str:
        return (
            f"S3Backend(bucket={self.bucket!r}, endpoint={self.settings.endpoint!r}, prefix={self.settings.prefix!r})"
        )

    # --- reads --------------------------------------------------------------------------------

    def _info(self, key: str, headers: Mapping[str, str], size: int) -> ObjectInfo:
        meta = {
            name[11:].lower(): decode_meta(value)
            for name, value in headers.items()
            if name[:11].lower() == "x-amz-meta-"
        }
        return ObjectInfo(
            key=key,
            size=size,
            etag=headers.get("ETag", "").strip('"'),
            last_modified=http_date(headers.get("Last-Modified")),
            content_type=headers.get("Content-Type") or "application/octet-stream",
            metadata=meta,
            cache_control=headers.get("Cache-Control"),
            content_disposition=headers.get("Content-Disposition"),
            storage_class=headers.get("x-amz-storage-class") or "STANDARD",  # S3 names every class but this one
        )

    async def head(self, key: str) -> ObjectInfo:
        """A HEAD's 404 has no body to tell a missing bucket from a missing object: until the bucket
        is known to exist, the bucket is asked (a missing one is a :class:`ConfigurationError`)."""
        validate_key(key)
        try:
            r = await self._send("HEAD", self._object_path(key), op="head", key=key, headers=dict(self._read_headers))
        except NotFoundError:
            if not self._bucket_exists:
                empty = {"list-type": "2", "max-keys": "0"}
                await self._send("GET", self._bucket_path, op="head", key=key, query=empty)
                self._bucket_exists = True
            raise
        self._bucket_exists = True
        return self._info(key, r.headers, int(r.headers.get("Content-Length", 0)))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        headers = dict(self._read_headers)
        if range is not None:
            if isinstance(range, ByteRange):
                end = "" if range.end is None else str(range.end - 1)
                headers["range"] = f"bytes={range.start}-{end}"
            else:
                headers["range"] = f"bytes=-{range.length}"
        if if_match is not None:
            headers["if-match"] = quote_etag(if_match)
        if if_none_match is not None:
            headers["if-none-match"] = quote_etag(if_none_match)
        if isinstance(range, ByteRange) and range.end is not None and range.end - range.start <= FAST_MAX:
            return await self._open_small(key, range, headers)
        resp = await self._send("GET", self._object_path(key), op="open", key=key, headers=headers, stream=True)
        try:
            length = int(resp.headers.get("Content-Length", 0))
            start, size = 0, length
            if resp.status == 206:
                span, _, total = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
                start, size = int(span.partition("-")[0]), int(total)
            elif range is not None:  # a server that ignored the range: take the span from the whole body
                start, _end = range.resolve(length)
            info = self._info(key, resp.headers, size)
            if length <= _SMALL_READ or (range is not None and resp.status == 200):
                data = await resp.read()
                if range is not None and resp.status == 200:
                    data = data[start:_end]
                    length = len(data)
                resp.release()
                return Download(info, data, start=start, end=start + length, range_requested=range is not None)
        except StorageError:
            resp.release()
            raise
        except Exception as exc:
            resp.release()
            raise UnavailableError(f"read failed: {exc}", key=key, backend=self.name, operation="open") from exc

        async def close() -> None:
            resp.release()

        return Download(
            info,
            self._stream(resp, key),
            start=start,
            end=start + length,
            range_requested=range is not None,
            close=close,
        )

    async def _open_small(self, key: str, range: ByteRange, headers: dict[str, str]) -> Download:
        """A bounded range of at most ``FAST_MAX`` bytes: one request through the lean pool, read whole."""
        r = await self._send("GET", self._object_path(key), op="open", key=key, headers=headers)
        data = r.body
        if r.status == 206:
            span, _, total = r.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
            start, size = int(span.partition("-")[0]), int(total)
        else:  # a server that ignored the range: take the span from the whole body
            size = len(data)
            start, end = range.resolve(size)
            data = data[start:end]
        info = self._info(key, r.headers, size)
        return Download(info, data, start=start, end=start + len(data), range_requested=True)

    async def _stream(self, resp: FastStream, key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in resp.iter_chunks(_SMALL_READ):
                yield chunk
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            raise UnavailableError(
                f"download interrupted: {type(exc).__name__}: {exc}", key=key, backend=self.name, operation="open"
            ) from exc
        finally:
            resp.release()

    # --- writes ----------------------------------------------------------------------------------

    def _write_headers(
        self,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, Any] | None,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> tuple[dict[str, str], str, dict[str, str]]:
        meta = normalize_metadata(metadata)
        ctype = check_content_type(content_type) or guess_content_type(key)
        check_header_value("cache_control", cache_control)
        check_header_value("content_disposition", content_disposition)
        headers = {"content-type": ctype, **self._write_extra}
        wanted = current_storage_class()
        if wanted is not None:
            headers["x-amz-storage-class"] = check_s3_class(wanted)
        for name, value in meta.items():
            headers["x-amz-meta-" + name] = encode_meta(value)
        if cache_control:
            headers["cache-control"] = cache_control
        if content_disposition:
            headers["content-disposition"] = content_disposition
        return headers, ctype, meta

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        headers, ctype, meta = self._write_headers(key, content_type, metadata, cache_control, content_disposition)
        cond = _condition_headers(mode)
        part_size = self.settings.part_size
        total = len(body) if isinstance(body, bytes | bytearray | memoryview) else None
        if total is not None and total <= part_size:
            chunks, size, rest = [bytes(body)], total, None  # type: ignore[arg-type]
        elif isinstance(body, os.PathLike) and (file_size := await path_size(body)) > part_size:
            from ._multipart import upload_file

            return await upload_file(self, key, os.fspath(body), file_size, headers, cond, ctype, meta)
        else:
            rest = iter_body(body, chunk_size=MiB).__aiter__()
            chunks, size = await _fill(rest, part_size)
            if size < part_size:
                rest = None
        if rest is not None:
            from ._multipart import upload_stream

            return await upload_stream(self, key, headers, cond, chunks, rest, ctype, meta, total)
        headers.update(checksum_header(self.settings.checksum, chunks)[0])
        headers.update(cond)
        headers["content-length"] = str(size)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            r = await self._send(
                "PUT", self._object_path(key), op="put", key=key, headers=headers, body=data, create=mode == "create"
            )
        except NotFoundError as exc:  # If-Match on a missing key: some servers answer 404
            raise PreconditionFailedError(
                "if_match write on a missing key", key=key, backend=self.name, operation="put"
            ) from exc
        return ObjectInfo(
            key=key,
            size=size,
            etag=r.headers.get("ETag", "").strip('"'),
            last_modified=http_date(r.headers.get("Date")),
            content_type=ctype,
            metadata=meta,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        if not self.settings.conditional_delete:
            if if_match is not None:
                raise UnsupportedError(
                    "this server ignores If-Match on DELETE", key=key, backend=self.name, operation="delete"
                )
            try:
                await self.head(key)
            except NotFoundError:
                return False
            await self._send("DELETE", self._object_path(key), op="delete", key=key)
            return True
        if if_match is not None:
            try:
                await self._delete_if(key, if_match)
            except NotFoundError as exc:
                raise PreconditionFailedError(
                    "if_match on a missing key", key=key, backend=self.name, operation="delete"
                ) from exc
            return True
        # DELETE answers 204 whether or not the key existed: delete the version a HEAD saw,
        # conditionally, so that of several concurrent deletes exactly one reports True.
        while True:
            try:
                etag = (await self.head(key)).etag
                await self._delete_if(key, etag)
                return True
            except NotFoundError:
                return False
            except PreconditionFailedError:
                continue  # replaced or deleted since the HEAD: look again

    async def _delete_if(self, key: str, etag: str) -> None:
        headers = {"if-match": quote_etag(etag)}
        await self._send("DELETE", self._object_path(key), op="delete", key=key, headers=headers)

    # --- listing ---------------------------------------------------------------------------------

    async def _pages(
        self, prefix: str, start_after: str | None, delimiter: str | None = None
    ) -> AsyncIterator[ListPage]:
        """ListObjectsV2 answers. The next page starts from the continuation token, or after the
        page's last (decoded) name where the token is missing or altered: SeaweedFS's token is the
        raw last key with control characters replaced. From the third page on, the next page is
        requested while the caller reads the current one (a caller that stops after the first
        page, as a folder test does, costs no extra request)."""
        check_listing_args(prefix, start_after)
        base = self.settings.prefix
        first = {"list-type": "2", "prefix": base + prefix, "max-keys": str(self.settings.page_size)}
        first["encoding-type"] = ENCODED
        if delimiter is not None:
            first["delimiter"] = delimiter
        query: dict[str, str] | None = dict(first)
        if start_after is not None:
            query = {**first, "start-after": base + start_after}

        async def fetch(query: dict[str, str]) -> ListPage:
            r = await self._send("GET", self._bucket_path, op="list", query=query)
            return ListPage(parse_xml(r.body, operation="list", backend=self.name, key=prefix))

        def following(page: ListPage) -> dict[str, str] | None:
            if page.fields.get("IsTruncated") != "true":
                return None
            token = page.fields.get("NextContinuationToken")
            if token and "\ufffd" not in token:
                return {**first, "continuation-token": token}
            names = [page.name(e.findtext("{*}Key") or "") for e in page.contents[-1:]]
            names += [page.name(e.findtext("{*}Prefix") or "") for e in page.prefixes[-1:]]
            return {**first, "start-after": max(names)} if names else None

        ahead: asyncio.Future[ListPage] | None = None
        try:
            for number in itertools.count():
                if query is None:
                    return
                page = await (ahead if ahead is not None else fetch(query))
                ahead, query = None, following(page)
                if query is not None and number >= 1:
                    ahead = asyncio.ensure_future(fetch(query))
                yield page
        finally:
            if ahead is not None and not ahead.done():
                ahead.cancel()
            if ahead is not None:
                ahead.add_done_callback(_quiet)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        cut = len(self.settings.prefix)
        async for page in self._pages(prefix, start_after):
            name = page.name
            for item in page.contents:
                info = _listed(item, name, cut)
                if info is not None:
                    yield info

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        if not isinstance(delimiter, str) or not delimiter:
            raise InvalidArgumentError("delimiter must be a non-empty str")
        cut = len(self.settings.prefix)
        async for page in self._pages(prefix, start_after, delimiter):
            name = page.name
            entries: list[tuple[str, ObjectInfo | CommonPrefix]] = []
            for item in page.contents:
                info = _listed(item, name, cut)
                if info is not None:
                    entries.append((info.key, info))
            for item in page.prefixes:
                folder = name(xml_find(item, "Prefix"))[cut:]
                if folder.endswith(delimiter) and usable_key(folder[: -len(delimiter)]):
                    entries.append((folder, CommonPrefix(folder)))
            for entry_name, entry in sorted(entries, key=lambda pair: pair[0]):
                if start_after is None or entry_name > start_after:  # S3 repeats a folder the cursor is inside
                    yield entry

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        cut = len(self.settings.prefix)
        async for page in self._pages(prefix, start_after):
            name = page.name
            for item in page.contents:
                key = name(item.findtext("{*}Key") or "")[cut:]
                if usable_key(key):
                    yield key

    # --- URLs (SigV4 presigning, in _auth) -----------------------------------------------------

    async def presign(
        self,
        key: str,
        *,
        method: str = "GET",
        expires_in: int | None = None,
        download: bool = False,
        content_type: str | None = None,
    ) -> str:
        """A SigV4 presigned URL for ``method`` (GET, HEAD, PUT, DELETE) on ``key``.

        GET: ``download=True`` adds an attachment disposition and ``content_type``
        overrides the response's Content-Type. PUT: ``content_type`` is signed, so the
        uploader must send exactly that ``Content-Type``. At most 7 days.
        """
        return await _auth.presign(
            self, key, method=method, expires_in=expires_in, download=download, content_type=content_type
        )

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        return await _auth.presign(self, key, method=method, expires_in=expires_in, download=download)

    async def presign_post(
        self,
        key: str,
        *,
        expires_in: int | None = None,
        content_type: str | None = None,
        content_type_prefix: str | None = None,
        max_size: int | None = None,
        min_size: int = 0,
    ) -> tuple[str, dict[str, str]]:
        """A browser upload form: POST ``fields`` plus the file (field ``file``, last) to the URL.

        The policy pins the key, and limits the size to ``[min_size, max_size]`` and the
        content type to ``content_type`` exactly or to ``content_type_prefix`` (``"image/"``).
        ``fields`` always carry ``Content-Type``: with a prefix, the key's type where it starts with
        the prefix, else the prefix itself; a form may replace it with any type under the prefix.
        """
        return await _auth.presign_post(
            self,
            key,
            expires_in=expires_in,
            content_type=content_type,
            content_type_prefix=content_type_prefix,
            max_size=max_size,
            min_size=min_size,
        )

    async def boto_client(self) -> Any:
        """The raw aiobotocore S3 client (created once, closed by :meth:`aclose`)."""
        return await _auth.boto_client(self)

    # --- copy, health, close ------------------------------------------------------------------------

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """Server-side copy (multipart copy above ``multipart_copy_threshold``); conditional
        modes stream through a conditional PUT so the condition stays atomic."""
        validate_key(src)
        validate_key(dst)
        if mode != "overwrite":
            return await super().copy(src, dst, mode=mode)
        info = await self.head(src)
        from ._multipart import copy_object

        return await copy_object(self, info, dst)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Native where the server honours ``If-Match`` on CopyObject (``copy_if_match``) and up to
        5 GiB: CopyObject onto itself with ``x-amz-metadata-directive: REPLACE``, conditional on the
        source etag (``x-amz-copy-source-if-match``) and the destination's (``If-Match``). Else the
        object streams onto itself with a conditional PUT."""
        validate_key(key)
        native = self.settings.copy_if_match
        if native is None:
            native = self.settings.endpoint is None
        if not native:
            return await super().replace_metadata(key, metadata, if_match=if_match)
        info = await self.head(key)
        if if_match is not None and if_match != "*" and if_match.strip('"') != info.etag:
            raise PreconditionFailedError(
                "if_match does not match the current etag", key=key, backend=self.name, operation="replace_metadata"
            )
        if info.size > _COPY_LIMIT:
            return await super().replace_metadata(key, metadata, if_match=info.etag)
        headers, ctype, meta = self._write_headers(
            key, info.content_type, metadata, info.cache_control, info.content_disposition
        )
        source = "/" + self.bucket + "/" + self._object_path(key).removeprefix(self._bucket_path)
        headers.update(
            {
                "x-amz-copy-source": source,
                "x-amz-copy-source-if-match": quote_etag(info.etag),
                "if-match": quote_etag(info.etag),
                "x-amz-metadata-directive": "REPLACE",
            }
        )
        for name, value in self._read_headers.items():
            headers[name.replace("x-amz-", "x-amz-copy-source-", 1)] = value
        r = await self._send("PUT", self._object_path(key), op="replace_metadata", key=key, headers=headers)
        root = xml_result(
            r.body, r.headers, key=key, operation="replace_metadata", backend=self.name, bucket=self.bucket
        )
        return replace(
            info,
            etag=xml_find(root, "ETag").strip('"'),
            last_modified=iso_date(xml_find(root, "LastModified")),
            content_type=ctype,
            metadata=meta,
        )

    async def allow_browser_uploads(self, origins: Sequence[str], *, max_age: int = 3600) -> None:
        """Set the bucket's CORS rule so pages on ``origins`` (``scheme://host[:port]``) may send
        presigned part uploads straight to it: ``PUT``/``GET``/``HEAD``, any request header, ``ETag``
        exposed, preflights cached ``max_age`` seconds. Replaces the bucket's whole CORS configuration
        (S3 keeps one per bucket, whatever this backend's ``prefix``)."""
        from ._cors import put_browser_cors

        await put_browser_cors(self, origins, max_age=max_age)

    async def cors_origins(self) -> list[str]:
        """The origins the bucket's CORS configuration allows (empty without one)."""
        from ._cors import get_cors_origins

        return await get_cors_origins(self)

    async def ping(self) -> None:
        try:
            await self._send("HEAD", self._bucket_path, op="ping")
        except NotFoundError as exc:  # HEAD answers carry no error code: a 404 here is the bucket
            raise ConfigurationError(
                f"bucket {self.bucket!r} does not exist", backend=self.name, operation="ping"
            ) from exc

    async def aclose(self) -> None:
        await self._conn.close()
        boto, self._boto, self._boto_client = self._boto, None, None
        if boto is not None:
            await boto.__aexit__(None, None, None)


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned task's outcome, so that its failure is not reported as unhandled."""
    if not task.cancelled():
        task.exception()


def _listed(item: Any, name: Callable[[str], str], cut: int) -> ObjectInfo | None:
    """The object of a listing's ``Contents`` element (its children read in one pass, in any
    namespace), or None for a key unistore cannot use."""
    fields = {child.tag.rpartition("}")[2]: child.text or "" for child in item}
    key = name(fields.get("Key", ""))[cut:]
    if not usable_key(key):
        return None
    return ObjectInfo(
        key=key,
        size=int(fields.get("Size") or 0),
        etag=fields.get("ETag", "").strip('"'),
        last_modified=iso_date(fields.get("LastModified")),
        content_type=None,  # ListObjectsV2 does not return it: unknown, never guessed
        storage_class=fields.get("StorageClass") or None,
    )


async def _fill(it: AsyncIterator[bytes], target: int) -> tuple[list[bytes], int]:
    """Read chunks from ``it`` until ``target`` bytes or the end; returns the chunks and their size."""
    chunks: list[bytes] = []
    size = 0
    while size < target:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            break
        chunks.append(chunk)
        size += len(chunk)
    return chunks, size
