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
import logging
import os
import random
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any, ClassVar, TypeVar
from urllib.parse import quote

from .._base import StorageBackend, _bare, check_read_conditions
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
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    normalize_metadata,
)
from ._dedup_parts import (
    BLOBS,
    DEDUP_PREFIX,
    MANIFEST_SIZE,
    META_PREFIX,
    META_REF,
    META_SHA,
    META_SIZE,
    REFS,
    SWEEPING,
    DedupObjectInfo,
    SweepReport,
    dedup_metrics,
    hashed,
    manifest_bytes,
    reserved_chunks,
    verified,
)
from ._dedup_sweep import sweep
from ._layer import Layer, in_memory, replace_keeping

__all__ = ["DEDUP_PREFIX", "Dedup", "DedupObjectInfo", "META_PREFIX", "SweepReport"]

_SPOOL_IN_MEMORY = 1024 * 1024
_COMMIT_ATTEMPTS = 64
_READ_ATTEMPTS = 4
_READS = range(_READ_ATTEMPTS)  # ``open`` has a parameter named range
_LIST_BATCH = 32
"""Listed objects whose size is asked for at once (where a listing has no metadata)."""
_DEFINITE = (PreconditionFailedError, InvalidArgumentError, InvalidMetadataError, InvalidKeyError, TypeError)
"""Failures of a write that prove nothing was written."""

log = logging.getLogger("unistore.dedup")
_E = TypeVar("_E", ObjectInfo, ObjectInfo | CommonPrefix)


def _owned_by_dedup(name: str) -> bool:
    """Whether a metadata name is one of the manifest's."""
    return name.startswith(META_PREFIX)


