"""Multipart upload sessions kept entirely in the backend (techniques §2, §11).

Layout under the service's state namespace (``.unistore/service/``)::

    uploads/sessions/{id}        JSON: key, content type, metadata, part size, expiry
    uploads/parts/{id}/{n:05d}   one object per part, its SHA-256 in metadata

Any replica can serve any step: create → parts (in parallel, any order, each
retried freely) → list parts (to resume) → complete with a manifest of part
SHA-256s, each checked against the stored part before the object is written
(the object becomes visible atomically, with ``schema_version`` in its
metadata) → or abort. Expired sessions are refused and swept. Completion calls
every registered hook with an event dict.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .._base import StorageBackend
from .._errors import IntegrityError, InvalidArgumentError, NotFoundError
from .._keys import validate_key
from .._types import ObjectInfo, normalize_metadata
from ._digests import verified_body
from ._state import StateStore

__all__ = ["Hook", "PartInfo", "SCHEMA_VERSION", "Session", "UploadSessions"]

SCHEMA_VERSION = "1"
MAX_PARTS = 10_000
_ID = re.compile(r"([0-9a-f]{1,16})\.[A-Za-z0-9_-]{16,64}")
LOGGER = logging.getLogger("unistore.service")

Hook = Callable[[dict[str, Any]], Awaitable[None] | None]
"""A completion hook: called with ``{"event": "upload.completed", "key", "size", "etag", "upload_id"}``."""


@dataclass(frozen=True, slots=True)
class Session:
    """One upload session as stored."""

    id: str
    key: str
    content_type: str | None
    metadata: Mapping[str, str]
    part_size: int
    expires: int

    def as_json(self) -> dict[str, Any]:
        """The session as the API returns it."""
        return {
            "upload_id": self.id,
            "key": self.key,
            "content_type": self.content_type,
            "metadata": dict(self.metadata),
            "part_size": self.part_size,
            "expires": self.expires,
        }


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One stored part: its number, size and SHA-256 (base64)."""

    number: int
    size: int
    sha256: str

    def as_json(self) -> dict[str, Any]:
        """The part as the API returns it."""
        return {"number": self.number, "size": self.size, "sha256": self.sha256}


