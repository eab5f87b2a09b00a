"""The wire format of the unistore service, as :class:`HttpBackend` reads it: errors, object headers, ranges.

This is the one boundary where HTTP responses and httpx exceptions become unistore errors.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import unquote

import httpx

from ... import _errors
from ..._errors import (
    InvalidArgumentError,
    InvalidRangeError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    RateLimitedError,
    StorageError,
    TransientError,
    UnavailableError,
    UnsupportedError,
    parse_retry_after,
)
from ..._types import ByteRange, ObjectInfo, Range, SuffixRange

__all__ = ["error_from_response", "info_from_headers", "info_from_json", "range_header", "retry_after", "translate"]

_BY_STATUS: dict[int, type[StorageError]] = {
    400: InvalidArgumentError,
    401: PermissionDeniedError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: UnavailableError,  # the service gave up on a stalled body: a fresh attempt may succeed
    409: TransientError,
    412: PreconditionFailedError,
    413: QuotaExceededError,
    416: InvalidRangeError,
    422: InvalidArgumentError,
    429: RateLimitedError,
    501: UnsupportedError,
}
_CONTENT_RANGE = re.compile(r"bytes (?:(\d+)-(\d+)|\*)/(\d+)")


def _error_classes() -> dict[str, type[StorageError]]:
    from ...layers import IdempotencyInProgressError, IdempotencyKeyReusedError, IdempotencyReplayGoneError

    found: dict[str, type[StorageError]] = {
        name: getattr(_errors, name) for name in _errors.__all__ if name not in ("StorageError",)
    }
    found["IdempotencyInProgressError"] = IdempotencyInProgressError
    found["IdempotencyKeyReusedError"] = IdempotencyKeyReusedError
    found["IdempotencyReplayGoneError"] = IdempotencyReplayGoneError
    found["UnauthorizedError"] = PermissionDeniedError  # the service's 401, as a client sees it
    return found


_CLASSES: dict[str, type[StorageError]] | None = None


def retry_after(headers: Mapping[str, str]) -> float | None:
    """``Retry-After`` in seconds."""
    return parse_retry_after(headers.get("retry-after"))


def error_from_response(
    response: httpx.Response, body: bytes, *, key: str | None, backend: str, operation: str
) -> StorageError:
    """The unistore error a service error response stands for (by its ``type``, else its status)."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _error_classes()
    status = response.status_code
    kw: dict[str, Any] = {"key": key, "backend": backend, "operation": operation}
    if status == 304:
        return NotModifiedError(etag=_bare(response.headers.get("etag", "")) or None, **kw)
    kind, message = "", ""
    try:
        error = json.loads(body)["error"]
        kind, message = str(error.get("type", "")), str(error.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        message = f"HTTP {status}"
    cls = _CLASSES.get(kind) or _BY_STATUS.get(status) or (UnavailableError if status >= 500 else StorageError)
    message = message or f"HTTP {status}"
    if issubclass(cls, TransientError):
        return cls(message, retry_after=retry_after(response.headers), **kw)
    if issubclass(cls, InvalidRangeError):
        m = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
        return InvalidRangeError(message, size=int(m.group(3)) if m else None, **kw)
    if cls is NotModifiedError:
        return NotModifiedError(message, **kw)
    return cls(message, **kw)


@contextlib.contextmanager
def translate(*, key: str | None, backend: str, operation: str) -> Iterator[None]:
    """Turn httpx's transport errors (connect, read, timeouts) into :class:`UnavailableError`."""
    try:
        yield
    except httpx.TransportError as exc:
        raise UnavailableError(
            f"cannot reach {_origin(exc)}: {_reason(exc)}", key=key, backend=backend, operation=operation
        ) from exc


def _origin(exc: httpx.TransportError) -> str:
    """The scheme, host and port the failed request went to (never its path, query or credentials)."""
    try:
        url = exc.request.url
    except RuntimeError:  # an error raised without a request
        return "the service"
    return f"{url.scheme}://{url.host}" + (f":{url.port}" if url.port is not None else "")


def _reason(exc: httpx.TransportError) -> str:
    """Why a transport failed, in words: the operating system's reason when there is one."""
    if isinstance(exc, httpx.TimeoutException):
        return "connection timed out" if isinstance(exc, httpx.ConnectTimeout) else "timed out"
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, socket.gaierror):
            return "host name not found"
        if isinstance(seen, OSError) and (seen.errno or seen.strerror):
            text = os.strerror(seen.errno) if seen.errno else str(seen.strerror)
            return text[:1].lower() + text[1:]
        seen = seen.__cause__ or seen.__context__
    return str(exc) or type(exc).__name__


def _bare(etag: str) -> str:
    etag = etag.strip()
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


def range_header(rng: Range) -> str:
    """A half-open range as HTTP's inclusive ``bytes=a-b`` (RFC 9110 §14.1.2)."""
    if isinstance(rng, SuffixRange):
        return f"bytes=-{rng.length}"
    assert isinstance(rng, ByteRange)
    return f"bytes={rng.start}-" + (str(rng.end - 1) if rng.end is not None else "")


def info_from_headers(key: str, headers: httpx.Headers) -> tuple[ObjectInfo, int, int]:
    """The object's info and the served span ``[start, end)`` from a GET/HEAD response."""
    length = int(headers.get("content-length", "0"))
    m = _CONTENT_RANGE.fullmatch(headers.get("content-range", ""))
    if m and m.group(1) is not None:
        start, end, size = int(m.group(1)), int(m.group(2)) + 1, int(m.group(3))
    else:
        start, end, size = 0, length, length
    modified = headers.get("last-modified")
    info = ObjectInfo(
        key=key,
        size=size,
        etag=_bare(headers.get("etag", "")),
        last_modified=parsedate_to_datetime(modified) if modified else datetime.now(UTC),
        content_type=headers.get("content-type", "application/octet-stream"),
        metadata={
            name[7:].lower(): unquote(value) for name, value in headers.items() if name.lower().startswith("x-meta-")
        },
        cache_control=headers.get("cache-control"),
        content_disposition=headers.get("content-disposition"),
    )
    if "x-stored" in headers:  # the service says what is stored, not what it serves
        info = replace(
            info,
            cache_control=headers.get("x-stored-cache-control"),
            content_disposition=headers.get("x-stored-content-disposition"),
        )
    return info, start, end


def info_from_json(data: Mapping[str, Any]) -> ObjectInfo:
    """An object's info from the service's JSON form."""
    return ObjectInfo(
        key=data["key"],
        size=int(data["size"]),
        etag=data["etag"],
        last_modified=datetime.fromisoformat(data["last_modified"]),
        content_type=data.get("content_type"),  # null where the store's listing does not know it
        metadata=dict(data.get("metadata") or {}),
    )
