"""The one error tree of unistore.

Every error a backend or layer raises is a :class:`StorageError`; each class
also subclasses the builtin that generic code already catches::

    StorageError
    ├── NotFoundError (FileNotFoundError)        the object does not exist (404)
    ├── PermissionDeniedError (PermissionError)  bad credentials, forbidden, bad/expired URL (403)
    ├── QuotaExceededError                       a size quota would be exceeded (413/507)
    ├── InvalidKeyError (ValueError)             the key breaks the key rules (400)
    ├── InvalidArgumentError (ValueError)        another argument is out of range or malformed (400)
    │   └── InvalidMetadataError                 metadata that cannot be stored portably
    ├── PreconditionFailedError                  If-Match did not match (412)
    │   └── AlreadyExistsError (FileExistsError) create-only write on an existing key (412)
    ├── NotModifiedError                         If-None-Match matched (304)
    ├── InvalidRangeError (ValueError)           unsatisfiable byte range (416)
    ├── UnsupportedError (NotImplementedError)   the backend lacks a declared capability (501)
    ├── ConfigurationError (ValueError)          missing or invalid settings
    ├── IntegrityError                           checksum or decryption failure
    └── TransientError                           the only family Retry retries (503)
        ├── RateLimitedError                     throttled (429); ``retry_after`` seconds
        └── UnavailableError                     5xx, timeouts, connection resets

Backends translate foreign errors (``OSError``, SDK errors) at one boundary and
raise ``... from exc``; nothing above a backend sees a foreign error type.
Messages are one line and never contain secrets.
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "ConfigurationError",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidRangeError",
    "NotFoundError",
    "NotModifiedError",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "RateLimitedError",
    "StorageError",
    "TransientError",
    "UnavailableError",
    "UnsupportedError",
    "parse_retry_after",
]


class StorageError(Exception):
    """Base of every unistore error.

    ``key``, ``backend`` and ``operation`` say where it happened when known.
    ``status`` is the HTTP status the error maps to.
    """

    status: int = 500

    def __init__(
        self,
        message: str = "",
        *,
        key: str | None = None,
        backend: str | None = None,
        operation: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.key = key
        self.backend = backend
        self.operation = operation

    def __str__(self) -> str:
        where = [p for p in (self.backend, self.operation) if p]
        prefix = f"[{' '.join(where)}] " if where else ""
        key = f" (key={self.key!r})" if self.key is not None and self.key not in self.message else ""
        return f"{prefix}{self.message}{key}"

    def __reduce__(self) -> tuple[object, ...]:
        # Keep keyword fields across pickling (multiprocess tests, worker pools).
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[StorageError], message: str, state: dict[str, object]) -> StorageError:
    err = cls.__new__(cls)
    StorageError.__init__(err, message)
    err.__dict__.update(state)
    return err


class NotFoundError(StorageError, FileNotFoundError):
    """The object does not exist."""

    status = 404


class PermissionDeniedError(StorageError, PermissionError):
    """Access denied: bad credentials, forbidden, or a bad/expired URL signature."""

    status = 403


class QuotaExceededError(StorageError):
    """Storing the object would exceed a configured size quota."""

    status = 413


class InvalidKeyError(StorageError, ValueError):
    """The key breaks the key rules (see ``unistore.validate_key``)."""

    status = 400


class InvalidArgumentError(StorageError, ValueError):
    """An argument other than the key is malformed or out of range (e.g. ``expires_in``, a header value)."""

    status = 400


class InvalidMetadataError(InvalidArgumentError):
    """Metadata that cannot be stored portably (bad name, unsupported value, too large)."""


class PreconditionFailedError(StorageError):
    """A conditional write or read did not hold (If-Match mismatch)."""

    status = 412


class AlreadyExistsError(PreconditionFailedError, FileExistsError):
    """A create-only write found the key already present."""


class NotModifiedError(StorageError):
    """If-None-Match matched the current etag: the caller's copy is current."""

    status = 304

    def __init__(self, message: str = "not modified", *, etag: str | None = None, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.etag = etag


class InvalidRangeError(StorageError, ValueError):
    """The byte range cannot be satisfied for this object."""

    status = 416

    def __init__(self, message: str = "invalid range", *, size: int | None = None, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.size = size


class UnsupportedError(StorageError, NotImplementedError):
    """The backend does not have this capability (see ``capabilities``)."""

    status = 501


class ConfigurationError(StorageError, ValueError):
    """Settings are missing or invalid, or an optional dependency is not installed."""

    status = 500


class IntegrityError(StorageError):
    """Stored or received data failed a checksum or decryption check."""

    status = 400


class TransientError(StorageError):
    """A failure that may succeed when retried; ``retry_after`` in seconds when known."""

    status = 503

    def __init__(self, message: str = "", *, retry_after: float | None = None, **kw: str | None) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after


class RateLimitedError(TransientError):
    """The backend or a limiter throttled the request."""

    status = 429


class UnavailableError(TransientError):
    """The backend failed or timed out (5xx, resets, timeouts)."""

    status = 503


def parse_retry_after(value: str | None) -> float | None:
    """A ``Retry-After`` header value in seconds (RFC 9110 §10.2.3: delay-seconds or an
    HTTP date); ``None`` when absent or malformed. Every backend reads the header here."""
    if not value or not value.strip():
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    from datetime import UTC, datetime
    from email.utils import parsedate_to_datetime

    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None
