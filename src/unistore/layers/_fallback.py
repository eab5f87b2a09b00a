"""Read fallback: serve from a new store, falling back to an old one while data moves between them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, TypeVar

from .._base import StorageBackend
from .._errors import AlreadyExistsError, NotFoundError, StorageError
from .._types import Body, CommonPrefix, Download, ObjectInfo, Range, WriteMode
from ._layer import Layer

__all__ = ["ReadFallback"]

log = logging.getLogger("unistore.layers.fallback")

E = TypeVar("E")


class ReadFallback(Layer):
    """``new`` in front of ``old``: reads try ``new``, then ``old`` when ``new`` has no such key.

    For moving data from ``old`` to ``new`` while serving it: a background migration
    (:func:`unistore.migrate`) copies objects over; until it is done every key reads as if it
    were already moved.

    - Reads (``open``/``get``, ranges, ``head``, ``exists``, ``get_metadata``, ``sign_url``)
      try ``new`` first and ask ``old`` only on :class:`NotFoundError`.
    - ``promote=True`` copies an object found only in ``old`` into ``new`` when it is opened
      (not on ``head``), with ``mode="create"``: a write to ``new`` that lands first wins and is
      never overwritten; the read then returns that newer object. A failed promotion is logged
      and the read is served from ``old``.
    - Writes (``put_object``, ``copy``, ``replace_metadata``) go to ``new`` only.
    - Deletes remove the key from *both* stores, so a deleted key does not resurface from
      ``old``. ``if_match`` is checked against the store the key is read from.
    - Listings merge both sorted streams; a key in both is listed once, with ``new``'s info.

    ``capabilities`` and ``name`` are ``new``'s. :meth:`aclose` closes both stores.
    """

    def __init__(self, new: StorageBackend, old: StorageBackend, *, promote: bool = False) -> None:
        super().__init__(new)
        self.old = old
        self.promote = promote

    @property
    def new(self) -> StorageBackend:
        """The store written to and read first."""
        return self.inner

    def __repr__(self) -> str:
        extra = ", promote=True" if self.promote else ""
        return f"ReadFallback({self.inner!r}, {self.old!r}{extra})"

    # --- reads -----------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        try:
            return await self.inner.head(key)
        except NotFoundError:
            return await self.old.head(key)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        try:
            return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        except NotFoundError:
            pass
        if self.promote and await self._promote(key):
            return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        return await self.old.open(key, range=range, if_match=if_match, if_none_match=if_none_match)

    async def _promote(self, key: str) -> bool:
        """Copy ``key`` from ``old`` into ``new`` unless ``new`` has it; whether ``new`` now has it.
        :class:`NotFoundError` if neither store has it."""
        async with await self.old.open(key) as dl:
            info = dl.info
            try:
                await self.inner.put_object(
                    key,
                    dl,
                    content_type=info.content_type,
                    metadata=info.metadata,
                    mode="create",
                    cache_control=info.cache_control,
                    content_disposition=info.content_disposition,
                )
            except AlreadyExistsError:  # a concurrent write reached `new` first: it is newer, keep it
                return True
            except StorageError as exc:
                log.warning("promoting %r into the new store failed: %s", key, exc)
                return False
        return True

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """A URL on ``new``; for a read (``GET``/``HEAD``) of a key only ``old`` has, a URL on ``old``."""
        store = self.inner
        if (
            method.upper() in ("GET", "HEAD")
            and not await self._exists(self.inner, key)
            and await self._exists(self.old, key)
        ):
            store = self.old
        return await store.sign_url(key, expires_in=expires_in, download=download, method=method)

    @staticmethod
    async def _exists(store: StorageBackend, key: str) -> bool:
        try:
            await store.head(key)
        except NotFoundError:
            return False
        return True

    # --- writes ----------------------------------------------------------------------

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        """Remove ``key`` from both stores; ``True`` if either had it."""
        if if_match is None:
            in_new = await self.inner.remove(key)
            in_old = await self.old.remove(key)
            return in_new or in_old
        if await self.inner.remove(key, if_match=if_match):
            await self.old.remove(key)
            return True
        return await self.old.remove(key, if_match=if_match)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """Copy ``src`` (read with fallback) to ``dst`` in ``new``."""
        if await self._exists(self.inner, src):
            return await self.inner.copy(src, dst, mode=mode)
        async with await self.old.open(src) as dl:
            info = dl.info
            return await self.inner.put_object(
                dst,
                dl,
                content_type=info.content_type,
                metadata=info.metadata,
                mode=mode,
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Replace the metadata in ``new``; a key only ``old`` has is first copied into ``new``
        (``mode="create"``, so a concurrent write to ``new`` is never overwritten)."""
        try:
            return await self.inner.replace_metadata(key, metadata, if_match=if_match)
        except NotFoundError:
            pass
        async with await self.old.open(key, if_match=if_match) as dl:
            info = dl.info
            return await self.inner.put_object(
                key,
                dl,
                content_type=info.content_type,
                metadata=metadata,
                mode="create",
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )

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
        """Write to ``new``. ``mode="create"`` only looks at ``new``: a key only ``old`` has is created."""
        return await self.inner.put_object(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )

    # --- listings ----------------------------------------------------------------------

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return _merge(
            self.inner.iter_objects(prefix, start_after=start_after),
            self.old.iter_objects(prefix, start_after=start_after),
            lambda info: info.key,
        )

    def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        return _merge(
            self.inner.iter_keys(prefix, start_after=start_after),
            self.old.iter_keys(prefix, start_after=start_after),
            lambda key: key,
        )

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        return _merge(
            self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after),
            self.old.iter_entries(prefix, delimiter=delimiter, start_after=start_after),
            _entry_name,
        )

    async def ping(self) -> None:
        await self.inner.ping()
        await self.old.ping()

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            await self.old.aclose()


def _entry_name(entry: ObjectInfo | CommonPrefix) -> str:
    return entry.prefix if isinstance(entry, CommonPrefix) else entry.key


async def _merge(a: AsyncIterator[E], b: AsyncIterator[E], name: Callable[[E], str]) -> AsyncIterator[E]:
    """Merge two ascending streams by ``name``; on a tie ``a``'s entry is kept and ``b``'s dropped."""
    _end = object()

    async def step(it: AsyncIterator[E]) -> Any:
        try:
            return await anext(it)
        except StopAsyncIteration:
            return _end

    try:
        x, y = await step(a), await step(b)
        while x is not _end or y is not _end:
            if y is _end or (x is not _end and name(x) <= name(y)):
                if y is not _end and name(x) == name(y):
                    y = await step(b)
                yield x
                x = await step(a)
            else:
                yield y
                y = await step(b)
    finally:
        for it in (a, b):
            aclose = getattr(it, "aclose", None)
            if aclose is not None:
                await aclose()
