"""The :class:`Dedup` layer: content-addressed bodies (SHA-256), reference-counted in the store itself.

Layout in the wrapped store (every name under the reserved ``.unistore/dedup/``):

- ``<key>``: a small *manifest*: the caller's content type and metadata plus the body's
  SHA-256, size and a *reference id* (metadata ``x-dedup-*``); its bytes name the same,
  so every write gets a new etag even where the etag is the body's MD5 (S3).
- ``.unistore/dedup/blobs/<h[:2]>/<h>``: one body per distinct content, written create-only.
- ``.unistore/dedup/refs/<h>/<ref>``: one *marker* per reference (its bytes: the key). It is
  written before the manifest that names it and removed after that manifest is replaced or
  deleted, so the markers of a body are a superset of its references; the reference count
  is their number.
- ``.unistore/dedup/sweeping/<h>``: a sweeper's claim on a body it is about to remove.

Bodies are never removed by ``delete``: :meth:`Dedup.sweep` removes markers whose manifest no
longer names them and bodies without markers, both once older than ``grace`` (see
``docs/design.md`` for why each step is safe under races and kill -9).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import random
import tempfile
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, ClassVar, Final
from urllib.parse import quote

from .._base import StorageBackend, _bare, check_read_conditions, iter_body
from .._errors import (
    AlreadyExistsError,
    ConfigurationError,
    IntegrityError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    UnsupportedError,
)
from .._keys import RESERVED_PREFIX, reserved_keys, validate_key
from .._types import (
    Body,
    Capabilities,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    normalize_metadata,
)
from ._layer import Layer, in_memory

__all__ = ["DEDUP_PREFIX", "Dedup", "DedupObjectInfo", "META_PREFIX", "SweepReport"]

DEDUP_PREFIX: Final = RESERVED_PREFIX + "/dedup/"
"""Where bodies, markers and sweep claims live in the wrapped store."""
META_PREFIX: Final = "x-dedup-"
"""Metadata names the layer keeps on a manifest (refused in the caller's metadata)."""
_META_SHA: Final = META_PREFIX + "sha256"
_META_SIZE: Final = META_PREFIX + "size"
_META_REF: Final = META_PREFIX + "ref"
_BLOBS: Final = DEDUP_PREFIX + "blobs/"
_REFS: Final = DEDUP_PREFIX + "refs/"
_SWEEPING: Final = DEDUP_PREFIX + "sweeping/"
MANIFEST_SIZE: Final = len(f"unistore-dedup 1 {'0' * 64} {'0' * 32}\n")
_SPOOL_IN_MEMORY = 1024 * 1024
_IN_THREAD = 1024 * 1024
_HASH_CHUNK = 4 * 1024 * 1024
_COMMIT_ATTEMPTS = 64
_READ_ATTEMPTS = 4
_READS = range(_READ_ATTEMPTS)  # ``open`` has a parameter named range
_DEFINITE = (PreconditionFailedError, InvalidArgumentError, InvalidMetadataError, InvalidKeyError, TypeError)
"""Failures of a write that prove nothing was written."""

log = logging.getLogger("unistore.dedup")


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


_METRICS: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def _metrics(option: Any) -> dict[str, Any] | None:
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


def _manifest_bytes(sha: str, ref: str) -> bytes:
    return f"unistore-dedup 1 {sha} {ref}\n".encode()


class Dedup(Layer):
    """Stores each distinct body once, under its SHA-256; keys hold small manifests naming it.

    A put hashes the body (spooling a stream: memory up to 1 MiB, then a temporary file), writes
    a reference marker create-only, uploads the body only if the store does not have it yet
    (create-only), then writes the manifest; overwriting or deleting a key removes the old
    manifest's marker after the manifest is gone. Reads open the manifest's body (ranges are the
    store's own). Counts live in the store, so every process and replica over it shares them.

    Bodies are removed only by :meth:`sweep`, after ``grace`` seconds: set it above the longest
    a put can take (a put older than ``grace`` refreshes its marker before committing). A sweep
    claims a body create-only before removing it, and a put that finds a claim waits for it to
    end (at most ``lease`` seconds); see ``docs/design.md`` for the protocol.

    Where it belongs: above Compress and Encrypt (ciphertext and compressed bytes hide equal
    bodies) and below Observe, RateLimit and Cache. Needs a store with ``conditional_put``.
    Signed URLs are refused (the store's URL would serve the manifest); ``put`` returns the key
    as a relative URL. ``metrics``: a Prometheus registry, ``True`` (the global one), ``None``
    (the global one if prometheus_client is installed) or ``False``.
    """

    transforms_bodies: ClassVar[bool] = True

    def __init__(
        self,
        inner: StorageBackend,
        *,
        grace: float = 3600.0,
        lease: float = 60.0,
        metrics: Any = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        super().__init__(inner)
        if not inner.capabilities.conditional_put:
            raise ConfigurationError(f"Dedup needs a store with conditional writes; {inner.name} has none")
        if grace <= 0 or lease <= 0:
            raise ConfigurationError("grace and lease must be positive")
        self.grace = float(grace)
        self.lease = float(lease)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._metrics = _metrics(metrics)

    def __repr__(self) -> str:
        return f"Dedup({self.inner!r}, grace={self.grace})"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # per instance
        """The wrapped store's, without signed URLs."""
        return dataclasses.replace(self.inner.capabilities, signed_urls=False, presigned_put=False)

    # --- names and infos -----------------------------------------------------------------

    @staticmethod
    def _blob(sha: str) -> str:
        return f"{_BLOBS}{sha[:2]}/{sha}"

    @staticmethod
    def _marker(sha: str, ref: str) -> str:
        return f"{_REFS}{sha}/{ref}"

    def _logical(self, info: ObjectInfo) -> ObjectInfo:
        """``info`` of a stored object as the caller sees it (a manifest as its body)."""
        sha = info.metadata.get(_META_SHA)
        if sha is None:
            return info
        try:
            size = int(info.metadata[_META_SIZE])
        except (KeyError, ValueError):
            raise IntegrityError("a manifest without a valid size", key=info.key, backend=self.name) from None
        user = {name: value for name, value in info.metadata.items() if not name.startswith(META_PREFIX)}
        return DedupObjectInfo(
            key=info.key,
            size=size,
            etag=info.etag,
            last_modified=info.last_modified,
            content_type=info.content_type,
            metadata=user,
            cache_control=info.cache_control,
            content_disposition=info.content_disposition,
            sha256=sha,
        )

    async def _inner_head(self, key: str) -> ObjectInfo | None:
        try:
            with reserved_keys():
                return await self.inner.head(key)
        except NotFoundError:
            return None

    async def _drop(self, key: str, if_match: str | None = None) -> None:
        """Remove internal object ``key``, best effort (a leftover is the sweeper's)."""
        try:
            with reserved_keys():
                await self.inner.remove(key, if_match=if_match)
        except (StorageError, OSError) as exc:
            log.debug("could not remove %r (%s); a sweep will", key, exc)

    def _count(self, name: str, value: float, *labels: str) -> None:
        if self._metrics is not None and value:
            self._metrics[name].labels(self.name, *labels).inc(value)

    # --- writes ----------------------------------------------------------------------------

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
        if isinstance(body, str):
            raise TypeError("body must be bytes, not str: encode it first")
        user = self._check_write(key, metadata, content_type, cache_control, content_disposition, mode)
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            sha, size, source = await _hashed(body, spool)
            ref = uuid.uuid4().hex
            marker = self._marker(sha, ref)
            with reserved_keys():
                await self.inner.put_object(marker, key.encode("utf-8", "surrogatepass"), mode="create")
            started = time.monotonic()
            try:
                uploaded = await self._ensure_body(sha, size, source)
                if time.monotonic() - started > self.grace / 2:
                    await self._refresh(marker, key, sha, size, source)
                info, old = await self._commit(
                    key, sha, size, ref, mode, user, content_type, cache_control, content_disposition
                )
            except _DEFINITE:
                await self._drop(marker)
                raise
        await self._release(old)
        self._count("logical", size)
        self._count("physical", size if uploaded else 0)
        self._count("puts", 1, "stored" if uploaded else "deduplicated")
        return self._logical(info)

    def _check_write(
        self,
        key: str,
        metadata: Mapping[str, Any] | None,
        content_type: str | None,
        cache_control: str | None,
        content_disposition: str | None,
        mode: WriteMode,
    ) -> dict[str, str]:
        """Everything a store would refuse, refused before any byte is written."""
        validate_key(key)
        user = normalize_metadata(metadata)
        if any(name.startswith(META_PREFIX) for name in user):
            raise InvalidMetadataError(
                f"metadata names starting with {META_PREFIX!r} belong to Dedup", key=key, backend=self.name
            )
        placeholder = {_META_SHA: "0" * 64, _META_SIZE: "0" * 20, _META_REF: "0" * 32}
        normalize_metadata({**user, **placeholder})  # ours must fit beside the caller's
        check_content_type(content_type)
        check_header_value("cache_control", cache_control)
        check_header_value("content_disposition", content_disposition)
        if mode not in ("overwrite", "create") and not isinstance(mode, IfMatch):
            raise TypeError(f"invalid write mode {mode!r}")
        return user

    async def _ensure_body(self, sha: str, size: int, source: bytes | IO[bytes] | os.PathLike[str] | None) -> bool:
        """Make sure the body is stored (our marker already protects it); whether it was uploaded."""
        blob = self._blob(sha)
        await self._wait_for_sweep(sha)
        found = await self._inner_head(blob)
        if found is not None and found.size == size:
            return False
        if source is None:  # a copy: nothing to upload from
            raise NotFoundError("the body is gone (the source was deleted)", backend=self.name)
        if not isinstance(source, bytes | os.PathLike):
            source.seek(0)
        body: Any = _verified(source, sha, blob, self.name) if isinstance(source, os.PathLike) else source
        write_mode: WriteMode = "create" if found is None else IfMatch(found.etag)  # a damaged body: replace it
        try:
            with reserved_keys():
                await self.inner.put_object(blob, body, content_type="application/octet-stream", mode=write_mode)
        except PreconditionFailedError:
            return False  # another writer stored it first
        return True

    async def _wait_for_sweep(self, sha: str) -> None:
        """Wait while a sweep claims this body; break a claim held longer than ``lease``."""
        claim = _SWEEPING + sha
        seen: tuple[str, float] | None = None
        while (held := await self._inner_head(claim)) is not None:
            now = time.monotonic()
            if seen is None or seen[0] != held.etag:
                seen = (held.etag, now)
            elif now - seen[1] > self.lease:  # its sweeper died: it gave up long ago (see sweep)
                await self._drop(claim, if_match=held.etag)
                seen = None
                continue
            await asyncio.sleep(min(0.05, self.lease / 20) * (1 + random.random()))

    async def _refresh(self, marker: str, key: str, sha: str, size: int, source: Any) -> None:
        """A put slower than grace/2: re-stamp its marker (re-create it if a sweep took it)."""
        with reserved_keys():
            await self.inner.put_object(marker, key.encode("utf-8", "surrogatepass"))
        await self._ensure_body(sha, size, source)

    async def _commit(
        self,
        key: str,
        sha: str,
        size: int,
        ref: str,
        mode: WriteMode,
        user: dict[str, str],
        content_type: str | None,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> tuple[ObjectInfo, ObjectInfo | None]:
        """Write the manifest under ``mode``; the new info and the version it replaced."""
        stored = {**user, _META_SHA: sha, _META_SIZE: str(size), _META_REF: ref}
        options: dict[str, Any] = {
            "content_type": content_type,
            "metadata": stored,
            "cache_control": cache_control,
            "content_disposition": content_disposition,
        }
        data = _manifest_bytes(sha, ref)
        for attempt in range(_COMMIT_ATTEMPTS):  # know exactly which version the write replaces
            current = await self._inner_head(key)
            if current is not None and current.metadata.get(_META_REF) == ref:
                return current, None  # ours already: a retry below us replayed a write that had landed
            if isinstance(mode, IfMatch) and (
                current is None or (mode.etag != "*" and _bare(mode.etag) != current.etag)
            ):
                raise PreconditionFailedError("if_match does not match the current etag", key=key, backend=self.name)
            guard: WriteMode = "create" if current is None else IfMatch(current.etag)
            if mode == "create" and current is not None:
                raise AlreadyExistsError("key already exists", key=key, backend=self.name, operation="put")
            try:
                return await self.inner.put_object(key, data, mode=guard, **options), current
            except PreconditionFailedError:
                await asyncio.sleep(random.random() * min(0.001 * 2**attempt, 0.05))
        raise PreconditionFailedError("the key kept changing under the write", key=key, backend=self.name)

    async def _release(self, old: ObjectInfo | None) -> None:
        """Drop the marker of a manifest that is no longer stored."""
        if old is not None and _META_SHA in old.metadata and _META_REF in old.metadata:
            await self._drop(self._marker(old.metadata[_META_SHA], old.metadata[_META_REF]))

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``data`` (its body once per content); the key as a relative URL."""
        await self.put_object(key, data, content_type=content_type, metadata=metadata)
        return quote(key, safe="/")

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        """Remove the manifest (conditionally on the version read), then its marker."""
        conditional = self.inner.capabilities.conditional_delete
        validate_key(key)
        for _attempt in range(_COMMIT_ATTEMPTS):
            current = await self._inner_head(key)
            if current is None:
                if if_match is not None:
                    raise PreconditionFailedError("if_match on a missing key", key=key, backend=self.name)
                return False
            if if_match is not None and if_match != "*" and _bare(if_match) != current.etag:
                raise PreconditionFailedError("if_match does not match the current etag", key=key, backend=self.name)
            try:
                removed = await self.inner.remove(key, if_match=current.etag if conditional else None)
            except PreconditionFailedError:
                if if_match is not None:
                    raise
                continue
            if removed:
                await self._release(current)
            return removed
        raise PreconditionFailedError("the key kept changing under the delete", key=key, backend=self.name)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """A new reference to ``src``'s body: no body bytes move."""
        validate_key(src)
        info = await self.inner.head(src)
        sha = info.metadata.get(_META_SHA)
        if sha is None:
            return await self.inner.copy(src, dst, mode=mode)
        logical = self._logical(info)
        self._check_write(dst, logical.metadata, None, None, None, mode)
        ref = uuid.uuid4().hex
        marker = self._marker(sha, ref)
        with reserved_keys():
            await self.inner.put_object(marker, dst.encode("utf-8", "surrogatepass"), mode="create")
        try:
            try:
                await self._ensure_body(sha, logical.size, None)
            except NotFoundError:
                raise NotFoundError("the source was deleted", key=src, backend=self.name) from None
            new, old = await self._commit(
                dst,
                sha,
                logical.size,
                ref,
                mode,
                dict(logical.metadata),
                logical.content_type,
                logical.cache_control,
                logical.content_disposition,
            )
        except (*_DEFINITE, NotFoundError):
            await self._drop(marker)
            raise
        await self._release(old)
        self._count("logical", logical.size)
        self._count("puts", 1, "deduplicated")
        return self._logical(new)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Replace the caller's metadata, keeping the manifest's."""
        user = normalize_metadata(metadata)
        if any(name.startswith(META_PREFIX) for name in user):
            raise InvalidMetadataError(
                f"metadata names starting with {META_PREFIX!r} belong to Dedup", key=key, backend=self.name
            )
        for _attempt in range(_READ_ATTEMPTS):
            current = await self.inner.head(key)
            if if_match is not None and if_match != "*" and _bare(if_match) != current.etag:
                raise PreconditionFailedError("the object changed", key=key, backend=self.name)
            mine = {n: v for n, v in current.metadata.items() if n.startswith(META_PREFIX)}
            try:
                info = await self.inner.replace_metadata(key, {**user, **mine}, if_match=current.etag)
            except PreconditionFailedError:
                if if_match is not None:
                    raise
                continue
            return self._logical(info)
        raise PreconditionFailedError("the object kept changing", key=key, backend=self.name)

    # --- reads -----------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        return self._logical(await self.inner.head(key))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        for _attempt in _READS:
            info = await self.inner.head(key)
            if _META_SHA not in info.metadata:
                dl = await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
                if _META_SHA not in dl.info.metadata:
                    return dl
                await dl.aclose()  # it became a manifest meanwhile
                continue
            logical = self._logical(info)
            assert isinstance(logical, DedupObjectInfo)
            check_read_conditions(logical, if_match, if_none_match, self.name)
            try:
                with reserved_keys():
                    body = await self.inner.open(self._blob(logical.sha256), range=range)
            except NotFoundError:
                again = await self.inner.head(key)
                if again.etag != info.etag:
                    continue  # overwritten or deleted (and swept) meanwhile: read the new version
                raise IntegrityError("the object's body is missing", key=key, backend=self.name) from None
            except StorageError as exc:
                exc.key = key
                raise
            if body.info.size != logical.size:
                await body.aclose()
                raise IntegrityError("the object's body has the wrong size", key=key, backend=self.name)
            whole = in_memory(body)
            return Download(
                logical,
                aiter(body) if whole is None else whole,
                start=body.start,
                end=body.end,
                range_requested=body.range_requested,
                close=body.aclose,
            )
        raise PreconditionFailedError("the object kept changing while being read", key=key, backend=self.name)

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self._listed(prefix, start_after)

    async def _listed(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            if info.key.startswith(RESERVED_PREFIX):
                continue
            if not info.metadata and info.size == MANIFEST_SIZE:
                found = await self._inner_head(info.key)  # a listing without metadata (S3): ask
                if found is None:
                    continue
                info = found
            try:
                yield self._logical(info)
            except IntegrityError:  # a listing never fails on one odd object
                yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for key in self.inner.iter_keys(prefix, start_after=start_after):
            if not key.startswith(RESERVED_PREFIX):
                yield key

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """Always :class:`UnsupportedError`: the store's URL would serve the manifest."""
        validate_key(key)
        raise UnsupportedError(
            "objects behind Dedup have no URL of their own; serve them through an app over this layer",
            key=key,
            backend=self.name,
            operation="sign_url",
        )

    # --- counts and the sweeper --------------------------------------------------------------

    async def refcount(self, sha256: str) -> int:
        """The markers of body ``sha256``: its references plus writes in progress or crashed
        (those are exact again after a :meth:`sweep` older than ``grace``)."""
        with reserved_keys():
            return sum([1 async for _ in self.inner.iter_keys(f"{_REFS}{sha256}/")])

    async def sweep(self, *, now: datetime | None = None, body_grace: float | None = None) -> SweepReport:
        """Remove stale markers and unreferenced bodies older than ``grace`` seconds.

        A marker older than ``grace`` whose manifest no longer names it is removed; then each
        body without a marker and older than ``body_grace`` (default ``grace``) is claimed
        create-only, checked again for markers, and removed. ``now`` replaces the clock (the
        stores' ``last_modified`` is compared with it). Safe to run from several processes.
        """
        now = now or self._clock()
        body_age = self.grace if body_grace is None else body_grace
        report: dict[str, int] = dict.fromkeys(
            ("references", "stale_markers_removed", "bodies", "bodies_removed", "bytes_reclaimed", "claims_cleared"), 0
        )
        with reserved_keys():
            claims = [info async for info in self.inner.iter_objects(_SWEEPING)]
        for claim in claims:
            if (now - claim.last_modified).total_seconds() > self.grace + 2 * self.lease:  # a dead sweeper's
                await self._drop(claim.key, if_match=claim.etag)
                report["claims_cleared"] += 1
        live: dict[str, int] = {}
        with reserved_keys():
            markers = [info async for info in self.inner.iter_objects(_REFS)]
        for marker in markers:
            sha, _, ref = marker.key[len(_REFS) :].partition("/")
            if (now - marker.last_modified).total_seconds() >= self.grace and not await self._marker_live(
                marker, sha, ref
            ):
                await self._drop(marker.key, if_match=marker.etag)
                report["stale_markers_removed"] += 1
                continue
            live[sha] = live.get(sha, 0) + 1
        report["references"] = sum(live.values())
        logical = physical = 0
        with reserved_keys():
            bodies = [info async for info in self.inner.iter_objects(_BLOBS)]
        for body in bodies:
            sha = body.key.rpartition("/")[2]
            old = (now - body.last_modified).total_seconds() >= body_age
            if live.get(sha, 0) == 0 and old and await self._reclaim(sha, body):
                report["bodies_removed"] += 1
                report["bytes_reclaimed"] += body.size
                continue
            report["bodies"] += 1
            physical += body.size
            logical += body.size * live.get(sha, 0)
        self._count("reclaimed", report["bytes_reclaimed"])
        if self._metrics is not None:
            self._metrics["stored_logical"].labels(self.name).set(logical)
            self._metrics["stored_physical"].labels(self.name).set(physical)
        return SweepReport(**report, logical_bytes=logical, physical_bytes=physical)

    async def _marker_live(self, marker: ObjectInfo, sha: str, ref: str) -> bool:
        """Whether the manifest the marker names still names it (or cannot be checked now)."""
        try:
            with reserved_keys():
                async with await self.inner.open(marker.key) as dl:
                    key = (await dl.read()).decode("utf-8", "surrogatepass")
            current = await self._inner_head(key)
        except NotFoundError:
            return False  # removed meanwhile
        except (StorageError, UnicodeDecodeError):
            return True  # keep what cannot be checked
        return current is not None and current.metadata.get(_META_SHA) == sha and current.metadata.get(_META_REF) == ref

    async def _reclaim(self, sha: str, body: ObjectInfo) -> bool:
        """Remove an unreferenced body under a create-only claim; whether it was removed."""
        claim = _SWEEPING + sha
        started = time.monotonic()
        try:
            with reserved_keys():
                await self.inner.put_object(claim, uuid.uuid4().hex.encode(), mode="create")
        except PreconditionFailedError:
            return False  # another sweep holds it (or died holding it: cleared after grace)
        try:
            with reserved_keys():
                async for _ in self.inner.iter_keys(f"{_REFS}{sha}/"):
                    return False  # a put took a reference before our claim: it keeps the body
                if time.monotonic() - started > self.lease / 2:
                    return False  # too slow: a waiting put may break the claim soon
                try:
                    return await self.inner.remove(body.key, if_match=body.etag)
                except PreconditionFailedError:
                    return False
        finally:
            await self._drop(claim)


async def _hashed(body: Body, spool: IO[bytes]) -> tuple[str, int, bytes | IO[bytes] | os.PathLike[str]]:
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


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


async def _verified(path: os.PathLike[str], sha: str, key: str, backend: str) -> AsyncIterator[bytes]:
    """The file's bytes, failing the upload (so nothing is stored) if they no longer hash to ``sha``."""
    h = hashlib.sha256()
    async for chunk in iter_body(path, _HASH_CHUNK):
        await asyncio.to_thread(h.update, chunk)
        yield chunk
    if h.hexdigest() != sha:
        raise IntegrityError("the file changed while it was stored", key=key, backend=backend, operation="put")
