"""``HttpBackend``: a :class:`~unistore.StorageBackend` over a remote unistore service (``unistore serve``).

One pooled ``httpx.AsyncClient`` per backend. Service errors come back as the
same unistore error classes (``_http_wire`` is the one boundary). Requests that
can be repeated safely (reads, deletes, listings, and writes whose body is
bytes or a path) are retried on transport errors, 429 and 503, with
exponential backoff and full jitter, never sooner than the service's
``Retry-After``, at most ``retries`` times. Such writes carry an
``Idempotency-Key`` (the caller's :func:`~unistore.layers.idempotency_key` if
set, else a fresh one per call), so a retried write takes effect once.

Deviations: ``sign_url`` asks the service, which checks that the object exists.
``head``/``open`` report the stored ``cache_control`` and ``content_disposition``
(the service sends them apart from the headers it serves, which force an
attachment for active types).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from .._base import (
    DEFAULT_CHUNK_SIZE,
    BaseBackend,
    check_listing_args,
    iter_body,
    path_size,
    quote_etag,
    refuse_storage_class,
    settings_from,
)
from .._errors import ConfigurationError, IntegrityError, InvalidArgumentError, TransientError, UnsupportedError
from .._keys import validate_key
from .._types import (
    Body,
    ByteRange,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    normalize_metadata,
)
from ._http_wire import error_from_response, info_from_headers, info_from_json, range_header, translate
from ._httpclient import pooled_client

__all__ = ["HttpBackend", "HttpSettings"]


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Settings of :class:`HttpBackend` (``easy_storage`` keyword names)."""

    url: str = ""
    """The service's base URL, e.g. ``http://127.0.0.1:8000``."""
    token: str | None = field(default=None, repr=False)
    """A bearer token issued by the service (``unistore token``); unset when its auth is off."""
    timeout: float = 60.0
    """Seconds a request may take."""
    max_connections: int = 32
    """Connections kept open to the service."""
    retries: int = 4
    """Retries of a request that is safe to repeat, after a transport error, 429 or 503."""
    backoff: float = 0.1
    """First retry delay in seconds, doubled (with jitter) at each retry."""
    max_backoff: float = 10.0
    """Longest retry delay, in seconds."""
    list_page_size: int = 1000
    """Keys asked for per listing request."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes per chunk when streaming."""
    url_expiration: int = 3600
    """Lifetime of a signed URL when the caller gives none, in seconds."""
    parallel_download_threshold: int = 64 * 1024 * 1024
    """A whole-object read at least this large is fetched as parallel ranges."""
    download_part_size: int = 8 * 1024 * 1024
    """Bytes per range of a parallel read."""
    download_concurrency: int = 4
    """Ranges in flight; a parallel read holds at most ``download_part_size * download_concurrency``."""
    multipart_threshold: int = 64 * 1024 * 1024
    """A file (path body) at least this large is uploaded as parallel, resumable session parts."""
    upload_part_size: int = 8 * 1024 * 1024
    """Bytes per part of a session upload."""
    upload_concurrency: int = 4
    """Parts in flight per session upload."""
    upload_state_dir: str = ""
    """Where resumable uploads record their session and parts; default ``~/.cache/unistore/uploads``."""
    direct_uploads: bool = False
    """Send upload parts straight to the store by presigned URLs (a service over S3); the service keeps
    the control plane (session, part URLs, manifest check)."""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigurationError("HttpBackend needs url=http(s)://host[:port] of a unistore service")
        if self.timeout <= 0 or self.max_connections < 1 or self.retries < 0 or self.backoff < 0:
            raise ConfigurationError("timeout and max_connections must be positive, retries and backoff >= 0")
        if not 1 <= self.list_page_size <= 100_000 or self.chunk_size <= 0 or self.url_expiration <= 0:
            raise ConfigurationError("list_page_size, chunk_size and url_expiration must be positive")
        if self.upload_part_size <= 0 or self.upload_concurrency < 1 or self.multipart_threshold <= 0:
            raise ConfigurationError("upload_part_size, upload_concurrency and multipart_threshold must be positive")
        if self.download_part_size <= 0 or self.download_concurrency < 1:
            raise ConfigurationError("download_part_size and download_concurrency must be positive")