class Dedup(Layer):
    """Stores each distinct body once, under its SHA-256; keys hold small manifests naming it.

    A put hashes the body (spooling a stream: memory up to 1 MiB, then a temporary file), writes
    a reference marker create-only, uploads the body only if the store does not have it yet
    (create-only), then writes the manifest; overwriting or deleting a key removes the old
    manifest's marker after the manifest is gone. Reads open the manifest's body (ranges are the
    store's own). Counts live in the store, so every process and replica over it shares them.

    Bodies are removed only by :meth:`sweep`, after ``grace`` seconds: set it above the longest
    a put can take (a put older than ``grace / 2`` refreshes its marker before committing). A sweep
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
        self._metrics = dedup_metrics(metrics)

    def __repr__(self) -> str:
        return f"Dedup({self.inner!r}, grace={self.grace})"

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # per instance
        """The wrapped store's, without signed URLs."""
        return dataclasses.replace(self.inner.capabilities, signed_urls=False, presigned_put=False)

    # --- names and infos -----------------------------------------------------------------

    @staticmethod
    def _blob(sha: str) -> str:
        return f"{BLOBS}{sha[:2]}/{sha}"

    @staticmethod
    def _marker(sha: str, ref: str) -> str:
        return f"{REFS}{sha}/{ref}"

    def _logical(self, info: ObjectInfo) -> ObjectInfo:
        """``info`` of a stored object as the caller sees it (a manifest as its body)."""
        sha = info.metadata.get(META_SHA)
        if sha is None:
            return info
        try:
            size = int(info.metadata[META_SIZE])
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

    async def _create(self, key: str, data: bytes) -> bool:
        """Write internal object ``key`` create-only; whether it is ours. A retry below us that
        replays a create which had landed finds it there: the same bytes make it ours."""
        try:
            with reserved_keys():
                await self.inner.put_object(key, data, mode="create")
        except PreconditionFailedError:
            try:
                with reserved_keys():
                    return await (await self.inner.open(key)).read() == data
            except NotFoundError:
                return False
        return True

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
        name = key.encode("utf-8", "surrogatepass")
        with tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY) as spool:
            sha, size, source = await hashed(body, spool)
            refs = [uuid.uuid4().hex]
            await self._create(self._marker(sha, refs[0]), name)
            started = time.monotonic()

            async def protect() -> None:  # a new reference, its marker, and the body under it
                refs.append(uuid.uuid4().hex)
                await self._create(self._marker(sha, refs[-1]), name)
                await self._ensure_body(sha, size, source)

            try:
                uploaded = await self._ensure_body(sha, size, source)
                if time.monotonic() - started > self.grace / 2:
                    await self._refresh(self._marker(sha, refs[0]), key, sha, size, source)
                info, old, ref = await self._commit(
                    key, sha, size, refs, protect, mode, user, content_type, cache_control, content_disposition
                )
            except _DEFINITE:
                for unused in refs:
                    await self._drop(self._marker(sha, unused))
                raise
        for unused in refs:
            if unused != ref:
                await self._drop(self._marker(sha, unused))
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
        placeholder = {META_SHA: "0" * 64, META_SIZE: "0" * 20, META_REF: "0" * 32}
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
            raise _BodyGone
        if not isinstance(source, bytes | os.PathLike):
            source.seek(0)
        body: Any = verified(source, sha, blob, self.name) if isinstance(source, os.PathLike) else source
        write_mode: WriteMode = "create" if found is None else IfMatch(found.etag)  # a damaged body: replace it
        try:
            with reserved_keys():
                await self.inner.put_object(blob, body, content_type="application/octet-stream", mode=write_mode)
        except PreconditionFailedError:
            return False  # another writer stored it first
        return True

    async def _wait_for_sweep(self, sha: str) -> None:
        """Wait while a sweep claims this body; break a claim held longer than ``lease``."""
        claim = SWEEPING + sha
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
        refs: list[str],
        protect: Callable[[], Awaitable[None]],
        mode: WriteMode,
        user: dict[str, str],
        content_type: str | None,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> tuple[ObjectInfo, ObjectInfo | None, str]:
        """Write the manifest under ``mode``, conditionally on the version read just before (so the
        replaced version is known); the new info, the version it replaced, and the reference used.

        A 412 may hide a write that landed (a Retry below replayed it): the next attempt then takes
        a new reference (``protect``), since a delete may already have released the landed one.
        """
        for attempt in range(_COMMIT_ATTEMPTS):
            current = await self._inner_head(key)
            if current is not None and current.metadata.get(META_REF) in refs:
                return current, None, current.metadata[META_REF]  # one of ours landed after all
            if isinstance(mode, IfMatch) and (
                current is None or (mode.etag != "*" and _bare(mode.etag) != current.etag)
            ):
                raise PreconditionFailedError("if_match does not match the current etag", key=key, backend=self.name)
            if mode == "create" and current is not None:
                raise AlreadyExistsError("key already exists", key=key, backend=self.name, operation="put")
            ref = refs[-1]
            stored = {**user, META_SHA: sha, META_SIZE: str(size), META_REF: ref}
            guard: WriteMode = "create" if current is None else IfMatch(current.etag)
            try:
                info = await self.inner.put_object(
                    key,
                    manifest_bytes(sha, ref),
                    mode=guard,
                    content_type=content_type,
                    metadata=stored,
                    cache_control=cache_control,
                    content_disposition=content_disposition,
                )
            except PreconditionFailedError:
                await asyncio.sleep(random.random() * min(0.001 * 2**attempt, 0.05))
                await protect()
                continue
            return (info if info.metadata else dataclasses.replace(info, metadata=stored)), current, ref
        raise PreconditionFailedError("the key kept changing under the write", key=key, backend=self.name)

    async def _release(self, old: ObjectInfo | None) -> None:
        """Drop the marker of a manifest that is no longer stored."""
        if old is not None and META_SHA in old.metadata and META_REF in old.metadata:
            await self._drop(self._marker(old.metadata[META_SHA], old.metadata[META_REF]))

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
        sha = info.metadata.get(META_SHA)
        if sha is None:  # an object written before the layer: a plain copy
            validate_key(dst)
            before = await self._inner_head(dst)
            copied = await self.inner.copy(src, dst, mode=mode)
            await self._release(before)  # a record it replaced (released twice if raced: harmless)
            return copied
        logical = self._logical(info)
        self._check_write(dst, logical.metadata, None, None, None, mode)
        name = dst.encode("utf-8", "surrogatepass")
        refs = [uuid.uuid4().hex]
        await self._create(self._marker(sha, refs[0]), name)

        async def protect() -> None:
            refs.append(uuid.uuid4().hex)
            await self._create(self._marker(sha, refs[-1]), name)
            await self._ensure_body(sha, logical.size, None)

        try:
            try:
                await self._ensure_body(sha, logical.size, None)
                new, old, ref = await self._commit(
                    dst,
                    sha,
                    logical.size,
                    refs,
                    protect,
                    mode,
                    dict(logical.metadata),
                    logical.content_type,
                    logical.cache_control,
                    logical.content_disposition,
                )
            except _BodyGone:
                raise NotFoundError("the source was deleted", key=src, backend=self.name) from None
        except (*_DEFINITE, NotFoundError):
            for unused in refs:
                await self._drop(self._marker(sha, unused))
            raise
        for unused in refs:
            if unused != ref:
                await self._drop(self._marker(sha, unused))
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
        return self._logical(
            await replace_keeping(
                self.inner, key, user, _owned_by_dedup, if_match=if_match, layer=self.name, attempts=_READ_ATTEMPTS
            )
        )

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
            if META_SHA not in info.metadata:
                dl = await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
                if META_SHA not in dl.info.metadata:
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
                reserved_chunks(body) if whole is None else whole,
                start=body.start,
                end=body.end,
                range_requested=body.range_requested,
                close=body.aclose,
            )
        raise PreconditionFailedError("the object kept changing while being read", key=key, backend=self.name)

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self._listed(self.inner.iter_objects(prefix, start_after=start_after))

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """The store's own folder listing, its objects as :meth:`iter_objects` shows them."""
        return self._listed(self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after))

    async def _listed(self, entries: AsyncIterator[_E]) -> AsyncIterator[_E]:
        """``entries`` without the layer's own objects, manifests shown as their bodies. Where the
        listing has no metadata (S3), objects of a manifest's size are asked for theirs, a batch at once."""
        batch: list[_E] = []
        async for entry in entries:
            name = entry.prefix if isinstance(entry, CommonPrefix) else entry.key
            if name.startswith(RESERVED_PREFIX):
                continue
            batch.append(entry)
            if len(batch) >= _LIST_BATCH:
                for item in await self._resolve(batch):
                    yield item
                batch = []
        for item in await self._resolve(batch):
            yield item

    async def _resolve(self, batch: list[_E]) -> list[_E]:
        async def one(entry: _E) -> _E | None:
            if isinstance(entry, CommonPrefix):
                return entry
            info: ObjectInfo | None = entry
            if not entry.metadata and entry.size == MANIFEST_SIZE:
                info = await self._inner_head(entry.key)
            if info is None:
                return None  # removed meanwhile
            try:
                return self._logical(info)
            except IntegrityError:  # a listing never fails on one odd object
                return info

        return [item for item in await asyncio.gather(*(one(e) for e in batch)) if item is not None]

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
            return sum([1 async for _ in self.inner.iter_keys(f"{REFS}{sha256}/")])

    async def sweep(self, *, now: datetime | None = None, body_grace: float | None = None) -> SweepReport:
        """Remove stale markers and unreferenced bodies older than ``grace`` seconds.

        A marker older than ``grace`` whose manifest no longer names it is removed; then each
        body without a marker and older than ``body_grace`` (default ``grace``) is claimed
        create-only, checked again for markers, and removed. ``now`` replaces the clock (the
        stores' ``last_modified`` is compared with it). Safe to run from several processes.
        """
        return await sweep(self, now, body_grace)


class _BodyGone(Exception):
    """A copy found no body to reference (its source was deleted and swept)."""
