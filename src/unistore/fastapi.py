"""FastAPI integration: ``add_storage``, the ``get_storage`` dependency, health, and the file route.

``add_storage(app)`` stores the backend on ``app.state.storage``, closes it when
the app shuts down, answers ``GET /_ops/health``, maps :class:`StorageError`
to its HTTP status (so an uncaught ``NotFoundError`` is a 404, never a 500),
and with ``serve_files=True`` serves signed URLs at ``{file_route_prefix}/{key}``.
``tenant_storage(current_tenant)`` is a dependency yielding one tenant's
:func:`~unistore.scoped` view of that backend.

Apps that take uploads should bound how long a body may stall:
``app.add_middleware(BodyTimeouts, idle=30)`` answers 408 (:class:`RequestTimeoutError`)
and closes the connection when a client stops sending its body.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ._base import StorageBackend
from ._config import easy_storage
from ._errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidRangeError,
    NotModifiedError,
    PreconditionFailedError,
    StorageError,
    TransientError,
)
from ._keys import validate_key
from ._mime import check_content_type, inline_safe
from ._request_limits import BodyTimeouts, RequestTimeoutError
from ._signing import UrlSigner
from ._types import DEFAULT_CONTENT_TYPE, Download, ObjectInfo, accept_encoding, is_metadata_name, parse_http_range
from .layers._layer import in_memory
from .layers._scoped import scoped

__all__ = [
    "BodyTimeouts",
    "RequestTimeoutError",
    "Storage",
    "add_storage",
    "error_body",
    "get_storage",
    "storage_error_response",
    "tenant_storage",
]

logger = logging.getLogger("unistore")

HEALTH_PATH = "/_ops/health"
HEALTH_TIMEOUT = 5.0


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
        # Close after the app's own lifespan has finished: its shutdown code may use storage.
        try:
            async with original(a) as state:
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
                f"serve_files needs a backend that signs its own URLs (local, memory); {storage.name} serves its own"
            )
        prefix = "/" + file_route_prefix.strip("/")
        if not urlsplit(signer.base_url).path.rstrip("/").endswith(prefix.rstrip("/")):
            logger.warning(
                "unistore: %s signs URLs under %s but the file route is mounted at %s; set STORAGE_BASE_URL to match",
                storage.name,
                signer.base_url,
                prefix,
            )
        app.add_api_route(
            prefix.rstrip("/") + "/{key:path}",
            _file_route(storage, signer),
            methods=["GET", "HEAD"],
            include_in_schema=False,
        )
        file_route = app.router.routes[-1]
        before_startup = app.router.lifespan_context

        @contextlib.asynccontextmanager
        async def file_route_last(a: Any) -> AsyncIterator[Any]:
            # The file route matches every path under its prefix; routes added after
            # add_storage (the spec adds routers later, e.g. GET /files/{id}/download-url)
            # must win, so at startup it moves behind them.
            routes = app.router.routes
            if file_route in routes:
                routes.remove(file_route)
                routes.append(file_route)
            async with before_startup(a) as state:
                yield state

        app.router.lifespan_context = file_route_last
    return storage


def get_storage(request: Request) -> StorageBackend:
    """FastAPI dependency: the backend ``add_storage`` attached to the app."""
    storage: StorageBackend | None = getattr(request.app.state, "storage", None)
    if storage is None:
        raise ConfigurationError("Storage not configured: call add_storage(app) when creating the app")
    return storage


Storage = Annotated[StorageBackend, Depends(get_storage)]
"""Shorthand for ``storage: StorageBackend = Depends(get_storage)``."""


def tenant_storage(
    tenant_id: Callable[..., Any], *, template: str = "tenants/{tenant_id}/"
) -> Callable[..., Awaitable[StorageBackend]]:
    """A dependency yielding the current tenant's view of the app's storage (:func:`unistore.scoped`).

    ``tenant_id`` is itself a dependency returning the tenant's id (decide who the
    caller is and raise 403 there). The view is confined to ``template`` with the
    id filled in; keys are relative to it. An id that is not one plain key segment
    (``/``, ``%``, ``..``, control characters) is refused with :class:`InvalidKeyError`
    (400), so one tenant can never name another's prefix::

        TenantStore = Annotated[StorageBackend, Depends(tenant_storage(current_tenant))]
    """
    if template.count("{tenant_id}") != 1 or not template.endswith("/"):
        raise ConfigurationError("template must contain {tenant_id} once and end with '/'")

    async def dependency(request: Request, tenant: str) -> StorageBackend:
        if not isinstance(tenant, str) or "/" in tenant or "%" in tenant:
            raise InvalidKeyError("a tenant id must be one key segment (no '/' or '%')", key=str(tenant))
        validate_key(tenant)
        return scoped(get_storage(request), template.format(tenant_id=tenant))

    # FastAPI reads the signature: the tenant comes from the caller's own dependency.
    dependency.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
            inspect.Parameter(
                "tenant", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=str, default=Depends(tenant_id)
            ),
        ],
        return_annotation=StorageBackend,
    )
    return dependency


def storage_error_response(exc: StorageError, headers: dict[str, str] | None = None) -> Response:
    """The HTTP response for a storage error: its status and :func:`error_body`."""
    headers = dict(headers or {})
    if isinstance(exc, TransientError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, NotModifiedError):
        if exc.etag:
            headers["ETag"] = f'"{exc.etag}"'
        return Response(status_code=304, headers=headers)
    if isinstance(exc, InvalidRangeError) and exc.size is not None:
        headers["Content-Range"] = f"bytes */{exc.size}"
    kind = type(exc).__name__
    status = exc.status if 300 <= exc.status < 600 else 500
    return JSONResponse(error_body(kind, exc.message or kind, exc.key), status, headers=headers)


def error_body(kind: str, message: str, key: str | None = None) -> dict[str, Any]:
    """The one JSON error shape of every unistore HTTP surface (``/v1``, ``/files``,
    ``add_storage`` apps): ``{"error": {"type", "message", "key"}, "detail": message}``
    (``detail`` as FastAPI's own errors have it)."""
    return {"error": {"type": kind, "message": message, "key": key}, "detail": message}


async def _error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageError)
    return storage_error_response(exc)


