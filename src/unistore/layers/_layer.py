"""The :class:`Layer` base class and :func:`stack`, which composes layers outermost first."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .._base import BaseBackend, StorageBackend, _bare
from .._errors import PreconditionFailedError
from .._types import Body, Capabilities, CommonPrefix, Download, ObjectInfo, Range, WriteMode

__all__ = ["Layer", "LayerFactory", "in_memory", "replace_keeping", "rewrap", "stack"]

T = TypeVar("T")

LayerFactory = Callable[[StorageBackend], StorageBackend]
"""A one-argument callable building a layer over a backend, e.g. ``functools.partial(Retry, attempts=3)``."""


class Layer(BaseBackend):
    """A :class:`StorageBackend` wrapping another one, ``inner``.

    Every primitive forwards to ``inner`` (the single-shot ones through
    :meth:`_around`); ``capabilities`` and ``name`` are the inner store's, so a stack
    looks like the store it wraps. Subclasses override the primitives they change.
    :meth:`aclose` closes ``inner``.
    """

    def __init__(self, inner: StorageBackend) -> None:
        self.inner = inner
        self.default_expires_in = getattr(inner, "default_expires_in", self.default_expires_in)

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]  # per instance: the inner store's
        """The wrapped store's capabilities."""
        return self.inner.capabilities

    @property
    def name(self) -> str:
        """The wrapped store's name (what errors and metrics report)."""
        return self.inner.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def _around(self, operation: str, key: str | None, call: Callable[[], Awaitable[T]]) -> T:
        """Run one forwarded operation. Layers that treat every operation alike (Retry,
        RateLimit, Observe) override this one hook instead of each primitive."""
        return await call()

    async def head(self, key: str) -> ObjectInfo:
        return await self._around("head", key, lambda: self.inner.head(key))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)

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
        return await self._around(
            "put",
            key,
            lambda: self.inner.put_object(
                key,
                body,
                content_type=content_type,
                metadata=metadata,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            ),
        )

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        return await self._around("remove", key, lambda: self.inner.remove(key, if_match=if_match))

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self.inner.iter_objects(prefix, start_after=start_after)

    def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        return self.inner.iter_keys(prefix, start_after=start_after)

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """The inner store's own (native) folder listing when this layer lists objects as the inner
        store does (it does not override :meth:`iter_objects`); else the computed one over this
        layer's :meth:`iter_objects`, so a layer that changes listed objects changes these too."""
        if type(self).iter_objects is Layer.iter_objects:
            return self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after)
        return BaseBackend.iter_entries(self, prefix, delimiter=delimiter, start_after=start_after)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        return await self._around(
            "sign_url", key, lambda: self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)
        )

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        return await self._around("copy", dst, lambda: self.inner.copy(src, dst, mode=mode))

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        return await self._around(
            "replace_metadata", key, lambda: self.inner.replace_metadata(key, metadata, if_match=if_match)
        )

    async def ping(self) -> None:
        await self._around("ping", None, self.inner.ping)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def layers(self) -> list[StorageBackend]:
        """This layer and every store below it, outermost first."""
        out: list[StorageBackend] = []
        node: StorageBackend | None = self
        while node is not None:
            out.append(node)
            node = node.inner if isinstance(node, Layer) else None
        return out


def stack(backend: StorageBackend, *layers: LayerFactory) -> StorageBackend:
    """Wrap ``backend`` in ``layers``, the first one outermost (as Starlette's middleware list).

    >>> store = stack(MemoryBackend(), Observe, partial(Retry, attempts=3))  # Observe(Retry(memory))
    """
    for factory in reversed(layers):
        backend = factory(backend)
    return backend


# --- Download helpers shared by the layers -------------------------------------------


def in_memory(dl: Download) -> bytes | None:
    """The whole served span if ``dl`` holds it in memory with nothing to release, else ``None``."""
    if dl._chunks is None and dl._close is None:  # same package: peek at the private fields
        return dl._data
    return None


def rewrap(
    dl: Download,
    chunks: AsyncIterator[bytes] | bytes,
    close: Callable[[], Awaitable[None]] | None = None,
) -> Download:
    """A Download with ``dl``'s info and span but other ``chunks`` and ``close``."""
    return Download(
        dl.info,
        chunks,
        start=dl.start,
        end=dl.end,
        range_requested=dl.range_requested,
        close=close,
        encoding=dl.encoding,
    )


async def replace_keeping(
    inner: StorageBackend,
    key: str,
    metadata: Mapping[str, Any],
    owned: Callable[[str], bool],
    *,
    if_match: str | None,
    layer: str,
    attempts: int = 4,
) -> ObjectInfo:
    """Replace ``key``'s metadata on ``inner`` with ``metadata`` plus the names a layer keeps
    for itself (those ``owned`` accepts), as ``inner`` stores them now.

    The replacement is conditional on the version whose names were read, so a concurrent write
    is never overwritten with stale layer metadata; without ``if_match`` a lost race is retried
    (up to ``attempts`` reads), with it the caller's version must be current (``*`` matches any,
    quoted and weak etags are compared bare).
    """
    for _attempt in range(attempts):
        current = await inner.head(key)
        if if_match is not None and if_match != "*" and _bare(if_match) != current.etag:
            raise PreconditionFailedError("the object changed", key=key, backend=layer, operation="replace_metadata")
        kept = {name: value for name, value in current.metadata.items() if owned(name)}
        try:
            return await inner.replace_metadata(key, {**metadata, **kept}, if_match=current.etag)
        except PreconditionFailedError:
            if if_match is not None:
                raise
    raise PreconditionFailedError("the object kept changing", key=key, backend=layer, operation="replace_metadata")
