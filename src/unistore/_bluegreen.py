"""Blue-green switches: versions of a data set side by side under ``ROOT/vN/``, and one pointer
object naming the live one, changed only by conditional writes."""

from __future__ import annotations

import json
from dataclasses import dataclass
from types import EllipsisType

from ._base import StorageBackend
from ._errors import InvalidKeyError, NotFoundError, PreconditionFailedError, StorageError
from ._keys import validate_key
from ._types import IfMatch, WriteMode

__all__ = ["BlueGreen", "Release"]


@dataclass(frozen=True, slots=True)
class Release:
    """What the pointer named when it was read."""

    version: str
    """The live version (a key segment, e.g. ``v2``)."""
    prefix: str
    """Where its objects are: ``root + version + "/"``."""
    previous: str | None
    """The version live before it (what :meth:`BlueGreen.rollback` switches back to)."""
    etag: str
    """The pointer object's etag: a switch conditioned on it fails if anyone switched since."""


class BlueGreen:
    """Versions of a data set under ``root`` (``root + "v1/"``, ``root + "v2/"``...) and a pointer
    object, ``root + pointer``, naming the live one.

    - Write a new version through :meth:`stage` (a view of its prefix); readers keep following
      the pointer and see the old version meanwhile.
    - :meth:`switch` and :meth:`rollback` are one conditional write of the pointer each
      (``IfMatch`` on the etag read, or create-only when there is none yet): of two concurrent
      switches from the same state, one wins and the other raises
      :class:`~unistore.PreconditionFailedError`, so no switch is silently lost.
    - Readers call :meth:`current` (or :meth:`view`) once per request and read every object of
      that request under the prefix it names, so one request never mixes two versions.
    """

    def __init__(self, store: StorageBackend, root: str = "", *, pointer: str = "CURRENT") -> None:
        if root and not root.endswith("/"):
            raise InvalidKeyError("root must be empty or end with '/'", key=root)
        validate_key(root + pointer)
        self.store = store
        self.root = root
        self.pointer_key = root + pointer

    def prefix(self, version: str) -> str:
        """The prefix of ``version``'s objects (``version`` must be one key segment)."""
        if not isinstance(version, str) or "/" in version or not version:
            raise InvalidKeyError("a version is one key segment, such as 'v2'", key=str(version))
        validate_key(self.root + version)
        if self.root + version == self.pointer_key:
            raise InvalidKeyError("a version cannot be named like the pointer", key=version)
        return self.root + version + "/"

    def stage(self, version: str) -> StorageBackend:
        """A view of ``version``'s prefix (keys relative to it), to write that version into."""
        from .layers._scoped import Scoped

        return Scoped(self.store, self.prefix(version))

    async def current(self) -> Release | None:
        """The live release, or ``None`` before the first switch."""
        try:
            async with await self.store.open(self.pointer_key) as dl:
                raw, etag = await dl.read(), dl.info.etag
        except NotFoundError:
            return None
        try:
            doc = json.loads(raw)
            version, previous = str(doc["version"]), doc.get("previous")
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"unreadable blue-green pointer: {exc}", key=self.pointer_key) from exc
        return Release(version, self.prefix(version), None if previous is None else str(previous), etag)

    async def view(self) -> tuple[Release, StorageBackend]:
        """The live release and a view of its prefix; :class:`~unistore.NotFoundError` before the
        first switch."""
        release = await self.current()
        if release is None:
            raise NotFoundError("no version is live yet", key=self.pointer_key)
        return release, self.stage(release.version)

    async def switch(self, version: str, *, expected: Release | EllipsisType | None = ...) -> Release:
        """Make ``version`` live, with one conditional write of the pointer.

        ``expected`` is the release the caller decided from (``None``: no pointer yet); by
        default (``...``) the pointer is read first. Raises :class:`~unistore.PreconditionFailedError` if
        the pointer changed since, and :class:`~unistore.NotFoundError` if ``version`` has no
        object (a typo would otherwise take everything down)."""
        prefix = self.prefix(version)
        if not await self.store.list_keys(prefix, limit=1):
            raise NotFoundError(f"version {version!r} has no objects under {prefix!r}", key=prefix)
        before = await self.current() if expected is ... else expected
        return await self._write(version, before.version if before else None, before)

    async def rollback(self, *, expected: Release | EllipsisType | None = ...) -> Release:
        """Make the previous version live again (one conditional write of the pointer); the
        version rolled back from becomes the previous one, so a second rollback undoes it."""
        before = await self.current() if expected is ... else expected
        if not isinstance(before, Release) or before.previous is None:
            raise NotFoundError("no previous version to roll back to", key=self.pointer_key)
        return await self._write(before.previous, before.version, before)

    async def _write(self, version: str, previous: str | None, before: Release | None) -> Release:
        mode: WriteMode = "create" if before is None else IfMatch(before.etag)
        body = json.dumps({"version": version, "previous": previous}).encode()
        try:
            info = await self.store.put_object(
                self.pointer_key, body, content_type="application/json", mode=mode, cache_control="no-cache"
            )
        except PreconditionFailedError as exc:
            raise PreconditionFailedError(
                "the live version changed since it was read; read it again and decide again", key=self.pointer_key
            ) from exc
        return Release(version, self.prefix(version), previous, info.etag)
