"""Layers: wrappers that are themselves a :class:`~unistore.StorageBackend`.

Compose them with :func:`stack`, outermost first::

    from functools import partial
    from unistore.layers import Cache, Observe, RateLimit, Retry, stack

    store = stack(S3Backend(...), Observe, partial(RateLimit, max_concurrency=64), Cache, Retry)

The recommended order, outermost first, is
Observe → Idempotency → RateLimit → Cache → Retry → [Faults] → backend; each
layer's docstring says why it sits where it does (``docs/layers.md``; the design notes in ``docs/design.md``).
"""

from ._cache import Cache
from ._cdn import CDN
from ._compress import Compress, CompressedObjectInfo, looks_compressed
from ._dedup import Dedup, DedupObjectInfo, SweepReport
from ._dualwrite import DualWrite
from ._fallback import ReadFallback
from ._faults import Faults, FaultSettings
from ._idempotency import (
    Idempotency,
    IdempotencyInProgressError,
    IdempotencyKeyReusedError,
    IdempotencyReplayGoneError,
    current_idempotency_key,
    idempotency_key,
)
from ._layer import Layer, LayerFactory, stack
from ._limit import RateLimit
from ._observe import HotKeys, Observe, request_context
from ._outbox import OutboxEntry
from ._replicate import Replicate
from ._retry import Retry, RetryEvent
from ._scan import QUARANTINE_PREFIX, Scan, ScanMode
from ._scoped import Scoped, scoped
from ._validate import (
    FilenameRejectedError,
    FileTooLargeError,
    ImageTooLargeError,
    UnsupportedMediaTypeError,
    UploadRule,
    Validate,
    ValidationError,
    ValidationPolicy,
    sniff_type,
)

__all__ = [
    "CDN",
    "Cache",
    "Compress",
    "CompressedObjectInfo",
    "Dedup",
    "DedupObjectInfo",
    "DualWrite",
    "FaultSettings",
    "Faults",
    "FileTooLargeError",
    "FilenameRejectedError",
    "HotKeys",
    "Idempotency",
    "IdempotencyInProgressError",
    "IdempotencyKeyReusedError",
    "IdempotencyReplayGoneError",
    "ImageTooLargeError",
    "Layer",
    "LayerFactory",
    "Observe",
    "OutboxEntry",
    "QUARANTINE_PREFIX",
    "RateLimit",
    "ReadFallback",
    "Replicate",
    "Retry",
    "RetryEvent",
    "Scan",
    "ScanMode",
    "Scoped",
    "SweepReport",
    "UnsupportedMediaTypeError",
    "UploadRule",
    "Validate",
    "ValidationError",
    "ValidationPolicy",
    "current_idempotency_key",
    "idempotency_key",
    "looks_compressed",
    "request_context",
    "scoped",
    "sniff_type",
    "stack",
]
