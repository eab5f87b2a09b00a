"""Dedup's sweeper: stale markers and unreferenced bodies removed after the grace period."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import datetime
from typing import TYPE_CHECKING

from .._errors import NotFoundError, PreconditionFailedError, StorageError
from .._keys import reserved_keys
from .._types import ObjectInfo
from ._dedup_parts import BLOBS, META_REF, META_SHA, REFS, SWEEPING, SweepReport

if TYPE_CHECKING:
    from ._dedup import Dedup

__all__ = ["sweep"]

log = logging.getLogger("unistore.dedup")


async def sweep(layer: Dedup, now: datetime | None, body_grace: float | None) -> SweepReport:
    """Remove stale markers and unreferenced bodies older than ``grace`` seconds.

    A marker older than ``grace`` whose manifest no longer names it is removed; then each
    body without a marker and older than ``body_grace`` (default ``grace``) is claimed
    create-only, checked again for markers, and removed. ``now`` replaces the clock (the
    stores' ``last_modified`` is compared with it). Safe to run from several processes.
    """
    now = now or layer._clock()
    body_age = layer.grace if body_grace is None else body_grace
    report: dict[str, int] = dict.fromkeys(
        (
            "references",
            "stale_markers_removed",
            "bodies",
            "bodies_removed",
            "bytes_reclaimed",
            "claims_cleared",
            "errors",
        ),
        0,
    )
    with reserved_keys():
        claims = [info async for info in layer.inner.iter_objects(SWEEPING)]
    for claim in claims:
        if (now - claim.last_modified).total_seconds() > layer.grace + 2 * layer.lease:  # a dead sweeper's
            await layer._drop(claim.key, if_match=claim.etag)
            report["claims_cleared"] += 1
    live: dict[str, int] = {}  # the sweep holds one count per body, not the listings
    stale: list[ObjectInfo] = []
    with reserved_keys():
        async for marker in layer.inner.iter_objects(REFS):
            sha, _, ref = marker.key[len(REFS) :].partition("/")
            if (now - marker.last_modified).total_seconds() >= layer.grace and not await _marker_live(
                layer, marker, sha, ref
            ):
                stale.append(marker)
                continue
            live[sha] = live.get(sha, 0) + 1
    for marker in stale:
        await layer._drop(marker.key, if_match=marker.etag)
        report["stale_markers_removed"] += 1
    report["references"] = sum(live.values())
    logical = physical = 0
    orphans: list[ObjectInfo] = []
    with reserved_keys():
        async for body in layer.inner.iter_objects(BLOBS):
            sha = body.key.rpartition("/")[2]
            if live.get(sha, 0) == 0 and (now - body.last_modified).total_seconds() >= body_age:
                orphans.append(body)
                continue
            report["bodies"] += 1
            physical += body.size
            logical += body.size * live.get(sha, 0)
    for body in orphans:
        sha = body.key.rpartition("/")[2]
        try:
            removed = await _reclaim(layer, sha, body)
        except (StorageError, OSError) as exc:  # one body's trouble never stops the sweep
            log.warning("could not sweep body %s (%s); the next sweep will retry", sha, exc)
            report["errors"] += 1
            removed = False
        if removed:
            report["bodies_removed"] += 1
            report["bytes_reclaimed"] += body.size
        else:
            report["bodies"] += 1
            physical += body.size
    layer._count("reclaimed", report["bytes_reclaimed"])
    if layer._metrics is not None:
        layer._metrics["stored_logical"].labels(layer.name).set(logical)
        layer._metrics["stored_physical"].labels(layer.name).set(physical)
    return SweepReport(**report, logical_bytes=logical, physical_bytes=physical)


async def _marker_live(layer: Dedup, marker: ObjectInfo, sha: str, ref: str) -> bool:
    """Whether the manifest the marker names still names it (or cannot be checked now)."""
    try:
        with reserved_keys():
            async with await layer.inner.open(marker.key) as dl:
                key = (await dl.read()).decode("utf-8", "surrogatepass")
        current = await layer._inner_head(key)
    except NotFoundError:
        return False  # removed meanwhile
    except (StorageError, UnicodeDecodeError):
        return True  # keep what cannot be checked
    return current is not None and current.metadata.get(META_SHA) == sha and current.metadata.get(META_REF) == ref


async def _reclaim(layer: Dedup, sha: str, body: ObjectInfo) -> bool:
    """Remove an unreferenced body under a create-only claim; whether it was removed."""
    claim = SWEEPING + sha
    started = time.monotonic()
    if not await layer._create(claim, uuid.uuid4().hex.encode()):
        return False  # another sweep holds it (or died holding it: cleared after grace)
    try:
        with reserved_keys():
            async for _ in layer.inner.iter_keys(f"{REFS}{sha}/"):
                return False  # a put took a reference before our claim: it keeps the body
            if time.monotonic() - started > layer.lease / 4:
                return False  # too slow: a waiting put may break the claim soon (after lease)
            try:
                return await layer.inner.remove(body.key, if_match=body.etag)
            except PreconditionFailedError:
                return False
    finally:
        await layer._drop(claim)
