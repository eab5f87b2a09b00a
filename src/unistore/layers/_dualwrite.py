"""Dual writes: every write goes to a primary store and a secondary one; failures on the
secondary are kept in a durable outbox and replayed until they succeed."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from .._base import StorageBackend
from .._errors import ConfigurationError, NotFoundError, PreconditionFailedError
from .._keys import RESERVED_PREFIX, reserved_keys
from .._types import Body, CommonPrefix, IfMatch, ObjectInfo, WriteMode
from ._layer import Layer

__all__ = ["DualWrite", "OutboxEntry"]

log = logging.getLogger("unistore.layers.dualwrite")

OUTBOX_PREFIX = RESERVED_PREFIX + "/dualwrite/"
_MAX_ROUNDS = 8  # copy attempts of one sync before it is left to the outbox


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A key whose secondary copy may be behind the primary."""

    key: str
    since: float
    """When the secondary first fell behind on this key (UNIX time)."""
    attempts: int
    error: str
    watch_until: float = 0.0
    """Set when an upload URL was signed for the key: the key is synced on every replay until
    then (UNIX time), even after a successful one, since the upload may come later."""


class _Metrics:
    """``unistore_dualwrite_*`` families in one registry."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge

        self.depth = Gauge(
            "unistore_dualwrite_outbox_depth", "Keys waiting in the dual-write outbox.", ["backend"], registry=registry
        )
        self.lag = Gauge(
            "unistore_dualwrite_replication_lag_seconds",
            "Seconds since the oldest outbox entry was recorded (0 when the outbox is empty).",
            ["backend"],
            registry=registry,
        )
        self.failures = Counter(
            "unistore_dualwrite_replay_failures",
            "Secondary writes that failed (live or replayed) and outbox writes that failed.",
            ["backend"],
            registry=registry,
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[Any, _Metrics] = weakref.WeakKeyDictionary()


def _metrics_for(option: Any) -> _Metrics | None:
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if option is None or option is True else option
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = _Metrics(registry)
    return metrics


class DualWrite(Layer):
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
        super().__init__(primary)
        if not outbox_prefix.startswith(RESERVED_PREFIX) or not outbox_prefix.endswith("/"):
            raise ConfigurationError(f"outbox_prefix must start with {RESERVED_PREFIX!r} and end with '/'")
        if replay_interval is not None and replay_interval <= 0:
            raise ConfigurationError("replay_interval must be > 0")
        self.secondary = secondary
        self.outbox_store = primary if outbox is None else outbox
        self.outbox_prefix = outbox_prefix
        self.replay_interval = replay_interval
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._failing = False
        self._secondary_conditional = secondary.capabilities.conditional_put
        self._metrics = _metrics_for(metrics)
        label = getattr(primary, "name", type(primary).__name__)
        self._depth: Any = None
        self._failures: Any = None
        self._oldest: float | None = None
        if self._metrics is not None:
            self._depth = self._metrics.depth.labels(label)
            self._failures = self._metrics.failures.labels(label)
            self._metrics.lag.labels(label).set_function(self.lag)

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

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """The primary's URL. An upload URL (``PUT``/``POST``) bypasses this layer, so the key is
        put in the outbox, watched by every replay until the URL expires."""
        url = await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)
        if method.upper() in ("PUT", "POST"):
            self._start()
            seconds = self.default_expires_in if expires_in is None else expires_in
            await self._record(key, None, watch_until=time.time() + seconds + 60)
        return url

    # --- listings (the primary's, without the outbox) ---------------------------------

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            if not info.key.startswith(RESERVED_PREFIX):
                yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for key in self.inner.iter_keys(prefix, start_after=start_after):
            if not key.startswith(RESERVED_PREFIX):
                yield key

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        async for entry in self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after):
            name = entry.prefix if isinstance(entry, CommonPrefix) else entry.key
            if not name.startswith(RESERVED_PREFIX):
                yield entry

    # --- syncing one key ---------------------------------------------------------------

    def _guard(self, etag: str | None) -> WriteMode:
        if not self._secondary_conditional:
            return "overwrite"
        return "create" if etag is None else IfMatch(etag)

    async def _secondary_etag(self, key: str) -> str | None:
        try:
            return (await self.secondary.head(key)).etag
        except NotFoundError:
            return None

    async def sync(self, key: str) -> None:
        """Bring ``key`` on the secondary to the primary's current state (raises on failure)."""
        for _ in range(_MAX_ROUNDS):
            before = await self._secondary_etag(key)
            try:
                dl = await self.inner.open(key)
            except NotFoundError:
                if before is None:
                    return
                try:
                    await self.secondary.remove(
                        key, if_match=before if self.secondary.capabilities.conditional_delete else None
                    )
                except PreconditionFailedError:
                    continue
                return
            async with dl:
                info = dl.info
                try:
                    await self.secondary.put_object(
                        key,
                        dl,
                        content_type=info.content_type,
                        metadata=info.metadata,
                        mode=self._guard(before),
                        cache_control=info.cache_control,
                        content_disposition=info.content_disposition,
                    )
                except PreconditionFailedError:
                    continue
            if self._secondary_conditional:
                return
            # no conditional writes on the secondary: check the primary did not move meanwhile
            try:
                if (await self.inner.head(key)).etag == info.etag:
                    return
            except NotFoundError:
                continue
        raise PreconditionFailedError(f"secondary kept changing during {_MAX_ROUNDS} sync rounds", key=key)

    async def _sync_or_record(self, key: str) -> None:
        try:
            await self.sync(key)
        except Exception as exc:
            await self._record(key, exc)
        else:
            self._failing = False

    # --- the outbox --------------------------------------------------------------------

    def _entry_key(self, key: str) -> str:
        return self.outbox_prefix + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()

    async def _read_entry(self, entry_key: str) -> tuple[OutboxEntry, str] | None:
        with reserved_keys():
            try:
                async with await self.outbox_store.open(entry_key) as dl:
                    raw, etag = await dl.read(), dl.info.etag
            except NotFoundError:
                return None
        try:
            doc = json.loads(raw)
            entry = OutboxEntry(
                str(doc["key"]),
                float(doc["since"]),
                int(doc["attempts"]),
                str(doc.get("error", "")),
                float(doc.get("watch_until", 0.0)),
            )
        except (ValueError, KeyError, TypeError):
            log.error("unreadable dual-write outbox entry %r; removing it", entry_key)
            with reserved_keys():
                await self.outbox_store.remove(entry_key)
            return None
        return entry, etag

    async def _record(
        self,
        key: str,
        exc: BaseException | None,
        previous: OutboxEntry | None = None,
        *,
        watch_until: float = 0.0,
    ) -> None:
        """Write (or rewrite) ``key``'s outbox entry for the failure ``exc`` (``None``: to watch an
        upload URL until ``watch_until``). Each rewrite changes the entry's etag, so a replay that
        finished an older state never removes it."""
        if exc is not None:
            if self._failures is not None:
                self._failures.inc()
            # one warning per outage, not one per write
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "secondary write of %r failed (%s); queued in the outbox", key, exc)
            self._failing = True
        entry_key = self._entry_key(key)
        try:
            if previous is None:
                found = await self._read_entry(entry_key)
                previous = found[0] if found else None
            since = previous.since if previous else time.time()
            doc = {
                "key": key,
                "since": since,
                "attempts": (previous.attempts if previous else 0) + (exc is not None),
                "error": f"{type(exc).__name__}: {exc}"[:500] if exc else (previous.error if previous else ""),
                "watch_until": max(watch_until, previous.watch_until if previous else 0.0),
            }
            with reserved_keys():
                await self.outbox_store.put_object(entry_key, json.dumps(doc).encode(), content_type="application/json")
            if previous is None and exc is not None:
                if self._depth is not None:
                    self._depth.inc()
                if self._oldest is None:
                    self._oldest = since
        except Exception as outbox_exc:  # the primary write stands; say loudly that replication is lost
            log.error("could not record %r in the dual-write outbox: %s", key, outbox_exc)

    def lag(self) -> float:
        """Seconds since the oldest outbox entry this instance knows of was recorded (0 if none)."""
        return 0.0 if self._oldest is None else max(0.0, time.time() - self._oldest)

    async def outbox(self) -> list[OutboxEntry]:
        """The entries waiting in the outbox, oldest first."""
        out: list[OutboxEntry] = []
        with reserved_keys():
            keys = [k async for k in self.outbox_store.iter_keys(self.outbox_prefix)]
        for entry_key in keys:
            found = await self._read_entry(entry_key)
            if found is not None:
                out.append(found[0])
        out.sort(key=lambda e: e.since)
        return out

    async def replay(self, *, concurrency: int = 8) -> int:
        """Sync every key in the outbox once (``concurrency`` keys at a time); remove the entries
        that succeeded. Returns how many are left (failed again, or rewritten by a newer failure
        meanwhile)."""
        with reserved_keys():
            keys = [k async for k in self.outbox_store.iter_keys(self.outbox_prefix)]
        left: list[float] = []
        sem = asyncio.Semaphore(max(1, concurrency))

        async def one(entry_key: str) -> None:
            async with sem:
                found = await self._read_entry(entry_key)
                if found is None:
                    return
                entry, etag = found
                try:
                    await self.sync(entry.key)
                except Exception as exc:
                    await self._record(entry.key, exc, previous=entry)
                    left.append(entry.since)
                    return
                if entry.watch_until > time.time():  # an upload URL may still be used: keep watching
                    return
                try:
                    with reserved_keys():
                        conditional = self.outbox_store.capabilities.conditional_delete
                        await self.outbox_store.remove(entry_key, if_match=etag if conditional else None)
                except PreconditionFailedError:  # a newer failure rewrote it: replay it next time
                    left.append(entry.since)

        await asyncio.gather(*(one(k) for k in keys))
        self._oldest = min(left) if left else None
        if self._depth is not None:
            self._depth.set(len(left))
        return len(left)

    # --- the background replayer -------------------------------------------------------

    def _start(self) -> None:
        if self.replay_interval is None or self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(self._run(self.replay_interval))

    def start(self) -> None:
        """Start the background replayer now (it otherwise starts with the first write)."""
        self._start()

    async def _run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.replay()
            except Exception as exc:  # an outbox read failed: try again next round
                log.warning("dual-write replay failed: %s", exc)

    async def ping(self) -> None:
        await self.inner.ping()

    async def aclose(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        try:
            await self.inner.aclose()
        finally:
            try:
                await self.secondary.aclose()
            finally:
                if self.outbox_store is not self.inner:
                    await self.outbox_store.aclose()


_UNKNOWN: Any = object()
