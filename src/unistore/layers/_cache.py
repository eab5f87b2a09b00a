"""A read-through cache for small hot objects, revalidated with ``if_none_match`` after its TTL."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .._base import StorageBackend, check_read_conditions
from .._errors import ConfigurationError, NotFoundError, NotModifiedError, StorageError
from .._types import Body, ByteRange, CommonPrefix, Download, ObjectInfo, Range, WriteMode, accept_encoding
from ..backends.memory import MemoryBackend
from ._layer import Layer, in_memory

__all__ = ["Cache"]


@dataclass(slots=True)
class _Entry:
    info: ObjectInfo
    fresh_until: float


class Cache(Layer):
    """Keeps whole objects of at most ``max_object_size`` bytes in ``store`` (default: a new
    :class:`MemoryBackend`), least recently used evicted past ``max_bytes`` in total.

    Where it belongs: above Retry (a hit costs no request, a miss is retried
    below) and below Observe/RateLimit (hits are still measured). Put it below
    Encrypt, so it holds ciphertext only (it may then live in any store).

    A full read of a small object fills the cache; a ranged read is served from
    the cached bytes when the object is cached, else passed through. Within
    ``ttl`` seconds an entry is served as is (``head`` too), preconditions
    checked against its etag; after it, the next read revalidates with
    ``open(key, if_none_match=etag)``: :class:`NotModifiedError` renews the
    entry, anything else replaces or drops it. Writes, copies and deletes
    through this layer drop the entry, and a read that raced with one does not
    fill the cache, so through this layer reads are never stale; writes that
    bypass it are seen after at most ``ttl`` seconds.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        store: StorageBackend | None = None,
        max_bytes: int = 64 * 1024 * 1024,
        max_object_size: int = 1024 * 1024,
        ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(inner)
        if max_bytes < 0 or max_object_size < 0 or ttl < 0:
            raise ConfigurationError("max_bytes, max_object_size and ttl must be >= 0")
        self._owns_store = store is None
        self.store: StorageBackend = store if store is not None else MemoryBackend()
        self.max_bytes = max_bytes
        self.max_object_size = min(max_object_size, max_bytes)
        self.ttl = ttl
        self._clock = clock
        self._index: OrderedDict[str, _Entry] = OrderedDict()
        self._bytes = 0
        self._filling: dict[str, object] = {}
        self.hits = 0
        self.misses = 0
        self.revalidations = 0

    @property
    def cached_bytes(self) -> int:
        """Bytes currently held."""
        return self._bytes

    # --- index -------------------------------------------------------------------------

    async def _drop(self, key: str) -> None:
        """Invalidate ``key``: forget the entry and stop any read in progress from filling it."""
        self._filling.pop(key, None)
        await self._evict(key)

    async def _evict(self, key: str) -> None:
        entry = self._index.pop(key, None)
        if entry is not None:
            self._bytes -= entry.info.size
            await self.store.remove(key)

    async def _fill(self, key: str, dl: Download, token: object) -> bytes:
        """Read all of ``dl`` and keep it unless a write to ``key`` happened since ``token`` was taken."""
        data = in_memory(dl)
        if data is None:
            try:
                data = await dl.read()
            except BaseException:
                if self._filling.get(key) is token:
                    del self._filling[key]
                raise
        if self._filling.get(key) is not token:
            return data
        await self.store.put_object(key, data)
        if self._filling.get(key) is not token:  # a write landed while we stored: undo
            await self.store.remove(key)
            return data
        del self._filling[key]
        old = self._index.pop(key, None)
        if old is not None:
            self._bytes -= old.info.size
        self._index[key] = _Entry(dl.info, self._clock() + self.ttl)
        self._bytes += len(data)
        while self._bytes > self.max_bytes and self._index:
            victim, entry = self._index.popitem(last=False)
            self._bytes -= entry.info.size
            await self.store.remove(victim)
        return data

    async def _serve(self, key: str, info: ObjectInfo, range: Range | None) -> Download:
        start, end = (0, info.size) if range is None else range.resolve(info.size)
        if end - start == 0:
            return Download(info, b"", start=start, end=end, range_requested=range is not None)
        part = None if (start, end) == (0, info.size) else ByteRange(start, end)
        sdl = await self.store.open(key, range=part)
        data = in_memory(sdl)
        chunks: AsyncIterator[bytes] | bytes = data if data is not None else aiter(sdl)
        close = None if data is not None else sdl.aclose
        return Download(info, chunks, start=start, end=end, range_requested=range is not None, close=close)

    # --- reads -------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        entry = self._index.get(key)
        if entry is not None and self._clock() < entry.fresh_until:
            self.hits += 1
            return entry.info
        info = await self.inner.head(key)
        if entry is not None and self._index.get(key) is entry:
            if info.etag == entry.info.etag:
                entry.fresh_until = self._clock() + self.ttl
            else:
                await self._drop(key)
        return info

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        with accept_encoding():  # the cache holds plain bytes, whatever the caller accepts
            return await self._open(key, range, if_match, if_none_match)

    async def _open(self, key: str, range: Range | None, if_match: str | None, if_none_match: str | None) -> Download:
        entry = self._index.get(key)
        if entry is not None:
            if self._clock() >= entry.fresh_until:
                fresh = await self._revalidate(key, entry)
                if fresh is not None:
                    self.hits += 1
                    check_read_conditions(fresh.info, if_match, if_none_match, self.name)
                    return await self._serve_or_fetch(key, fresh.info, range, if_match, if_none_match)
                entry = self._index.get(key)
            if entry is not None:
                check_read_conditions(entry.info, if_match, if_none_match, self.name)
                self._index.move_to_end(key)
                self.hits += 1
                return await self._serve_or_fetch(key, entry.info, range, if_match, if_none_match)
        self.misses += 1
        if range is not None:
            return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        token = self._filling[key] = object()
        try:
            dl = await self.inner.open(key, if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            if self._filling.get(key) is token:
                del self._filling[key]
            raise
        if dl.info.size > self.max_object_size:
            if self._filling.get(key) is token:
                del self._filling[key]
            return dl
        data = await self._fill(key, dl, token)
        return Download(dl.info, data)

    async def _serve_or_fetch(
        self, key: str, info: ObjectInfo, range: Range | None, if_match: str | None, if_none_match: str | None
    ) -> Download:
        try:
            return await self._serve(key, info, range)
        except NotFoundError:  # the store lost it (evicted by a concurrent read): go to the source
            await self._drop(key)
            return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)

    async def _revalidate(self, key: str, entry: _Entry) -> _Entry | None:
        """Renew ``entry`` if the store still has its version (304), else drop it; the renewed entry or None."""
        self.revalidations += 1
        token = self._filling[key] = object()
        try:
            dl = await self.inner.open(key, if_none_match=entry.info.etag)
        except NotModifiedError:
            if self._filling.get(key) is not token:
                return None
            del self._filling[key]
            if self._index.get(key) is not entry:
                return None
            entry.fresh_until = self._clock() + self.ttl
            return entry
        except StorageError:
            await self._drop(key)
            raise
        await self._evict(key)
        if dl.info.size > self.max_object_size:
            if self._filling.get(key) is token:
                del self._filling[key]
            await dl.aclose()
            return None
        await self._fill(key, dl, token)
        return self._index.get(key)

    # --- writes invalidate ---------------------------------------------------------------

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
        await self._drop(key)
        try:
            return await self.inner.put_object(
                key,
                body,
                content_type=content_type,
                metadata=metadata,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            )
        finally:
            await self._drop(key)

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        await self._drop(key)
        try:
            return await self.inner.remove(key, if_match=if_match)
        finally:
            await self._drop(key)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        await self._drop(dst)
        try:
            return await self.inner.copy(src, dst, mode=mode)
        finally:
            await self._drop(dst)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        await self._drop(key)
        try:
            return await self.inner.replace_metadata(key, metadata, if_match=if_match)
        finally:
            await self._drop(key)

    # --- forwarded explicitly: a transforming layer never forwards by default --------------

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self.inner.iter_objects(prefix, start_after=start_after)

    def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        return self.inner.iter_keys(prefix, start_after=start_after)

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """Listings are never cached: the inner store's own folder listing."""
        return self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._owns_store:
                await self.store.aclose()