class HttpBackend(BaseBackend):
    """A unistore service, spoken to over HTTP."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
    )

    def __init__(self, settings: HttpSettings | None = None, **options: Any) -> None:
        self.settings = settings_from(HttpSettings, settings, options)
        self.default_expires_in = self.settings.url_expiration
        self._base = self.settings.url.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self._store_client: httpx.AsyncClient | None = None
        self._random = random.Random()
        self.parts_sent = 0
        """Upload-session parts this client has sent (a resumed upload sends only the missing ones)."""

    def __repr__(self) -> str:
        return f"HttpBackend(url={self._base!r}, token={'<redacted>' if self.settings.token else None})"

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled client, created on first use and closed by :meth:`aclose`."""
        if self._client is None:
            self._client = pooled_client(self.settings.timeout, self.settings.max_connections)
            if self.settings.token:
                self._client.headers["Authorization"] = f"Bearer {self.settings.token}"
        return self._client

    # --- one request ------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        key: str | None,
        operation: str,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        body: Body | None = None,
        replayable: bool = True,
        stream: bool = False,
        url: str | None = None,
    ) -> httpx.Response:
        """Send one request, retrying what is safe to retry; raise the mapped error for a 3xx-5xx answer.

        ``url`` (instead of ``path``) is a presigned store URL: it goes out without the service token.
        """
        attempt = 0
        client = self.client if url is None else self._store()
        # sizes, ranges and etags describe the plain bytes: never let a compressed object come back encoded
        headers = {**(headers or {}), "Accept-Encoding": "identity"}
        while True:
            content: Any = None
            if body is not None:
                content = body if isinstance(body, bytes) else iter_body(body, self.settings.chunk_size)
            try:
                with translate(key=key, backend=self.name, operation=operation):
                    request = client.build_request(
                        method, url or self._base + path, params=params, headers=headers, content=content
                    )
                    response = await client.send(request, stream=True)
            except TransientError as exc:
                if not replayable or attempt >= self.settings.retries:
                    raise
                await asyncio.sleep(self._delay(attempt, exc.retry_after))
                attempt += 1
                continue
            if response.status_code < 300:
                if not stream:
                    with translate(key=key, backend=self.name, operation=operation):
                        await response.aread()
                return response
            with translate(key=key, backend=self.name, operation=operation):
                data = await response.aread()
            error = error_from_response(response, data, key=key, backend=self.name, operation=operation)
            if url is not None and b"<Code>BadDigest</Code>" in data:
                error = IntegrityError("the store refused a part that does not match its checksum", key=key)
            if isinstance(error, TransientError) and replayable and attempt < self.settings.retries:
                await asyncio.sleep(self._delay(attempt, error.retry_after))
                attempt += 1
                continue
            raise error

    def _delay(self, attempt: int, after: float | None) -> float:
        """Full-jitter backoff ``uniform(0, backoff * 2**attempt)``, at least ``Retry-After``, capped."""
        s = self.settings
        delay = self._random.uniform(0, s.backoff * 2**attempt)
        return min(max(delay, after or 0.0), s.max_backoff)

    @staticmethod
    def _path(key: str) -> str:
        return "/v1/objects/" + quote(key, safe="/")

    # --- primitives -------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        response = await self._send("HEAD", self._path(key), key=key, operation="head")
        return info_from_headers(key, response.headers)[0]

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        headers = {}
        if range is not None:
            headers["Range"] = range_header(range)
        if if_match is not None:
            headers["If-Match"] = quote_etag(if_match)
        if if_none_match is not None:
            headers["If-None-Match"] = quote_etag(if_none_match)
        response = await self._send("GET", self._path(key), key=key, operation="open", headers=headers, stream=True)
        info, start, end = info_from_headers(key, response.headers)
        s = self.settings
        if range is None and s.download_concurrency > 1 and info.size >= s.parallel_download_threshold:
            await response.aclose()  # large: re-read it as parallel ranges of this very version
            return Download(info, self._parallel(key, info), start=0, end=info.size)
        return Download(
            info,
            self._stream(response, key),
            start=start,
            end=end,
            range_requested=range is not None,
            close=response.aclose,
        )

    async def upload_file(
        self,
        key: str,
        path: str | os.PathLike[str],
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        state_dir: str | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> ObjectInfo:
        """Upload a file as parallel session parts; rerun after a crash (in any process) to resume.

        Parts already stored are not sent again (their record is kept under ``state_dir``,
        default ``upload_state_dir``); each part's SHA-256 goes with it and into the
        completion manifest the service verifies. ``progress(n)`` is told the bytes found
        already stored (once, first), then each part's size as it is stored.
        """
        from ._http_upload import upload_file

        validate_key(key)
        s = self.settings
        state_dir = state_dir or s.upload_state_dir or _default_state_dir()
        return await upload_file(
            self,
            key,
            os.fspath(path),
            content_type=check_content_type(content_type),
            metadata=normalize_metadata(metadata),
            state_dir=state_dir,
            part_size=s.upload_part_size,
            concurrency=s.upload_concurrency,
            progress=progress,
        )

    async def _parallel(self, key: str, info: ObjectInfo) -> AsyncIterator[bytes]:
        """The object as ``download_part_size`` ranges fetched ``download_concurrency`` at a time and
        yielded in order. Every range carries ``If-Match`` on the first response's etag, so a
        concurrent overwrite fails the read (:class:`PreconditionFailedError`) instead of splicing."""
        s = self.settings

        async def fetch(start: int) -> bytes:
            part = await self.open(key, range=ByteRange(start, start + s.download_part_size), if_match=info.etag)
            return await part.read()

        starts = iter(range(0, info.size, s.download_part_size))
        pending: collections.deque[asyncio.Task[bytes]] = collections.deque(
            asyncio.create_task(fetch(start)) for start in itertools.islice(starts, s.download_concurrency)
        )
        try:
            while pending:
                data = await pending.popleft()
                nxt = next(starts, None)
                if nxt is not None:
                    pending.append(asyncio.create_task(fetch(nxt)))
                yield data
        finally:
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _stream(self, response: httpx.Response, key: str) -> AsyncIterator[bytes]:
        with translate(key=key, backend=self.name, operation="open"):
            async for chunk in response.aiter_bytes(self.settings.chunk_size):
                yield chunk

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
        refuse_storage_class(self.name, key)
        headers = {f"X-Meta-{k}": quote(v, safe="") for k, v in normalize_metadata(metadata).items()}
        content_type = check_content_type(content_type)
        if content_type is not None:
            headers["Content-Type"] = content_type
        for name, value in (
            ("Cache-Control", cache_control),
            ("Content-Disposition", content_disposition),
        ):
            if check_header_value(name.lower().replace("-", "_"), value) is not None:
                headers[name] = value  # type: ignore[assignment]
        if mode == "create":
            headers["If-None-Match"] = "*"
        elif isinstance(mode, IfMatch):
            headers["If-Match"] = quote_etag(mode.etag)
        elif mode != "overwrite":
            raise TypeError(f"invalid write mode {mode!r}")
        if isinstance(body, str):
            raise TypeError("body must be bytes, not str: encode it first")
        if (
            isinstance(body, os.PathLike)
            and mode == "overwrite"
            and cache_control is None
            and content_disposition is None
            and await path_size(body) >= self.settings.multipart_threshold
        ):
            return await self.upload_file(key, body, content_type=content_type, metadata=metadata)
        if isinstance(body, bytearray | memoryview):
            body = bytes(body)
        replayable = isinstance(body, bytes | os.PathLike)
        if replayable:
            from ..layers import current_idempotency_key

            headers["Idempotency-Key"] = current_idempotency_key() or uuid.uuid4().hex
        response = await self._send(
            "PUT", self._path(key), key=key, operation="put", headers=headers, body=body, replayable=replayable
        )
        return info_from_json(response.json())

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        headers = {"If-Match": quote_etag(if_match)} if if_match is not None else None
        response = await self._send("DELETE", self._path(key), key=key, operation="delete", headers=headers)
        return bool(response.json()["deleted"])

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        check_listing_args(prefix, start_after)
        params: dict[str, Any] = {"prefix": prefix, "limit": self.settings.list_page_size}
        if start_after is not None:
            params["start_after"] = start_after
        while True:
            response = await self._send("GET", "/v1/objects", key=prefix, operation="list", params=params)
            page = response.json()
            for item in page["objects"]:
                yield info_from_json(item)
            if not page.get("next_cursor"):
                return
            params = {"prefix": prefix, "limit": self.settings.list_page_size, "cursor": page["next_cursor"]}

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        check_listing_args(prefix, start_after)
        if not isinstance(delimiter, str) or not delimiter:
            raise InvalidArgumentError("delimiter must be a non-empty str")
        params: dict[str, Any] = {"prefix": prefix, "limit": self.settings.list_page_size, "delimiter": delimiter}
        if start_after is not None:
            params["start_after"] = start_after
        while True:
            response = await self._send("GET", "/v1/objects", key=prefix, operation="list", params=params)
            page = response.json()
            entries: list[ObjectInfo | CommonPrefix] = [info_from_json(item) for item in page["objects"]]
            entries += [CommonPrefix(str(p)) for p in page.get("prefixes", [])]
            entries.sort(key=lambda e: e.prefix if isinstance(e, CommonPrefix) else e.key)
            for entry in entries:
                yield entry
            if not page.get("next_cursor"):
                return
            params = {**params, "cursor": page["next_cursor"]}
            params.pop("start_after", None)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """A signed URL from the service (``/v1/urls``) for ``GET`` or ``HEAD`` (signed for that
        method where the store signs methods, as S3 does); the service hands out no signed write
        URLs, so another ``method`` is :class:`UnsupportedError`."""
        validate_key(key)
        if method.upper() not in ("GET", "HEAD"):
            raise UnsupportedError(
                f"the unistore service signs download URLs only (GET or HEAD), not {method.upper()}",
                key=key,
                backend=self.name,
                operation="sign_url",
            )
        params = {
            "expires_in": self.default_expires_in if expires_in is None else expires_in,
            "download": "true" if download else "false",
            "method": method.upper(),
        }
        response = await self._send(
            "GET", "/v1/urls/" + quote(key, safe="/"), key=key, operation="sign_url", params=params
        )
        return str(response.json()["url"])

    async def ping(self) -> None:
        await self._send("GET", "/_ops/health", key=None, operation="ping")

    def _store(self) -> httpx.AsyncClient:
        if self._store_client is None:
            self._store_client = pooled_client(self.settings.timeout, self.settings.max_connections)
        return self._store_client

    async def aclose(self) -> None:
        for client in (self._client, self._store_client):
            if client is not None:
                await client.aclose()
        self._client = self._store_client = None


def _default_state_dir() -> str:
    return os.path.join(os.path.expanduser("~"), ".cache", "unistore", "uploads")
