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

Capabilities: ranges, streaming, signed GET URLs. Not supported
(:class:`UnsupportedError`): conditional writes, reads and deletes (Cloudinary
has no atomic precondition), presigned PUT. Public ids are capped at 255
characters. Private modules: conventions and errors (``_cloudinary_api``), URLs
(``_cloudinary_urls``), uploads (``_cloudinary_upload``), listing (``_cloudinary_list``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

import httpx

from .._base import BaseBackend, check_listing_args, refuse_storage_class, settings_from
from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
    UnavailableError,
    UnsupportedError,
)
from .._keys import validate_key
from .._types import (
    Body,
    Capabilities,
    CommonPrefix,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._cloudinary_api import (
    RESOURCE_TYPES,
    Transform,
    asset_context,
    decode_public_id,
    encode_public_id,
    info_from_resource,
    json_of,
    raise_for,
    resource_type_for,
    type_order,
)
from ._cloudinary_list import level_listing, merged_listing
from ._cloudinary_upload import Source, upload_asset
from ._cloudinary_urls import Urls
from ._httpclient import pooled_client

__all__ = ["CloudinaryBackend", "CloudinarySettings", "Transform"]

_EAGER = 256 * 1024  # delivered spans up to this size are read at once in open()


@dataclass(frozen=True, slots=True)
class CloudinarySettings:
    """Settings of :class:`CloudinaryBackend`. ``url`` is ``CLOUDINARY_URL``
    (``cloudinary://key:secret@cloud?option=value…``); explicit ``cloud_name``/``api_key``/``api_secret``
    win over it, and its query options (``upload_prefix``, ``cname``, ``secure``, any setting) apply to
    settings left at their defaults (read by the one URL parser, ``backend_from_url``'s)."""

    url: str | None = field(default=None, repr=False)
    """``cloudinary://api_key:api_secret@cloud_name[?option=value…]``: credentials and settings in one value."""
    cloud_name: str | None = None
    """The product environment's cloud name (else from ``url``)."""
    api_key: str | None = None
    """API key (else from ``url``)."""
    api_secret: str | None = field(default=None, repr=False)
    """API secret (else from ``url``)."""
    delivery_type: str = "authenticated"
    """``authenticated`` (signed URLs only), ``private`` (download API only) or ``upload`` (public)."""
    folder: str = ""
    """Prepended to every public id."""
    upload_prefix: str = "https://api.cloudinary.com"
    """Base URL of the upload and admin APIs."""
    cname: str | None = None
    """Delivery host (default ``res.cloudinary.com``)."""
    secure: bool = True
    """Delivery URLs use https."""
    signature_algorithm: str = "sha1"
    """How requests and URLs are signed: ``sha1`` or ``sha256`` (as set on the product environment)."""
    chunk_size: int = 20_000_000
    """Bytes per chunk of a chunked upload; smaller bodies go in one request."""
    url_expiration: int = 3600
    """Lifetime of a signed delivery URL when the caller gives none, in seconds."""
    timeout: int = 60
    """Seconds a request may take."""
    max_connections: int = 64
    """Connections kept open to Cloudinary."""
    page_size: int = 500
    """Assets asked for per listing request (the Admin API's maximum is 500)."""

    def __post_init__(self) -> None:
        if self.url:
            parts = urlsplit(self.url)
            if parts.scheme != "cloudinary" or not parts.hostname or not parts.username or not parts.password:
                raise ConfigurationError("CLOUDINARY_URL must look like cloudinary://api_key:api_secret@cloud_name")
            if parts.query:
                from .._config import url_settings

                defaults = {f.name: f.default for f in fields(self)}
                for name, value in url_settings(self.url)[1].items():
                    if name == "url" or getattr(self, name) == defaults[name]:
                        object.__setattr__(self, name, value)
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
        self.settings = s = settings_from(CloudinarySettings, settings, options)
        self.default_expires_in = s.url_expiration
        self._api = f"{s.upload_prefix.rstrip('/')}/v1_1/{s.cloud_name}"
        host = s.cname or "res.cloudinary.com"
        delivery = f"{'https' if s.secure else 'http'}://{host}/{s.cloud_name}"
        self._urls = Urls(
            self._api, delivery, str(s.api_key), str(s.api_secret), s.signature_algorithm, s.delivery_type
        )
        self._client = pooled_client(s.timeout, s.max_connections)
        self._auth = httpx.BasicAuth(str(s.api_key), str(s.api_secret))

    def __repr__(self) -> str:
        return f"CloudinaryBackend(cloud_name={self.settings.cloud_name!r}, folder={self.settings.folder!r})"

    # --- the one request path (response errors: _cloudinary_api.raise_for) ----------

    async def _send(
        self, method: str, url: str, op: str, key: str | None, *, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        auth = kw.pop("auth", None)
        try:
            request = self._client.build_request(method, url, **kw)
            return await self._client.send(request, stream=stream, auth=auth)
        except Exception as exc:
            if isinstance(exc, StorageError):
                raise
            kind = UnavailableError if isinstance(exc, httpx.TransportError) else StorageError
            raise kind(
                f"Cloudinary request failed: {type(exc).__name__}", key=key, backend=self.name, operation=op
            ) from exc

    # --- helpers ------------------------------------------------------------------------

    def _pid(self, key: str) -> str:
        validate_key(key)
        return encode_public_id(self.settings.folder, key)

    def _info(self, res: Mapping[str, Any]) -> ObjectInfo:
        return info_from_resource(res, self.settings.folder)

    async def _resource(self, key: str, op: str) -> dict[str, Any]:
        """The asset for ``key``: the type its extension suggests first, then the others."""
        pid = self._pid(key)
        first, *others = type_order(key)
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
            raise_for(r, op, key)
        res: dict[str, Any] = json_of(r, op, key)
        return res

    # --- primitives ---------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        return self._info(await self._resource(key, "head"))

    async def get(self, key: str) -> bytes:
        """The object's bytes. A key whose extension suggests a raw asset (most non-media files) is
        one delivery request, by public id alone; otherwise, or when that asset is not found (another
        type), the Admin-API lookup comes first, since a guessed image/video format would be converted."""
        pid = self._pid(key)
        if type_order(key)[0] == "raw":
            r = await self._send(
                "GET", self._urls.media_url({"public_id": pid, "resource_type": "raw", "version": 1}), "get", key
            )
            if r.status_code == 200:
                return r.content
            if r.status_code != 404:
                raise_for(r, "get", key)
        return await super().get(key)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        """The lookup (info), then the delivery of that version; spans up to 256 KiB are read at once."""
        if if_match is not None or if_none_match is not None:
            raise UnsupportedError("Cloudinary has no conditional reads", key=key, backend=self.name, operation="open")
        res = await self._resource(key, "open")
        info = self._info(res)
        start, end = (0, info.size) if range is None else range.resolve(info.size)
        if end == start:
            return Download(info, b"", start=0, end=0)
        headers = {"Range": f"bytes={start}-{end - 1}"} if range is not None else {}
        eager = end - start <= _EAGER
        r = await self._send("GET", self._urls.media_url(res), "open", key, stream=not eager, headers=headers)
        try:
            if r.status_code not in (200, 206):
                await r.aread()
                raise_for(r, "open", key)
            if range is not None and r.status_code == 200:  # a CDN may ignore Range: never serve the wrong bytes
                raise UnavailableError(
                    "the delivery server ignored the Range header", key=key, backend=self.name, operation="open"
                )
        except BaseException:
            await r.aclose()
            raise
        if eager:
            return Download(info, r.content, start=start, end=end, range_requested=range is not None)
        return Download(
            info, self._stream(r, key), start=start, end=end, range_requested=range is not None, close=r.aclose
        )

    async def _stream(self, r: httpx.Response, key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in r.aiter_bytes():
                yield chunk
        except Exception as exc:
            raise UnavailableError(
                f"Cloudinary read failed: {type(exc).__name__}", key=key, backend=self.name, operation="read"
            ) from exc
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
        refuse_storage_class(self.name, key)
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
        return self._urls.url_for(res, self.default_expires_in, False, None)

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
            raise UnsupportedError(
                "Cloudinary has no atomic conditional writes", key=key, backend=self.name, operation="put"
            )
        meta = normalize_metadata(metadata)
        ctype = check_content_type(content_type) or guess_content_type(key)
        context = asset_context(
            meta,
            ctype,
            check_header_value("cache_control", cache_control),
            check_header_value("content_disposition", content_disposition),
        )
        params = {
            "public_id": pid,
            "type": self.settings.delivery_type,
            "overwrite": "true",
            "invalidate": "true",
            "context": context,
            "tags": meta.get("tags", ""),
        }
        source = await Source.load(body, self.settings.chunk_size)
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
        if rtype != type_order(key)[0]:
            # The extension suggests another type: remove a previous version stored under it, so
            # lookups (which try that type first) find this one.
            await asyncio.gather(*(self._destroy(t, pid, key) for t in RESOURCE_TYPES if t != rtype))
        return res

    async def _upload(self, rtype: str, params: dict[str, str], source: Source, key: str) -> dict[str, Any]:
        fields = self._urls.signed({**params, "timestamp": str(int(time.time()))})
        url = f"{self._api}/{rtype}/upload"
        return await upload_asset(self._send, url, key, fields, source, self.settings.chunk_size)

    async def _destroy(self, rtype: str, pid: str, key: str) -> bool:
        now = str(int(time.time()))
        params = self._urls.signed({"public_id": pid, "type": self.settings.delivery_type, "invalidate": "true",
                                    "timestamp": now})  # fmt: skip
        r = await self._send("POST", f"{self._api}/{rtype}/destroy", "delete", key, data=params)
        if r.status_code != 200:
            raise_for(r, "delete", key)
        return bool(json_of(r, "delete", key).get("result") == "ok")

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        pid = self._pid(key)
        if if_match is not None:
            raise UnsupportedError(
                "Cloudinary has no conditional deletes", key=key, backend=self.name, operation="delete"
            )
        results = await asyncio.gather(*(self._destroy(t, pid, key) for t in type_order(key)))
        return any(results)

    async def _list_page(self, rtype: str, params: dict[str, str]) -> dict[str, Any]:
        url = f"{self._api}/resources/{rtype}/{self.settings.delivery_type}"
        r = await self._send("GET", url, "list", params.get("prefix"), params=params, auth=self._auth)
        if r.status_code != 200:
            raise_for(r, "list", params.get("prefix"))
        page: dict[str, Any] = json_of(r, "list", params.get("prefix"))
        return page

    async def _names(self, prefix: str, start_after: str | None, detailed: bool) -> list[dict[str, Any]]:
        check_listing_args(prefix, start_after)
        s = self.settings
        return await merged_listing(self._list_page, s.folder, prefix, start_after, s.page_size, detailed)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        for res in await self._names(prefix, start_after, True):
            yield self._info(res)

    async def _admin(
        self, method: str, path: str, *, params: dict[str, str] | None = None, json: Any = None
    ) -> dict[str, Any] | None:
        """One Admin API call (HTTP Basic auth): its JSON answer, ``None`` on 404."""
        kw: dict[str, Any] = {"params": params} if json is None else {"json": json}
        r = await self._send(method, f"{self._api}/{path}", "list", None, auth=self._auth, **kw)
        if r.status_code == 404:
            return None
        if r.status_code != 200:
            raise_for(r, "list", None)
        page: dict[str, Any] = json_of(r, "list", None)
        return page

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level through Cloudinary's folders: subfolders from the folders API, the level's
        assets from the Search API (whose index may lag a fresh upload by seconds), empty folders
        (Cloudinary keeps them) left out; nothing below the level is read. One level is held in
        memory. Delimiters other than ``/`` use the computed default."""
        if delimiter != "/":
            async for entry in super().iter_entries(prefix, delimiter=delimiter, start_after=start_after):
                yield entry
            return
        check_listing_args(prefix, start_after)
        s = self.settings
        for name, res in await level_listing(self._admin, s.folder, prefix, start_after, s.page_size, s.delivery_type):
            yield CommonPrefix(name) if res is None else self._info(res)

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        folder = self.settings.folder
        for res in await self._names(prefix, start_after, False):
            yield decode_public_id(folder, str(res["public_id"])) or ""

    async def sign_url(
        self,
        key: str,
        *,
        expires_in: int | None = None,
        download: bool = False,
        method: str = "GET",
        transform: Transform | None = None,
    ) -> str:
        """GET (or HEAD: the same URL) URLs only. Without ``transform``: a Download API URL, signed and expiring after
        ``expires_in`` (for public assets, the plain delivery URL). With ``transform``: a signed
        delivery URL, which Cloudinary does not expire (that needs its token-based-auth add-on)."""
        if method.upper() not in ("GET", "HEAD"):
            raise UnsupportedError(
                "Cloudinary has no presigned upload URLs", key=key, backend=self.name, operation="sign_url"
            )
        expires = self.default_expires_in if expires_in is None else expires_in
        if expires <= 0:
            raise InvalidArgumentError("expires_in must be positive", key=key)
        return self._urls.url_for(await self._resource(key, "sign_url"), expires, download, transform)

    async def get_url(
        self, key: str, expires_in: int | None = 3600, download: bool = False, *, transform: Transform | None = None
    ) -> str:
        """A URL for an existing object; ``transform`` resizes/crops/converts on delivery."""
        return await self.sign_url(key, expires_in=expires_in, download=download, transform=transform)

    async def ping(self) -> None:
        r = await self._send("GET", f"{self._api}/ping", "ping", None, auth=self._auth)
        if r.status_code != 200:
            raise_for(r, "ping", None)

    async def aclose(self) -> None:
        await self._client.aclose()
