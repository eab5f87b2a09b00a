"""unistore: one async API to store and serve files on any backend.

>>> from unistore import add_storage, get_storage, StorageBackend

The public surface is listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import BaseBackend, StorageBackend
from ._batch import Batch, BatchSnapshot, BatchStore
from ._bluegreen import BlueGreen, Release
from ._config import backend_from_url, detect_backend, easy_storage
from ._errors import (
    AlreadyExistsError,
    ConfigurationError,
    IntegrityError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
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
)
from ._keys import validate_key, validate_prefix
from ._lifecycle import (
    LifecycleRule,
    SweepResult,
    apply_lifecycle,
    read_lifecycle,
    rules_from_json,
    rules_to_json,
    sweep_lifecycle,
)
from ._migrate import MigrationReport, migrate
from ._migrate_workers import migrate_worker
from ._signing import UrlSigner
from ._types import (
    ByteRange,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    SuffixRange,
    WriteMode,
    accept_encoding,
    parse_http_range,
    storage_class,
)
from .backends.local import LocalBackend, LocalSettings
from .backends.memory import MemoryBackend, MemorySettings

if TYPE_CHECKING:
    from .fastapi import add_storage, get_storage
    from .layers._scoped import Scoped, scoped

FileNotFoundError = NotFoundError  # the spec lists this name; it subclasses the builtin

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "BaseBackend",
    "Batch",
    "BatchSnapshot",
    "BatchStore",
    "BlueGreen",
    "ByteRange",
    "Capabilities",
    "CloudinaryBackend",
    "CommonPrefix",
    "ConfigurationError",
    "Download",
    "FileNotFoundError",
    "GCSBackend",
    "HttpBackend",
    "IfMatch",
    "IntegrityError",
    "InvalidArgumentError",
    "InvalidKeyError",
    "InvalidMetadataError",
    "InvalidRangeError",
    "LifecycleRule",
    "LocalBackend",
    "LocalSettings",
    "MemoryBackend",
    "MemorySettings",
    "MigrationReport",
    "NotFoundError",
    "NotModifiedError",
    "ObjectInfo",
    "PermissionDeniedError",
    "PreconditionFailedError",
    "QuotaExceededError",
    "RateLimitedError",
    "Release",
    "S3Backend",
    "Scoped",
    "StorageBackend",
    "StorageError",
    "SuffixRange",
    "SweepResult",
    "TransientError",
    "UnavailableError",
    "UnsupportedError",
    "UrlSigner",
    "WriteMode",
    "accept_encoding",
    "add_storage",
    "apply_lifecycle",
    "backend_from_url",
    "detect_backend",
    "easy_storage",
    "get_storage",
    "migrate",
    "migrate_worker",
    "parse_http_range",
    "read_lifecycle",
    "rules_from_json",
    "rules_to_json",
    "scoped",
    "storage_class",
    "sweep_lifecycle",
    "validate_key",
    "validate_prefix",
]

_LAZY_FASTAPI = ("add_storage", "get_storage")
_LAZY_BACKENDS = {"S3Backend": "s3", "GCSBackend": "gcs", "CloudinaryBackend": "cloudinary", "HttpBackend": "http"}


def __getattr__(name: str) -> Any:
    # FastAPI is an optional extra; backends with SDKs are imported on first use.
    if name in _LAZY_FASTAPI:
        try:
            from . import fastapi as integration
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            raise ConfigurationError(f"{name} needs FastAPI: pip install 'unistore[fastapi]'") from exc
        return getattr(integration, name)
    if name in ("Scoped", "scoped"):  # the layers package is imported on first use
        from .layers import _scoped

        return getattr(_scoped, name)
    if name in _LAZY_BACKENDS:
        from ._config import backend_class

        return backend_class(_LAZY_BACKENDS[name])
    raise AttributeError(f"module 'unistore' has no attribute {name!r}")
