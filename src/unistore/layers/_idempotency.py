"""Idempotent writes: a write carrying a client operation id takes effect once.

The key travels in a context variable, so it passes through any layer above
this one and no primitive changes signature::

    with idempotency_key("order-1234-invoice", scope="tenant-a"):
        info = await store.put_object("invoices/1234.pdf", pdf)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from .._base import StorageBackend
from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TransientError,
    UnsupportedError,
)
from .._types import Body, IfMatch, ObjectInfo, WriteMode
from ..backends.memory import MemoryBackend
from ._layer import Layer
from ._spool import Spool, info_from_json, info_to_json

__all__ = [
    "Idempotency",
    "IdempotencyInProgressError",
    "IdempotencyKeyReusedError",
    "IdempotencyReplayGoneError",
    "current_idempotency_key",
    "idempotency_key",
]

LOGGER = logging.getLogger("unistore.idempotency")
_KEY: ContextVar[tuple[str, str] | None] = ContextVar("unistore_idempotency_key", default=None)
_RECORDS = "idempotency/"


@contextlib.contextmanager
def idempotency_key(key: str | None, *, scope: str = "") -> Iterator[str | None]:
    """Make the writes in this block carry the client operation id ``key`` within ``scope``.

    The same key in two scopes names two operations: a server gives each
    authenticated caller its own scope, so callers can neither collide nor
    learn each other's keys. ``None`` makes the writes carry no key, whatever
    an enclosing block set (a server handling requests uses it so no request
    can inherit another's key).
    """
    if key is not None and (not isinstance(key, str) or not key or len(key) > 255):
        raise InvalidArgumentError("an idempotency key is a non-empty str of at most 255 characters")
    if not isinstance(scope, str):
        raise InvalidArgumentError("an idempotency scope is a str")
    token = _KEY.set(None if key is None else (scope, key))
    try:
        yield key
    finally:
        _KEY.reset(token)


def current_idempotency_key() -> str | None:
    """The idempotency key of the running write, if any (without its scope)."""
    scoped = _KEY.get()
    return None if scoped is None else scoped[1]


class IdempotencyKeyReusedError(InvalidArgumentError):
    """The idempotency key was already used for a write with another key, body or options.

    422 as in the IETF draft *The Idempotency-Key HTTP Header Field* (§2.7): the
    request is well-formed but reuses a key for a different payload. It is a
    client error, never retried; it is not a precondition on the object.
    """

    status = 422


class IdempotencyInProgressError(TransientError):
    """Another write with this idempotency key is still running (409 in the same draft).

    Transient: retrying later returns the first write's result, or runs the
    write if the first writer died (its lease then expires).
    """

    status = 409


class IdempotencyReplayGoneError(StorageError):
    """The write recorded under this idempotency key took effect, but its object has since
    been deleted (410).

    A replay never runs the write again (that would resurrect a deleted object)
    and never answers "created" for an object that is no longer there. Not retried.
    """

    status = 410


class Idempotency(Layer):
    """Deduplicates ``put_object`` calls made under :func:`idempotency_key`.

    Where it belongs: outermost among the writing layers, above Retry, so a
    caller's whole retried operation is the unit. Records live in ``store``
    (default: a new :class:`MemoryBackend`; pass a shared store for several
    processes), one per scope and key. A first write takes a *lease*: a
    ``pending`` record with the sha256 of the destination key, body and options,
    valid ``lease`` seconds and renewed every ``lease / 3`` seconds while the
    write runs. A repeat while the lease holds raises
    :class:`IdempotencyInProgressError` (in-process repeats wait instead); a
    repeat after it lapsed (the writer died) takes the lease over atomically
    and writes. A finished write's record answers repeats for ``ttl`` seconds:
    the same digest returns the recorded :class:`ObjectInfo` (even if the
    object was overwritten since: its etag tells which version the write made)
    while the object exists, else raises :class:`IdempotencyReplayGoneError`;
    another digest raises :class:`IdempotencyKeyReusedError`. A failed write
    releases its lease. Expired records are removed by :meth:`sweep` (at most
    ``sweep_limit`` records examined per call, continuing where the previous
    one stopped); a keyed write starts a background pass over all records,
    ``sweep_limit`` at a time, once every ``sweep_interval`` seconds (``None``:
    only when :meth:`sweep` is called), so an expired record outlives its
    expiry by about ``sweep_interval`` plus one pass. The body is
    hashed before anything is written: bytes directly, a path or seekable file
    by reading it once more, other streams by spooling them to a temporary
    file (in memory up to 8 MiB), which also makes them replayable for Retry
    below. Writes without a key pass straight through. The store must support
    conditional writes.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        store: StorageBackend | None = None,
        ttl: float = 24 * 3600.0,
        lease: float = 30.0,
        sweep_interval: float | None = 60.0,
        sweep_limit: int = 100,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        if ttl <= 0 or lease <= 0 or sweep_limit < 1 or (sweep_interval is not None and sweep_interval <= 0):
            raise ConfigurationError("ttl, lease and sweep_interval must be > 0 and sweep_limit >= 1")
        self._owns_store = store is None
        self.store: StorageBackend = store if store is not None else MemoryBackend()
        self.ttl = ttl
        self.lease = lease
        self.sweep_interval = sweep_interval
        self.sweep_limit = sweep_limit
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}
        self._cursor: str | None = None
        self._last_sweep = clock()
        self._sweeper: asyncio.Task[int] | None = None

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
        scoped = _KEY.get()
        options = dict(
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        if scoped is None:
            return await self.inner.put_object(key, body, **options)  # type: ignore[arg-type]
        record_key = _RECORDS + hashlib.sha256(json.dumps(list(scoped)).encode()).hexdigest()
        lock = self._locks.setdefault(record_key, asyncio.Lock())
        try:
            async with lock:
                return await self._once(record_key, key, body, options)
        finally:
            if not lock.locked() and self._locks.get(record_key) is lock:
                del self._locks[record_key]
            self._maybe_sweep()

    async def _once(self, record_key: str, key: str, body: Body, options: dict[str, Any]) -> ObjectInfo:
        with Spool(body) as spool:
            digest = await spool.digest(key, options)
            claimed = await self._claim(record_key, key, digest)
            if isinstance(claimed, ObjectInfo):
                return claimed
            lease = _Lease(self, record_key, claimed, digest)
            try:
                info = await lease.hold(self.inner.put_object(key, spool.body(), **options))
            except BaseException:
                await lease.release()
                raise
            await lease.finish(info)
            return info

    async def _claim(self, record_key: str, key: str, digest: str) -> str | ObjectInfo:
        """The etag of our new pending record, or the recorded result to replay."""
        for _ in range(4):
            now = self._clock()
            pending = _dump({"state": "pending", "digest": digest, "expires": now + self.lease})
            found = await self._load(record_key)
            if found is None:
                try:
                    return (await self.store.put_object(record_key, pending, mode="create")).etag
                except PreconditionFailedError:  # another writer created it first: look again
                    continue
            record, etag = found
            if record["expires"] > now:
                if record["digest"] != digest:
                    raise IdempotencyKeyReusedError(
                        "idempotency key reused for a different write (key, body or options differ)",
                        key=key,
                        operation="put",
                    )
                if record["state"] == "done":
                    return await self._replay(key, info_from_json(record["info"]))
                raise IdempotencyInProgressError(
                    "a write with this idempotency key is in progress",
                    retry_after=min(self.lease, max(0.05, record["expires"] - now)),
                    key=key,
                    operation="put",
                )
            try:  # expired: a finished record past its ttl, or the lease of a writer that died
                return (await self.store.put_object(record_key, pending, mode=IfMatch(etag))).etag
            except (PreconditionFailedError, NotFoundError):
                continue
        raise IdempotencyInProgressError(
            "writes with this idempotency key are contending", retry_after=0.1, key=key, operation="put"
        )

    async def _replay(self, key: str, info: ObjectInfo) -> ObjectInfo:
        try:
            await self.inner.head(key)
        except NotFoundError:
            raise IdempotencyReplayGoneError(
                "the write recorded under this idempotency key took effect, but the object was deleted since",
                key=key,
                operation="put",
            ) from None
        return info

    async def _load(self, record_key: str) -> tuple[dict[str, Any], str] | None:
        """The record and its etag; a record that cannot be read as one counts as expired."""
        try:
            async with await self.store.open(record_key) as dl:
                data, etag = await dl.read(), dl.info.etag
        except NotFoundError:
            return None
        try:
            record: dict[str, Any] = json.loads(data)
            if not isinstance(record.get("expires"), int | float) or record.get("state") not in ("pending", "done"):
                raise ValueError("not a record")
        except ValueError:
            record = {"state": "pending", "digest": "", "expires": 0}
        return record, etag

    async def _remove(self, record_key: str, etag: str) -> bool:
        try:
            return await self.store.remove(record_key, if_match=etag)
        except PreconditionFailedError:  # renewed or replaced meanwhile: not ours to remove
            return False
        except UnsupportedError:  # a store without conditional deletes
            return await self.store.remove(record_key)

    async def sweep(self, *, limit: int | None = None) -> int:
        """Remove expired records among the next ``limit`` (default ``sweep_limit``); how many went.

        Each call continues after the last record the previous one examined and
        starts over after the end, so every record is examined within
        ``records / limit`` calls.
        """
        limit = self.sweep_limit if limit is None else limit
        self._last_sweep = self._clock()
        it = self.store.iter_keys(_RECORDS, start_after=self._cursor)
        batch: list[str] = []
        try:
            async for record_key in it:
                batch.append(record_key)
                if len(batch) >= limit:
                    break
        finally:
            close = getattr(it, "aclose", None)
            if close is not None:
                await close()
        self._cursor = batch[-1] if len(batch) >= limit else None
        removed = 0
        for record_key in batch:
            found = await self._load(record_key)
            if found is not None and found[0]["expires"] <= self._clock():
                removed += await self._remove(record_key, found[1])
        return removed

    def _maybe_sweep(self) -> None:
        if self.sweep_interval is None or (self._sweeper is not None and not self._sweeper.done()):
            return
        if self._clock() - self._last_sweep >= self.sweep_interval:
            self._last_sweep = self._clock()
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep_quietly())

    async def _sweep_quietly(self) -> int:
        """One pass over every record, ``sweep_limit`` at a time."""
        removed = 0
        try:
            removed += await self.sweep()
            while self._cursor is not None:
                removed += await self.sweep()
        except Exception:  # a store hiccup: the next pass tries again
            LOGGER.warning("sweeping expired idempotency records failed", exc_info=True)
        return removed

    async def aclose(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None and not sweeper.done():
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        try:
            await self.inner.aclose()
        finally:
            if self._owns_store:
                await self.store.aclose()


class _Lease:
    """Our pending record while the write runs: renewed on a heartbeat, then finished or released."""

    __slots__ = ("digest", "etag", "key", "layer", "lost")

    def __init__(self, layer: Idempotency, key: str, etag: str, digest: str) -> None:
        self.layer, self.key, self.etag, self.digest = layer, key, etag, digest
        self.lost = False

    async def hold(self, write: Awaitable[ObjectInfo]) -> ObjectInfo:
        """Await ``write``, renewing the lease every ``lease / 3`` s; lose the lease and the write is cancelled.

        The heartbeat starts only after the first period, so a quick write costs one timer.
        """
        loop, writer = asyncio.get_running_loop(), asyncio.current_task()
        assert writer is not None
        beats: list[asyncio.Task[None]] = []
        timer = loop.call_later(self.layer.lease / 3, lambda: beats.append(loop.create_task(self._beat(writer))))
        try:
            return await write
        except asyncio.CancelledError:
            if not self.lost:
                raise
            writer.uncancel()
            raise IdempotencyInProgressError(
                "the lease on this idempotency key was lost (taken over after it lapsed); write abandoned",
                retry_after=self.layer.lease,
                operation="put",
            ) from None
        finally:
            timer.cancel()
            for beat in beats:
                beat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beat

    async def _beat(self, writer: asyncio.Task[Any]) -> None:
        layer = self.layer
        while True:
            record = {"state": "pending", "digest": self.digest, "expires": layer._clock() + layer.lease}
            try:
                self.etag = (await layer.store.put_object(self.key, _dump(record), mode=IfMatch(self.etag))).etag
            except (PreconditionFailedError, NotFoundError):
                self.lost = True
                writer.cancel()
                return
            except StorageError:
                LOGGER.warning("renewing an idempotency lease failed; trying again", exc_info=True)
            await asyncio.sleep(layer.lease / 3)

    async def finish(self, info: ObjectInfo) -> None:
        layer = self.layer
        record = {"state": "done", "digest": self.digest, "expires": layer._clock() + layer.ttl}
        record["info"] = info_to_json(info)
        try:
            await layer.store.put_object(self.key, _dump(record), mode=IfMatch(self.etag))
        except (PreconditionFailedError, NotFoundError):
            LOGGER.warning("an idempotency lease lapsed before its write finished; the result is not recorded")

    async def release(self) -> None:
        try:
            await self.layer._remove(self.key, self.etag)
        except StorageError:  # the lease lapses by itself
            LOGGER.warning("releasing an idempotency lease failed; it lapses in %s s", self.layer.lease)


def _dump(record: dict[str, Any]) -> bytes:
    return json.dumps(record).encode()
