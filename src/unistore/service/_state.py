"""The service's own state, kept in the backend under ``.unistore/service/`` (never in the process).

Keeping every record in the store is what makes replicas interchangeable: an
idempotency record written through one replica answers a replay on another.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Any

from .._base import StorageBackend
from .._errors import UnsupportedError
from .._keys import RESERVED_PREFIX, reserved_keys
from .._types import Body, Download, ObjectInfo, Range, WriteMode
from ..layers import Layer

__all__ = ["STATE_PREFIX", "StateStore", "is_internal"]

STATE_PREFIX = RESERVED_PREFIX + "/service/"


def is_internal(key: str) -> bool:
    """Whether ``key`` lies in the reserved namespace (hidden from listings)."""
    return key.startswith(RESERVED_PREFIX) or f"/{RESERVED_PREFIX}" in key


class StateStore(Layer):
    """``inner`` seen through ``.unistore/service/``: key ``k`` is stored at ``.unistore/service/k``.

    Every primitive is overridden, so nothing reaches ``inner`` outside the namespace;
    closing it does not close ``inner`` (the service closes its backend once).
    """

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)

    async def head(self, key: str) -> ObjectInfo:
        with reserved_keys():
            return _strip(await self.inner.head(STATE_PREFIX + key))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        with reserved_keys():
            return await self.inner.open(
                STATE_PREFIX + key, range=range, if_match=if_match, if_none_match=if_none_match
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
        with reserved_keys():
            info = await self.inner.put_object(
                STATE_PREFIX + key,
                body,
                content_type=content_type or "application/octet-stream",
                metadata=metadata,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            )
        return _strip(info)

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        with reserved_keys():
            return await self.inner.remove(STATE_PREFIX + key, if_match=if_match)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        after = STATE_PREFIX + start_after if start_after is not None else None
        with reserved_keys():
            it = self.inner.iter_objects(STATE_PREFIX + prefix, start_after=after)
        while True:
            with reserved_keys():
                try:
                    info = await anext(it)
                except StopAsyncIteration:
                    return
            yield _strip(info)

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for info in self.iter_objects(prefix, start_after=start_after):
            yield info.key

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        raise UnsupportedError("internal state is never shared by URL", key=key)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        raise UnsupportedError("internal state is not copied", key=src)

    async def aclose(self) -> None:
        return None


def _strip(info: ObjectInfo) -> ObjectInfo:
    from dataclasses import replace

    return replace(info, key=info.key.removeprefix(STATE_PREFIX))
