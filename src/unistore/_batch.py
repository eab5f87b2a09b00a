"""Multi-object commits: objects staged under unique names, made visible together by one
conditional write of a manifest that readers go through."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ._base import StorageBackend
from ._errors import ConfigurationError, InvalidKeyError, NotFoundError, PreconditionFailedError, StorageError
from ._keys import validate_key
from ._types import Body, Download, IfMatch, ObjectInfo, Range, WriteMode

__all__ = ["Batch", "BatchSnapshot", "BatchStore"]

log = logging.getLogger("unistore.batch")

MANIFEST = "MANIFEST.json"
STAGING = "_batches/"


@dataclasses.dataclass(frozen=True, slots=True)
class BatchSnapshot:
    """One committed state: every key of the collection and the object holding its bytes.

    Reads through one snapshot never mix two batches. Objects replaced since are removed by
    :meth:`BatchStore.sweep` after its grace period, so read a snapshot soon after taking it."""

    store: StorageBackend
    prefix: str
    serial: int
    """How many batches were committed before this state (0: nothing yet)."""
    objects: Mapping[str, str]
    """Each key and where its bytes are (a key of ``store``)."""
    etag: str | None
    """The manifest's etag (``None`` before the first commit)."""
    commit: str | None = None
    """The id of the batch that made this state."""

    def keys(self, prefix: str = "") -> list[str]:
        """The keys starting with ``prefix``, sorted."""
        return sorted(k for k in self.objects if k.startswith(prefix))

    def _where(self, key: str) -> str:
        try:
            return self.objects[key]
        except KeyError:
            raise NotFoundError("no such key in this batch snapshot", key=key) from None

    async def open(self, key: str, *, range: Range | None = None) -> Download:
        """The object ``key`` as of this snapshot."""
        return await self.store.open(self._where(key), range=range)

    async def get(self, key: str) -> bytes:
        """The bytes of ``key`` as of this snapshot."""
        async with await self.open(key) as dl:
            return await dl.read()

    async def head(self, key: str) -> ObjectInfo:
        """The details of ``key`` as of this snapshot (with ``key`` as its key)."""
        return dataclasses.replace(await self.store.head(self._where(key)), key=key)


