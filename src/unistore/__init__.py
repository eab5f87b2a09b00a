"""unistore: one async API to store and serve files on any backend.

>>> from unistore import add_storage, get_storage, StorageBackend

The public surface is listed in ``__all__``; everything else is private.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported on first use (see __getattr__): `import unistore` stays cheap
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

_LAZY = {
    "AlreadyExistsError": "._errors",
    "BaseBackend": "._base",
    "Batch": "._batch",
    "BatchSnapshot": "._batch",
    "BatchStore": "._batch",
    "BlueGreen": "._bluegreen",
    "ByteRange": "._types",
    "Capabilities": "._types",
    "CommonPrefix": "._types",
    "ConfigurationError": "._errors",
    "Download": "._types",
    "FileNotFoundError": "._errors",
    "IfMatch": "._types",
    "IntegrityError": "._errors",
    "InvalidArgumentError": "._errors",
    "InvalidKeyError": "._errors",
    "InvalidMetadataError": "._errors",
    "InvalidRangeError": "._errors",
    "LifecycleRule": "._lifecycle",
    "LocalBackend": ".backends.local",
    "LocalSettings": ".backends.local",
    "MemoryBackend": ".backends.memory",
    "MemorySettings": ".backends.memory",
    "MigrationReport": "._migrate",
    "NotFoundError": "._errors",
    "NotModifiedError": "._errors",
    "ObjectInfo": "._types",
    "PermissionDeniedError": "._errors",
    "PreconditionFailedError": "._errors",
    "QuotaExceededError": "._errors",
    "RateLimitedError": "._errors",
    "Release": "._bluegreen",
    "StorageBackend": "._base",
    "StorageError": "._errors",
    "SuffixRange": "._types",
    "SweepResult": "._lifecycle",
    "TransientError": "._errors",
    "UnavailableError": "._errors",
    "UnsupportedError": "._errors",
    "UrlSigner": "._signing",
    "WriteMode": "._types",
    "accept_encoding": "._types",
    "apply_lifecycle": "._lifecycle",
    "backend_from_url": "._config",
    "detect_backend": "._config",
    "easy_storage": "._config",
    "migrate": "._migrate",
    "migrate_worker": "._migrate_workers",
    "parse_http_range": "._types",
    "read_lifecycle": "._lifecycle",
    "rules_from_json": "._lifecycle",
    "rules_to_json": "._lifecycle",
    "storage_class": "._types",
    "sweep_lifecycle": "._lifecycle",
    "validate_key": "._keys",
    "validate_prefix": "._keys",
}
"""Public name -> the private module defining it, imported when the name is first used."""

_ALIASES = {"FileNotFoundError": "NotFoundError"}  # the spec lists this name; it subclasses the builtin

_LAZY_FASTAPI = ("add_storage", "get_storage")
_LAZY_BACKENDS = {"S3Backend": "s3", "GCSBackend": "gcs", "CloudinaryBackend": "cloudinary", "HttpBackend": "http"}


def __getattr__(name: str) -> Any:
    # Everything is imported on first use (then kept as a module attribute): the command line and
    # code that needs one backend do not pay for the rest. FastAPI is an optional extra.
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module, __name__), _ALIASES.get(name, name))
    elif name in _LAZY_FASTAPI:
        try:
            from . import fastapi as integration
        except ImportError as exc:  # pragma: no cover - exercised without the extra
            from ._errors import ConfigurationError

            raise ConfigurationError(f"{name} needs FastAPI: pip install 'unistore[fastapi]'") from exc
        return getattr(integration, name)
    elif name in ("Scoped", "scoped"):  # the layers package is imported on first use
        from .layers import _scoped

        value = getattr(_scoped, name)
    elif name in _LAZY_BACKENDS:
        from ._config import backend_class

        value = backend_class(_LAZY_BACKENDS[name])
    else:
        raise AttributeError(f"module 'unistore' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
