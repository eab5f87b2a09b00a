"""The checkpoint of a rotation job, kept in the store it rotates (so any machine can resume it)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .._base import StorageBackend
from .._errors import AlreadyExistsError, NotFoundError, PreconditionFailedError, StorageError
from .._types import IfMatch, WriteMode

__all__ = ["CHECKPOINT_PREFIX", "Checkpoint", "CheckpointStore", "RotationConflictError"]

CHECKPOINT_PREFIX = "_unistore/rotation/"
"""Where rotation jobs keep their checkpoints; rotation and key usage skip keys under it."""


class RotationConflictError(PreconditionFailedError):
    """Another rotation job of the same kind and prefix updated the checkpoint: only one may run."""


@dataclass
class Checkpoint:
    """How far a job got: every key up to ``cursor`` (inclusive) is done."""

    kind: str
    prefix: str
    target: str
    started: str
    """When the job first started, as the store's clock stamped its checkpoint (ISO 8601)."""
    cursor: str | None = None
    counts: dict[str, int] = dataclasses.field(default_factory=dict)
    runs: int = 1
    etag: str | None = None

    @property
    def started_at(self) -> datetime:
        return datetime.fromisoformat(self.started)

    def to_json(self) -> bytes:
        doc = dataclasses.asdict(self)
        doc.pop("etag")
        doc["v"] = 1
        return json.dumps(doc, sort_keys=True).encode()


class CheckpointStore:
    """Reads and writes one job's checkpoint, ``_unistore/rotation/<kind>-<hash of prefix>.json``.

    Every save is conditional on the etag last read or written, so a second job running the
    same rotation at once is detected (:class:`RotationConflictError`) instead of interleaving.
    """

    def __init__(self, store: StorageBackend, kind: str, prefix: str) -> None:
        self.store = store
        self.kind = kind
        self.prefix = prefix
        digest = hashlib.sha256(prefix.encode("utf-8", "surrogatepass")).hexdigest()[:16]
        self.key = f"{CHECKPOINT_PREFIX}{kind}-{digest}.json"

    async def load(self) -> Checkpoint | None:
        """The stored checkpoint, or ``None``."""
        try:
            dl = await self.store.open(self.key)
        except NotFoundError:
            return None
        async with dl:
            raw = await dl.read()
            etag = dl.info.etag
        try:
            doc: dict[str, Any] = json.loads(raw)
            doc.pop("v", None)
            return Checkpoint(**doc, etag=etag)
        except (ValueError, TypeError) as exc:
            raise StorageError(f"the rotation checkpoint {self.key} is unreadable: {exc}", key=self.key) from None

    async def begin(self, target: str) -> Checkpoint:
        """The checkpoint to resume, or a new one (its ``started`` the store's clock)."""
        found = await self.load()
        if found is not None:
            if found.target != target:  # the primary changed since: every object needs another look
                found.target, found.cursor, found.counts = target, None, {}
            found.runs += 1
            await self.save(found)
            return found
        fresh = Checkpoint(self.kind, self.prefix, target, started="1970-01-01T00:00:00+00:00")
        try:
            info = await self.store.put_object(
                self.key, fresh.to_json(), content_type="application/json", mode="create"
            )
        except AlreadyExistsError:
            raise RotationConflictError(
                "another rotation job started at the same time", key=self.key, operation="rotate"
            ) from None
        fresh.started = info.last_modified.isoformat()
        fresh.etag = info.etag
        await self.save(fresh)
        return fresh

    async def save(self, checkpoint: Checkpoint) -> None:
        """Store ``checkpoint`` if nobody else changed it since this job read or wrote it."""
        mode: WriteMode = IfMatch(checkpoint.etag) if checkpoint.etag else "create"
        try:
            info = await self.store.put_object(
                self.key, checkpoint.to_json(), content_type="application/json", mode=mode
            )
        except PreconditionFailedError:
            raise RotationConflictError(
                "another rotation job of this store and prefix is running (its checkpoint changed)",
                key=self.key,
                operation="rotate",
            ) from None
        checkpoint.etag = info.etag

    async def finish(self, checkpoint: Checkpoint) -> None:
        """Remove the checkpoint of a completed job."""
        await self.store.remove(self.key)