async def _health(request: Request) -> JSONResponse:
    storage = get_storage(request)
    try:
        await asyncio.wait_for(storage.ping(), HEALTH_TIMEOUT)
    except Exception as exc:
        if isinstance(exc, TimeoutError):
            reason = "timeout"
        elif isinstance(exc, StorageError):
            reason = str(exc)  # one line, never a secret (see _errors)
        else:  # a foreign error: its text may hold anything, so name its type only
            reason = f"unexpected {type(exc).__name__}"
            logger.warning("unistore: health check of %s failed", storage.name, exc_info=exc)
        storage_state: dict[str, Any] = {"backend": storage.name, "status": "disconnected", "error": reason}
        return JSONResponse(_with_worker(request, {"status": "unhealthy", "storage": storage_state}), status_code=503)
    return JSONResponse(
        _with_worker(request, {"status": "healthy", "storage": {"backend": storage.name, "status": "connected"}})
    )


def _with_worker(request: Request, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` plus the pid of the worker process answering, when the app asks for it (the service does)."""
    if getattr(request.app.state, "report_worker", False):
        body["worker"] = {"pid": os.getpid()}
    return body


# --- file route ------------------------------------------------------------------------


def content_disposition(kind: str, key: str) -> str:
    """``attachment``/``inline`` with the key's file name, escaped per RFC 6266 and RFC 8187."""
    name = key.rsplit("/", 1)[-1]
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    value = f'{kind}; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def object_headers(info: ObjectInfo, *, download: bool, meta_headers: bool = False) -> dict[str, str]:
    """Headers describing ``info`` for a served response (safe for untrusted content).

    ``meta_headers`` adds ``X-Meta-<name>`` for each custom metadata entry whose name
    follows the metadata name rule, the value percent-encoded UTF-8 (RFC 3986 §2.1) so
    any text survives a header, and the stored ``X-Stored-Cache-Control`` /
    ``X-Stored-Content-Disposition`` (absent when unset; ``X-Stored`` says they are sent).

    Only types a browser shows without running anything (:data:`unistore._mime.INLINE_SAFE`,
    judged as a browser reads the header) may be inline; every other type, and a
    ``download``, is an attachment under ``Content-Security-Policy: sandbox``. A stored
    type that is not exactly one valid MIME type (a list, control characters...) is
    served as ``application/octet-stream``; a stored disposition or cache policy unfit
    for a header is replaced by an attachment or the default.
    """
    ctype, active = _served_type(info.content_type or DEFAULT_CONTENT_TYPE)
    headers = {
        "ETag": f'"{info.etag}"',
        "Last-Modified": _http_date(info.last_modified),
        "Accept-Ranges": "bytes",
        "Content-Type": ctype,
        "X-Content-Type-Options": "nosniff",
    }
    stored = info.content_disposition
    if download or active or (stored is not None and not _header_safe(stored)):
        headers["Content-Disposition"] = content_disposition("attachment", info.key)
    elif stored:
        headers["Content-Disposition"] = stored
    if active:
        headers["Content-Security-Policy"] = "sandbox"
    headers["Cache-Control"] = _cache_control(info)
    if meta_headers:  # the stored fields themselves, which the served ones above may override
        headers["X-Stored"] = "cache-control content-disposition"
        for name, value in (("Cache-Control", info.cache_control), ("Content-Disposition", stored)):
            if value and _header_safe(value):
                headers[f"X-Stored-{name}"] = value
    if meta_headers:
        for name, value in info.metadata.items():
            if is_metadata_name(name):  # a name planted by another tool may be no header name at all
                headers[f"X-Meta-{name}"] = quote(value, safe="")
    return headers


_HEADER_SAFE = re.compile(r"[\x20-\x7e\t]*")


def _header_safe(value: str) -> bool:
    """Whether ``value`` can be sent verbatim as a header field value (RFC 9110 §5.5)."""
    return _HEADER_SAFE.fullmatch(value) is not None


_ZERO = timedelta(0)
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _http_date(when: datetime) -> str:
    """``when`` as an HTTP date (RFC 9110 §5.6.7 IMF-fixdate, e.g. ``Sun, 06 Nov 1994 08:49:37 GMT``),
    as ``email.utils.format_datetime(when.astimezone(UTC), usegmt=True)`` writes it, at a fifth of its cost."""
    if when.utcoffset() != _ZERO:
        when = when.astimezone(UTC)
    return (
        f"{_DAYS[when.weekday()]}, {when.day:02d} {_MONTHS[when.month - 1]} {when.year:04d} "
        f"{when.hour:02d}:{when.minute:02d}:{when.second:02d} GMT"
    )


@functools.lru_cache(maxsize=256)
def _served_type(stored: str) -> tuple[str, bool]:
    """The type a stored one is served as (:func:`_servable_type`) and whether it is active content
    (not :func:`~unistore._mime.inline_safe`), remembered for the types seen most recently."""
    ctype = _servable_type(stored)
    return ctype, not inline_safe(ctype)


def _servable_type(stored: str) -> str:
    """The stored type if it is exactly one valid MIME type, else ``application/octet-stream``.

    Objects written before types were checked, or by other tools straight into the
    store, may hold anything, e.g. ``text/plain, text/html``, which a browser reads
    as ``text/html`` (the last type of a list wins).
    """
    try:
        return check_content_type(stored) or DEFAULT_CONTENT_TYPE
    except StorageError:
        return DEFAULT_CONTENT_TYPE


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


async def serve_object(
    storage: StorageBackend, key: str, request: Request, *, download: bool, meta_headers: bool = False
) -> Response:
    """Stream ``key`` honouring ``Range``, ``If-Range``, ``If-Match`` and ``If-None-Match``.

    Preconditions are evaluated before ``Range`` and on the version being served
    (RFC 9110 §13.2.2): a failed ``If-Match`` is 412, a matching ``If-None-Match``
    304, both taking lists of entity tags. ``If-Range`` keeps the range only for a
    strong etag equal to the current one (§13.1.5); otherwise the whole object is
    served. Several ranges or another unit are ignored (200 with the whole object).
    ``meta_headers`` adds the metadata as ``X-Meta-*`` (see :func:`object_headers`).
    """
    h = request.headers
    raw_range = h.get("range")
    rng = parse_http_range(raw_range) if raw_range is not None else None
    if_range = h.get("if-range") if rng is not None else None
    # a compressed object may go out as stored when the client takes its encoding; ranges stay plain
    with accept_encoding(*(_accepted_encodings(h.get("accept-encoding", "")) if rng is None else ())):
        try:
            dl = await storage.open(key, range=rng)
        except InvalidRangeError:
            info = await storage.head(key)
            _check_conditions(info, h)
            if if_range is None or _if_range_holds(if_range, info):
                raise
            dl = await storage.open(key)  # a stale If-Range: the whole current object
        else:
            if if_range is not None and not _if_range_holds(if_range, dl.info):
                await dl.aclose()
                dl = await storage.open(key)
    try:
        _check_conditions(dl.info, h)
    except NotModifiedError as exc:
        await dl.aclose()
        return storage_error_response(exc, {"Cache-Control": _cache_control(dl.info)})
    except BaseException:
        await dl.aclose()
        raise
    headers = object_headers(dl.info, download=download, meta_headers=meta_headers)
    headers["Content-Length"] = str(dl.content_length)
    if getattr(dl.info, "content_encoding", None):  # stored compressed: the body depends on Accept-Encoding
        headers["Vary"] = "Accept-Encoding"
    if dl.encoding:
        headers["Content-Encoding"] = dl.encoding
    status = 200
    if dl.range_requested:
        status = 206
        headers["Content-Range"] = f"bytes {dl.start}-{dl.end - 1}/{dl.info.size}"
    if request.method == "HEAD":
        await dl.aclose()
        return Response(status_code=status, headers=headers)
    data = in_memory(dl)
    if data is not None:  # read whole already (a small object): no stream, no disconnect watcher task
        return Response(data, status_code=status, headers=headers)
    return StreamingResponse(_drain(dl), status_code=status, headers=headers)


_SERVABLE_ENCODINGS = ("zstd", "gzip")


def _accepted_encodings(header: str) -> tuple[str, ...]:
    """The stored encodings an ``Accept-Encoding`` value takes (RFC 9110 §12.5.3): listed, or
    matched by ``*``, with a quality above 0."""
    named: dict[str, float] = {}
    for item in header.split(","):
        coding, _, params = item.partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding.strip():
            named[coding.strip().lower()] = q
    star = named.get("*", 0.0)
    return tuple(c for c in _SERVABLE_ENCODINGS if named.get(c, star) > 0)


_ETAG = re.compile(r'\s*(W/)?"([^"]*)"\s*(?:,|\Z)|\s*([^\s,]+)\s*(?:,|\Z)')


def _etags(header: str) -> list[tuple[bool, str]]:
    """``(weak, opaque tag)`` for each entity tag of an ``If-Match``/``If-None-Match`` list."""
    out = []
    for m in _ETAG.finditer(header):
        if m.group(2) is not None:
            out.append((m.group(1) is not None, m.group(2)))
        elif m.group(3):
            out.append((False, m.group(3)))  # an unquoted tag: accepted leniently
    return out


def _check_conditions(info: ObjectInfo, h: Mapping[str, str]) -> None:
    """RFC 9110 §13.1.1 (strong comparison) and §13.1.2 (weak comparison)."""
    if_match = h.get("if-match")
    if (
        if_match is not None
        and if_match.strip() != "*"
        and not any(not weak and tag == info.etag for weak, tag in _etags(if_match))
    ):
        raise PreconditionFailedError("If-Match does not match the current etag", key=info.key, operation="open")
    if_none_match = h.get("if-none-match")
    if if_none_match is not None and (
        if_none_match.strip() == "*" or any(tag == info.etag for _, tag in _etags(if_none_match))
    ):
        raise NotModifiedError(etag=info.etag, key=info.key, operation="open")


def _if_range_holds(value: str, info: ObjectInfo) -> bool:
    """``If-Range`` holds only for a strong etag equal to the current one (a date never does)."""
    value = value.strip()
    return len(value) >= 2 and value[0] == value[-1] == '"' and value[1:-1] == info.etag


def _cache_control(info: ObjectInfo) -> str:
    cc = info.cache_control
    return cc if cc and _header_safe(cc) else "private, no-cache"


async def _drain(dl: Download) -> AsyncIterator[bytes]:
    try:
        async for chunk in dl:
            yield chunk
    finally:
        await dl.aclose()
