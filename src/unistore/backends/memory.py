"""In-process storage for tests, CI and small caches.

Every capability is native: conditional writes and reads, ranges, streaming,
signed URLs (served by ``add_storage(app, serve_files=True)``). Objects are
immutable ``bytes`` pieces of ``chunk_size`` (a streamed write is never joined
into one copy, so it peaks at its own size); a write builds the new object
completely, then commits it in one step under a lock, so concurrent tasks (and
threads) never see a partial object. ``max_size`` bounds the total bytes stored (:class:`QuotaExceededError`).
Deviation: data is lost when the process exits; with no ``url_secret`` the
signing secret is random per instance, so URLs only work in this process.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import secrets
import threading
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, ClassVar

from .._base import (
    DEFAULT_CHUNK_SIZE,
    BaseBackend,
    check_listing_args,
    check_read_conditions,
    check_remove_condition,
    check_write_mode,
    iter_body,
    refuse_storage_class,
    settings_from,
)
from .._errors import ConfigurationError, InvalidArgumentError, NotFoundError, QuotaExceededError
from .._keys import validate_key
from .._signing import UrlSigner
from .._types import (
    Body,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)

__all__ = ["MemoryBackend", "MemorySettings"]


@dataclass(frozen=True, slots=True)
class MemorySettings:
    """Settings of :class:`MemoryBackend` (``easy_storage`` keyword names)."""

    max_size: int | None = None
    """Quota on the total bytes stored (a write beyond it fails with ``QuotaExceededError``); unset: no quota."""
    base_url: str = "http://localhost:8000/files"
    """Public URL prefix of the route serving the objects; signed URLs are
    ``{base_url}/{key}?expires=…&signature=…``."""
    url_secret: str | None = field(default=None, repr=False)
    """Key that signs URLs. Unset: a random secret per process (URLs die with it)."""
    url_expiration: int = 3600
    """Lifetime of a signed URL when the caller gives none, in seconds."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes per chunk when streaming a read."""

    def __post_init__(self) -> None:
        if self.max_size is not None and self.max_size < 0:
            raise ConfigurationError("max_size must be >= 0")
        if self.url_expiration <= 0:
            raise ConfigurationError("url_expiration must be positive")
        if self.chunk_size <= 0:
            raise ConfigurationError("chunk_size must be positive")


def _outside(folder: str) -> Callable[[str], bool]:
    """A bisect key over sorted keys from inside ``folder``: False while inside, True past it."""
    return lambda key: not key.startswith(folder)