class BatchStore:
    """A collection of objects under ``prefix`` in ``store`` that changes in all-or-nothing
    batches.

    - ``prefix + "MANIFEST.json"`` names every key and the object holding it. A batch writes
      its objects under ``prefix + "_batches/<batch id>/"`` (create-only, never visible by
      themselves), then commits with **one conditional write of the manifest** (``IfMatch``
      on the etag read, create-only for the first): before that write nothing changed for
      readers, after it the whole batch is visible.
    - Readers go through the manifest (:meth:`snapshot`, :meth:`get`), so they never see half
      a batch.
    - A batch that fails or is abandoned removes its staged objects (compensating deletes);
      what a crash leaves behind is removed by :meth:`sweep`, as are objects replaced by later
      commits, once they are older than ``grace`` seconds.
    - Concurrent batches on different keys both commit (the later one re-reads the manifest
      and retries, up to ``retries`` times); a batch whose keys another batch changed since it
      began fails with :class:`~unistore.PreconditionFailedError`.
    """

    def __init__(self, store: StorageBackend, prefix: str, *, grace: float = 3600.0, retries: int = 16) -> None:
        if not prefix.endswith("/"):
            raise InvalidKeyError("a batch prefix ends with '/'", key=prefix)
        validate_key(prefix + MANIFEST)
        if grace <= 0 or retries < 1:
            raise ConfigurationError("grace must be > 0 and retries >= 1")
        self.store = store
        self.prefix = prefix
        self.manifest_key = prefix + MANIFEST
        self.grace = grace
        self.retries = retries

    def __repr__(self) -> str:
        return f"BatchStore({self.store!r}, {self.prefix!r})"

    async def snapshot(self) -> BatchSnapshot:
        """The current committed state (one read of the manifest)."""
        try:
            async with await self.store.open(self.manifest_key) as dl:
                raw, etag = await dl.read(), dl.info.etag
        except NotFoundError:
            return BatchSnapshot(self.store, self.prefix, 0, {}, None)
        try:
            doc = json.loads(raw)
            objects = {str(k): self.prefix + str(v) for k, v in doc["objects"].items()}
            return BatchSnapshot(self.store, self.prefix, int(doc["serial"]), objects, etag, doc.get("commit"))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StorageError(f"unreadable batch manifest: {exc}", key=self.manifest_key) from exc

    async def get(self, key: str) -> bytes:
        """The bytes of ``key`` in the current state."""
        return await (await self.snapshot()).get(key)

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys of the current state starting with ``prefix``, sorted."""
        return (await self.snapshot()).keys(prefix)

    def batch(self) -> Batch:
        """A new batch: ``async with batches.batch() as tx:`` commits on leaving the block and
        aborts (removing what it staged) if the block raises."""
        return Batch(self)

    async def sweep(self, *, grace: float | None = None) -> int:
        """Remove staged objects the manifest does not name that are older than ``grace``
        seconds (default: the store's): leftovers of crashed batches and objects replaced by
        later commits. Returns how many were removed."""
        grace = self.grace if grace is None else grace
        staged = [info async for info in self.store.iter_objects(self.prefix + STAGING)]
        named = set((await self.snapshot()).objects.values())
        cutoff = datetime.now(UTC).timestamp() - grace
        removed = 0
        for info in staged:
            if info.key not in named and info.last_modified.timestamp() < cutoff:
                removed += await self.store.remove(info.key)
        return removed


class Batch:
    """Objects staged together and committed all-or-nothing (see :class:`BatchStore`)."""

    def __init__(self, owner: BatchStore) -> None:
        self.owner = owner
        self.id = f"{time.time_ns():020d}-{uuid.uuid4().hex[:12]}"
        self.staging = owner.prefix + STAGING + self.id + "/"
        self._puts: dict[str, str] = {}
        self._deletes: set[str] = set()
        self._staged: list[str] = []
        self._base: BatchSnapshot | None = None
        self._started: float | None = None
        self._done = False
        self.committed: BatchSnapshot | None = None

    async def __aenter__(self) -> Batch:
        await self._begin()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._done:
            return
        if exc_type is None:
            await self.commit()
        else:
            await self.abort()

    async def _begin(self) -> BatchSnapshot:
        if self._done:
            raise StorageError("this batch is already committed or aborted")
        if self._base is None:
            self._base = await self.owner.snapshot()
            self._started = time.monotonic()
        return self._base

    async def put(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        """Stage ``key`` (invisible until :meth:`commit`)."""
        validate_key(key)
        await self._begin()
        where = self.staging + key
        self._staged.append(where)  # before the write: an interrupted write is cleaned up too
        info = await self.owner.store.put_object(
            where,
            body,
            content_type=content_type,
            metadata=metadata,
            mode="create",
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        self._puts[key] = where
        self._deletes.discard(key)
        return dataclasses.replace(info, key=key)

    async def delete(self, key: str) -> None:
        """Stage the removal of ``key`` (a key the collection does not have is ignored)."""
        validate_key(key)
        await self._begin()
        self._puts.pop(key, None)
        self._deletes.add(key)

    async def commit(self) -> BatchSnapshot:
        """Make every staged change visible at once: one conditional write of the manifest.

        On a conflict (a key of this batch changed since it began) or any failure before that
        write, the staged objects are removed and the error raised; nothing became visible."""
        base = await self._begin()
        assert self._started is not None
        try:
            if time.monotonic() - self._started > self.owner.grace / 2:
                raise PreconditionFailedError(
                    "batch took longer than half the sweep grace period; its objects may be swept",
                    key=self.owner.manifest_key,
                )
            for _ in range(self.owner.retries):
                current = await self.owner.snapshot()
                changed = [k for k in (*self._puts, *self._deletes) if current.objects.get(k) != base.objects.get(k)]
                if changed:
                    raise PreconditionFailedError(
                        f"{len(changed)} key(s) of this batch were changed by another batch since it began",
                        key=changed[0],
                    )
                if await self._write(current):
                    assert self.committed is not None
                    return self.committed
            raise PreconditionFailedError(
                f"the manifest kept changing during {self.owner.retries} commit attempts", key=self.owner.manifest_key
            )
        except BaseException:
            if not self._done:
                await self.abort()
            raise

    async def _write(self, current: BatchSnapshot) -> bool:
        """One attempt at the commit point. ``True``: committed; ``False``: the manifest moved."""
        objects = {k: v for k, v in current.objects.items() if k not in self._deletes}
        objects.update(self._puts)
        cut = len(self.owner.prefix)
        doc = {"serial": current.serial + 1, "commit": self.id, "objects": {k: v[cut:] for k, v in objects.items()}}
        mode: WriteMode = "create" if current.etag is None else IfMatch(current.etag)
        try:
            info = await self.owner.store.put_object(
                self.owner.manifest_key, json.dumps(doc).encode(), content_type="application/json", mode=mode
            )
        except PreconditionFailedError:
            return False
        except BaseException:
            # the answer was lost: the write may have landed. Never clean up a committed batch.
            if await self._landed():
                self._finish(current, objects, None)
                return True
            raise
        self._finish(current, objects, info.etag)
        return True

    def _finish(self, current: BatchSnapshot, objects: dict[str, str], etag: str | None) -> None:
        self._done = True
        self.committed = BatchSnapshot(self.owner.store, self.owner.prefix, current.serial + 1, objects, etag, self.id)

    async def _landed(self) -> bool:
        try:
            now = await self.owner.snapshot()
        except Exception:
            self._done = True  # cannot tell: leave the staged objects to sweep()
            return False
        return now.commit == self.id or any(v.startswith(self.staging) for v in now.objects.values())

    async def abort(self) -> None:
        """Remove what this batch staged (compensating deletes); nothing of it becomes visible.
        A removal that fails is left to :meth:`BatchStore.sweep`."""
        self._done = True
        staged, self._staged = self._staged, []
        for where in staged:
            try:
                await self.owner.store.remove(where)
            except Exception as exc:
                log.warning("could not remove staged %r (%s); sweep() will", where, exc)
