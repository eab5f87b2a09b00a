"""Idempotent writes: a write carrying a client operation id takes effect once.

The key travels in a context variable, so it passes through any layer above
this one and no primitive changes signature::

    with idempotency_key("order-1234-invoice"):
        info = await store.put_object("invoices/1234.pdf", pdf)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import tempfile
import time
from collections.abc import AsyncIterable, Callable, Iterator, Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import IO, Any

from .._base import StorageBackend, iter_body
from .._errors import ConfigurationError, InvalidArgumentError, NotFoundError, TransientError
from .._types import Body, IfMatch, ObjectInfo, WriteMode
from ..backends.memory import MemoryBackend
from ._layer import Layer

__all__ = [
    "Idempotency",
    "IdempotencyInProgressError",
    "IdempotencyKeyReusedError",
    "current_idempotency_key",
    "idempotency_key",
]

_KEY: ContextVar[str | None] = ContextVar("unistore_idempotency_key", default=None)
_SPOOL_IN_MEMORY = 8 * 1024 * 1024


@contextlib.contextmanager
def idempotency_key(key: str | None) -> Iterator[str | None]:
    """Make the writes in this block carry the client operation id ``key``.

    ``None`` makes them carry none, whatever an enclosing block set (a server
    handling requests uses it so no request can inherit another's key).
    """
    if key is not None and (not isinstance(key, str) or not key or len(key) > 255):
        raise InvalidArgumentError("an idempotency key is a non-empty str of at most 255 characters")
    token = _KEY.set(key)
    try:
        yield key
    finally:
        _KEY.reset(token)


def current_idempotency_key() -> str | None:
    """The idempotency key of the running write, if any."""
    return _KEY.get()


class IdempotencyKeyReusedError(InvalidArgumentError):
    """The idempotency key was already used for a write with another key, body or options.

    422 as in the IETF draft *The Idempotency-Key HTTP Header Field* (§2.7): the
    request is well-formed but reuses a key for a different payload. It is a
    client error, never retried; it is not a precondition on the object.
    """

    status = 422


class IdempotencyInProgressError(TransientError):
    """Another write with this idempotency key is still running (409 in the same draft).

    Transient: retrying later returns the first write's result.
    """

    status = 409


class Idempotency(Layer):
    """Deduplicates ``put_object`` calls made under :func:`idempotency_key`.

    Where it belongs: outermost among the writing layers, above Retry, so a
    caller's whole retried operation is the unit. A first write records the
    sha256 of the destination key, body and options with its result in
    ``store`` (default: a new :class:`MemoryBackend`; pass a shared store for
    several processes), kept ``ttl`` seconds. A repeat with the same digest
    returns the recorded :class:`ObjectInfo` without writing; another digest
    raises :class:`IdempotencyKeyReusedError`. A repeat while the first runs
    waits for it in-process, or raises :class:`IdempotencyInProgressError`
    when the first runs elsewhere. The body is hashed before anything is
    written: bytes directly, a path or seekable file by reading it once more,
    other streams by spooling them to a temporary file (in memory up to
    8 MiB), which also makes them replayable for Retry below. Writes without
    a key pass straight through.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        store: StorageBackend | None = None,
        ttl: float = 24 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        if ttl <= 0:
            raise ConfigurationError("ttl must be > 0")
        self._owns_store = store is None
        self.store: StorageBackend = store if store is not None else MemoryBackend()
        self.ttl = ttl
        self._clock = clock
        self._locks: dict[str, asyncio.Lock] = {}

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
        op_id = _KEY.get()
        options = dict(
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        if op_id is None:
            return await self.inner.put_object(key, body, **options)  # type: ignore[arg-type]
        lock = self._locks.setdefault(op_id, asyncio.Lock())
        try:
            async with lock:
                return await self._once(op_id, key, body, options)
        finally:
            if not lock.locked() and self._locks.get(op_id) is lock:
                del self._locks[op_id]

    async def _once(self, op_id: str, key: str, body: Body, options: dict[str, Any]) -> ObjectInfo:
        record_key = "idempotency/" + hashlib.sha256(op_id.encode()).hexdigest()
        with _Spool(body) as spool:
            digest = await spool.digest(key, options)
            record = await self._load(record_key)
            if record is not None:
                return self._replay(op_id, key, record, digest)
            pending = {"state": "pending", "digest": digest, "expires": self._clock() + self.ttl}
            try:
                await self.store.put_object(record_key, json.dumps(pending).encode(), mode="create")
            except FileExistsError:
                record = await self._load(record_key)
                if record is None:
                    raise IdempotencyInProgressError(
                        "a write with this idempotency key just finished; retry", retry_after=0.01, key=key
                    ) from None
                return self._replay(op_id, key, record, digest)
            try:
                info = await self.inner.put_object(key, spool.body(), **options)
            except BaseException:
                await self.store.remove(record_key)
                raise
            done = {"state": "done", "digest": digest, "expires": pending["expires"], "info": _info_to_json(info)}
            await self.store.put_object(record_key, json.dumps(done).encode())
            return info

    async def _load(self, record_key: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = json.loads(await self.store.get(record_key))
        except NotFoundError:
            return None
        if record["expires"] <= self._clock():
            await self.store.remove(record_key)
            return None
        return record

    def _replay(self, op_id: str, key: str, record: dict[str, Any], digest: str) -> ObjectInfo:
        if record["digest"] != digest:
            raise IdempotencyKeyReusedError(
                "idempotency key reused for a different write (key, body or options differ)", key=key, operation="put"
            )
        if record["state"] != "done":
            raise IdempotencyInProgressError(
                "a write with this idempotency key is in progress", retry_after=0.1, key=key, operation="put"
            )
        return _info_from_json(record["info"])

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            if self._owns_store:
                await self.store.aclose()


class _Spool:
    """A body made hashable and replayable: bytes and paths as is, seekable files rewound, else spooled."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._file: IO[bytes] | None = None
        self._start = 0

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None and self._file is not self._body:
            self._file.close()

    async def digest(self, key: str, options: Mapping[str, Any]) -> str:
        h = hashlib.sha256()
        mode = options["mode"]
        meta = options["metadata"]
        h.update(
            json.dumps(
                [
                    key,
                    options["content_type"],
                    sorted((str(k).lower(), str(v)) for k, v in (meta or {}).items()),
                    mode.etag if isinstance(mode, IfMatch) else mode,
                    options["cache_control"],
                    options["content_disposition"],
                ]
            ).encode()
        )
        body = self._body
        if isinstance(body, bytes | bytearray | memoryview):
            h.update(body)
        elif isinstance(body, os.PathLike) or _seekable(body):
            if not isinstance(body, os.PathLike):
                self._file = body  # type: ignore[assignment]
                self._start = self._file.tell()  # type: ignore[union-attr]
            async for chunk in iter_body(body):
                h.update(chunk)
        else:
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - closed in __exit__
            self._file = spool
            source = body if isinstance(body, AsyncIterable) else iter_body(body)
            async for chunk in source:
                h.update(chunk)
                spool.write(chunk)
        return h.hexdigest()

    def body(self) -> Body:
        if self._file is None:
            return self._body
        self._file.seek(self._start)
        return self._file


def _seekable(body: object) -> bool:
    seekable = getattr(body, "seekable", None)
    try:
        return bool(seekable()) if callable(seekable) and hasattr(body, "tell") else False
    except (OSError, ValueError):
        return False


def _info_to_json(info: ObjectInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        "last_modified": info.last_modified.isoformat(),
        "content_type": info.content_type,
        "metadata": dict(info.metadata),
        "cache_control": info.cache_control,
        "content_disposition": info.content_disposition,
    }


def _info_from_json(data: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(**{**data, "last_modified": datetime.fromisoformat(data["last_modified"])})
