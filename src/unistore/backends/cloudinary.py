"""Cloudinary over its documented REST API (Upload, Admin, Download), with one pooled ``httpx.AsyncClient``.

Keys map one-to-one to public ids (reserved characters escaped as ``~XX``;
extensions stay in the public id, so ``a.png`` and ``a.jpg`` never collide)
under an optional ``folder``. The resource type follows the content type
(image / video / raw); a file the service refuses as an image or video is
stored as raw. Lookups try the type the key's extension suggests first.
Content type, cache-control, disposition and custom metadata live in the
asset's context; a ``tags`` metadata value (comma-separated) also becomes
the asset's Cloudinary tags. Uploads larger than ``chunk_size`` (Cloudinary:
at least 5 MB) go in chunks (``Content-Range`` + ``X-Unique-Upload-Id``).

Capabilities: ranges, streaming (chunked upload, streamed delivery), signed
GET URLs. Not supported (:class:`UnsupportedError`): conditional writes,
reads and deletes (Cloudinary has no atomic precondition), presigned PUT.
Listing merges three resource types and sorts, so it holds one prefix's
names in memory. Cloudinary caps public ids at 255 characters.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, ClassVar, NoReturn
from urllib.parse import quote, unquote, urlencode, urlsplit

import httpx

from .._base import BaseBackend, check_listing_args, iter_body
from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    InvalidRangeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    StorageError,
    UnavailableError,
    UnsupportedError,
)
from .._keys import validate_key
from .._types import (
    Body,
    Capabilities,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._cloudinary_api import (
    ResourceType,
    Transform,
    api_signature,
    context_string,
    decode_public_id,
    encode_public_id,
    resource_type_for,
    smart_escape,
    url_signature,
)

__all__ = ["CloudinaryBackend", "CloudinarySettings", "Transform"]

_TYPES: tuple[ResourceType, ...] = ("image", "video", "raw")
_SYSTEM = {"_ct": "content_type", "_cc": "cache_control", "_cd": "content_disposition", "_sz": "size"}


@dataclass(frozen=True, slots=True)
class CloudinarySettings:
    """Settings of :class:`CloudinaryBackend`. ``url`` is ``CLOUDINARY_URL``
    (``cloudinary://key:secret@cloud``); explicit ``cloud_name``/``api_key``/``api_secret`` win."""

    url: str | None = field(default=None, repr=False)
    cloud_name: str | None = None
    api_key: str | None = None
    api_secret: str | None = field(default=None, repr=False)
    delivery_type: str = "authenticated"
    """``authenticated`` (signed URLs only), ``private`` (download API only) or ``upload`` (public)."""
    folder: str = ""
    """Prepended to every public id."""
    upload_prefix: str = "https://api.cloudinary.com"
    cname: str | None = None
    """Delivery host (default ``res.cloudinary.com``)."""
    secure: bool = True
    signature_algorithm: str = "sha1"
    chunk_size: int = 20_000_000
    url_expiration: int = 3600
    timeout: int = 60
    max_connections: int = 64
    page_size: int = 500

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme != "cloudinary" or not parts.hostname or not parts.username or not parts.password:
                raise ConfigurationError("CLOUDINARY_URL must look like cloudinary://api_key:api_secret@cloud_name")
            for name, value in (
                ("cloud_name", parts.hostname),
                ("api_key", unquote(parts.username)),
                ("api_secret", unquote(parts.password)),
            ):
                if getattr(self, name) is None:
                    object.__setattr__(self, name, value)
        missing = [n for n in ("cloud_name", "api_key", "api_secret") if not getattr(self, n)]
        if missing:
            raise ConfigurationError(
                f"Cloudinary needs {', '.join(missing)}: set CLOUDINARY_URL or STORAGE_CLOUDINARY_"
                + "/".join(m.upper() for m in missing)
            )
        if self.delivery_type not in ("authenticated", "private", "upload"):
            raise ConfigurationError("delivery_type must be authenticated, private or upload")
        if self.signature_algorithm not in ("sha1", "sha256"):
            raise ConfigurationError("signature_algorithm must be sha1 or sha256")
        if min(self.chunk_size, self.url_expiration, self.timeout, self.max_connections, self.page_size) <= 0:
            raise ConfigurationError("sizes, timeouts and limits must be positive")
        if self.folder and not self.folder.endswith("/"):
            object.__setattr__(self, "folder", self.folder + "/")


class CloudinaryBackend(BaseBackend):
    """A Cloudinary product environment as a unistore backend; ``get_url`` takes a ``transform``."""

    capabilities: ClassVar[Capabilities] = Capabilities(ranges=True, streaming=True, signed_urls=True)

    def __init__(self, settings: CloudinarySettings | None = None, **options: Any) -> None:
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self.settings = s = settings if settings is not None else CloudinarySettings(**options)
        self.default_expires_in = s.url_expiration
        self._api = f"{s.upload_prefix.rstrip('/')}/v1_1/{s.cloud_name}"
        host = s.cname or "res.cloudinary.com"
        self._delivery = f"{'https' if s.secure else 'http'}://{host}/{s.cloud_name}"
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(s.timeout, connect=10),
            limits=httpx.Limits(max_connections=s.max_connections, max_keepalive_connections=s.max_connections),
            headers={"User-Agent": "unistore"},
        )
        self._auth = httpx.BasicAuth(str(s.api_key), str(s.api_secret))

    def __repr__(self) -> str:
        return f"CloudinaryBackend(cloud_name={self.settings.cloud_name!r}, folder={self.settings.folder!r})"

    # --- the one error boundary ---------------------------------------------------------

    def _fail(self, r: httpx.Response, op: str, key: str | None) -> NoReturn:
        status = r.status_code
        try:
            message = str(r.json()["error"]["message"]).splitlines()[0][:200]
        except Exception:
            message = r.reason_phrase or f"HTTP {status}"
        kw: dict[str, Any] = {"key": key, "backend": self.name, "operation": op}
        if status == 404:
            raise NotFoundError("no such object", **kw)
        if status == 416:
            raise InvalidRangeError("range not satisfiable", **kw)
        if status in (401, 403):
            raise PermissionDeniedError(f"access denied: {message}", **kw)
        if status == 420 or status == 429:
            retry = r.headers.get("retry-after")
            raise RateLimitedError(message, retry_after=float(retry) if retry and retry.isdigit() else None, **kw)
        if status >= 500:
            raise UnavailableError(f"Cloudinary error {status}: {message}", **kw)
        if status == 413:
            raise QuotaExceededError(message, **kw)
        if status == 400:
            raise InvalidArgumentError(f"Cloudinary rejected the request: {message}", **kw)
        raise StorageError(f"Cloudinary error {status}: {message}", **kw)

    async def _send(self, method: str, url: str, op: str, key: str | None, *, stream: bool = False,
                    **kw: Any) -> httpx.Response:
        auth = kw.pop("auth", None)
        try:
            request = self._client.build_request(method, url, **kw)
            return await self._client.send(request, stream=stream, auth=auth)
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            kind = UnavailableError if isinstance(exc, httpx.TransportError) else StorageError
            raise kind(f"Cloudinary request failed: {type(exc).__name__}", key=key, backend=self.name,
                       operation=op) from exc

    # --- helpers ------------------------------------------------------------------------

    def _pid(self, key: str) -> str:
        validate_key(key)
        return encode_public_id(self.settings.folder, key)

    def _signed(self, params: dict[str, str]) -> dict[str, str]:
        s = self.settings
        params = {k: v for k, v in params.items() if v != ""}
        params["signature"] = api_signature(params, str(s.api_secret), s.signature_algorithm)
        params["api_key"] = str(s.api_key)
        if s.signature_algorithm != "sha1":
            params["signature_algorithm"] = s.signature_algorithm
        return params

    def _info(self, res: Mapping[str, Any]) -> ObjectInfo:
        context = dict((res.get("context") or {}).get("custom") or {})
        system = {name: context.pop(short, None) for short, name in _SYSTEM.items()}
        try:
            modified = datetime.fromisoformat(str(res.get("created_at", "")).replace("Z", "+00:00"))
        except ValueError:
            modified = datetime.now(UTC)
        key = decode_public_id(self.settings.folder, str(res["public_id"]))
        return ObjectInfo(
            key=key or str(res["public_id"]),
            size=int(res.get("bytes", 0)),
            etag=f"{res.get('version', 0)}-{res.get('etag', '')}",
            last_modified=modified,
            content_type=system["content_type"] or "application/octet-stream",
            metadata=context,
            cache_control=system["cache_control"],
            content_disposition=system["content_disposition"],
        )

    @staticmethod
    def _order(key: str) -> tuple[ResourceType, ...]:
        first = resource_type_for(guess_content_type(key))
        return (first, *(t for t in _TYPES if t != first))

    async def _resource(self, key: str, op: str) -> dict[str, Any]:
        """The asset for ``key``: the type its extension suggests first, then the others."""
        pid = self._pid(key)
        first, *others = self._order(key)
        found = await self._lookup(first, pid, key, op)
        if found is None:
            for res in await asyncio.gather(*(self._lookup(t, pid, key, op) for t in others)):
                if res is not None:
                    return res
            raise NotFoundError("no such object", key=key, backend=self.name, operation=op)
        return found

    async def _lookup(self, rtype: str, pid: str, key: str, op: str) -> dict[str, Any] | None:
        url = f"{self._api}/resources/{rtype}/{self.settings.delivery_type}/{quote(pid, safe='/')}"
        r = await self._send("GET", url, op, key, auth=self._auth)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            self._fail(r, op, key)
        res: dict[str, Any] = r.json()
        return res

    def _delivery_url(self, res: Mapping[str, Any], transform: Transform | None, download: bool) -> str:
        """A delivery URL, signed unless the asset is public and untransformed."""
        s = self.settings
        rtype, pid = str(res["resource_type"]), str(res["public_id"])
        source = smart_escape(pid)
        if rtype != "raw" and res.get("format"):
            source += f".{res['format']}"
        parts = [str(transform)] if transform is not None else []
        if download:
            parts.append("fl_attachment")
        transformation = "/".join(parts)
        signature = ""
        if s.delivery_type != "upload" or transformation:
            signature = url_signature("/".join(p for p in (transformation, source) if p), str(s.api_secret)) + "/"
        trail = f"{transformation}/" if transformation else ""
        dtype = res.get("type", s.delivery_type)
        return f"{self._delivery}/{rtype}/{dtype}/{signature}{trail}v{res['version']}/{source}"

    def _download_url(self, res: Mapping[str, Any], expires_in: int, download: bool) -> str:
        """A Download API URL (private_download_url): signed, expiring, for any delivery type."""
        params = {
            "public_id": str(res["public_id"]),
            "format": str(res.get("format") or "") if res["resource_type"] != "raw" else "",
            "type": str(res.get("type", self.settings.delivery_type)),
            "attachment": "1" if download else "",  # as the SDK sends (and signs) it
            "expires_at": str(int(time.time()) + expires_in),
            "timestamp": str(int(time.time())),
        }
        query = urlencode(self._signed(params), quote_via=quote)
        return f"{self._api}/{res['resource_type']}/download?{query}"

    # --- primitives ---------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        return self._info(await self._resource(key, "head"))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        if if_match is not None or if_none_match is not None:
            raise UnsupportedError("Cloudinary has no conditional reads", key=key, backend=self.name,
                                   operation="open")
        res = await self._resource(key, "open")
        info = self._info(res)
        start, end = (0, info.size) if range is None else range.resolve(info.size)
        if end == start:
            return Download(info, b"", start=0, end=0)
        url = (
            self._download_url(res, 300, False)
            if self.settings.delivery_type == "private"
            else self._delivery_url(res, None, False)
        )
        headers = {"Range": f"bytes={start}-{end - 1}"} if range is not None else {}
        r = await self._send("GET", url, "open", key, stream=True, headers=headers)
        if r.status_code not in (200, 206):
            await r.aread()
            self._fail(r, "open", key)
        if range is not None and r.status_code == 200:  # a CDN may ignore Range: never serve the wrong bytes
            await r.aclose()
            raise UnavailableError("the delivery server ignored the Range header", key=key, backend=self.name,
                                   operation="open")
        return Download(info, self._stream(r, key), start=start, end=end, range_requested=range is not None,
                        close=r.aclose)

    async def _stream(self, r: httpx.Response, key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in r.aiter_bytes():
                yield chunk
        except Exception as exc:
            raise UnavailableError(f"Cloudinary read failed: {type(exc).__name__}", key=key, backend=self.name,
                                   operation="read") from exc
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
        res = await self._put(key, body, content_type, metadata, mode, cache_control, content_disposition)
        return self._info(res)

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``data`` and return its URL, built from the upload's answer (no extra lookup)."""
        res = await self._put(key, data, content_type, metadata, "overwrite", None, None)
        return self._url_for(res, self.default_expires_in, False, None)

    async def _put(
        self,
        key: str,
        body: Body,
        content_type: str | None,
        metadata: Mapping[str, Any] | None,
        mode: WriteMode,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> dict[str, Any]:
        pid = self._pid(key)
        if mode != "overwrite":
            raise UnsupportedError("Cloudinary has no atomic conditional writes", key=key, backend=self.name,
                                   operation="put")
        meta = normalize_metadata(metadata)
        ctype = check_header_value("content_type", content_type) or guess_content_type(key)
        context = dict(meta)
        context["_ct"] = ctype
        if check_header_value("cache_control", cache_control) is not None:
            context["_cc"] = str(cache_control)
        if check_header_value("content_disposition", content_disposition) is not None:
            context["_cd"] = str(content_disposition)
        params = {
            "public_id": pid,
            "type": self.settings.delivery_type,
            "overwrite": "true",
            "invalidate": "true",
            "context": context_string(context),
            "tags": meta.get("tags", ""),
        }
        source = await _Source.load(body, self.settings.chunk_size)
        try:
            rtype = resource_type_for(ctype)
            try:
                res = await self._upload(rtype, params, source, key)
            except InvalidArgumentError as exc:
                if rtype == "raw" or not any(w in str(exc).lower() for w in ("invalid", "unsupported")):
                    raise
                rtype = "raw"  # not a file the service can process as an image/video: keep its bytes as raw
                res = await self._upload(rtype, params, source, key)
        finally:
            await source.aclose()
        if rtype != self._order(key)[0]:
            # The extension suggests another type: remove a previous version stored under it, so
            # lookups (which try that type first) find this one.
            await asyncio.gather(*(self._destroy(t, pid, key) for t in _TYPES if t != rtype))
        return res

    async def _upload(self, rtype: str, params: dict[str, str], source: _Source, key: str) -> dict[str, Any]:
        url = f"{self._api}/{rtype}/upload"
        base = {**params, "timestamp": str(int(time.time()))}
        if source.size <= self.settings.chunk_size:
            data = await source.read_at(0, source.size)
            r = await self._send("POST", url, "put", key, data=self._signed(base),
                                 files={"file": ("blob", data, "application/octet-stream")})
            if r.status_code != 200:
                self._fail(r, "put", key)
            res: dict[str, Any] = r.json()
            return res
        upload_id = os.urandom(16).hex()
        offset = 0
        while offset < source.size:
            n = min(self.settings.chunk_size, source.size - offset)
            data = await source.read_at(offset, n)
            headers = {
                "Content-Range": f"bytes {offset}-{offset + n - 1}/{source.size}",
                "X-Unique-Upload-Id": upload_id,
            }
            r = await self._send("POST", url, "put", key, data=self._signed(base), headers=headers,
                                 files={"file": ("blob", data, "application/octet-stream")})
            if r.status_code != 200:
                self._fail(r, "put", key)
            offset += n
        res = r.json()
        return res

    async def _destroy(self, rtype: str, pid: str, key: str) -> bool:
        params = self._signed({"public_id": pid, "type": self.settings.delivery_type, "invalidate": "true",
                               "timestamp": str(int(time.time()))})
        r = await self._send("POST", f"{self._api}/{rtype}/destroy", "delete", key, data=params)
        if r.status_code != 200:
            self._fail(r, "delete", key)
        return bool(r.json().get("result") == "ok")

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        pid = self._pid(key)
        if if_match is not None:
            raise UnsupportedError("Cloudinary has no conditional deletes", key=key, backend=self.name,
                                   operation="delete")
        results = await asyncio.gather(*(self._destroy(t, pid, key) for t in self._order(key)))
        return any(results)

    async def _names(self, prefix: str, start_after: str | None, detailed: bool) -> list[dict[str, Any]]:
        check_listing_args(prefix, start_after)
        pid_prefix = encode_public_id(self.settings.folder, prefix) if prefix else self.settings.folder
        found: dict[str, dict[str, Any]] = {}

        async def one_type(rtype: str) -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            params = {"prefix": pid_prefix, "max_results": str(self.settings.page_size)}
            if detailed:
                params["context"] = "true"
            while True:
                url = f"{self._api}/resources/{rtype}/{self.settings.delivery_type}"
                r = await self._send("GET", url, "list", prefix, params=params, auth=self._auth)
                if r.status_code != 200:
                    self._fail(r, "list", prefix)
                page = r.json()
                out += page.get("resources") or []
                if not page.get("next_cursor"):
                    return out
                params["next_cursor"] = page["next_cursor"]

        for resources in await asyncio.gather(*(one_type(t) for t in _TYPES)):
            for res in resources:
                key = decode_public_id(self.settings.folder, str(res["public_id"]))
                if key is None or not key.startswith(prefix) or (start_after is not None and key <= start_after):
                    continue
                # A stale copy under another type can outlive a type change: the preferred type wins.
                if key in found and self._order(key).index(found[key]["resource_type"]) <= self._order(
                    key
                ).index(res["resource_type"]):
                    continue
                found[key] = res
        return [found[k] for k in sorted(found)]

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        for res in await self._names(prefix, start_after, True):
            yield self._info(res)

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        folder = self.settings.folder
        for res in await self._names(prefix, start_after, False):
            yield decode_public_id(folder, str(res["public_id"])) or ""

    def _url_for(self, res: Mapping[str, Any], expires_in: int, download: bool, transform: Transform | None) -> str:
        if transform is not None or (self.settings.delivery_type == "upload" and not download):
            return self._delivery_url(res, transform, download)
        return self._download_url(res, expires_in, download)

    async def sign_url(
        self,
        key: str,
        *,
        expires_in: int | None = None,
        download: bool = False,
        method: str = "GET",
        transform: Transform | None = None,
    ) -> str:
        """GET URLs only. Without ``transform``: a Download API URL, signed and expiring after
        ``expires_in`` (for public assets, the plain delivery URL). With ``transform``: a signed
        delivery URL, which Cloudinary does not expire (that needs its token-based-auth add-on)."""
        if method.upper() != "GET":
            raise UnsupportedError("Cloudinary has no presigned upload URLs", key=key, backend=self.name,
                                   operation="sign_url")
        expires = expires_in or self.default_expires_in
        if expires <= 0:
            raise InvalidArgumentError("expires_in must be positive", key=key)
        return self._url_for(await self._resource(key, "sign_url"), expires, download, transform)

    async def get_url(
        self, key: str, expires_in: int | None = 3600, download: bool = False, *, transform: Transform | None = None
    ) -> str:
        """A URL for an existing object; ``transform`` resizes/crops/converts on delivery."""
        return await self.sign_url(key, expires_in=expires_in, download=download, transform=transform)

    async def ping(self) -> None:
        r = await self._send("GET", f"{self._api}/ping", "ping", None, auth=self._auth)
        if r.status_code != 200:
            self._fail(r, "ping", None)

    async def aclose(self) -> None:
        await self._client.aclose()


class _Source:
    """A body with a known size, readable at any offset (uploads are replayable): bytes in memory,
    a path on disk, or a stream spooled to a temporary file once it outgrows one chunk."""

    def __init__(self, data: bytes | None, file: IO[bytes] | None, size: int, owned: bool) -> None:
        self._data, self._file, self.size, self._owned = data, file, size, owned

    @classmethod
    async def load(cls, body: Body, chunk_size: int) -> _Source:
        if isinstance(body, bytes | bytearray | memoryview):
            return cls(bytes(body), None, len(body), False)
        if isinstance(body, os.PathLike):
            f = await asyncio.to_thread(open, os.fspath(body), "rb")
            return cls(None, f, os.fstat(f.fileno()).st_size, True)
        buf = bytearray()
        spool: IO[bytes] | None = None
        try:
            async for chunk in iter_body(body, min(chunk_size, 1 << 20)):
                if spool is None:
                    buf += chunk
                    if len(buf) > chunk_size:
                        spool = await asyncio.to_thread(tempfile.TemporaryFile)
                        await asyncio.to_thread(spool.write, bytes(buf))
                        buf.clear()
                else:
                    await asyncio.to_thread(spool.write, chunk)
        except BaseException:
            if spool is not None:
                await asyncio.to_thread(spool.close)
            raise
        if spool is None:
            return cls(bytes(buf), None, len(buf), False)
        size = await asyncio.to_thread(spool.tell)
        return cls(None, spool, size, True)

    async def read_at(self, offset: int, n: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + n]
        assert self._file is not None
        f = self._file

        def read() -> bytes:
            f.seek(offset)
            return f.read(n)

        return await asyncio.to_thread(read)

    async def aclose(self) -> None:
        if self._file is not None and self._owned:
            await asyncio.to_thread(self._file.close)
