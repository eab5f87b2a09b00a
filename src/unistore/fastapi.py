"""FastAPI integration: ``add_storage``, the ``get_storage`` dependency, health, and the file route.

``add_storage(app)`` stores the backend on ``app.state.storage``, closes it when
the app shuts down, answers ``GET /_ops/health``, maps :class:`StorageError`
to its HTTP status (so an uncaught ``NotFoundError`` is a 404, never a 500),
and with ``serve_files=True`` serves signed URLs at ``{file_route_prefix}/{key}``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ._base import StorageBackend
from ._config import easy_storage
from ._errors import (
    ConfigurationError,
    InvalidRangeError,
    NotModifiedError,
    StorageError,
    TransientError,
)
from ._keys import validate_key
from ._signing import UrlSigner
from ._types import Download, ObjectInfo, parse_http_range

__all__ = ["Storage", "add_storage", "get_storage", "storage_error_response"]

HEALTH_PATH = "/_ops/health"
HEALTH_TIMEOUT = 5.0

# Types a browser would execute or render as a document from our origin.
_ACTIVE_TYPES = (
    "text/html",
    "application/xhtml+xml",
    "image/svg+xml",
    "text/xml",
    "application/xml",
    "text/javascript",
    "application/javascript",
    "application/x-javascript",
    "application/ecmascript",
    "text/ecmascript",
    "multipart/x-mixed-replace",
)


def add_storage(
    app: FastAPI,
    backend: StorageBackend | None = None,
    serve_files: bool = False,
    file_route_prefix: str = "/files",
) -> StorageBackend:
    """Attach ``backend`` (auto-detected when ``None``) to ``app`` and return it.

    Registers the health check at ``GET /_ops/health``, closes the backend on
    shutdown, maps storage errors to HTTP statuses, and with ``serve_files``
    mounts ``GET``/``HEAD {file_route_prefix}/{key}`` serving signed URLs (for
    backends that sign their own URLs: local and memory).
    """
    storage: StorageBackend = backend if backend is not None else easy_storage()
    app.state.storage = storage

    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with original(a) as state:
            try:
                yield state
            finally:
                await storage.aclose()

    app.router.lifespan_context = lifespan

    if StorageError not in app.exception_handlers:
        app.add_exception_handler(StorageError, _error_handler)

    if not any(getattr(r, "path", None) == HEALTH_PATH for r in app.router.routes):
        app.add_api_route(HEALTH_PATH, _health, methods=["GET"], include_in_schema=False)

    if serve_files:
        signer = getattr(storage, "signer", None)
        if not isinstance(signer, UrlSigner):
            raise ConfigurationError(
                f"serve_files needs a backend that signs its own URLs (local, memory); "
                f"{storage.name} serves its own"
            )
        prefix = "/" + file_route_prefix.strip("/")
        app.add_api_route(
            prefix + "/{key:path}",
            _file_route(storage, signer),
            methods=["GET", "HEAD"],
            include_in_schema=False,
        )
    return storage


def get_storage(request: Request) -> StorageBackend:
    """FastAPI dependency: the backend ``add_storage`` attached to the app."""
    storage: StorageBackend | None = getattr(request.app.state, "storage", None)
    if storage is None:
        raise ConfigurationError("Storage not configured: call add_storage(app) when creating the app")
    return storage


Storage = Annotated[StorageBackend, Depends(get_storage)]
"""Shorthand for ``storage: StorageBackend = Depends(get_storage)``."""


def storage_error_response(exc: StorageError, headers: dict[str, str] | None = None) -> Response:
    """The HTTP response for a storage error: its status and a one-line JSON detail."""
    headers = dict(headers or {})
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, NotModifiedError):
        if exc.etag:
            headers["ETag"] = f'"{exc.etag}"'
        return Response(status_code=304, headers=headers)
    if isinstance(exc, InvalidRangeError) and exc.size is not None:
        headers["Content-Range"] = f"bytes */{exc.size}"
    error = type(exc).__name__
    return JSONResponse({"detail": exc.message or error, "error": error}, exc.status, headers=headers)


async def _error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageError)
    return storage_error_response(exc)


async def _health(request: Request) -> JSONResponse:
    storage = get_storage(request)
    try:
        await asyncio.wait_for(storage.ping(), HEALTH_TIMEOUT)
    except (StorageError, TimeoutError, OSError) as exc:
        reason = "timeout" if isinstance(exc, TimeoutError) else str(exc)
        return JSONResponse(
            {
                "status": "unhealthy",
                "storage": {"backend": storage.name, "status": "disconnected", "error": reason},
            },
            status_code=503,
        )
    return JSONResponse({"status": "healthy", "storage": {"backend": storage.name, "status": "connected"}})


# --- file route ------------------------------------------------------------------------


def content_disposition(kind: str, key: str) -> str:
    """``attachment``/``inline`` with the key's file name, escaped per RFC 6266 and RFC 8187."""
    name = key.rsplit("/", 1)[-1]
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def object_headers(info: ObjectInfo, *, download: bool) -> dict[str, str]:
    """Headers describing ``info`` for a served response (safe for untrusted content)."""
    ctype = info.content_type
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": format_datetime(info.last_modified, usegmt=True),
        "Accept-Ranges": "bytes",
        "Content-Type": ctype,
        "X-Content-Type-Options": "nosniff",
    }
    active = ctype.split(";", 1)[0].strip().lower() in _ACTIVE_TYPES
    if download or active:
        headers["Content-Disposition"] = content_disposition("attachment", info.key)
    elif info.content_disposition:
        headers["Content-Disposition"] = info.content_disposition
    if active:
        headers["Content-Security-Policy"] = "sandbox"
    headers["Cache-Control"] = info.cache_control or "private, no-cache"
    return headers


def _file_route(storage: StorageBackend, signer: UrlSigner) -> Any:
    async def serve_file(key: str, request: Request) -> Response:
        q = request.query_params
        try:
            validate_key(key)
            disposition = q.get("disposition")
            signer.verify(
                key,
                expires=q.get("expires"),
                signature=q.get("signature"),
                disposition=disposition,
                method=request.method,
            )
            return await serve_object(storage, key, request, download=disposition == "attachment")
        except StorageError as exc:
            return storage_error_response(exc)

    return serve_file


async def serve_object(storage: StorageBackend, key: str, request: Request, *, download: bool) -> Response:
    """Stream ``key`` honouring ``Range``, ``If-Range``, ``If-Match`` and ``If-None-Match`` (RFC 9110 §13-14)."""
    h = request.headers
    rng = None
    raw_range = h.get("range")
    if raw_range is not None:
        rng = parse_http_range(raw_range)
    if_range = h.get("if-range")
    dl: Download = await storage.open(
        key, range=None if if_range else rng, if_match=h.get("if-match"), if_none_match=h.get("if-none-match")
    )
    if if_range and rng is not None and dl.info.etag == if_range.strip('"'):
        await dl.aclose()  # the validator holds: serve the range of that same version
        dl = await storage.open(key, range=rng, if_match=dl.info.etag)
    headers = object_headers(dl.info, download=download)
    headers["Content-Length"] = str(dl.content_length)
    status = 200
    if dl.range_requested:
        status = 206
        headers["Content-Range"] = f"bytes {dl.start}-{dl.end - 1}/{dl.info.size}"
    if request.method == "HEAD":
        await dl.aclose()
        return Response(status_code=status, headers=headers)
    return StreamingResponse(_drain(dl), status_code=status, headers=headers)


async def _drain(dl: Download) -> AsyncIterator[bytes]:
    try:
        async for chunk in dl:
            yield chunk
    finally:
        await dl.aclose()
