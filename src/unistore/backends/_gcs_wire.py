"""The GCS JSON API's wire format for :mod:`unistore.backends.gcs`: errors, object resources, media headers.

``raise_for`` and ``translate`` are the backend's one error boundary: every
response and transport failure of :class:`GCSBackend` passes through them.
"""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final, NoReturn

import httpx

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
    parse_retry_after,
)
from .._types import IfMatch, ObjectInfo, WriteMode

__all__ = [
    "GCS_STORAGE_CLASSES",
    "INFO_FIELDS",
    "check_gcs_class",
    "has_custom_metadata",
    "info_from_media",
    "info_from_resource",
    "json_of",
    "multipart_body",
    "precondition_failed",
    "raise_for",
    "translate",
    "write_conditions",
]

BACKEND = "GCSBackend"
INFO_FIELDS = "name,size,generation,updated,contentType,metadata,cacheControl,contentDisposition,storageClass"


def raise_for(r: httpx.Response, op: str, key: str | None, mode: WriteMode = "overwrite") -> NoReturn:
    """Raise the unistore error for an unsuccessful response (its body must have been read)."""
    status = r.status_code
    try:
        message = str(r.json()["error"]["message"]).splitlines()[0][:200]
    except Exception:
        message = r.reason_phrase or f"HTTP {status}"
    kw: dict[str, Any] = {"key": key, "backend": BACKEND, "operation": op}
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
        raise RateLimitedError(message, retry_after=parse_retry_after(r.headers.get("retry-after")), **kw)
    if status == 408 or status >= 500:
        raise UnavailableError(f"GCS error {status}: {message}", **kw)
    if status == 413:
        raise QuotaExceededError(message, **kw)
    if status == 400:
        raise InvalidArgumentError(f"GCS rejected the request: {message}", **kw)
    raise StorageError(f"GCS error {status}: {message}", **kw)


def translate(exc: Exception, op: str, key: str | None) -> StorageError:
    """The unistore error for a transport (or token endpoint) failure."""
    if isinstance(exc, StorageError):
        return exc
    kw: dict[str, Any] = {"key": key, "backend": BACKEND, "operation": op}
    if isinstance(exc, httpx.HTTPStatusError):  # token endpoint
        return PermissionDeniedError(f"could not get a Google access token ({exc.response.status_code})", **kw)
    if isinstance(exc, httpx.TransportError):
        return UnavailableError(f"GCS unreachable: {type(exc).__name__}", **kw)
    auth = sys.modules.get("google.auth.exceptions")  # loaded once credentials are
    if auth is not None and isinstance(exc, auth.GoogleAuthError):
        detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        if isinstance(exc, auth.DefaultCredentialsError):
            return ConfigurationError(
                "no Google credentials: set GOOGLE_APPLICATION_CREDENTIALS or run on Google Cloud "
                f"(metadata server) ({detail})",
                **kw,
            )
        if isinstance(exc, auth.TransportError) or getattr(exc, "retryable", False):
            return UnavailableError(f"Google credentials unreachable: {detail}", **kw)
        return PermissionDeniedError(f"could not get a Google access token: {detail}", **kw)
    return StorageError(f"GCS request failed: {type(exc).__name__}", **kw)


def json_of(r: httpx.Response, op: str, key: str | None) -> Any:
    """The JSON body of a successful response; a body that is not JSON (a proxy's page, a cut
    answer) is an :class:`UnavailableError`."""
    try:
        return r.json()
    except ValueError as exc:
        raise UnavailableError(
            f"the server's answer is not valid JSON ({type(exc).__name__})", key=key, backend=BACKEND, operation=op
        ) from exc


def precondition_failed(key: str, op: str, message: str = "if_match does not match the current etag") -> NoReturn:
    """Raise :class:`PreconditionFailedError` for ``key``."""
    raise PreconditionFailedError(message, key=key, backend=BACKEND, operation=op)


def write_conditions(mode: WriteMode, generation: str | None = None) -> dict[str, str]:
    """The ``ifGenerationMatch`` query for a write mode (``generation`` resolves ``IfMatch("*")``)."""
    if mode == "overwrite":
        return {}
    if mode == "create":
        return {"ifGenerationMatch": "0"}
    if isinstance(mode, IfMatch):
        return {"ifGenerationMatch": generation or mode.etag.strip('"')}
    raise TypeError(f"invalid write mode {mode!r}")


def info_from_resource(res: Mapping[str, Any], prefix: str) -> ObjectInfo:
    """An object resource (JSON) as :class:`ObjectInfo`; ``prefix`` is cut from the name."""
    updated = str(res.get("updated") or res.get("timeCreated") or "")
    try:
        modified = datetime.fromisoformat(updated.replace("Z", "+00:00"))
    except ValueError:
        modified = datetime.now(UTC)
    meta = res.get("metadata") or {}
    return ObjectInfo(
        key=str(res["name"])[len(prefix) :],
        size=int(res.get("size", 0)),
        etag=str(res["generation"]),
        last_modified=modified,
        content_type=str(res.get("contentType") or "application/octet-stream"),
        metadata={str(k): str(v) for k, v in meta.items()},
        cache_control=res.get("cacheControl"),
        content_disposition=res.get("contentDisposition"),
        storage_class=res.get("storageClass") or None,
    )


GCS_STORAGE_CLASSES: Final = frozenset(
    {"STANDARD", "NEARLINE", "COLDLINE", "ARCHIVE", "MULTI_REGIONAL", "REGIONAL", "DURABLE_REDUCED_AVAILABILITY"}
)
"""The storage classes an object resource's ``storageClass`` takes."""


def check_gcs_class(name: str) -> str:
    """``name`` if GCS knows the class, else :class:`InvalidArgumentError` (before a byte is sent)."""
    if name not in GCS_STORAGE_CLASSES:
        known = ", ".join(sorted(GCS_STORAGE_CLASSES))
        raise InvalidArgumentError(f"GCS has no storage class {name!r}; one of {known}")
    return name


def has_custom_metadata(r: httpx.Response) -> bool:
    """Whether the object served by the ``alt=media`` response ``r`` has custom metadata."""
    return any(name.startswith("x-goog-meta-") for name in r.headers)


def info_from_media(key: str, r: httpx.Response) -> tuple[ObjectInfo, int, int]:
    """The served generation's info from an ``alt=media`` response's headers, and the span served.

    Custom metadata is left empty: headers lower-case its names and may percent-encode its values
    ambiguously, so the JSON resource is its one source (see ``GCSBackend.open``)."""
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
    info = ObjectInfo(
        key=key,
        size=size,
        etag=h.get("x-goog-generation") or h.get("etag", "").strip('"'),
        last_modified=modified,
        content_type=h.get("content-type", "application/octet-stream"),
        cache_control=h.get("cache-control"),
        content_disposition=h.get("content-disposition"),
        storage_class=h.get("x-goog-storage-class") or None,
    )
    return info, start, start + length


def multipart_body(resource: Mapping[str, Any], data: bytes) -> tuple[bytes, str]:
    """A ``multipart/related`` upload body (JSON resource + media) and its content type."""
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
    return body, f"multipart/related; boundary={boundary}"
