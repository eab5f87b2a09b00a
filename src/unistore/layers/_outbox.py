"""The outbox shared by :class:`DualWrite` and :class:`Replicate`: one object per key whose copy
on a second store may be behind, kept in a store, and replayed by syncing the key from the
first store's current state with conditional writes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import logging
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from .._base import StorageBackend
from .._errors import ConfigurationError, NotFoundError, PreconditionFailedError
from .._keys import RESERVED_PREFIX, reserved_keys
from .._types import CommonPrefix, IfMatch, ObjectInfo, WriteMode
from ._layer import Layer
from ._metrics import registry_for

__all__ = ["OutboxEntry"]  # OutboxLayer is the private base of DualWrite and Replicate

log = logging.getLogger("unistore.layers.outbox")

_MAX_ROUNDS = 8  # copy attempts of one sync before it is left to the outbox


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """A key whose copy on the second store may be behind the first."""

    key: str
    since: float
    """When the copy first fell behind on this key (UNIX time)."""
    attempts: int
    error: str
    watch_until: float = 0.0
    """Set when an upload URL was signed for the key: the key is synced on every replay until
    then (UNIX time), even after a successful one, since the upload may come later."""
    pending_until: float = 0.0
    """Set while a write recorded ahead of time may still be under way (UNIX time): the entry
    is neither synced nor removed until the write is done or this time has passed."""


class _Metrics:
    """``unistore_<kind>_*`` families in one registry."""

    def __init__(self, registry: Any, kind: str) -> None:
        from prometheus_client import Counter, Gauge

        self.depth = Gauge(
            f"unistore_{kind}_outbox_depth", f"Keys waiting in the {kind} outbox.", ["backend"], registry=registry
        )
        self.lag = Gauge(
            f"unistore_{kind}_replication_lag_seconds",
            "Seconds since the oldest outbox entry was recorded (0 when the outbox is empty).",
            ["backend"],
            registry=registry,
        )
        self.failures = Counter(
            f"unistore_{kind}_replay_failures",
            "Copies to the second store that failed (live or replayed) and outbox writes that failed.",
            ["backend"],
            registry=registry,
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[Any, dict[str, _Metrics]] = weakref.WeakKeyDictionary()


def _metrics_for(option: Any, kind: str) -> _Metrics | None:
    registry = registry_for(option)
    if registry is None:
        return None
    families = _BY_REGISTRY.setdefault(registry, {})
    metrics = families.get(kind)
    if metrics is None:
        metrics = families[kind] = _Metrics(registry, kind)
    return metrics


class OutboxLayer(Layer):
    """A layer over ``inner`` (the source of truth) keeping ``secondary`` in step through an outbox.

    Subclasses decide when a key is synced and when it is recorded; this class holds the
    outbox, :meth:`sync`, :meth:`replay`, the background replayer and the metrics
    (``unistore_<kind>_outbox_depth``, ``_replication_lag_seconds``, ``_replay_failures_total``).
    """

    kind = "outbox"
    _count_every_entry = False  # depth and lag count entries recorded without a failure too

    def __init__(
        self,
        inner: StorageBackend,
        secondary: StorageBackend,
        *,
        outbox: StorageBackend | None,
        outbox_prefix: str,
        replay_interval: float | None,
        metrics: Any,
    ) -> None:
        super().__init__(inner)
        if not outbox_prefix.startswith(RESERVED_PREFIX) or not outbox_prefix.endswith("/"):
            raise ConfigurationError(f"outbox_prefix must start with {RESERVED_PREFIX!r} and end with '/'")
        if replay_interval is not None and replay_interval <= 0:
            raise ConfigurationError("replay_interval must be > 0")
        self.secondary = secondary
        self.outbox_store = inner if outbox is None else outbox
        self.outbox_prefix = outbox_prefix
        self.replay_interval = replay_interval
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self._failing = False
        self._secondary_conditional = secondary.capabilities.conditional_put
        self._metrics = _metrics_for(metrics, self.kind)
        label = getattr(inner, "name", type(inner).__name__)
        self._depth: Any = None
        self._failures: Any = None
        self._oldest: float | None = None
        if self._metrics is not None:
            self._depth = self._metrics.depth.labels(label)
            self._failures = self._metrics.failures.labels(label)
            self._metrics.lag.labels(label).set_function(self.lag)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """The first store's URL. An upload URL (``PUT``/``POST``) bypasses this layer, so the
        key is put in the outbox, watched by every replay until the URL expires."""
        url = await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)
        if method.upper() in ("PUT", "POST"):
            self._start()
            seconds = self.default_expires_in if expires_in is None else expires_in
            await self._record(key, None, watch_until=time.time() + seconds + 60)
        return url

    # --- listings (the first store's, without the outbox) ---------------------------------

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
                float(doc.get("pending_until", 0.0)),
            )
        except (ValueError, KeyError, TypeError):
            log.error("unreadable %s outbox entry %r; removing it", self.kind, entry_key)
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
        pending_until: float | None = None,
        strict: bool = False,
    ) -> OutboxEntry | None:
        """Write (or rewrite) ``key``'s outbox entry for the failure ``exc`` (``None``: no failure,
        e.g. to watch an upload URL until ``watch_until``, or a write recorded ahead of time,
        ``pending_until``; ``0`` ends a pending write, ``None`` keeps what the entry had).
        Each rewrite changes the entry's etag, so a replay that finished an older state never
        removes it. An outbox failure is logged, or raised when ``strict``."""
        if exc is not None:
            if self._failures is not None:
                self._failures.inc()
            # one warning per outage, not one per write
            level = logging.DEBUG if self._failing else logging.WARNING
            log.log(level, "%s copy of %r failed (%s); queued in the outbox", self.kind, key, exc)
            self._failing = True
        entry_key = self._entry_key(key)
        try:
            if previous is None:
                found = await self._read_entry(entry_key)
                previous = found[0] if found else None
            entry = OutboxEntry(
                key,
                previous.since if previous else time.time(),
                (previous.attempts if previous else 0) + (exc is not None),
                f"{type(exc).__name__}: {exc}"[:500] if exc else (previous.error if previous else ""),
                max(watch_until, previous.watch_until if previous else 0.0),
                (previous.pending_until if previous else 0.0) if pending_until is None else pending_until,
            )
            doc = {
                "key": entry.key,
                "since": entry.since,
                "attempts": entry.attempts,
                "error": entry.error,
                "watch_until": entry.watch_until,
                "pending_until": entry.pending_until,
            }
            with reserved_keys():
                await self.outbox_store.put_object(entry_key, json.dumps(doc).encode(), content_type="application/json")
            if previous is None and (exc is not None or self._count_every_entry):
                if self._depth is not None:
                    self._depth.inc()
                if self._oldest is None:
                    self._oldest = entry.since
            return entry
        except Exception as outbox_exc:
            if self._failures is not None:
                self._failures.inc()
            if strict:
                raise
            # the first store's write stands; say loudly that this copy is lost
            log.error("could not record %r in the %s outbox: %s", key, self.kind, outbox_exc)
            return None

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
        that succeeded. Returns how many are left (failed again, rewritten by a newer write
        meanwhile, or recorded ahead of a write still under way)."""
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
                if entry.pending_until > time.time():  # its write may not have landed yet
                    left.append(entry.since)
                    return
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
                except PreconditionFailedError:  # a newer write rewrote it: replay it next time
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
        self._wake = asyncio.Event()
        # a context of its own: not the one of the write that happened to start it (its storage
        # class, idempotency key or request id would otherwise apply to every later copy)
        self._task = asyncio.get_running_loop().create_task(
            self._run(self.replay_interval, self._wake), context=contextvars.Context()
        )

    def _poke(self) -> None:
        """Have the background replayer run now instead of at its next interval."""
        if self._wake is not None:
            self._wake.set()

    def start(self) -> None:
        """Start the background replayer now (it otherwise starts with the first write)."""
        self._start()

    async def _run(self, interval: float, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
            try:
                await self.replay()
            except Exception as exc:  # an outbox read failed: try again next round
                log.warning("%s replay failed: %s", self.kind, exc)

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