class UploadSessions:
    """Create, fill, list, complete, abort and sweep upload sessions over ``storage``.

    ``state`` holds sessions and parts; the completed object is written through
    ``storage`` (so it passes the service's layers). ``ttl`` bounds a session's
    life; ``max_part_size`` bounds a part (a request body).
    """

    def __init__(
        self,
        storage: StorageBackend,
        state: StateStore,
        *,
        ttl: float,
        max_part_size: int,
        hooks: Sequence[Hook] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.state = state
        self.ttl = ttl
        self.max_part_size = max_part_size
        self.hooks = list(hooks)
        self._clock = clock
        self._last_sweep = 0.0

    async def create(
        self,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        part_size: int | None = None,
    ) -> Session:
        """Start a session for ``key`` (the key and metadata are validated now, not at completion).

        ``part_size`` defaults to 8 MiB, or the largest part allowed if that is smaller.
        """
        validate_key(key)
        part_size = part_size if part_size is not None else min(8 * 1024 * 1024, self.max_part_size)
        if not 1 <= part_size <= self.max_part_size:
            raise InvalidArgumentError(f"part_size must be in 1..{self.max_part_size}")
        now = self._clock()
        expires = int(now + self.ttl)
        # The id carries the expiry, so a sweep can tell stale sessions from a listing alone.
        upload_id = f"{expires:x}.{secrets.token_urlsafe(18)}"
        session = Session(upload_id, key, content_type, normalize_metadata(metadata), part_size, expires)
        doc = json.dumps(session.as_json()).encode()
        await self.state.put_object(_session_key(session.id), doc, mode="create")
        if now - self._last_sweep > 60:
            self._last_sweep = now
            await self.sweep(limit=100)
        return session

    async def get(self, upload_id: str) -> Session:
        """The live session ``upload_id``; :class:`NotFoundError` if unknown, finished or expired."""
        if not _ID.fullmatch(upload_id):
            raise NotFoundError("no such upload session", operation="upload")
        try:
            data = json.loads(await self.state.get(_session_key(upload_id)))
        except NotFoundError:
            raise NotFoundError("no such upload session", operation="upload") from None
        session = Session(
            upload_id, data["key"], data["content_type"], data["metadata"], data["part_size"], data["expires"]
        )
        if session.expires <= self._clock():
            raise NotFoundError("upload session has expired", key=session.key, operation="upload")
        return session

    async def upload_part(
        self, session: Session, number: int, body: AsyncIterable[bytes], *, expected: Mapping[str, bytes]
    ) -> PartInfo:
        """Store part ``number`` (1..10000) of at most ``part_size`` bytes; a retry replaces it."""
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgumentError(f"part number must be in 1..{MAX_PARTS}", key=session.key)
        sha = hashlib.sha256()

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in verified_body(body, expected=expected, max_size=session.part_size, key=session.key):
                sha.update(chunk)
                yield chunk

        info = await self.state.put_object(_part_key(session.id, number), hashed())
        digest = base64.b64encode(sha.digest()).decode()
        # The digest is known only once the body has streamed: record it beside the part.
        await self.state.put_object(_part_key(session.id, number) + ".sha256", digest.encode())
        return PartInfo(number, info.size, digest)

    async def list_parts(self, session: Session) -> list[PartInfo]:
        """The parts stored so far, by number."""
        parts = []
        async for info in self.state.iter_objects(_parts_prefix(session.id)):
            name = info.key.rsplit("/", 1)[-1]
            if name.isdigit():
                try:
                    digest = (await self.state.get(info.key + ".sha256")).decode()
                except NotFoundError:
                    continue  # its upload is still running or was cut: not a part yet
                parts.append(PartInfo(int(name), info.size, digest))
        return parts

    async def complete(self, session: Session, manifest: Sequence[tuple[int, str]]) -> ObjectInfo:
        """Check every manifest entry against the stored part, then write the object from the parts in order."""
        numbers = [n for n, _ in manifest]
        if not manifest or numbers != sorted(set(numbers)):
            raise InvalidArgumentError("the manifest must list distinct part numbers in ascending order")
        stored = {p.number: p for p in await self.list_parts(session)}
        for number, digest in manifest:
            part = stored.get(number)
            if part is None:
                raise InvalidArgumentError(f"part {number} was not uploaded", key=session.key)
            if part.sha256 != digest:
                raise IntegrityError(f"part {number} does not match its manifest checksum", key=session.key)

        async def joined() -> AsyncIterator[bytes]:
            # Each part is hashed again as it streams: a mismatch raises before the write commits.
            for number, digest in manifest:
                sha = hashlib.sha256()
                async with await self.state.open(_part_key(session.id, number)) as dl:
                    async for chunk in dl:
                        sha.update(chunk)
                        yield chunk
                if base64.b64encode(sha.digest()).decode() != digest:
                    raise IntegrityError(f"part {number} changed during completion", key=session.key)

        metadata = {**session.metadata, "schema_version": SCHEMA_VERSION}
        info = await self.storage.put_object(
            session.key, joined(), content_type=session.content_type, metadata=metadata
        )
        await self._discard(session.id)
        await self._emit(
            {
                "event": "upload.completed",
                "upload_id": session.id,
                "key": info.key,
                "size": info.size,
                "etag": info.etag,
            }
        )
        return info

    async def abort(self, session: Session) -> None:
        """Drop the session and its parts."""
        await self._discard(session.id)

    async def sweep(self, *, limit: int | None = None) -> int:
        """Discard up to ``limit`` expired sessions; how many were discarded."""
        now, expired = self._clock(), []
        async for key in self.state.iter_keys("uploads/sessions/"):
            upload_id = key.rsplit("/", 1)[-1]
            m = _ID.fullmatch(upload_id)
            if m is None or int(m.group(1), 16) <= now:
                expired.append(upload_id)
                if limit is not None and len(expired) >= limit:
                    break
        for upload_id in expired:
            await self._discard(upload_id)
        return len(expired)

    async def _discard(self, upload_id: str) -> None:
        keys = [info.key async for info in self.state.iter_objects(_parts_prefix(upload_id))]
        for key in keys:
            await self.state.remove(key)
        await self.state.remove(_session_key(upload_id))

    async def _emit(self, event: dict[str, Any]) -> None:
        for hook in self.hooks:
            try:
                result = hook(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                LOGGER.exception("upload hook %r failed", hook)


def _session_key(upload_id: str) -> str:
    return f"uploads/sessions/{upload_id}"


def _parts_prefix(upload_id: str) -> str:
    return f"uploads/parts/{upload_id}/"


def _part_key(upload_id: str, number: int) -> str:
    return f"{_parts_prefix(upload_id)}{number:05d}"
