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

A *direct* session (``direct=True``, S3-compatible backends) keeps the parts in
the store's own multipart upload instead: the service hands out presigned part
URLs so the bytes go straight to the store (data plane) while every control step
still goes through the service. Its part checksums are the store's: base64
SHA-256 when the backend checksums parts with SHA-256, else base64 MD5 (or the
part's ETag). Only the session record lives under the state namespace; the
store-side upload is aborted when the session is aborted or swept.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import inspect
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .._base import StorageBackend
from .._errors import IntegrityError, InvalidArgumentError, NotFoundError, StorageError
from .._keys import validate_key
from .._types import ObjectInfo, check_content_type, normalize_metadata
from ._digests import verified_body
from ._hooks import Hook
from ._state import StateStore

if TYPE_CHECKING:
    from ..backends.s3._sessions import S3Uploads

__all__ = ["PartInfo", "SCHEMA_VERSION", "Session", "UploadSessions"]

SCHEMA_VERSION = "1"
MAX_PARTS = 10_000
MIN_DIRECT_PART = 5 * 1024 * 1024  # S3's smallest part but the last
MAX_DIRECT_PART = 5 * 1024**3  # and its largest
_ID = re.compile(r"([0-9a-f]{1,16})\.[A-Za-z0-9_-]{16,64}")
LOGGER = logging.getLogger("unistore.service")


@dataclass(frozen=True, slots=True)
class Session:
    """One upload session as stored."""

    id: str
    key: str
    content_type: str | None
    metadata: Mapping[str, str]
    part_size: int
    expires: int
    native: str | None = None
    """The store's own upload session token (a direct session), else ``None``."""
    checksum: str = "sha256"
    """The algorithm of the part checksums a manifest carries (``sha256`` or ``md5``)."""

    def as_json(self) -> dict[str, Any]:
        """The session as the API returns it."""
        return {
            "upload_id": self.id,
            "key": self.key,
            "content_type": self.content_type,
            "metadata": dict(self.metadata),
            "part_size": self.part_size,
            "expires": self.expires,
            "direct": self.native is not None,
            "checksum": self.checksum,
        }

    def record(self) -> dict[str, Any]:
        """The session as stored (with the store's session token)."""
        return {**self.as_json(), "native": self.native}


@dataclass(frozen=True, slots=True)
class PartInfo:
    """One stored part: its number, size and base64 checksum (in ``algorithm``), with the store's ETag."""

    number: int
    size: int
    checksum: str
    algorithm: str = "sha256"
    etag: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The part as the API returns it: ``{"number", "size", <algorithm>: checksum[, "etag"]}``."""
        doc: dict[str, Any] = {"number": self.number, "size": self.size, self.algorithm: self.checksum}
        if self.etag is not None:
            doc["etag"] = self.etag
        return doc


class UploadSessions:
    """Create, fill, list, complete, abort and sweep upload sessions over ``storage``.

    ``state`` holds sessions and parts; the completed object is written through
    ``storage`` (so it passes the service's layers). ``ttl`` bounds a session's
    life; ``max_part_size`` bounds a part (a request body). ``native`` is the
    backend's own session API (``S3Backend.uploads``), which direct sessions use.
    """

    def __init__(
        self,
        storage: StorageBackend,
        state: StateStore,
        *,
        ttl: float,
        max_part_size: int,
        hooks: Sequence[Hook] = (),
        native: S3Uploads | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.state = state
        self.ttl = ttl
        self.max_part_size = max_part_size
        self.hooks = list(hooks)
        self.native = native
        self._clock = clock
        self._last_sweep = 0.0

    async def create(
        self,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        part_size: int | None = None,
        direct: bool = False,
    ) -> Session:
        """Start a session for ``key`` (the key and metadata are validated now, not at completion).

        ``part_size`` defaults to 8 MiB, or the largest part allowed if that is smaller.
        ``direct=True`` opens the store's own multipart upload, for presigned part
        URLs; it needs an S3-compatible backend and parts of 5 MiB to 5 GiB (S3's
        rule). Those parts need not pass through the service, so ``max_part_size``
        bounds only the ones that do.
        """
        validate_key(key)
        largest = MAX_DIRECT_PART if direct else self.max_part_size
        part_size = part_size if part_size is not None else min(8 * 1024 * 1024, largest)
        if not 1 <= part_size <= largest:
            raise InvalidArgumentError(f"part_size must be in 1..{largest}")
        meta = normalize_metadata(metadata)
        content_type = check_content_type(content_type)
        now = self._clock()
        expires = int(now + self.ttl)
        # The id carries the expiry, so a sweep can tell stale sessions from a listing alone.
        upload_id = f"{expires:x}.{secrets.token_urlsafe(18)}"
        session = Session(upload_id, key, content_type, meta, part_size, expires)
        if direct:
            session = await self._open_native(session)
        try:
            await self.state.put_object(_session_key(session.id), json.dumps(session.record()).encode(), mode="create")
        except BaseException:
            if session.native is not None:
                await self._abort_native(session.native)
            raise
        if now - self._last_sweep > 60:
            self._last_sweep = now
            await self.sweep(limit=100)
        return session

    async def _open_native(self, session: Session) -> Session:
        if self.native is None or not self.native.can_presign_parts:
            raise InvalidArgumentError(
                "direct uploads need an S3-compatible backend without SSE-C; this service stores parts itself",
                key=session.key,
            )
        if session.part_size < MIN_DIRECT_PART:
            raise InvalidArgumentError("a direct session needs part_size >= 5 MiB (S3's rule)", key=session.key)
        metadata = {**session.metadata, "schema_version": SCHEMA_VERSION}
        native = await self.native.start(session.key, content_type=session.content_type, metadata=metadata)
        checksum = "sha256" if native.checksum == "sha256" else "md5"
        return Session(
            session.id,
            session.key,
            session.content_type,
            session.metadata,
            session.part_size,
            session.expires,
            native.token,
            checksum,
        )

    async def get(self, upload_id: str) -> Session:
        """The live session ``upload_id``; :class:`NotFoundError` if unknown, finished or expired."""
        if not _ID.fullmatch(upload_id):
            raise NotFoundError("no such upload session", operation="upload")
        try:
            data = json.loads(await self.state.get(_session_key(upload_id)))
        except NotFoundError:
            raise NotFoundError("no such upload session", operation="upload") from None
        session = Session(
            upload_id,
            data["key"],
            data["content_type"],
            data["metadata"],
            data["part_size"],
            data["expires"],
            data.get("native"),
            data.get("checksum", "sha256"),
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
        limit = min(session.part_size, self.max_part_size)  # a direct session's part may also come this way
        checked = verified_body(body, expected=expected, max_size=limit, key=session.key)
        if session.native is not None:
            native, token = self._native(session)
            stored = await native.upload_part(native.resume(token), number, checked)
            return _native_part(session, stored.number, stored.size, stored.etag, stored.checksum)
        sha = hashlib.sha256()

        async def hashed() -> AsyncIterator[bytes]:
            async for chunk in checked:
                sha.update(chunk)
                yield chunk

        # The digest is known only once the body has streamed: it is recorded beside the part,
        # after it. A retry first drops the old digest, so a crash between the two writes leaves
        # a part with no digest (not uploaded yet), never one described by another body's digest.
        await self.state.remove(_part_key(session.id, number) + ".sha256")
        info = await self.state.put_object(_part_key(session.id, number), hashed())
        digest = base64.b64encode(sha.digest()).decode()
        await self.state.put_object(_part_key(session.id, number) + ".sha256", digest.encode())
        # An abort (or completion) that ran while this body streamed has already discarded the
        # session's parts: this one would stay behind, an orphan no sweep finds. Take it back.
        try:
            await self.state.head(_session_key(session.id))
        except NotFoundError:
            await self.state.remove(_part_key(session.id, number) + ".sha256")
            await self.state.remove(_part_key(session.id, number))
            raise NotFoundError("the upload session ended while this part arrived", operation="upload") from None
        return PartInfo(number, info.size, digest)

    async def part_url(
        self, session: Session, number: int, *, expires_in: int, checksum: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """A presigned ``PUT`` URL for part ``number`` of a direct session, and the headers to send with it.

        ``checksum`` (base64, in the session's algorithm) is signed in, so the
        store accepts only that body; SHA-256 sessions need it.
        """
        if session.native is None:
            raise InvalidArgumentError("part URLs exist only for direct sessions (create with direct=true)")
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgumentError(f"part number must be in 1..{MAX_PARTS}", key=session.key)
        expires_in = min(expires_in, max(1, session.expires - int(self._clock())))
        native, token = self._native(session)
        return await native.presign_part(native.resume(token), number, expires_in=expires_in, checksum=checksum)

    async def list_parts(self, session: Session) -> list[PartInfo]:
        """The parts stored so far, by number."""
        if session.native is not None:
            native, token = self._native(session)
            stored = await native.list_parts(native.resume(token))
            return [_native_part(session, p.number, p.size, p.etag, p.checksum) for p in stored]
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

    async def complete(self, session: Session, manifest: Sequence[tuple[int, str | None]]) -> ObjectInfo:
        """Check every manifest entry (number, checksum in the session's algorithm) against the
        stored part, then make the object visible from the parts in order. An entry whose
        checksum is ``None`` takes the stored part as it is (its stored checksum)."""
        numbers = [n for n, _ in manifest]
        if not manifest or numbers != sorted(set(numbers)):
            raise InvalidArgumentError("the manifest must list distinct part numbers in ascending order")
        if session.native is not None:  # the store's session checks the manifest against its own listing
            native, token = self._native(session)
            info = await native.complete(native.resume(token), manifest, max_part_size=session.part_size)
        else:
            stored = {p.number: p for p in await self.list_parts(session)}
            checked: list[tuple[int, str]] = []
            for number, digest in manifest:
                part = stored.get(number)
                if part is None:
                    raise InvalidArgumentError(f"part {number} was not uploaded", key=session.key)
                if digest is not None and part.checksum != digest:
                    raise IntegrityError(f"part {number} does not match its manifest checksum", key=session.key)
                checked.append((number, part.checksum))
            info = await self._join(session, checked)
        await self._discard(session.id)
        await self._emit(
            {
                "event": "upload.completed",
                "upload_id": session.id,
                "key": info.key,
                "size": info.size,
                "etag": info.etag,
                "direct": session.native is not None,
            }
        )
        return info

    async def _join(self, session: Session, manifest: Sequence[tuple[int, str]]) -> ObjectInfo:
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
        return await self.storage.put_object(
            session.key, joined(), content_type=session.content_type, metadata=metadata
        )

    async def abort(self, session: Session) -> None:
        """Drop the session and its parts (a direct session's store-side upload too)."""
        if session.native is not None:
            await self._abort_native(session.native)
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
            with contextlib.suppress(NotFoundError, ValueError, KeyError):
                native = json.loads(await self.state.get(_session_key(upload_id))).get("native")
                if native:
                    await self._abort_native(native)
            await self._discard(upload_id)
        return len(expired)

    def _native(self, session: Session) -> tuple[S3Uploads, str]:
        if self.native is None or session.native is None:
            raise NotFoundError("this service no longer has the store of that direct session", key=session.key)
        return self.native, session.native

    async def _abort_native(self, token: str) -> None:
        if self.native is not None:
            with contextlib.suppress(StorageError):  # already completed, aborted or expired at the store
                await self.native.abort(self.native.resume(token))

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


def _native_part(session: Session, number: int, size: int, etag: str, checksum: str | None) -> PartInfo:
    """A store-side part in the session's algorithm (``""`` where the store does not report it)."""
    return PartInfo(number, size, checksum or "", session.checksum, etag)


def _session_key(upload_id: str) -> str:
    return f"uploads/sessions/{upload_id}"


def _parts_prefix(upload_id: str) -> str:
    return f"uploads/parts/{upload_id}/"


def _part_key(upload_id: str, number: int) -> str:
    return f"{_parts_prefix(upload_id)}{number:05d}"
