"""Dual writes: every write goes to a primary store and a secondary one; failures on the
secondary are kept in a durable outbox and replayed until they succeed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._base import StorageBackend
from .._errors import PreconditionFailedError
from .._keys import RESERVED_PREFIX
from .._types import Body, ObjectInfo, WriteMode
from ._outbox import OutboxLayer

__all__ = ["DualWrite"]

OUTBOX_PREFIX = RESERVED_PREFIX + "/dualwrite/"


class DualWrite(OutboxLayer):
    """``primary`` and ``secondary`` written together; ``primary`` is authoritative.

    - Writes (``put_object``, ``copy``, ``replace_metadata``) and deletes run on ``primary``;
      its result (or error) is the caller's. The key is then brought to the same state on
      ``secondary``.
    - A failure on ``secondary`` never reaches the caller: the key is recorded in the outbox,
      one object per key under ``outbox_prefix`` in ``outbox`` (default: ``primary``), so it
      survives restarts and is shared by every process writing through the same stores.
    - :meth:`replay` (or a background task, ``replay_interval`` seconds apart) brings every
      outbox key up to date and removes its entry once the secondary holds what the primary
      holds now.
    - A key is always synced the same way, with conditional writes on ``secondary``: read the
      secondary's etag, then the primary's current object, then write it (or delete it when
      the primary has none) only if the secondary's etag is still the one read. A newer copy
      that landed meanwhile makes the write fail and the sync start over, so an old version
      never overwrites a newer one. A write with a bytes body sends those bytes; any other
      body is copied back from the primary.
    - Reads, listings and signed URLs are the primary's; outbox keys are never listed.
    - Metrics (``metrics=``, as :class:`Observe`): ``unistore_dualwrite_outbox_depth``,
      ``unistore_dualwrite_replication_lag_seconds`` (since the oldest entry) and
      ``unistore_dualwrite_replay_failures_total``, updated by each replay.

    :meth:`aclose` stops the replayer and closes both stores (and ``outbox`` if it is another).
    """

    kind = "dualwrite"

    def __init__(
        self,
        primary: StorageBackend,
        secondary: StorageBackend,
        *,
        outbox: StorageBackend | None = None,
        outbox_prefix: str = OUTBOX_PREFIX,
        replay_interval: float | None = None,
        metrics: Any = None,
    ) -> None:
        super().__init__(
            primary,
            secondary,
            outbox=outbox,
            outbox_prefix=outbox_prefix,
            replay_interval=replay_interval,
            metrics=metrics,
        )

    @property
    def primary(self) -> StorageBackend:
        """The authoritative store: reads come from it and its results are returned."""
        return self.inner

    def __repr__(self) -> str:
        return f"DualWrite({self.inner!r}, {self.secondary!r})"

    # --- writes ------------------------------------------------------------------------

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
        self._start()
        data = bytes(body) if isinstance(body, bytes | bytearray | memoryview) else None
        before: Any = _UNKNOWN
        if data is not None and self._secondary_conditional:
            try:
                before = await self._secondary_etag(key)
            except Exception:  # the secondary is down: the sync below fails and records the key
                before = _UNKNOWN
        info = await self.inner.put_object(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        if data is not None and before is not _UNKNOWN:
            try:
                await self.secondary.put_object(
                    key,
                    data,
                    content_type=content_type,
                    metadata=metadata,
                    mode=self._guard(before),
                    cache_control=cache_control,
                    content_disposition=content_disposition,
                )
                self._failing = False
                return info
            except PreconditionFailedError:
                pass  # a newer copy landed: sync from the primary's current object
            except Exception as exc:
                await self._record(key, exc)
                return info
        await self._sync_or_record(key)
        return info

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        self._start()
        removed = await self.inner.remove(key, if_match=if_match)
        if removed or if_match is None:
            await self._sync_or_record(key)
        return removed

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        self._start()
        info = await self.inner.copy(src, dst, mode=mode)
        await self._sync_or_record(dst)
        return info

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        self._start()
        info = await self.inner.replace_metadata(key, metadata, if_match=if_match)
        await self._sync_or_record(key)
        return info

    async def _sync_or_record(self, key: str) -> None:
        try:
            await self.sync(key)
        except Exception as exc:
            await self._record(key, exc)
        else:
            self._failing = False


_UNKNOWN: Any = object()
