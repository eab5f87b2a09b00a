"""Migrate (backfill) every object under a prefix from one store to another, verified and resumable."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from ._base import StorageBackend
from ._errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, StorageError
from ._keys import RESERVED_PREFIX, reserved_keys, validate_prefix
from ._types import ByteRange, ObjectInfo

if TYPE_CHECKING:
    from .backends.s3 import PartInfo, S3Backend

__all__ = [
    "CHECKPOINT_PREFIX",
    "Difference",
    "Failure",
    "MigrationReport",
    "Upgrade",
    "checkpoint_key",
    "migrate",
]

CHECKPOINT_PREFIX = ".unistore/migrate/"
"""Where checkpoints live in the destination; keys under it are never migrated."""

SCHEMA_VERSION = "schema_version"
_MAX_DONE = 10_000
_PART_SLOTS = 4
"""Parts of large S3 copies in flight at once over the whole run (each held in memory)."""
_COPY_LIMIT = 5 * 1024**3
"""The largest object one CopyObject may copy."""
_PART_SIZE = 5 * 1024 * 1024
"""Their size (S3's smallest, larger only where 10,000 parts could not hold the object): what a
kill can make a rerun send again is at most ``_PART_SLOTS`` parts."""

log = logging.getLogger("unistore.migrate")


class _Unknown:
    """What a listing says about a key it could not look at: ask the store."""


UNKNOWN = _Unknown()

Upgrade = Callable[[bytes, ObjectInfo, int], bytes | Awaitable[bytes]]
"""``upgrade(data, info, version)`` returns the object's bytes at ``version + 1``."""


@dataclass(frozen=True, slots=True)
class Difference:
    """A destination object that is not what the source would give: ``reason`` says how."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An object that could not be copied or checked, with the error."""

    key: str
    reason: str


@dataclass(slots=True)
class MigrationReport:
    """What one run did. ``copied`` counts objects written (or, in a dry run, that would be);
    ``skipped`` identical objects already there; ``missing`` (verify-only) absent ones."""

    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    upgraded: int = 0
    missing: list[str] = field(default_factory=list)
    differing: list[Difference] = field(default_factory=list)
    failed: list[Failure] = field(default_factory=list)
    resumed: bool = False
    """Whether this run started from a checkpoint."""
    resumed_after: str | None = None
    """The checkpoint's key up to which every object was done."""
    resumed_done: int = 0
    """Objects past that key the checkpoint recorded as done, not looked at again."""
    dry_run: bool = False
    verify_only: bool = False
    seconds: float = 0.0
    ranges: list[int] = field(default_factory=list)
    """With workers (:func:`migrate_worker`): the key ranges this worker finished."""
    ranges_lost: list[int] = field(default_factory=list)
    """Ranges whose lease this worker lost before finishing (another worker completes them)."""

    @property
    def examined(self) -> int:
        """Objects looked at in this run."""
        return self.copied + self.skipped + len(self.missing) + len(self.differing) + len(self.failed)

    @property
    def ok(self) -> bool:
        """Nothing missing, differing or failed."""
        return not (self.missing or self.differing or self.failed)

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data."""
        return {
            "copied": self.copied,
            "skipped": self.skipped,
            "bytes_copied": self.bytes_copied,
            "upgraded": self.upgraded,
            "missing": list(self.missing),
            "differing": [{"key": d.key, "reason": d.reason} for d in self.differing],
            "failed": [{"key": f.key, "reason": f.reason} for f in self.failed],
            "resumed": self.resumed,
            "resumed_after": self.resumed_after,
            "resumed_done": self.resumed_done,
            "dry_run": self.dry_run,
            "verify_only": self.verify_only,
            "seconds": round(self.seconds, 3),
            "ranges": list(self.ranges),
            "ranges_lost": list(self.ranges_lost),
            "ok": self.ok,
        }

    def text(self) -> str:
        """A short human-readable summary, one problem per line."""
        verb = "would copy" if self.dry_run else "copied"
        lines = [
            f"{verb} {self.copied}, skipped {self.skipped}, missing {len(self.missing)}, "
            f"differing {len(self.differing)}, failed {len(self.failed)} ({self.bytes_copied} bytes, "
            f"{self.seconds:.1f} s)"
        ]
        if self.resumed:
            lines.append(f"resumed after {self.resumed_after!r} (+{self.resumed_done} done past it)")
        if self.ranges or self.ranges_lost:
            lines.append(f"ranges finished: {len(self.ranges)}, lost to other workers: {len(self.ranges_lost)}")
        lines += [f"missing: {k}" for k in self.missing]
        lines += [f"differing: {d.key}: {d.reason}" for d in self.differing]
        lines += [f"failed: {f.key}: {f.reason}" for f in self.failed]
        return "\n".join(lines)


class _Bucket:
    """A token bucket: ``take(n)`` waits until ``n`` tokens (at ``rate`` per second) are available."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.stamp = time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: float) -> None:
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.rate, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


class _Metrics:
    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter

        self.objects = Counter(
            "unistore_migrate_objects", "Objects examined by migrations, by outcome", ["outcome"], registry=registry
        )
        self.bytes = Counter("unistore_migrate_bytes", "Bytes copied by migrations", registry=registry)


def checkpoint_key(prefix: str, job: str) -> str:
    """The checkpoint object of ``job`` over ``prefix``."""
    digest = hashlib.sha256(f"{job}\0{prefix}".encode()).hexdigest()[:24]
    return f"{CHECKPOINT_PREFIX}{digest}.json"


async def migrate(
    src: StorageBackend,
    dst: StorageBackend,
    prefix: str = "",
    *,
    dry_run: bool = False,
    verify_only: bool = False,
    concurrency: int = 8,
    ops_per_second: float | None = None,
    bytes_per_second: float | None = None,
    schema_version: int | None = None,
    upgrade: Upgrade | None = None,
    job: str = "default",
    checkpoint_every: int = 50,
    metrics: Any = None,
    on_progress: Callable[[MigrationReport], None] | None = None,
) -> MigrationReport:
    """Copy every object under ``prefix`` from ``src`` to ``dst`` and return a report.

    Each copy keeps the body, content type, metadata, cache-control and content-disposition, is
    written with ``mode="create"`` (an object already at ``dst`` is never overwritten: an
    identical one is *skipped*, another one reported *differing*), and is checked against the
    bytes read from ``src``: read back from ``dst`` and compared by SHA-256, except into an
    :class:`~unistore.backends.s3.S3Backend` itself (no layer in between) with body checksums on,
    whose server checks the Content-MD5 (or SHA-256) of every request and part, computed from
    those bytes. Objects larger than a part go into such an S3 store as a multipart upload whose
    session is recorded in ``dst``, so a rerun sends only the parts it lacks. Progress is checkpointed in
    ``dst`` under :data:`CHECKPOINT_PREFIX` (one checkpoint per ``job`` and ``prefix``), so a
    rerun after a crash or kill starts after the last key up to which all were done; a run
    without problems removes its checkpoint.

    Between two S3 stores on one endpoint with the same credentials (buckets and prefixes may
    differ) objects are copied inside the server (CopyObject; UploadPartCopy above the
    destination's ``multipart_copy_threshold``, resumable like large uploads), create-only,
    and each copy's etag is checked against the source's (the copy read back where they differ).

    ``schema_version=N`` stamps ``schema_version=N`` on every copy without one; with ``upgrade``,
    a source object at version ``v < N`` (``N - 1`` when unstamped) is passed through
    ``upgrade(data, info, v)`` for each ``v`` up to ``N`` (the whole object is held in memory).
    ``verify_only`` reports missing and differing objects, writing nothing; ``dry_run`` reports
    what would be copied. ``ops_per_second`` and ``bytes_per_second`` cap the pace;
    ``metrics`` is a ``prometheus_client.CollectorRegistry`` to count into.
    """
    validate_prefix(prefix)
    if concurrency < 1 or checkpoint_every < 1:
        raise InvalidArgumentError("concurrency and checkpoint_every must be at least 1")
    if upgrade is not None and schema_version is None:
        raise InvalidArgumentError("an upgrade function needs a target schema_version")
    for rate in (ops_per_second, bytes_per_second):
        if rate is not None and rate <= 0:
            raise InvalidArgumentError("rates must be positive")
    run = _Run(
        src,
        dst,
        prefix,
        dry_run=dry_run,
        verify_only=verify_only,
        concurrency=concurrency,
        ops=_Bucket(ops_per_second) if ops_per_second else None,
        bytes_=_Bucket(bytes_per_second) if bytes_per_second else None,
        schema_version=schema_version,
        upgrade=upgrade,
        checkpoint=checkpoint_key(prefix, job),
        checkpoint_every=checkpoint_every,
        metrics=_Metrics(metrics) if metrics is not None else None,
        on_progress=on_progress,
    )
    return await run.go()


class _Run:
    def __init__(
        self,
        src: StorageBackend,
        dst: StorageBackend,
        prefix: str,
        *,
        dry_run: bool,
        verify_only: bool,
        concurrency: int,
        ops: _Bucket | None,
        bytes_: _Bucket | None,
        schema_version: int | None,
        upgrade: Upgrade | None,
        checkpoint: str,
        checkpoint_every: int,
        metrics: _Metrics | None,
        on_progress: Callable[[MigrationReport], None] | None,
        start: str | None = None,
        upto: str | None = None,
    ) -> None:
        self.src, self.dst, self.prefix = src, dst, prefix
        self.start, self.upto = start, upto  # only keys in (start, upto]
        self.writes = not (dry_run or verify_only)
        self.verify_only = verify_only
        self.concurrency = concurrency
        self.ops, self.bytes = ops, bytes_
        self.schema_version, self.upgrade = schema_version, upgrade
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.metrics, self.on_progress = metrics, on_progress
        self.report = MigrationReport(dry_run=dry_run, verify_only=verify_only)
        self.pending: deque[str] = deque()
        self.done: set[str] = set()
        self.watermark: str | None = None
        self.since_checkpoint = 0
        self.failed_keys: set[str] = set()
        self.skip: set[str] = set()
        self.saving = asyncio.Lock()
        self.part_slots = asyncio.Semaphore(_PART_SLOTS)
        self.pair = _same_server(src, dst)
        """Both S3 stores on one server with the same credentials: objects are copied inside the server."""
        self.copy_slots = asyncio.Semaphore(8)
        s3 = _s3(dst)
        # the server checks each request's Content-MD5 / SHA-256, computed from the bytes read from src
        self.server_checked = s3 is not None and s3.settings.checksum != "none"

    async def go(self) -> MigrationReport:
        started = time.monotonic()
        after = await self._load_checkpoint() if self.writes else None
        self.report.resumed_after = after
        if self.start is not None and (after is None or after < self.start):
            after = self.start
        self.report.resumed = after is not None or bool(self.skip)
        self.watermark = after
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()

        listing = _Listing(self.dst, self.prefix, after) if self.writes else None

        async def one(info: ObjectInfo, there: ObjectInfo | _Unknown | None) -> None:
            try:
                await self._one(info, there)
            finally:
                sem.release()

        try:
            async for info in self.src.iter_objects(self.prefix, start_after=after):
                if self.upto is not None and info.key > self.upto:
                    break
                if info.key.startswith(RESERVED_PREFIX):  # the store's own state, never migrated
                    continue
                if info.key in self.skip:  # done by the interrupted run, past its watermark
                    self.report.resumed_done += 1
                    continue
                there = await listing.find(info.key) if listing is not None else UNKNOWN
                await sem.acquire()
                self.pending.append(info.key)
                task = asyncio.create_task(one(info, there))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if listing is not None:
                await listing.aclose()
        self.report.seconds = time.monotonic() - started
        if self.writes:
            if self.report.failed:
                await self._save_checkpoint()
            else:
                with reserved_keys():
                    await self.dst.remove(self.checkpoint)
                    async for stale in self.dst.iter_keys(self._parts_prefix):  # of uploads another run finished
                        await self.dst.remove(stale)
        return self.report

    # --- checkpoints ----------------------------------------------------------------

    async def _load_checkpoint(self) -> str | None:
        try:
            with reserved_keys():
                doc = json.loads(await self.dst.get(self.checkpoint))
        except NotFoundError:
            return None
        if not isinstance(doc, dict):
            return None
        done = doc.get("done")
        if isinstance(done, list):
            self.skip = {k for k in done if isinstance(k, str) and k.startswith(self.prefix)}
        after = doc.get("after")
        return after if isinstance(after, str) and after.startswith(self.prefix) else None

    async def _save_checkpoint(self) -> None:
        async with self.saving:  # one at a time, each with the state when it starts: never an older one last
            await self._write_checkpoint()

    async def _write_checkpoint(self) -> None:
        doc: dict[str, Any] = {"prefix": self.prefix, "after": self.watermark, "saved": time.time()}
        if len(self.done) <= _MAX_DONE:  # keys done past the watermark (a slow key holds it back)
            doc["done"] = sorted(self.done)
        with reserved_keys():
            await self.dst.put_object(self.checkpoint, json.dumps(doc).encode(), content_type="application/json")

    async def _finished(self, key: str) -> None:
        """Mark ``key`` done; advance the watermark over the done keys at the head of the queue."""
        if key not in self.failed_keys:
            self.done.add(key)
        while self.pending and self.pending[0] in self.done:
            self.watermark = self.pending.popleft()
            self.done.discard(self.watermark)
        self.since_checkpoint += 1
        if self.writes and self.since_checkpoint >= self.checkpoint_every:
            self.since_checkpoint = 0
            try:
                await self._save_checkpoint()
            except StorageError as exc:  # the copy goes on; a rerun would only re-check more keys
                log.warning("saving the migration checkpoint failed: %s", exc)
        if self.on_progress is not None:
            self.on_progress(self.report)

    # --- one object -------------------------------------------------------------------

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.objects.labels(outcome).inc()

    async def _one(self, listed: ObjectInfo, there: ObjectInfo | _Unknown | None) -> None:
        key = listed.key
        try:
            if self.ops is not None:
                await self.ops.take(1)
            await self._examine(key, there, listed.size, listed)
        except StorageError as exc:
            self.failed_keys.add(key)
            self.report.failed.append(Failure(key, f"{type(exc).__name__}: {exc}"))
            self._count("failed")
        await self._finished(key)

    async def _wanted(self, key: str) -> tuple[bytes, ObjectInfo, dict[str, str]]:
        """The bytes, source info and metadata the destination copy should have."""
        async with await self.src.open(key) as dl:
            info = dl.info
            data = await dl.read()
        meta = dict(info.metadata)
        if self.schema_version is not None:
            version = _version(meta, self.schema_version - (1 if self.upgrade else 0))
            if self.upgrade is not None and version < self.schema_version:
                while version < self.schema_version:
                    out = self.upgrade(data, info, version)
                    data = await out if isinstance(out, Awaitable) else out
                    version += 1
                self.report.upgraded += 1
            meta[SCHEMA_VERSION] = str(max(version, self.schema_version))
        return data, info, meta

    async def _examine(
        self, key: str, there: ObjectInfo | _Unknown | None = UNKNOWN, size: int = 0, listed: ObjectInfo | None = None
    ) -> None:
        """``there`` is what the destination's listing showed (``UNKNOWN``: ask it)."""
        existing: ObjectInfo | None
        if isinstance(there, _Unknown):
            try:
                existing = await self.dst.head(key)
            except NotFoundError:
                existing = None
        else:
            existing = there
        if existing is None and self.verify_only:
            self.report.missing.append(key)
            self._count("missing")
            return
        if existing is None and not self.writes:  # dry run
            info = await self.src.head(key)
            self.report.copied += 1
            self.report.bytes_copied += info.size
            self._count("copied")
            return
        if existing is None and await self._copy(key, size, listed):
            return
        if existing is not None and listed is not None and await self._compare_etags(key, listed, existing):
            return
        await self._compare(key)

    async def _copy(self, key: str, size: int = 0, listed: ObjectInfo | None = None) -> bool:
        """Create ``key`` at the destination; ``False`` if another writer created it first."""
        if self.upgrade is None and self.pair is not None:
            return await self._copy_server(key, *self.pair, listed)
        s3 = _s3(self.dst)
        if self.upgrade is None and s3 is not None and size > s3.settings.part_size:
            return await self._copy_parts(s3, key)
        if self.upgrade is not None:
            data, info, meta = await self._wanted(key)
            body: Any = data
            size = len(data)
            src_digest = hashlib.sha256(data).hexdigest()
            holder = None
        else:
            holder = await self.src.open(key)
            info = holder.info
            meta = dict(info.metadata)
            if self.schema_version is not None:
                meta[SCHEMA_VERSION] = str(_version(meta, self.schema_version))
            size = info.size
            sha = hashlib.sha256()
            body = self._hashing(holder, sha)
        try:
            if self.bytes is not None and self.upgrade is not None:
                await self.bytes.take(size)
            try:
                written = await self.dst.put_object(
                    key,
                    body,
                    content_type=info.content_type,
                    metadata=meta,
                    mode="create",
                    cache_control=info.cache_control,
                    content_disposition=info.content_disposition,
                )
            except AlreadyExistsError:
                return False
        finally:
            if holder is not None:
                await holder.aclose()
        if holder is not None:
            src_digest = sha.hexdigest()
        if self.server_checked:
            self._copied(size)
            return True
        back = (await _digest(self.dst, key))[1].hex()
        if back != src_digest:
            await _discard(self.dst, key, written.etag)
            raise _integrity(key, "the copy read back differs from the source (SHA-256)")
        self._copied(size)
        return True

    def _copied(self, size: int) -> None:
        self.report.copied += 1
        self.report.bytes_copied += size
        if self.metrics is not None:
            self.metrics.bytes.inc(size)
        self._count("copied")

    # --- large objects into S3: resumable part by part ----------------------------------

    @property
    def _parts_prefix(self) -> str:
        return self.checkpoint.removesuffix(".json") + "/parts/"

    async def _copy_parts(self, s3: S3Backend, key: str) -> bool:
        """Copy ``key`` into S3 as a multipart upload whose session is recorded in the destination
        (with the SHA-256 of each finished part's source bytes, saved at most once a second). A
        rerun after a kill resumes the session and sends only the parts the server does not hold
        (a held part missing from the record is re-read from the source and kept if its checksum
        matches). The copy read back is checked part by part against those digests."""
        from .backends.s3._multipart import _upload_part, part_size_for
        from .backends.s3._wire import checksum_header

        info = await self.src.head(key)
        meta = dict(info.metadata)
        if self.schema_version is not None:
            meta[SCHEMA_VERSION] = str(_version(meta, self.schema_version))
        uploads = s3.uploads
        state_key = self._parts_prefix + hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"
        step = part_size_for(info.size, _PART_SIZE)
        count = -(-info.size // step)
        ident = {"key": key, "etag": info.etag, "size": info.size, "part_size": step}
        parts: dict[int, tuple[PartInfo, str]] = {}

        async def read(number: int) -> list[bytes]:
            start = (number - 1) * step
            end = min(start + step, info.size)
            async with await self.src.open(key, range=ByteRange(start, end), if_match=info.etag) as dl:
                chunks = [chunk async for chunk in dl]
            if sum(len(c) for c in chunks) != end - start:
                raise _integrity(key, "the source changed during the copy")
            return chunks

        session = None
        held: dict[int, PartInfo] = {}
        state = await self._read_state(state_key)
        if state is not None and all(state.get(k) == v for k, v in ident.items()):
            try:
                session = uploads.resume(str(state["token"]))
                held = {p.number: p for p in await uploads.list_parts(session)}
            except (NotFoundError, InvalidArgumentError, KeyError):  # expired, completed or aborted
                session = None
            else:
                for n, (size, etag, digest) in dict(state.get("parts", {})).items():
                    part = held.get(int(n))
                    if part is not None and (part.size, part.etag) == (size, etag):
                        parts[int(n)] = (part, digest)
        elif state is not None:  # the source changed since: that session is no use
            with contextlib.suppress(StorageError, KeyError, InvalidArgumentError):
                await uploads.abort(uploads.resume(str(state["token"])))
        if session is None:
            session = await uploads.start(
                key,
                content_type=info.content_type,
                metadata=meta,
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )
        opened = session
        checkpoint = _Checkpoint(self.dst, state_key)

        async def save(force: bool = False) -> None:
            await checkpoint.save(
                lambda: {
                    **ident,
                    "token": opened.token,
                    "parts": {n: [p.size, p.etag, d] for n, (p, d) in sorted(parts.items())},
                },
                force,
            )

        async def adopt(part: PartInfo) -> None:
            """Keep a part the server holds but the record missed, if the source bytes match it."""
            if part.size != min(step, info.size - (part.number - 1) * step) or part.checksum is None:
                return
            async with self.part_slots:
                chunks = await read(part.number)
                checksum = checksum_header(opened.checksum, chunks)[1]
                if checksum == part.checksum:
                    digest = "" if self.server_checked else await asyncio.to_thread(_sha256_hex, chunks)
                    parts[part.number] = (part, digest)

        async def send(number: int) -> None:
            async with self.part_slots:
                chunks = await read(number)
                size = sum(len(c) for c in chunks)
                if self.bytes is not None:
                    await self.bytes.take(size)
                digest = "" if self.server_checked else await asyncio.to_thread(_sha256_hex, chunks)
                part = await _upload_part(s3, opened.key, opened.upload_id, number, chunks, size, opened.checksum)
                del chunks
            parts[number] = (part, digest)
            await save()

        try:
            if session is not None and held:
                async with asyncio.TaskGroup() as tg:
                    for number, part in held.items():
                        if number not in parts and number <= count:
                            tg.create_task(adopt(part))
            await save(force=True)
            async with asyncio.TaskGroup() as tg:
                for number in range(1, count + 1):
                    if number not in parts:
                        tg.create_task(send(number))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        await save(force=True)
        try:
            written = await uploads.complete(opened, [parts[n][0] for n in range(1, count + 1)], mode="create")
        except AlreadyExistsError:
            with contextlib.suppress(StorageError):
                await uploads.abort(opened)
            await self._drop_state(state_key)
            return False
        await self._drop_state(state_key)
        if not self.server_checked and await _hashed(self.dst, key, step, "sha256") != [
            parts[n][1] for n in range(1, count + 1)
        ]:
            await _discard(self.dst, key, written.etag)
            raise _integrity(key, "the copy read back differs from the source (SHA-256)")
        self._copied(info.size)
        return True

    # --- S3 to S3 on one server: copied inside the server ----------------------------------

    async def _copy_server(self, key: str, src: S3Backend, dst: S3Backend, listed: ObjectInfo | None = None) -> bool:
        """Copy ``key`` inside the server (CopyObject, or UploadPartCopy above the destination's
        ``multipart_copy_threshold``), create-only, then check the copy's etag against the source's.
        A whole-object copy that keeps the metadata as it is goes by the listing's etag and size
        (conditional on that etag), without a ``head``."""
        from .backends.s3._multipart import copy_whole

        whole = min(dst.settings.multipart_copy_threshold, _COPY_LIMIT)
        if listed is not None and listed.etag and self.schema_version is None and listed.size <= whole:
            info, meta = listed, dict(listed.metadata)
        else:
            info = await src.head(key)
            meta = dict(info.metadata)
        if self.schema_version is not None:
            meta[SCHEMA_VERSION] = str(_version(meta, self.schema_version))
        if info.size > whole:
            etag = await self._copy_server_parts(key, src, dst, info, meta)
            if etag is None:
                return False
        else:
            replace = None
            if meta != info.metadata:  # a stamp: the whole set is written (REPLACE)
                replace = dst._write_headers(
                    key, info.content_type, meta, info.cache_control, info.content_disposition
                )[0]
            if self.bytes is not None:
                await self.bytes.take(info.size)
            async with self.copy_slots:
                try:
                    etag = (await copy_whole(dst, src, info, key, cond={"if-none-match": "*"}, replace=replace))[0]
                except AlreadyExistsError:
                    return False
        if etag != info.etag and not await _same_bytes(src, dst, info):
            await _discard(self.dst, key, etag)
            raise _integrity(key, "the copy differs from the source (etag, then the bytes read back)")
        self._copied(info.size)
        return True

    async def _copy_server_parts(
        self, key: str, src: S3Backend, dst: S3Backend, info: ObjectInfo, meta: dict[str, str]
    ) -> str | None:
        """UploadPartCopy in parallel, in the source's own part layout where it can be learnt (so
        the copy's etag is the source's where the server computes part etags as MD5s); the session
        and the finished parts are recorded in the destination, so a rerun copies only the parts
        it lacks. The copy's etag, or ``None`` if another writer created ``key`` first."""
        from .backends.s3 import UploadSession
        from .backends.s3._multipart import MAX_PARTS, MIN_PART, _create, copy_part, part_size_for

        step = await _source_part_size(src, info)
        if step is None or step < MIN_PART or -(-info.size // step) > MAX_PARTS:
            step = part_size_for(info.size, dst.settings.copy_part_size)
        count = max(1, -(-info.size // step))
        uploads = dst.uploads
        state_key = self._parts_prefix + hashlib.sha256(key.encode()).hexdigest()[:32] + ".json"
        ident = {"key": key, "etag": info.etag, "size": info.size, "part_size": step, "copy": src.bucket}
        parts: dict[int, PartInfo] = {}
        session: UploadSession | None = None
        state = await self._read_state(state_key)
        if state is not None and all(state.get(k) == v for k, v in ident.items()):
            try:
                session = UploadSession(key, str(state["upload_id"]), "none")
                held = {p.number: p for p in await uploads.list_parts(session)}
            except (NotFoundError, InvalidArgumentError, KeyError):  # expired, completed or aborted
                session = None
            else:
                for n, (size, etag) in dict(state.get("parts", {})).items():
                    part = held.get(int(n))
                    if part is not None and (part.size, part.etag) == (size, etag):
                        parts[int(n)] = part
        elif state is not None:  # another source version or layout: that session is no use
            with contextlib.suppress(StorageError, KeyError):
                await uploads.abort(UploadSession(key, str(state["upload_id"]), "none"))
        if session is None:
            headers = dst._write_headers(key, info.content_type, meta, info.cache_control, info.content_disposition)[0]
            session = UploadSession(key, await _create(dst, key, headers, "none"), "none")
        opened = session
        checkpoint = _Checkpoint(self.dst, state_key)

        async def save(force: bool = False) -> None:
            await checkpoint.save(
                lambda: {
                    **ident,
                    "upload_id": opened.upload_id,
                    "parts": {n: [p.size, p.etag] for n, p in sorted(parts.items())},
                },
                force,
            )

        async def send(number: int) -> None:
            start = (number - 1) * step
            end = min(start + step, info.size)
            if self.bytes is not None:
                await self.bytes.take(end - start)
            async with self.copy_slots:
                part = await copy_part(dst, src, info, key, opened.upload_id, number, start, end)
            parts[number] = part
            await save()

        await save(force=True)
        try:
            async with asyncio.TaskGroup() as tg:
                for number in range(1, count + 1):
                    if number not in parts:
                        tg.create_task(send(number))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        await save(force=True)
        try:
            written = await uploads.complete(opened, [parts[n] for n in range(1, count + 1)], mode="create")
        except AlreadyExistsError:
            with contextlib.suppress(StorageError):
                await uploads.abort(opened)
            await self._drop_state(state_key)
            return None
        await self._drop_state(state_key)
        return written.etag

    async def _read_state(self, state_key: str) -> dict[str, Any] | None:
        try:
            with reserved_keys():
                doc = json.loads(await self.dst.get(state_key))
        except (NotFoundError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    async def _drop_state(self, state_key: str) -> None:
        with reserved_keys(), contextlib.suppress(StorageError):
            await self.dst.remove(state_key)

    async def _hashing(self, chunks: AsyncIterable[bytes], sha: Any) -> AsyncIterator[bytes]:
        async for chunk in chunks:
            if self.bytes is not None:
                await self.bytes.take(len(chunk))
            sha.update(chunk)
            yield chunk

    async def _compare(self, key: str) -> None:
        """Report ``key`` (present at the destination) as skipped when identical, else differing.
        Both sides are hashed as they stream, except a source that goes through ``upgrade``."""
        if self.upgrade is not None:
            data, info, meta = await self._wanted(key)
            want = hashlib.sha256(data).digest()
        else:
            info, want = await _digest(self.src, key)
            meta = dict(info.metadata)
            if self.schema_version is not None:
                meta[SCHEMA_VERSION] = str(_version(meta, self.schema_version))
        there, got = await _digest(self.dst, key)
        self._judge(key, info, meta, there, "content differs (SHA-256)" if got != want else None)

    async def _compare_etags(self, key: str, listed: ObjectInfo, there: ObjectInfo) -> bool:
        """Between two stores of one S3 server, a destination object with the source's ETag and
        size holds the source's bytes (the check a copy made inside the server passes): judge it
        by its metadata (a ``head`` on each side) without reading either body. ``False`` when
        the ETags differ or this run does not write (``verify_only`` reads both sides)."""
        if not self.writes or self.pair is None or self.upgrade is not None:
            return False
        if not listed.etag or listed.etag != there.etag or listed.size != there.size:
            return False
        info = await self.src.head(key)
        existing = await self.dst.head(key)
        if (info.etag, info.size) != (existing.etag, existing.size):  # either side changed meanwhile
            return False
        meta = dict(info.metadata)
        if self.schema_version is not None:
            meta[SCHEMA_VERSION] = str(_version(meta, self.schema_version))
        self._judge(key, info, meta, existing, None)
        return True

    def _judge(self, key: str, info: ObjectInfo, meta: dict[str, str], there: ObjectInfo, content: str | None) -> None:
        """Count ``key`` skipped, or differing for ``content`` (a reason) or any metadata that differs."""
        reasons = [content] if content else []
        ignore = () if self.schema_version is not None else (SCHEMA_VERSION,)
        if _without(there.metadata, ignore) != _without(meta, ignore):
            reasons.append("metadata differs")
        if info.content_type != there.content_type:
            reasons.append(f"content type {there.content_type!r} != {info.content_type!r}")
        if (info.cache_control or None) != (there.cache_control or None):
            reasons.append("cache-control differs")
        if reasons:
            self.report.differing.append(Difference(key, "; ".join(reasons)))
            self._count("differing")
        else:
            self.report.skipped += 1
            self._count("skipped")


class _Checkpoint:
    """The record of one large copy's finished parts, kept in the destination, written at most once a second."""

    def __init__(self, dst: StorageBackend, key: str) -> None:
        self._dst, self._key = dst, key
        self._lock = asyncio.Lock()
        self._saved = 0.0

    async def save(self, doc: Callable[[], dict[str, Any]], force: bool = False) -> None:
        """Write ``doc()`` unless it was written less than a second ago (``force``: write anyway)."""
        async with self._lock:
            if not force and time.monotonic() - self._saved < 1.0:
                return
            self._saved = time.monotonic()
            with reserved_keys():
                await self._dst.put_object(self._key, json.dumps(doc()).encode(), content_type="application/json")


class _Listing:
    """The destination's listing walked alongside the source's (both in key order): tells for
    each source key whether the destination listed it, sparing a ``head`` per object. It is only
    a hint: a key it misses is still written with ``mode="create"``, so nothing is overwritten."""

    def __init__(self, store: StorageBackend, prefix: str, after: str | None) -> None:
        self.it = aiter(store.iter_objects(prefix, start_after=after))
        self.head: ObjectInfo | None = None
        self.done = False
        self.broken = False

    async def find(self, key: str) -> ObjectInfo | _Unknown | None:
        if self.broken:
            return UNKNOWN
        try:
            while not self.done and (self.head is None or self.head.key < key):
                try:
                    self.head = await anext(self.it)
                except StopAsyncIteration:
                    self.done, self.head = True, None
        except StorageError as exc:  # e.g. no listing permission at the destination: head each key
            log.info("listing the destination failed (%s): checking each key instead", exc)
            self.broken = True
            return UNKNOWN
        return self.head if self.head is not None and self.head.key == key else None

    async def aclose(self) -> None:
        closer = getattr(self.it, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _s3(store: StorageBackend) -> S3Backend | None:
    """``store`` if it is an S3 store itself (not behind a layer, whose writes must go through it)."""
    module = sys.modules.get("unistore.backends.s3")
    return cast("S3Backend", store) if module is not None and type(store) is module.S3Backend else None


def _same_server(src: StorageBackend, dst: StorageBackend) -> tuple[S3Backend, S3Backend] | None:
    """Both stores if they are S3 stores themselves on the same endpoint, region and credentials
    (any buckets and prefixes) without SSE-C keys, and the destination's ``copy_if_match`` is not
    set off: the server can copy between them."""
    a, b = _s3(src), _s3(dst)
    if a is None or b is None:
        return None
    sa, sb = a.settings, b.settings
    same = (sa.endpoint, sa.region, sa.access_key, sa.secret_key, sa.session_token) == (
        sb.endpoint,
        sb.region,
        sb.access_key,
        sb.secret_key,
        sb.session_token,
    )
    if not same or sa.sse_customer_key or sb.sse_customer_key or a._origin != b._origin:
        return None
    if sb.copy_if_match is False:  # told that the server's conditions on copies are not to be trusted
        return None
    return a, b


async def _source_part_size(src: S3Backend, info: ObjectInfo) -> int | None:
    """The size of part 1 of a multipart-uploaded object (``HEAD ?partNumber=1``), ``None`` for
    another object or a server that does not answer it."""
    _, dash, count = info.etag.partition("-")
    if not dash or not count.isdigit() or int(count) < 2:
        return None
    try:
        r = await src._send("HEAD", src._object_path(info.key), op="head", key=info.key, query={"partNumber": "1"})
        size = int(r.headers.get("Content-Length", "0"))
        parts = int(r.headers.get("x-amz-mp-parts-count", count))
    except (StorageError, ValueError):
        return None
    return size if 0 < size < info.size and parts == int(count) else None


async def _same_bytes(src: S3Backend, dst: S3Backend, info: ObjectInfo) -> bool:
    """Whether the destination's copy of ``info`` holds the source's bytes, read back: its MD5 (or
    the composite MD5 in the source's part layout) against the source's etag where that is one,
    else the SHA-256 of both sides."""
    etag, dash, count = info.etag.partition("-")
    md5ish = len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())
    if md5ish and not dash:
        return (await _hashed(dst, info.key, info.size, "md5"))[0] == etag.lower()
    step = (info.size if count == "1" else await _source_part_size(src, info)) if md5ish else None
    if step is not None and count.isdigit():
        digests = await _hashed(dst, info.key, step, "md5")
        joined = hashlib.md5(b"".join(bytes.fromhex(d) for d in digests)).hexdigest()
        return f"{joined}-{len(digests)}" == f"{etag.lower()}-{count}"
    return (await _digest(src, info.key))[1] == (await _digest(dst, info.key))[1]


async def _hashed(store: StorageBackend, key: str, step: int, algorithm: str) -> list[str]:
    """The hex digest of each ``step``-byte part of the object, streamed."""
    out: list[str] = []
    h, left = hashlib.new(algorithm), max(step, 1)
    async with await store.open(key) as dl:
        async for chunk in dl:
            view = memoryview(chunk)
            while view:
                take = view[:left]
                h.update(take)
                view, left = view[len(take) :], left - len(take)
                if not left:
                    out.append(h.hexdigest())
                    h, left = hashlib.new(algorithm), step
    if left != step or not out:
        out.append(h.hexdigest())
    return out


def _sha256_hex(chunks: list[bytes]) -> str:
    sha = hashlib.sha256()
    for chunk in chunks:
        sha.update(chunk)
    return sha.hexdigest()


async def _digest(store: StorageBackend, key: str) -> tuple[ObjectInfo, bytes]:
    """The object's info and the SHA-256 of its bytes, streamed."""
    sha = hashlib.sha256()
    async with await store.open(key) as dl:
        async for chunk in dl:
            sha.update(chunk)
        return dl.info, sha.digest()


def _version(meta: Mapping[str, str], default: int) -> int:
    try:
        return int(meta[SCHEMA_VERSION])
    except (KeyError, ValueError):
        return default


def _without(meta: Mapping[str, str], names: tuple[str, ...]) -> dict[str, str]:
    return {k: v for k, v in meta.items() if k not in names}


def _integrity(key: str, message: str) -> StorageError:
    from ._errors import IntegrityError

    return IntegrityError(message, key=key)


async def _discard(store: StorageBackend, key: str, etag: str) -> None:
    """Remove a bad copy we wrote (only that version), so a rerun copies it again."""
    with contextlib.suppress(StorageError):
        await store.remove(key, if_match=etag)
