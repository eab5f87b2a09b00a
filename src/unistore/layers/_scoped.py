"""Tenant scoping: ``scoped(backend, "tenants/42/")`` is a view of ``backend`` confined to one prefix."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .._base import StorageBackend, _unsigned_url
from .._errors import InvalidKeyError, PermissionDeniedError, StorageError
from .._keys import validate_key, validate_prefix
from .._types import Body, CommonPrefix, Download, ObjectInfo, Range, WriteMode
from ._layer import Layer

__all__ = ["Scoped", "scoped"]

T = TypeVar("T")


class Scoped(Layer):
    """A view of ``inner`` confined to the keys under ``prefix`` (a key prefix ending in ``/``).

    Keys given to the view and keys it returns are relative to ``prefix``. Every
    key is held to the key rules *before* the prefix is added (``..``, absolute
    keys, backslashes and their percent-encoded forms are refused), so no key can
    name an object outside the prefix. Listings only ever ask the inner store for
    keys under the prefix, and only return those; ``copy`` copies within it;
    signed URLs name objects within it. Errors report relative keys.

    With ``relative=False`` the view keeps the inner store's (absolute) keys
    instead: a key or listing prefix that does not start with ``prefix`` is
    refused with :class:`PermissionDeniedError`, and ``prefix`` is a plain string
    prefix (``"user-7-"`` confines to keys starting with it). The service runs the
    requests of a prefix-restricted token through such a view.

    Where it belongs: outermost, or per request over a shared stack (a view
    costs two attributes). :meth:`aclose` does nothing: the view does not own
    the store it looks into.
    """

    def __init__(self, inner: StorageBackend, prefix: str, *, relative: bool = True) -> None:
        super().__init__(inner)
        if not isinstance(prefix, str) or not prefix.strip("/"):
            raise InvalidKeyError("a scope prefix must be a non-empty key prefix such as 'tenants/42/'")
        if relative:
            if not prefix.endswith("/"):
                prefix += "/"
            validate_key(prefix[:-1])
        else:
            validate_prefix(prefix)
        self.prefix = prefix
        self.relative = relative

    def __repr__(self) -> str:
        mode = "" if self.relative else ", relative=False"
        return f"Scoped({self.inner!r}, {self.prefix!r}{mode})"

    def _outside(self, key: str) -> PermissionDeniedError:
        return PermissionDeniedError(f"outside the scope {self.prefix!r}", key=key, backend=self.name)

    # --- key mapping -------------------------------------------------------------

    def _full(self, key: str) -> str:
        """The inner key of relative ``key``, which must obey the key rules on its own."""
        validate_key(key)
        if not self.relative:
            if not key.startswith(self.prefix):
                raise self._outside(key)
            return key
        return validate_key(self.prefix + key)

    def _relative(self, key: str) -> str:
        if not key.startswith(self.prefix):  # an inner store answering outside the scope: never pass it on
            raise StorageError("the store returned a key outside the scope", backend=self.name)
        return key[len(self.prefix) :] if self.relative else key

    def _info(self, info: ObjectInfo) -> ObjectInfo:
        return dataclasses.replace(info, key=self._relative(info.key))

    def _error(self, exc: StorageError) -> None:
        """Report ``exc`` with the relative key."""
        if self.relative and exc.key is not None and exc.key.startswith(self.prefix):
            exc.key = exc.key[len(self.prefix) :]

    async def _around(self, operation: str, key: str | None, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call()
        except StorageError as exc:
            self._error(exc)
            raise

    # --- primitives --------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        full = self._full(key)
        return self._info(await self._around("head", key, lambda: self.inner.head(full)))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        full = self._full(key)
        dl = await self._around(
            "open", key, lambda: self.inner.open(full, range=range, if_match=if_match, if_none_match=if_none_match)
        )
        dl.info = self._info(dl.info)
        return dl

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
        full = self._full(key)
        info = await self._around(
            "put",
            key,
            lambda: self.inner.put_object(
                full,
                body,
                content_type=content_type,
                metadata=metadata,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            ),
        )
        return self._info(info)

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        full = self._full(key)
        return await self._around("remove", key, lambda: self.inner.remove(full, if_match=if_match))

    def _listing_args(self, prefix: str, start_after: str | None) -> tuple[str, str | None]:
        validate_prefix(prefix)
        if start_after is not None and not isinstance(start_after, str):
            raise InvalidKeyError("start_after must be a str")
        if not self.relative:
            if not prefix.startswith(self.prefix):
                raise self._outside(prefix)
            return prefix, start_after
        return self.prefix + prefix, None if start_after is None else self.prefix + start_after

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        inner_prefix, after = self._listing_args(prefix, start_after)
        try:
            async for info in self.inner.iter_objects(inner_prefix, start_after=after):
                yield self._info(info)
        except StorageError as exc:
            self._error(exc)
            raise

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        inner_prefix, after = self._listing_args(prefix, start_after)
        try:
            async for key in self.inner.iter_keys(inner_prefix, start_after=after):
                yield self._relative(key)
        except StorageError as exc:
            self._error(exc)
            raise

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        inner_prefix, after = self._listing_args(prefix, start_after)
        try:
            async for entry in self.inner.iter_entries(inner_prefix, delimiter=delimiter, start_after=after):
                if isinstance(entry, CommonPrefix):
                    yield CommonPrefix(self._relative(entry.prefix))
                else:
                    yield self._info(entry)
        except StorageError as exc:
            self._error(exc)
            raise

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        full = self._full(key)
        return await self._around(
            "sign_url", key, lambda: self.inner.sign_url(full, expires_in=expires_in, download=download, method=method)
        )

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        full_src, full_dst = self._full(src), self._full(dst)
        return self._info(await self._around("copy", dst, lambda: self.inner.copy(full_src, full_dst, mode=mode)))

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        full = self._full(key)
        info = await self._around(
            "replace_metadata", key, lambda: self.inner.replace_metadata(full, metadata, if_match=if_match)
        )
        return self._info(info)

    async def aclose(self) -> None:
        """Nothing to release: the view does not own ``inner``."""

    def unsigned_url(self, key: str) -> str | None:
        """The inner store's unsigned URL for ``key`` inside the scope, if it has one."""
        return _unsigned_url(self.inner, self._full(key))


def scoped(backend: StorageBackend, prefix: str) -> Scoped:
    """A view of ``backend`` confined to ``prefix``: ``scoped(store, f"tenants/{tenant_id}/")``.

    Keys are relative to ``prefix``; nothing outside it can be read, written,
    listed, copied or signed through the view (see :class:`Scoped`).
    """
    return Scoped(backend, prefix)