@dataclass(frozen=True, slots=True)
class _Body:
    """An object's bytes as immutable pieces; ``starts[i]`` is the offset of ``pieces[i]``."""

    pieces: tuple[bytes, ...]
    starts: tuple[int, ...]

    @classmethod
    def of(cls, pieces: list[bytes]) -> _Body:
        starts, pos = [], 0
        for p in pieces:
            starts.append(pos)
            pos += len(p)
        return cls(tuple(pieces), tuple(starts))

    def slices(self, start: int, end: int) -> list[memoryview]:
        """Views of bytes ``[start, end)``, one per piece they touch."""
        out: list[memoryview] = []
        i = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while i < len(self.pieces) and start < end:
            base = self.starts[i]
            piece = self.pieces[i]
            out.append(memoryview(piece)[start - base : min(end, base + len(piece)) - base])
            start = base + len(piece)
            i += 1
        return out

    def read(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)``: the piece itself when it is exactly that range."""
        i = bisect.bisect_right(self.starts, start) - 1
        if i >= 0 and self.starts[i] == start and len(self.pieces[i]) == end - start:
            return self.pieces[i]
        return b"".join(self.slices(start, end))


@dataclass(frozen=True, slots=True)
class _Entry:
    body: _Body
    info: ObjectInfo


class MemoryBackend(BaseBackend):
    """Objects in a dict, safe under concurrent tasks and threads."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
        server_side_copy=True,
    )

    def __init__(self, settings: MemorySettings | None = None, **options: Any) -> None:
        self.settings = settings_from(MemorySettings, settings, options)
        secret = self.settings.url_secret
        self._signer = UrlSigner(secret.encode() if secret else secrets.token_bytes(32), self.settings.base_url)
        self.default_expires_in = self.settings.url_expiration
        self._objects: dict[str, _Entry] = {}
        self._total = 0
        self._lock = threading.Lock()
        self._etags = itertools.count(1)
        self._epoch = secrets.token_hex(4)
        # Sorted key index, maintained lazily so a put never pays for it.
        self._sorted: list[str] | None = None
        self._added: list[str] = []
        self._removed: set[str] = set()

    def __repr__(self) -> str:
        return f"MemoryBackend(objects={len(self._objects)}, bytes={self._total}, max_size={self.settings.max_size})"

    @property
    def signer(self) -> UrlSigner:
        """The signer the file route verifies this backend's URLs with."""
        return self._signer

    @property
    def used_bytes(self) -> int:
        """Total bytes stored."""
        return self._total

    # --- primitives ---------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        entry = self._objects.get(key)
        if entry is None:
            raise NotFoundError("no such object", key=key, backend=self.name, operation="head")
        return entry.info

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        entry = self._objects.get(key)
        if entry is None:
            raise NotFoundError("no such object", key=key, backend=self.name, operation="open")
        info = entry.info
        check_read_conditions(info, if_match, if_none_match, self.name)
        start, end = (0, info.size) if range is None else range.resolve(info.size)
        if end - start <= self.settings.chunk_size:
            data = entry.body.read(start, end)
            return Download(info, data, start=start, end=end, range_requested=range is not None)
        return Download(
            info,
            self._chunks(entry.body, start, end),
            start=start,
            end=end,
            range_requested=range is not None,
        )

    async def _chunks(self, body: _Body, start: int, end: int) -> AsyncIterator[bytes]:
        step = self.settings.chunk_size
        for pos in range(start, end, step):
            yield body.read(pos, min(pos + step, end))

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
        validate_key(key)
        refuse_storage_class(self.name, key)
        meta = normalize_metadata(metadata)
        content_type = check_content_type(content_type) or guess_content_type(key)
        check_header_value("cache_control", cache_control)
        check_header_value("content_disposition", content_disposition)
        if isinstance(body, bytes):
            data = _Body.of([body])
        else:
            data = await self._read_body(key, body)
        return self._commit(key, data, content_type, meta, mode, cache_control, content_disposition)

    async def _read_body(self, key: str, body: Body) -> _Body:
        """``body`` as pieces of ``chunk_size`` (a small piece is copied once into the next)."""
        limit, step = self.settings.max_size, self.settings.chunk_size
        pieces: list[bytes] = []
        pending = bytearray()
        size = 0
        async for chunk in iter_body(body, step):
            size += len(chunk)
            if limit is not None and size > limit:
                raise self._quota(key, size)
            if not pending and len(chunk) >= step and isinstance(chunk, bytes):
                pieces.append(chunk)
                continue
            pending += chunk
            while len(pending) >= step:
                pieces.append(bytes(pending[:step]))
                del pending[:step]
        if pending:
            pieces.append(bytes(pending))
        return _Body.of(pieces)

    def _commit(
        self,
        key: str,
        data: _Body,
        content_type: str | None,
        meta: dict[str, str],
        mode: WriteMode,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> ObjectInfo:
        limit = self.settings.max_size
        size = data.starts[-1] + len(data.pieces[-1]) if data.pieces else 0
        with self._lock:
            current = self._objects.get(key)
            check_write_mode(current.info if current else None, mode, key, self.name)
            old_size = current.info.size if current else 0
            new_total = self._total - old_size + size
            if limit is not None and new_total > limit:
                raise self._quota(key, size)
            info = ObjectInfo(
                key=key,
                size=size,
                etag=f"{self._epoch}-{next(self._etags):x}",
                last_modified=datetime.now(UTC),
                content_type=content_type,
                metadata=meta,
                cache_control=cache_control,
                content_disposition=content_disposition,
            )
            self._objects[key] = _Entry(data, info)
            self._total = new_total
            if current is None and self._sorted is not None:
                if key in self._removed:
                    self._removed.discard(key)
                else:
                    self._added.append(key)
        return info

    def _quota(self, key: str, size: int) -> QuotaExceededError:
        return QuotaExceededError(
            f"storing {size} bytes would exceed max_size={self.settings.max_size} ({self._total} bytes used)",
            key=key,
            backend=self.name,
            operation="put",
        )

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        with self._lock:
            current = self._objects.get(key)
            check_remove_condition(current.info if current else None, if_match, key, self.name)
            if current is None:
                return False
            del self._objects[key]
            self._total -= current.info.size
            if self._sorted is not None:
                self._removed.add(key)
        return True

    def _sorted_keys(self) -> list[str]:
        with self._lock:
            if (
                self._sorted is None
                or len(self._added) > len(self._sorted) // 8 + 64
                or len(self._removed) > len(self._objects)
            ):
                self._sorted = sorted(self._objects)
            elif self._added:
                merged = self._sorted.copy()
                for k in self._added:
                    bisect.insort(merged, k)
                self._sorted = merged
            self._added = []
            if len(self._sorted) == len(self._objects):
                self._removed.clear()
            return self._sorted

    async def _iter_live(self, prefix: str, start_after: str | None) -> AsyncIterator[_Entry]:
        check_listing_args(prefix, start_after)
        keys = self._sorted_keys()  # a snapshot: later writes replace the list, never mutate it
        first = prefix if start_after is None or start_after < prefix else start_after
        i = bisect.bisect_right(keys, first) if first == start_after else bisect.bisect_left(keys, first)
        objects = self._objects
        for n, k in enumerate(itertools.islice(keys, i, None)):
            if not k.startswith(prefix):
                break
            entry = objects.get(k)
            if entry is not None:
                yield entry
            if n % 1000 == 999:
                await asyncio.sleep(0)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for entry in self._iter_live(prefix, start_after):
            yield entry.info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for entry in self._iter_live(prefix, start_after):
            yield entry.info.key

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One level from the sorted key index: a bisect to the first entry, then one step per
        entry (an object, or a folder skipped whole by a bisect past its last key), so a level
        costs O(entries · log n) however many keys lie below it."""
        check_listing_args(prefix, start_after)
        if not isinstance(delimiter, str) or not delimiter:
            raise InvalidArgumentError("delimiter must be a non-empty str")
        keys = self._sorted_keys()  # a snapshot: later writes replace the list, never mutate it
        objects = self._objects
        first = prefix if start_after is None or start_after < prefix else start_after
        i = bisect.bisect_right(keys, first) if first == start_after else bisect.bisect_left(keys, first)
        n, width = 0, len(prefix)
        while i < len(keys):
            k = keys[i]
            if not k.startswith(prefix):
                break
            cut = k.find(delimiter, width)
            if cut < 0:
                entry = objects.get(k)
                if entry is not None:
                    yield entry.info
                i += 1
            else:
                folder = k[: cut + len(delimiter)]
                end = bisect.bisect_left(keys, True, i, key=_outside(folder))
                # the index keeps removed keys until it is rebuilt: a folder needs one live key
                live = any(keys[j] in objects for j in range(i, end))
                if live and (start_after is None or folder > start_after):
                    yield CommonPrefix(folder)
                i = end
            n += 1
            if n % 1000 == 999:
                await asyncio.sleep(0)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        validate_key(key)
        expires = self.default_expires_in if expires_in is None else expires_in
        return self._signer.sign(key, expires_in=expires, download=download, method=method)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        validate_key(src)
        entry = self._objects.get(src)
        if entry is None:
            raise NotFoundError("no such object", key=src, backend=self.name, operation="copy")
        validate_key(dst)
        i = entry.info
        return self._commit(
            dst, entry.body, i.content_type, dict(i.metadata), mode, i.cache_control, i.content_disposition
        )

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Native: the body is shared, the new version gets a new etag."""
        validate_key(key)
        meta = normalize_metadata(metadata)
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                raise NotFoundError("no such object", key=key, backend=self.name, operation="replace_metadata")
            if if_match is not None:
                check_write_mode(current.info, IfMatch(if_match), key, self.name)
            info = replace(
                current.info,
                etag=f"{self._epoch}-{next(self._etags):x}",
                last_modified=datetime.now(UTC),
                metadata=meta,
            )
            self._objects[key] = _Entry(current.body, info)
        return info

    async def ping(self) -> None:
        return None
