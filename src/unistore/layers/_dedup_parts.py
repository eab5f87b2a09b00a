"""Dedup's names in the store, its value types, metrics and body hashing (see :mod:`._dedup`)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import IO, Any, Final

from .._base import iter_body
from .._errors import ConfigurationError, IntegrityError
from .._keys import RESERVED_PREFIX, reserved_keys
from .._types import Body, Download, ObjectInfo

__all__ = [
    "BLOBS",
    "DEDUP_PREFIX",
    "DedupObjectInfo",
    "MANIFEST_SIZE",
    "META_PREFIX",
    "META_REF",
    "META_SHA",
    "META_SIZE",
    "REFS",
    "SWEEPING",
    "SweepReport",
    "dedup_metrics",
    "hashed",
    "manifest_bytes",
    "reserved_chunks",
    "verified",
]

DEDUP_PREFIX: Final = RESERVED_PREFIX + "/dedup/"
"""Where bodies, markers and sweep claims live in the wrapped store."""
META_PREFIX: Final = "x-dedup-"
"""Metadata names the layer keeps on a manifest (refused in the caller's metadata)."""
META_SHA: Final = META_PREFIX + "sha256"
META_SIZE: Final = META_PREFIX + "size"
META_REF: Final = META_PREFIX + "ref"
BLOBS: Final = DEDUP_PREFIX + "blobs/"
REFS: Final = DEDUP_PREFIX + "refs/"
SWEEPING: Final = DEDUP_PREFIX + "sweeping/"
MANIFEST_SIZE: Final = len(f"unistore-dedup 1 {'0' * 64} {'0' * 32}\n")
"""The size of every manifest's bytes."""
_IN_THREAD = 1024 * 1024
HASH_CHUNK: Final = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class DedupObjectInfo(ObjectInfo):
    """An :class:`ObjectInfo` of a deduplicated object: ``sha256`` names its body."""

    sha256: str = ""

    def as_dict(self) -> dict[str, object]:
        """The custom metadata and ``sha256``, then the system fields."""
        out: dict[str, object] = dict(self.metadata)
        out["sha256"] = self.sha256
        out.update(ObjectInfo.as_dict(self))
        return out


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What one :meth:`Dedup.sweep` found and did."""

    references: int = 0
    """Markers kept: live references plus writes still in progress (younger than ``grace``)."""
    stale_markers_removed: int = 0
    bodies: int = 0
    """Bodies left in the store."""
    bodies_removed: int = 0
    bytes_reclaimed: int = 0
    logical_bytes: int = 0
    """Bytes the references stand for (each body's size once per marker kept)."""
    physical_bytes: int = 0
    """Bytes the bodies left in the store take."""
    claims_cleared: int = 0
    """Sweep claims of crashed sweepers removed."""
    errors: int = 0
    """Bodies that could not be checked or removed this time (logged; the next sweep retries)."""


_METRICS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def dedup_metrics(option: Any) -> dict[str, Any] | None:
    """Dedup's metric families in ``option``'s registry (see :class:`Dedup`)."""
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if option is None or option is True else option
    found = _METRICS.get(registry)
    if found is None:
        c, g = prometheus_client.Counter, prometheus_client.Gauge
        found = _METRICS[registry] = {
            "logical": c(
                "unistore_dedup_logical_bytes", "Bytes written through Dedup.", ["backend"], registry=registry
            ),
            "physical": c(
                "unistore_dedup_physical_bytes", "Bytes Dedup uploaded as new bodies.", ["backend"], registry=registry
            ),
            "puts": c(
                "unistore_dedup_puts", "Writes through Dedup, by outcome.", ["backend", "outcome"], registry=registry
            ),
            "reclaimed": c(
                "unistore_dedup_reclaimed_bytes", "Bytes of bodies removed by sweeps.", ["backend"], registry=registry
            ),
            "stored_logical": g(
                "unistore_dedup_stored_logical_bytes",
                "Bytes the references stand for, at the last sweep.",
                ["backend"],
                registry=registry,
            ),
            "stored_physical": g(
                "unistore_dedup_stored_physical_bytes",
                "Bytes the bodies take, at the last sweep.",
                ["backend"],
                registry=registry,
            ),
        }
    return found


def manifest_bytes(sha: str, ref: str) -> bytes:
    return f"unistore-dedup 1 {sha} {ref}\n".encode()


async def hashed(body: Body, spool: IO[bytes]) -> tuple[str, int, bytes | IO[bytes] | os.PathLike[str]]:
    """The body's SHA-256, size, and what to upload it from (bytes, the spool, or the path)."""
    if isinstance(body, bytes | bytearray | memoryview):
        data = bytes(body)
        digest = await asyncio.to_thread(_sha256, data) if len(data) >= _IN_THREAD else _sha256(data)
        return digest, len(data), data
    if isinstance(body, os.PathLike):
        digest, size = await asyncio.to_thread(_hash_file, os.fspath(body))
        return digest, size, body
    h = hashlib.sha256()
    size = 0
    async for chunk in iter_body(body):
        if len(chunk) >= _IN_THREAD:
            await asyncio.to_thread(h.update, chunk)
        else:
            h.update(chunk)
        spool.write(chunk)
        size += len(chunk)
    spool.seek(0)
    return h.hexdigest(), size, spool


async def reserved_chunks(dl: Download) -> AsyncIterator[bytes]:
    """``dl``'s chunks, each pulled with the reserved names allowed (a Retry below resumes a
    broken body stream by opening the body's key again, from inside this iteration)."""
    chunks = aiter(dl)
    while True:
        with reserved_keys():
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                return
        yield chunk


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


async def verified(path: os.PathLike[str], sha: str, key: str, backend: str) -> AsyncIterator[bytes]:
    """The file's bytes, failing the upload (so nothing is stored) if they no longer hash to ``sha``."""
    h = hashlib.sha256()
    async for chunk in iter_body(path, HASH_CHUNK):
        await asyncio.to_thread(h.update, chunk)
        yield chunk
    if h.hexdigest() != sha:
        raise IntegrityError("the file changed while it was stored", key=key, backend=backend, operation="put")
