"""Google Cloud Storage over its JSON API, with one pooled ``httpx.AsyncClient``.

The object's **generation** is the etag: ``mode="create"`` sends
``ifGenerationMatch=0``, ``IfMatch(g)`` sends ``ifGenerationMatch=g``, and GCS
decides the condition atomically with the write. Bodies up to ``chunk_size``
go in one multipart upload; larger ones stream through a resumable session in
``chunk_size`` pieces (memory bounded by one chunk), cancelled if the body
fails so the stored object is untouched. ``open`` reads the object's metadata,
then streams the media of exactly that generation. Copies are server-side
(``rewrite``). URLs are V4-signed locally with the service-account key.
``STORAGE_EMULATOR_HOST`` points everything at an emulator (no tokens).
"""

from __future__ import annotations

import contextlib
import json
import secrets
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, ClassVar, NoReturn
from urllib.parse import quote, unquote, urlsplit

import httpx

from .._base import (
    DEFAULT_CHUNK_SIZE,
    BaseBackend,
    check_listing_args,
    check_read_conditions,
    iter_body,
)
from .._errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidRangeError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    RateLimitedError,
    StorageError,
    UnavailableError,
)
from .._keys import validate_key, validate_prefix
from .._types import (
    Body,
    ByteRange,
    Capabilities,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    SuffixRange,
    WriteMode,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._gcp import Credentials, load_credentials, v4_signed_url

__all__ = ["GCSBackend", "GCSSettings"]

_QUANTUM = 256 * 1024  # resumable chunks must be multiples of 256 KiB
_API = "https://storage.googleapis.com"
_INFO_FIELDS = "name,size,generation,updated,contentType,metadata,cacheControl,contentDisposition"


@dataclass(frozen=True, slots=True)
class GCSSettings:
    """Settings of :class:`GCSBackend` (``easy_storage`` keyword names)."""

    bucket: str = ""
    project: str | None = None
    credentials: str | None = None
    """Path of a service-account (or ``authorized_user``) JSON file; ``GOOGLE_APPLICATION_CREDENTIALS``."""
    emulator_host: str | None = None
    """``STORAGE_EMULATOR_HOST``: base URL of an emulator (fake-gcs-server); no tokens are sent."""
    prefix: str = ""
    """Prepended to every key (``gs://bucket/prefix``)."""
    chunk_size: int = 8 * 1024 * 1024
    url_expiration: int = 3600
    timeout: int = 60
    max_connections: int = 64
    page_size: int = 1000
    """Objects per listing request (GCS's maximum is 1000)."""
    endpoint: str = field(default=_API, repr=False)

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigurationError("GCS needs a bucket: set STORAGE_GCS_BUCKET")
        if self.chunk_size <= 0 or self.chunk_size % _QUANTUM:
            raise ConfigurationError("chunk_size must be a positive multiple of 256 KiB")
        if min(self.url_expiration, self.timeout, self.max_connections, self.page_size) <= 0:
            raise ConfigurationError("url_expiration, timeout, max_connections and page_size must be positive")
        if self.prefix:
            validate_prefix(self.prefix)


class GCSBackend(BaseBackend):
    """A GCS bucket (optionally under a prefix) as a unistore backend."""

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

    def __init__(self, settings: GCSSettings | None = None, **options: Any) -> None:
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self.settings = s = settings if settings is not None else GCSSettings(**options)
        self.default_expires_in = s.url_expiration
        base = (s.emulator_host or s.endpoint).rstrip("/")
        if "://" not in base:
            base = "http://" + base
        self._base = base
        self._creds: Credentials = load_credentials(s.credentials, anonymous=s.emulator_host is not None)
        sign_at = urlsplit(base if s.emulator_host else _API)
        self._sign_scheme, self._sign_host = sign_at.scheme, sign_at.netloc
        self._bucket_path = f"{base}/storage/v1/b/{quote(s.bucket, safe='')}"
        self._upload_path = f"{base}/upload/storage/v1/b/{quote(s.bucket, safe='')}/o"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout, connect=10),
            limits=httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_connections),
            headers={"User-Agent": "unistore"},
        )

    def __repr__(self) -> str:
        return f"GCSBackend(bucket={self.settings.bucket!r}, prefix={self.settings.prefix!r}, auth={self._creds.kind})"

    # --- the one error boundary ---------------------------------------------------------

    def _fail(self, r: httpx.Response, op: str, key: str | None, mode: WriteMode = "overwrite") -> NoReturn:
        status = r.status_code
        try:
            message = str(r.json()["error"]["message"]).splitlines()[0][:200]
        except Exception:
            message = r.reason_phrase or f"HTTP {status}"
        kw: dict[str, Any] = {"key": key, "backend": self.name, "operation": op}
        if status == 404:
            raise NotFoundError("no such object", **kw)
        if status == 412:
            if mode == "create":
                raise AlreadyExistsError("key already exists", **kw)
            raise PreconditionFailedError("generation precondition failed", **kw)
        if status == 304:
            raise NotModifiedError(**kw)
        if status == 416:
            raise InvalidRangeError("range not satisfiable", **kw)
        if status in (401, 403):
            raise PermissionDeniedError(f"access denied: {message}", **kw)
        if status == 429:
            retry = r.headers.get("retry-after")
            raise RateLimitedError(message, retry_after=float(retry) if retry and retry.isdigit() else None, **kw)
        if status == 408 or status >= 500:
            raise UnavailableError(f"GCS error {status}: {message}", **kw)
        if status == 413:
            raise QuotaExceededError(message, **kw)
        if status == 400:
            raise InvalidArgumentError(f"GCS rejected the request: {message}", **kw)
        raise StorageError(f"GCS error {status}: {message}", **kw)

    def _translate(self, exc: Exception, op: str, key: str | None) -> StorageError:
        if isinstance(exc, StorageError):
            return exc
        kw: dict[str, Any] = {"key": key, "backend": self.name, "operation": op}
        if isinstance(exc, httpx.HTTPStatusError):  # token endpoint
            return PermissionDeniedError(f"could not get a Google access token ({exc.response.status_code})", **kw)
        if isinstance(exc, httpx.TransportError):
            return UnavailableError(f"GCS unreachable: {type(exc).__name__}", **kw)
        return StorageError(f"GCS request failed: {type(exc).__name__}", **kw)

    async def _send(
        self, method: str, url: str, op: str, key: str | None, *, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        """One request, authenticated; transport errors translated. Idempotent requests are
        retried once on a dropped pooled connection (the server may close an idle one)."""
        headers = dict(kw.pop("headers", None) or {})
        try:
            token = await self._creds.token(self._client)
            if token:
                headers["Authorization"] = f"Bearer {token}"
            request = self._client.build_request(method, url, headers=headers, **kw)
            try:
                return await self._client.send(request, stream=stream)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if method not in ("GET", "HEAD", "DELETE") or kw.get("content") is not None:
                    raise
                return await self._client.send(self._client.build_request(method, url, headers=headers, **kw),
                                               stream=stream)
        except Exception as exc:
            raise self._translate(exc, op, key) from exc

    # --- helpers ------------------------------------------------------------------------

    def _name(self, key: str) -> str:
        return self.settings.prefix + key

    def _object_url(self, key: str) -> str:
        return f"{self._bucket_path}/o/{quote(self._name(key), safe='')}"

    def _info(self, res: Mapping[str, Any]) -> ObjectInfo:
        updated = str(res.get("updated") or res.get("timeCreated") or "")
        try:
            modified = datetime.fromisoformat(updated.replace("Z", "+00:00"))
        except ValueError:
            modified = datetime.now(UTC)
        meta = res.get("metadata") or {}
        return ObjectInfo(
            key=str(res["name"])[len(self.settings.prefix) :],
            size=int(res.get("size", 0)),
            etag=str(res["generation"]),
            last_modified=modified,
            content_type=str(res.get("contentType") or "application/octet-stream"),
            metadata={str(k): str(v) for k, v in meta.items()},
            cache_control=res.get("cacheControl"),
            content_disposition=res.get("contentDisposition"),
        )

    @staticmethod
    def _conditions(mode: WriteMode, generation: str | None = None) -> dict[str, str]:
        if mode == "overwrite":
            return {}
        if mode == "create":
            return {"ifGenerationMatch": "0"}
        if isinstance(mode, IfMatch):
            return {"ifGenerationMatch": generation or mode.etag.strip('"')}
        raise TypeError(f"invalid write mode {mode!r}")

    # --- primitives ---------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        r = await self._send("GET", self._object_url(key), "head", key)
        if r.status_code != 200:
            self._fail(r, "head", key)
        return self._info(r.json())

    async def get(self, key: str) -> bytes:
        """The object's bytes in one request (no metadata round trip)."""
        validate_key(key)
        r = await self._send("GET", self._object_url(key), "get", key, params={"alt": "media"})
        if r.status_code != 200:
            self._fail(r, "get", key)
        return r.content

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        headers: dict[str, str] = {}
        params = {"alt": "media"}
        if isinstance(range, ByteRange):
            headers["Range"] = f"bytes={range.start}-{'' if range.end is None else range.end - 1}"
        elif isinstance(range, SuffixRange):
            headers["Range"] = f"bytes=-{range.length}"
        if if_match is not None and if_match != "*":
            params["ifGenerationMatch"] = if_match.strip('"')
        if if_none_match is not None and if_none_match != "*":
            params["ifGenerationNotMatch"] = if_none_match.strip('"')
        if not all(v.isdigit() for k, v in params.items() if k != "alt"):  # not a generation: cannot match
            params.pop("ifGenerationNotMatch", None)
            if "ifGenerationMatch" in params and not params["ifGenerationMatch"].isdigit():
                raise PreconditionFailedError(
                    "if_match does not match the current etag", key=key, backend=self.name, operation="open"
                )
        r = await self._send("GET", self._object_url(key), "open", key, stream=True, params=params, headers=headers)
        if r.status_code not in (200, 206):
            await r.aread()
            if r.status_code == 416 and range is not None and "ifGenerationMatch" not in params:
                await self.head(key)  # 416 on a missing object would hide the 404
            self._fail(r, "open", key)
        try:
            info, start, end = self._info_from_media(key, r)
            # The one response is the version served: check the conditions against it too.
            check_read_conditions(info, if_match, if_none_match, self.name)
        except BaseException:
            await r.aclose()
            raise
        if end - start == 0:
            await r.aclose()
            return Download(info, b"", start=start, end=end, range_requested=range is not None)
        return Download(
            info, self._stream(r, key), start=start, end=end, range_requested=range is not None, close=r.aclose
        )

    def _info_from_media(self, key: str, r: httpx.Response) -> tuple[ObjectInfo, int, int]:
        """The served generation's info from the media response's headers, and the span served."""
        h = r.headers
        length = int(h.get("content-length", "0"))
        start, size = 0, None
        content_range = h.get("content-range")
        if r.status_code == 206 and content_range:
            span, _, total = content_range.removeprefix("bytes ").partition("/")
            start = int(span.partition("-")[0])
            size = int(total) if total.isdigit() else None
        if size is None:
            stored = h.get("x-goog-stored-content-length")
            size = int(stored) if stored and stored.isdigit() else length
        try:
            modified = parsedate_to_datetime(h["last-modified"])
        except (KeyError, TypeError, ValueError):
            modified = datetime.now(UTC)
        meta = {}
        for name, value in h.multi_items():
            if name.startswith("x-goog-meta-"):
                raw = value.encode("latin-1", "replace")
                try:
                    meta[name[12:]] = unquote(raw.decode("utf-8"))
                except UnicodeDecodeError:
                    meta[name[12:]] = value
        info = ObjectInfo(
            key=key,
            size=size,
            etag=h.get("x-goog-generation") or h.get("etag", "").strip('"'),
            last_modified=modified,
            content_type=h.get("content-type", "application/octet-stream"),
            metadata=meta,
            cache_control=h.get("cache-control"),
            content_disposition=h.get("content-disposition"),
        )
        return info, start, start + length

    async def _stream(self, r: httpx.Response, key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in r.aiter_bytes():
                yield chunk
        except Exception as exc:
            raise self._translate(exc, "read", key) from exc
        finally:
            await r.aclose()

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
        meta = normalize_metadata(metadata)
        resource: dict[str, Any] = {
            "name": self._name(key),
            "contentType": check_header_value("content_type", content_type) or guess_content_type(key),
            "metadata": meta,
        }
        if check_header_value("cache_control", cache_control) is not None:
            resource["cacheControl"] = cache_control
        if check_header_value("content_disposition", content_disposition) is not None:
            resource["contentDisposition"] = content_disposition
        generation = None
        if isinstance(mode, IfMatch) and mode.etag == "*":
            try:
                generation = (await self.head(key)).etag
            except NotFoundError:
                raise PreconditionFailedError(
                    "if_match write on a missing key", key=key, backend=self.name, operation="put"
                ) from None
        params = self._conditions(mode, generation)
        if isinstance(mode, IfMatch) and not params["ifGenerationMatch"].isdigit():
            raise PreconditionFailedError(
                "if_match does not match the current etag", key=key, backend=self.name, operation="put"
            )
        size = self.settings.chunk_size
        if isinstance(body, bytes | bytearray | memoryview) and len(body) <= size:
            return await self._multipart(key, bytes(body), resource, params, mode)
        chunks = iter_body(body, min(size, DEFAULT_CHUNK_SIZE))
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > size:
                return await self._resumable(key, buf, chunks, resource, params, mode)
        return await self._multipart(key, bytes(buf), resource, params, mode)

    async def _multipart(
        self, key: str, data: bytes, resource: dict[str, Any], params: dict[str, str], mode: WriteMode
    ) -> ObjectInfo:
        boundary = secrets.token_hex(16)
        body = b"".join(
            [
                f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
                json.dumps(resource).encode(),
                f"\r\n--{boundary}\r\nContent-Type: {resource['contentType']}\r\n\r\n".encode(),
                data,
                f"\r\n--{boundary}--\r\n".encode(),
            ]
        )
        r = await self._send(
            "POST",
            self._upload_path,
            "put",
            key,
            params={"uploadType": "multipart", "fields": _INFO_FIELDS, **params},
            content=body,
            headers={"Content-Type": f"multipart/related; boundary={boundary}"},
        )
        if r.status_code != 200:
            self._fail(r, "put", key, mode)
        return self._info(r.json())

    async def _resumable(
        self,
        key: str,
        buf: bytearray,
        rest: AsyncIterator[bytes],
        resource: dict[str, Any],
        params: dict[str, str],
        mode: WriteMode,
    ) -> ObjectInfo:
        r = await self._send(
            "POST",
            self._upload_path,
            "put",
            key,
            params={"uploadType": "resumable", "fields": _INFO_FIELDS, **params},
            json=resource,
            headers={"X-Upload-Content-Type": resource["contentType"]},
        )
        if r.status_code != 200 or "location" not in r.headers:
            self._fail(r, "put", key, mode)
        session = r.headers["location"]
        size, offset, done = self.settings.chunk_size, 0, False
        try:
            while True:
                while not done and len(buf) <= size:
                    chunk = await anext(rest, None)
                    if chunk is None:
                        done = True
                    else:
                        buf += chunk
                last = done and len(buf) <= size
                piece = bytes(buf[:size]) if not last else bytes(buf)
                end = offset + len(piece)
                total = str(end) if last else "*"
                content_range = f"bytes {offset}-{end - 1}/{total}" if piece else f"bytes */{total}"
                r = await self._send("PUT", session, "put", key, content=piece,
                                     headers={"Content-Range": content_range})
                if last:
                    if r.status_code not in (200, 201):
                        self._fail(r, "put", key, mode)
                    return self._info(r.json())
                if r.status_code != 308:
                    self._fail(r, "put", key, mode)
                committed = int(r.headers.get("range", f"bytes=0-{offset - 1}").rpartition("-")[2]) + 1
                del buf[: committed - offset]  # GCS may persist less than was sent: resend the rest
                offset = committed
        except BaseException:
            with contextlib.suppress(Exception):  # best effort: an abandoned session expires in a week
                await self._client.delete(session)  # cancel the session: nothing is committed
            raise

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        params = {}
        if if_match is not None and if_match != "*":
            params["ifGenerationMatch"] = if_match.strip('"')
            if not params["ifGenerationMatch"].isdigit():
                raise PreconditionFailedError(
                    "if_match does not match the current etag", key=key, backend=self.name, operation="delete"
                )
        elif if_match == "*":
            try:
                params["ifGenerationMatch"] = (await self.head(key)).etag
            except NotFoundError:
                params["ifGenerationMatch"] = "0"
        r = await self._send("DELETE", self._object_url(key), "delete", key, params=params)
        if r.status_code in (200, 204):
            return True
        if r.status_code == 404:
            if if_match is not None:
                raise PreconditionFailedError(
                    "if_match does not match the current etag", key=key, backend=self.name, operation="delete"
                )
            return False
        self._fail(r, "delete", key)

    async def _pages(
        self, prefix: str, start_after: str | None, fields: str
    ) -> AsyncIterator[list[dict[str, Any]]]:
        check_listing_args(prefix, start_after)
        params = {
            "prefix": self._name(prefix),
            "maxResults": str(self.settings.page_size),
            "fields": f"items({fields}),nextPageToken",
        }
        if start_after is not None and start_after > prefix:
            params["startOffset"] = self._name(start_after)
        skip = self._name(start_after) if start_after is not None else None
        while True:
            r = await self._send("GET", f"{self._bucket_path}/o", "list", prefix, params=params)
            if r.status_code != 200:
                self._fail(r, "list", prefix)
            page = r.json()
            items = [i for i in page.get("items") or () if i["name"] != skip]
            if items:
                yield items
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for items in self._pages(prefix, start_after, _INFO_FIELDS):
            for item in items:
                yield self._info(item)

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        cut = len(self.settings.prefix)
        async for items in self._pages(prefix, start_after, "name"):
            for item in items:
                yield item["name"][cut:]

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        validate_key(key)
        method = method.upper()
        if method not in ("GET", "PUT", "HEAD", "DELETE"):
            raise InvalidArgumentError(f"cannot sign a {method} URL for GCS")
        extra = {}
        if download:
            name = key.rpartition("/")[2]
            extra["response-content-disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        return v4_signed_url(
            self._creds,
            scheme=self._sign_scheme,
            host=self._sign_host,
            bucket=self.settings.bucket,
            name=self._name(key),
            method=method,
            expires_in=expires_in or self.default_expires_in,
            extra_query=extra,
        )

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        validate_key(src)
        validate_key(dst)
        generation = None
        if isinstance(mode, IfMatch) and mode.etag == "*":
            try:
                generation = (await self.head(dst)).etag
            except NotFoundError:
                raise PreconditionFailedError(
                    "if_match copy onto a missing key", key=dst, backend=self.name, operation="copy"
                ) from None
        params = {**self._conditions(mode, generation), "fields": f"done,rewriteToken,resource({_INFO_FIELDS})"}
        url = f"{self._object_url(src)}/rewriteTo/b/{quote(self.settings.bucket, safe='')}/o/" + quote(
            self._name(dst), safe=""
        )
        while True:
            r = await self._send("POST", url, "copy", src, params=params, json={})
            if r.status_code != 200:
                self._fail(r, "copy", dst if r.status_code == 412 else src, mode)
            body = r.json()
            if body.get("done"):
                return self._info(body["resource"])
            params["rewriteToken"] = body["rewriteToken"]  # large or cross-class copies take several calls

    async def ping(self) -> None:
        r = await self._send("GET", self._bucket_path, "ping", None, params={"fields": "name"})
        if r.status_code != 200:
            self._fail(r, "ping", None)

    async def aclose(self) -> None:
        await self._client.aclose()
