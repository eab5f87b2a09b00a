"""Migrate with many workers: key ranges leased through conditional writes in the destination store."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ._base import StorageBackend
from ._errors import AlreadyExistsError, InvalidArgumentError, NotFoundError, PreconditionFailedError, StorageError
from ._keys import RESERVED_PREFIX, reserved_keys, validate_prefix
from ._migrate import CHECKPOINT_PREFIX, MigrationReport, Upgrade, _Bucket, _Metrics, _Run
from ._types import IfMatch

__all__ = ["Lease", "job_prefix", "migrate_worker"]

log = logging.getLogger("unistore.migrate")


@dataclass(frozen=True, slots=True)
class Lease:
    """A lease object as read: who holds it until when (epoch seconds), and its state."""

    key: str
    etag: str
    worker: str
    expires: float
    state: str
    """``"held"`` while a worker copies the range, ``"done"`` once finished."""
    failed: int = 0


def job_prefix(prefix: str, job: str) -> str:
    """Where the plan, the leases and the range checkpoints of ``job`` over ``prefix`` live."""
    digest = hashlib.sha256(f"{job}\0{prefix}\0workers".encode()).hexdigest()[:24]
    return f"{CHECKPOINT_PREFIX}{digest}/"


async def _read_lease(store: StorageBackend, key: str) -> Lease | None:
    try:
        with reserved_keys():
            async with await store.open(key) as dl:
                etag, raw = dl.info.etag, await dl.read()
    except NotFoundError:
        return None
    try:
        doc = json.loads(raw)
        return Lease(key, etag, str(doc["worker"]), float(doc["expires"]), str(doc["state"]), int(doc.get("failed", 0)))
    except (ValueError, KeyError, TypeError):  # unreadable: treat as expired, so it can be taken over
        return Lease(key, etag, "", 0.0, "held")


async def _write_lease(
    store: StorageBackend, key: str, mode: Any, worker: str, seconds: float, state: str = "held", failed: int = 0
) -> str:
    doc = {"worker": worker, "expires": time.time() + seconds, "state": state, "failed": failed}
    with reserved_keys():
        info = await store.put_object(key, json.dumps(doc).encode(), content_type="application/json", mode=mode)
    return info.etag


async def _acquire(
    store: StorageBackend, key: str, worker: str, seconds: float, retry_failed: bool
) -> tuple[str | None, Lease | None]:
    """Take the lease at ``key``: create it if absent, take it over with ``IfMatch`` if expired
    (or done with failures, when ``retry_failed``). The new etag (``None`` if another worker
    has it) and the lease as read before."""
    lease = await _read_lease(store, key)
    if lease is None:
        mode: Any = "create"
    else:
        finished = lease.state == "done" and not (lease.failed and retry_failed)
        if finished or (lease.state == "held" and lease.expires > time.time()):
            return None, lease
        mode = IfMatch(lease.etag)
    try:
        return await _write_lease(store, key, mode, worker, seconds), lease
    except PreconditionFailedError:  # another worker was faster (AlreadyExistsError included)
        return None, lease


class _Held:
    """A lease this worker holds, renewed in the background with ``IfMatch`` on its last etag."""

    def __init__(self, store: StorageBackend, key: str, etag: str, worker: str, seconds: float) -> None:
        self.store, self.key, self.etag, self.worker, self.seconds = store, key, etag, worker, seconds
        self.lost = asyncio.Event()

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(self.seconds / 3)
            try:
                self.etag = await _write_lease(self.store, self.key, IfMatch(self.etag), self.worker, self.seconds)
            except PreconditionFailedError:  # expired and taken over (we were too slow): stop
                log.warning("lease %s lost to another worker", self.key)
                self.lost.set()
                return
            except StorageError as exc:  # try again at the next tick, while the lease still runs
                log.warning("renewing lease %s failed: %s", self.key, exc)

    async def finish(self, failed: int) -> None:
        with contextlib.suppress(PreconditionFailedError):
            await _write_lease(self.store, self.key, IfMatch(self.etag), self.worker, 0, "done", failed)


async def _plan(
    src: StorageBackend, dst: StorageBackend, prefix: str, base: str, worker: str, seconds: float, range_size: int
) -> list[str]:
    """The range boundaries: read the plan object, or (holding the planning lease) list the
    source keys and create it. Range ``i`` is the keys in ``(b[i-1], b[i]]``; the last is open."""
    plan_key = f"{base}plan.json"
    while True:
        try:
            with reserved_keys():
                doc = json.loads(await dst.get(plan_key))
            return [str(b) for b in doc["boundaries"]]
        except NotFoundError:
            pass
        etag, _ = await _acquire(dst, f"{base}plan.lease", worker, seconds, retry_failed=False)
        if etag is None:  # another worker is listing: wait for its plan (or for its lease to run out)
            await asyncio.sleep(min(1.0, seconds / 4))
            continue
        held = _Held(dst, f"{base}plan.lease", etag, worker, seconds)
        renewing = asyncio.create_task(held.renew_forever())
        try:
            boundaries: list[str] = []
            count = 0
            async for key in src.iter_keys(prefix):
                if key.startswith(RESERVED_PREFIX):
                    continue
                count += 1
                if count % range_size == 0:
                    boundaries.append(key)
            doc = {"prefix": prefix, "boundaries": boundaries, "keys": count, "by": worker, "at": time.time()}
            try:
                with reserved_keys():
                    await dst.put_object(plan_key, json.dumps(doc).encode(), mode="create")
            except AlreadyExistsError:  # a worker that took over our lease wrote it first: use that one
                continue
            await held.finish(0)
            return boundaries
        finally:
            renewing.cancel()


def _merge(total: MigrationReport, part: MigrationReport) -> None:
    total.copied += part.copied
    total.skipped += part.skipped
    total.bytes_copied += part.bytes_copied
    total.upgraded += part.upgraded
    total.missing += part.missing
    total.differing += part.differing
    total.failed += part.failed
    if part.resumed:
        total.resumed = True
        total.resumed_done += part.resumed_done


async def migrate_worker(
    src: StorageBackend,
    dst: StorageBackend,
    prefix: str = "",
    *,
    worker: str | None = None,
    lease_seconds: float = 30.0,
    range_size: int = 10_000,
    job: str = "default",
    concurrency: int = 8,
    ops_per_second: float | None = None,
    bytes_per_second: float | None = None,
    schema_version: int | None = None,
    upgrade: Upgrade | None = None,
    checkpoint_every: int = 50,
    metrics: Any = None,
    on_progress: Callable[[MigrationReport], None] | None = None,
) -> MigrationReport:
    """Run one of many workers of the migration ``job`` from ``src`` to ``dst``; return its report.

    Start as many as wanted, anywhere, with the same arguments: they share the work through
    objects in ``dst`` only. The first lists the source once and creates a plan of key ranges
    of ``range_size`` keys (create-only, so there is one plan); then each worker takes free
    ranges by creating a lease object (create-only), renews it with ``IfMatch`` every
    ``lease_seconds / 3`` and copies the range as :func:`migrate` does, with a checkpoint per
    range. A lease not renewed for ``lease_seconds`` (its worker died) is taken over with
    ``IfMatch`` on its etag, and the new holder resumes from the range's checkpoint. A worker
    returns when every range is done; a later worker retries ranges that ended with failures.
    Workers' clocks must agree to well within ``lease_seconds``.
    """
    validate_prefix(prefix)
    if lease_seconds <= 0 or range_size < 1 or concurrency < 1 or checkpoint_every < 1:
        raise InvalidArgumentError("lease_seconds, range_size, concurrency and checkpoint_every must be positive")
    if upgrade is not None and schema_version is None:
        raise InvalidArgumentError("an upgrade function needs a target schema_version")
    for rate in (ops_per_second, bytes_per_second):
        if rate is not None and rate <= 0:
            raise InvalidArgumentError("rates must be positive")
    worker = worker or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    base = job_prefix(prefix, job)
    started = time.monotonic()
    total = MigrationReport()
    ops = _Bucket(ops_per_second) if ops_per_second else None
    bytes_ = _Bucket(bytes_per_second) if bytes_per_second else None
    counters = _Metrics(metrics) if metrics is not None else None
    boundaries = await _plan(src, dst, prefix, base, worker, lease_seconds, range_size)
    bounds: list[str | None] = [None, *boundaries, None]
    ranges = list(itertools.pairwise(bounds))
    tried: set[int] = set()
    settled: set[int] = set()  # done, nothing left for this worker to do there
    # start at a different range per worker, so they do not all race for range 0
    first = int(hashlib.sha256(worker.encode()).hexdigest(), 16) % len(ranges)
    order = [(first + i) % len(ranges) for i in range(len(ranges))]
    while True:
        waiting = False
        for i in order:
            if i in settled:
                continue
            key = f"{base}range-{i:06}.lease"
            etag, lease = await _acquire(dst, key, worker, lease_seconds, retry_failed=i not in tried)
            if etag is None:
                if lease is not None and lease.state == "held":
                    waiting = True
                elif lease is not None and (not lease.failed or i in tried):
                    settled.add(i)
                continue
            tried.add(i)
            held = _Held(dst, key, etag, worker, lease_seconds)
            start, upto = ranges[i]
            run = _Run(
                src,
                dst,
                prefix,
                dry_run=False,
                verify_only=False,
                concurrency=concurrency,
                ops=ops,
                bytes_=bytes_,
                schema_version=schema_version,
                upgrade=upgrade,
                checkpoint=f"{base}range-{i:06}.checkpoint.json",
                checkpoint_every=checkpoint_every,
                metrics=counters,
                on_progress=on_progress,
                start=start,
                upto=upto,
            )
            completed = await _run_holding(run, held)
            _merge(total, run.report)
            if completed:
                await held.finish(len(run.report.failed))
                total.ranges.append(i)
                settled.add(i)
            else:
                total.ranges_lost.append(i)
        if not waiting:
            break
        await asyncio.sleep(min(1.0, lease_seconds / 4))  # ranges held by others: see if they finish or expire
    total.seconds = time.monotonic() - started
    return total


async def _run_holding(run: _Run, held: _Held) -> bool:
    """Run ``run`` while renewing ``held``; ``False`` if the lease was lost (the run is stopped)."""
    renewing = asyncio.create_task(held.renew_forever())
    working = asyncio.create_task(run.go())
    lost = asyncio.create_task(held.lost.wait())
    try:
        await asyncio.wait({working, lost}, return_when=asyncio.FIRST_COMPLETED)
        if working.done():
            working.result()
            return True
        working.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await working
        return False
    finally:
        for task in (renewing, working, lost):
            task.cancel()
