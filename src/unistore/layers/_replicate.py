"""Asynchronous replication: writes and deletes land on a source store, and a background
replayer copies them to a replica through the same durable outbox as :class:`DualWrite`."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .._base import StorageBackend
from .._errors import ConfigurationError
from .._keys import RESERVED_PREFIX, validate_key
from .._types import Body, ObjectInfo, WriteMode
from ._outbox import OutboxLayer

__all__ = ["Replicate"]

OUTBOX_PREFIX = RESERVED_PREFIX + "/replicate/"

T = TypeVar("T")


class Replicate(OutboxLayer):
    """``source`` is the store of record; ``replica`` follows it asynchronously.

    - Each write (``put_object``, ``copy``, ``replace_metadata``) and delete records the key in
      the outbox *before* it runs on ``source`` (marked pending for ``settle`` seconds), runs
      it, then rewrites the entry as done and wakes the replayer. The caller waits for
      ``source`` and the outbox, never for ``replica``. If the outbox cannot be written, the
      write is not attempted and the outbox's error is raised.
    - The replayer (every ``replay_interval`` seconds, and right after each write) syncs each
      done entry as :meth:`DualWrite.sync` does: ``replica`` gets ``source``'s *current*
      object, or loses the key if ``source`` has none, through a conditional write, so an old
      version never overwrites a newer one; the entry is removed only if no write rewrote it
      meanwhile. A failed copy stays in the outbox and is retried at the next round.
    - A process killed between the outbox record and the end of its write leaves a pending
      entry; once ``settle`` has passed it is synced like any other. So every write that
      reached ``source`` is copied at least once, whatever crashes.
    - Reads, listings and URLs are ``source``'s; outbox keys are never listed.
    - Metrics: ``unistore_replicate_outbox_depth``, ``unistore_replicate_replication_lag_seconds``
      (since the oldest write not yet copied), ``unistore_replicate_replay_failures_total``.

    :meth:`aclose` stops the replayer (without waiting for the outbox to drain: call
    :meth:`replay` first for that) and closes both stores.
    """

    kind = "replicate"
    _count_every_entry = True

    def __init__(
        self,
        source: StorageBackend,
        replica: StorageBackend,
        *,
        outbox: StorageBackend | None = None,
        outbox_prefix: str = OUTBOX_PREFIX,
        replay_interval: float | None = 1.0,
        settle: float = 300.0,
        metrics: Any = None,
    ) -> None:
        super().__init__(
            source,
            replica,
            outbox=outbox,
            outbox_prefix=outbox_prefix,
            replay_interval=replay_interval,
            metrics=metrics,
        )
        if settle <= 0:
            raise ConfigurationError("settle must be > 0")
        self.settle = settle

    @property
    def source(self) -> StorageBackend:
        """The store of record."""
        return self.inner

    @property
    def replica(self) -> StorageBackend:
        """The store that follows ``source``."""
        return self.secondary

    def __repr__(self) -> str:
        return f"Replicate({self.inner!r}, {self.secondary!r})"

    async def _logged(self, key: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run one write on ``source`` between a pending outbox record and a done one."""
        validate_key(key)  # a key no store takes would never leave the outbox
        self._start()
        entry = await self._record(key, None, pending_until=time.time() + self.settle, strict=True)
        try:
            return await call()
        finally:  # failed or not, the key is synced (a failed write leaves source as it was)
            await self._record(key, None, previous=entry, pending_until=0.0)
            self._poke()

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
        return await self._logged(
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
        return await self._logged(key, lambda: self.inner.remove(key, if_match=if_match))

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        return await self._logged(dst, lambda: self.inner.copy(src, dst, mode=mode))

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        return await self._logged(key, lambda: self.inner.replace_metadata(key, metadata, if_match=if_match))
