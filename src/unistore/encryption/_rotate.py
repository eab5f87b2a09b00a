"""Key rotation jobs over an :class:`Encrypt` store: ``rewrap``, ``reencrypt``, key usage and retiring a KEK.

``rewrap`` unwraps each object's data key with the KEK that wrapped it and wraps it again under
the keyring's primary, changing only the object's metadata (:meth:`replace_metadata`, conditional
on the etag it read: a live writer's newer version is never overwritten). ``reencrypt`` gives
each object a new data key: a full, conditional rewrite. Both walk the store in key order, keep
a checkpoint in the store itself (``_unistore/rotation/``), so a killed job resumes where it
stopped, and skip objects that are already done, so running one twice changes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from .._base import StorageBackend
from .._errors import (
    ConfigurationError,
    IntegrityError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    TransientError,
)
from .._types import IfMatch, ObjectInfo
from ._encrypt import META_ALGORITHM, META_KEY_ID, META_WRAPPED_KEY, Encrypt, EncryptionInfo, wrap_context
from ._keyring import WrappedKey
from ._rotation_state import CHECKPOINT_PREFIX, CheckpointStore, RotationConflictError

__all__ = [
    "KeyInUseError",
    "KeyUsage",
    "RotationConflictError",
    "RotationProgress",
    "RotationReport",
    "key_usage",
    "reencrypt",
    "retire_key",
    "rewrap",
    "rotate",
]

Mode = Literal["rewrap", "reencrypt"]
_ATTEMPTS = 5  # tries per object while live writers keep changing it
_SMALL = 16 * 1024 * 1024  # re-encrypted from memory up to this size (keeps the plaintext size and digest)
_SAMPLES = 20
_BEHIND = 64
_TRANSIENT_TRIES = 5  # a throttled or unreachable KMS or store: backoff 0.2, 0.4, 0.8, 1.6 s, then the job stops


class KeyInUseError(PreconditionFailedError):
    """A KEK cannot be retired: objects still use it (``count`` of them; ``keys`` names some)."""

    status = 409

    def __init__(self, key_id: str, count: int, keys: tuple[str, ...]) -> None:
        shown = ", ".join(repr(k) for k in keys[:5]) + (" ..." if count > 5 else "")
        super().__init__(
            f"KEK {key_id!r} is still used by {count} object(s): {shown}; rotate them first "
            "(unistore keys rotate --rewrap)",
            operation="retire",
        )
        self.key_id = key_id
        self.count = count
        self.keys = keys


@dataclass(frozen=True)
class RotationProgress:
    """Reported after each object: the object, what happened to it, and the totals so far."""

    mode: str
    key: str
    outcome: str
    """``rewrapped``/``reencrypted``; ``current`` (already done), ``plain`` (not encrypted), ``missing``
    (deleted meanwhile), ``raced`` (kept changing under live writers: left as it is), ``failed``."""
    counts: Mapping[str, int]
    elapsed: float


@dataclass(frozen=True)
class RotationReport:
    """What a rotation job did, over all its runs (a resumed job adds to the counts of the killed one)."""

    mode: str
    prefix: str
    target: str
    """The KEK id objects were rotated to (the keyring's primary)."""
    counts: Mapping[str, int]
    failed: tuple[tuple[str, str], ...]
    """Objects that could not be rotated in this run (key, reason): they still use their old KEK."""
    runs: int
    seconds: float

    @property
    def rotated(self) -> int:
        """Objects rewritten or rewrapped (by every run of the job)."""
        return self.counts.get("rewrapped", 0) + self.counts.get("reencrypted", 0)


@dataclass(frozen=True)
class KeyUsage:
    """Objects per KEK id under a prefix: ``counts`` by KEK id, ``samples`` some keys of each."""

    counts: Mapping[str, int]
    samples: Mapping[str, tuple[str, ...]]
    plain: int = 0
    """Objects that are not encrypted."""
    unreadable: tuple[str, ...] = field(default=())
    """Objects whose encryption metadata is malformed."""


def _encrypt_layer(store: StorageBackend) -> Encrypt:
    node: Any = store
    while node is not None:
        if isinstance(node, Encrypt):
            return node
        node = getattr(node, "inner", None)
    raise ConfigurationError("key rotation needs a store with an Encrypt layer: Encrypt(backend, keyring)")


class _Pace:
    """At most ``rate`` starts per second (``None``: unlimited)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ConfigurationError("rate must be positive (objects per second)")
        self.interval = 0.0 if rate is None else 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        self.next = max(self.next, now)
        delay = self.next - now
        self.next += self.interval
        if delay > 0:
            await asyncio.sleep(delay)


_METRICS: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()


def _metrics(option: Any) -> Any:
    """The rotation metric families in the registry ``option`` names (see ``Observe``), or ``None``."""
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if option is None or option is True else option
    found = _METRICS.get(registry)
    if found is None:
        found = _METRICS[registry] = (
            prometheus_client.Counter(
                "unistore_rotation_objects",
                "Objects a key rotation job looked at, by job mode and outcome.",
                ["mode", "outcome"],
                registry=registry,
            ),
            prometheus_client.Gauge(
                "unistore_rotation_running",
                "Key rotation jobs running in this process, by mode.",
                ["mode"],
                registry=registry,
            ),
        )
    return found


class _Job:
    def __init__(
        self,
        store: StorageBackend,
        mode: Mode,
        prefix: str,
        *,
        rate: float | None,
        concurrency: int,
        progress: Callable[[RotationProgress], object] | None,
        metrics: Any,
        checkpoint_every: float,
        written_before: datetime | None,
    ) -> None:
        if mode not in ("rewrap", "reencrypt"):
            raise ConfigurationError(f"unknown rotation mode {mode!r}: rewrap or reencrypt")
        if concurrency < 1:
            raise ConfigurationError("concurrency must be at least 1")
        if written_before is not None and written_before.tzinfo is None:
            written_before = written_before.replace(tzinfo=UTC)
        self.written_before = written_before
        self.enc = _encrypt_layer(store)
        self.raw = self.enc.inner
        self.keyring = self.enc.keyring
        self.mode = mode
        self.prefix = prefix
        self.pace = _Pace(rate)
        self.concurrency = concurrency
        self.progress = progress
        self.metrics = _metrics(metrics)
        self.checkpoint_every = checkpoint_every
        self.state = CheckpointStore(self.raw, mode, prefix)
        self.failed: list[tuple[str, str]] = []
        self.started = 0.0

    async def run(self) -> RotationReport:
        self.started = time.monotonic()
        target = self.keyring.primary_id
        cp = await self.state.begin(target)
        self.since = self.written_before or cp.started_at
        counts = cp.counts
        running = self.metrics[1].labels(self.mode) if self.metrics else None
        if running is not None:
            running.inc()
        inflight: deque[tuple[str, asyncio.Task[str]]] = deque()
        last_save = time.monotonic()
        try:
            try:
                async for info in self._listing(cp.cursor):
                    await self._room(inflight, counts, cp)
                    await self.pace.wait()
                    inflight.append((info.key, asyncio.create_task(self._one(info))))
                    cp.cursor = self._settle(inflight, counts, cp.cursor)
                    if time.monotonic() - last_save >= self.checkpoint_every:
                        await self.state.save(cp)
                        last_save = time.monotonic()
                while inflight:
                    await asyncio.wait([inflight[0][1]])
                    cp.cursor = self._settle(inflight, counts, cp.cursor)
            except BaseException:
                for _, task in inflight:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    await asyncio.gather(*(t for _, t in inflight), return_exceptions=True)
                with contextlib.suppress(StorageError):
                    await asyncio.shield(self.state.save(cp))  # where to resume
                raise
            await self.state.finish(cp)
        finally:
            if running is not None:
                running.dec()
        return RotationReport(
            self.mode, self.prefix, target, dict(counts), tuple(self.failed), cp.runs, time.monotonic() - self.started
        )

    async def _room(self, inflight: deque[tuple[str, asyncio.Task[str]]], counts: dict[str, int], cp: Any) -> None:
        """Wait until fewer than ``concurrency`` objects are in flight, and the finished ones waiting
        behind a slow one (to advance the cursor in key order) are at most ``_BEHIND`` per slot."""
        while True:
            cp.cursor = self._settle(inflight, counts, cp.cursor)
            pending = [t for _, t in inflight if not t.done()]
            if len(pending) >= self.concurrency:
                await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            elif len(inflight) >= self.concurrency * _BEHIND:
                await asyncio.wait([inflight[0][1]])
            else:
                return

    async def _listing(self, cursor: str | None) -> AsyncIterator[ObjectInfo]:
        async for info in self.raw.iter_objects(self.prefix, start_after=cursor):
            if not info.key.startswith(CHECKPOINT_PREFIX):
                yield info

    def _settle(
        self, inflight: deque[tuple[str, asyncio.Task[str]]], counts: dict[str, int], cursor: str | None
    ) -> str | None:
        """Count the finished objects at the head of ``inflight``; the new cursor (all before it done)."""
        while inflight and inflight[0][1].done():
            key, task = inflight.popleft()
            outcome = task.result()  # an unexpected error ends the job (the checkpoint keeps the cursor)
            counts[outcome] = counts.get(outcome, 0) + 1
            cursor = key
            if self.metrics:
                self.metrics[0].labels(self.mode, outcome).inc()
            if self.progress is not None:
                self.progress(RotationProgress(self.mode, key, outcome, dict(counts), time.monotonic() - self.started))
        return cursor

    async def _one(self, listed: ObjectInfo) -> str:
        for attempt in range(_TRANSIENT_TRIES):
            try:
                return await self._attempt(listed)
            except TransientError:
                if attempt == _TRANSIENT_TRIES - 1:
                    raise  # the job stops; its checkpoint lets a rerun resume
                await asyncio.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    async def _attempt(self, listed: ObjectInfo) -> str:
        key = listed.key
        primary = self.keyring.primary_id
        if self.mode == "rewrap" and listed.metadata.get(META_KEY_ID) == primary:
            return "current"  # the listing already shows it done: no request needed
        try:
            for _attempt in range(_ATTEMPTS):
                try:
                    info = await self.raw.head(key)
                except NotFoundError:
                    return "missing"
                if META_ALGORITHM not in info.metadata:
                    return "plain"
                env = EncryptionInfo.parse(info.metadata, key, self.raw.name)
                if env.key_id == primary and (self.mode == "rewrap" or info.last_modified >= self.since):
                    return "current"
                try:
                    if self.mode == "rewrap":
                        await self._rewrap(info, env)
                        return "rewrapped"
                    await self._reencrypt(info)
                    return "reencrypted"
                except PreconditionFailedError:
                    continue  # a writer changed it since we read it: look again
                except NotFoundError:
                    return "missing"
            return "raced"
        except IntegrityError as exc:
            self.failed.append((key, exc.message or str(exc)))
            return "failed"

    async def _rewrap(self, info: ObjectInfo, env: EncryptionInfo) -> None:
        context = wrap_context(info.key)
        dek = await self.keyring.unwrap(WrappedKey(env.key_id, env.wrapped_key), context)
        wrapped = await self.keyring.wrap(dek, context)
        metadata = dict(info.metadata)
        metadata[META_KEY_ID] = wrapped.key_id
        metadata[META_WRAPPED_KEY] = base64.b64encode(wrapped.blob).decode()
        await self.raw.replace_metadata(info.key, metadata, if_match=info.etag)

    async def _reencrypt(self, info: ObjectInfo) -> None:
        async with await self.enc.open(info.key, if_match=info.etag) as dl:
            plain = dl.info
            body: Any = await dl.read() if info.size <= _SMALL else dl
            await self.enc.put_object(
                info.key,
                body,
                content_type=plain.content_type,
                metadata=plain.metadata,
                mode=IfMatch(info.etag),
                cache_control=plain.cache_control,
                content_disposition=plain.content_disposition,
            )


async def rotate(
    store: StorageBackend,
    mode: Mode,
    prefix: str = "",
    *,
    rate: float | None = None,
    concurrency: int = 8,
    progress: Callable[[RotationProgress], object] | None = None,
    metrics: Any = None,
    checkpoint_every: float = 1.0,
    written_before: datetime | None = None,
) -> RotationReport:
    """Rotate every object under ``prefix`` of ``store`` (an :class:`Encrypt` layer, or a stack holding
    one) to its keyring's primary KEK: ``mode="rewrap"`` or ``"reencrypt"``.

    ``rate`` caps objects per second, ``concurrency`` objects in flight; ``progress`` is called after
    each object; ``metrics`` is a Prometheus registry (``None``: the global one if
    ``prometheus_client`` is installed, ``False``: none). The checkpoint is saved every
    ``checkpoint_every`` seconds and when the job stops for any reason; rerunning resumes. A job
    already running for the same store, mode and prefix raises :class:`RotationConflictError`.

    ``reencrypt`` leaves alone objects under the primary KEK written at or after ``written_before``
    (default: when the job first started, so a resumed job rewrites nothing twice); pass the same
    ``written_before`` to rerun a finished job without rewriting anything again.
    """
    job = _Job(
        store,
        mode,
        prefix,
        rate=rate,
        concurrency=concurrency,
        progress=progress,
        metrics=metrics,
        checkpoint_every=checkpoint_every,
        written_before=written_before,
    )
    return await job.run()


async def rewrap(store: StorageBackend, prefix: str = "", **options: Any) -> RotationReport:
    """Rewrap every data key under ``prefix`` with the primary KEK, bodies untouched (see :func:`rotate`)."""
    return await rotate(store, "rewrap", prefix, **options)


async def reencrypt(store: StorageBackend, prefix: str = "", **options: Any) -> RotationReport:
    """Re-encrypt every object under ``prefix`` with a new data key under the primary KEK (see :func:`rotate`)."""
    return await rotate(store, "reencrypt", prefix, **options)


async def key_usage(store: StorageBackend, prefix: str = "", *, concurrency: int = 16) -> KeyUsage:
    """How many objects under ``prefix`` each KEK id wraps (read from their metadata, never decrypting)."""
    raw = _encrypt_layer(store).inner if _has_encrypt(store) else store
    counts: dict[str, int] = {}
    samples: dict[str, list[str]] = {}
    plain = 0
    unreadable: list[str] = []
    gate = asyncio.Semaphore(concurrency)

    async def metadata_of(info: ObjectInfo) -> Mapping[str, str] | None:
        if META_ALGORITHM in info.metadata or info.metadata:
            return info.metadata
        async with gate:  # a listing without metadata (S3, GCS listings carry none or some)
            try:
                return (await raw.head(info.key)).metadata
            except NotFoundError:
                return None

    batch: list[ObjectInfo] = []

    async def flush() -> None:
        nonlocal plain
        found = await asyncio.gather(*(metadata_of(i) for i in batch))
        for info, meta in zip(batch, found, strict=True):
            if meta is None:
                continue
            if META_ALGORITHM not in meta:
                plain += 1
                continue
            key_id = meta.get(META_KEY_ID)
            if not key_id:
                unreadable.append(info.key)
                continue
            counts[key_id] = counts.get(key_id, 0) + 1
            shown = samples.setdefault(key_id, [])
            if len(shown) < _SAMPLES:
                shown.append(info.key)
        batch.clear()

    async for info in raw.iter_objects(prefix):
        if info.key.startswith(CHECKPOINT_PREFIX):
            continue
        batch.append(info)
        if len(batch) >= 256:
            await flush()
    await flush()
    return KeyUsage(counts, {k: tuple(v) for k, v in samples.items()}, plain, tuple(unreadable))


def _has_encrypt(store: StorageBackend) -> bool:
    try:
        _encrypt_layer(store)
    except ConfigurationError:
        return False
    return True


async def retire_key(store: StorageBackend, key_id: str, prefix: str = "") -> KeyUsage:
    """Check that no object under ``prefix`` still uses KEK ``key_id`` (then remove it from the
    keyring); :class:`KeyInUseError` naming them if some do. The primary cannot be retired."""
    if _has_encrypt(store) and _encrypt_layer(store).keyring.primary_id == key_id:
        raise ConfigurationError(f"{key_id!r} is the primary KEK: make another key primary first")
    usage = await key_usage(store, prefix)
    count = usage.counts.get(key_id, 0)
    if count:
        raise KeyInUseError(key_id, count, usage.samples.get(key_id, ()))
    return usage
