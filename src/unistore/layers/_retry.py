"""Retries of transient failures: full-jitter backoff, bounded attempts and time, resumed downloads.

The schedule is our own fifteen lines rather than stamina or tenacity (see
``docs/design.md``, "Layers"): a per-call ``AsyncRetrying`` costs more than this layer's
whole budget, neither resumes a stream from the byte where it broke, and both
would make the core depend on a package for arithmetic.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import random
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any, TypeVar

from .._base import StorageBackend, iter_body
from .._errors import ConfigurationError, InvalidRangeError, PreconditionFailedError, TransientError
from .._types import Body, ByteRange, CommonPrefix, Download, ObjectInfo, Range, WriteMode
from ._layer import Layer, in_memory, rewrap

__all__ = ["Retry", "RetryEvent"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One retry about to happen: the failed ``attempt`` (1-based) and the ``delay`` before the next."""

    operation: str
    key: str | None
    attempt: int
    delay: float
    error: TransientError


class Retry(Layer):
    """Retries :class:`TransientError` (5xx, timeouts, resets, 429/503) and nothing else.

    Where it belongs: next to the network, below Cache/Observe/RateLimit, so
    each retry is one more request to the store but one operation to the layers
    above (Observe counts the retries through :meth:`add_listener`).

    Schedule: attempt ``n`` waits a uniform random time in
    ``[0, min(max_delay, base_delay * 2**n)]`` (full jitter), at least the
    error's ``retry_after``; it gives up after ``attempts`` tries or when the
    next wait would pass ``deadline`` seconds since the first try, re-raising
    the last error. A streamed download shorter than ``buffer_below`` bytes is
    read whole inside the retried call, so a break restarts it (even if the
    object changed meanwhile, the caller sees one version and its info). A
    write is replayed only when its body can be re-read:
    bytes, a path, a seekable file (rewound), or a source the failed attempt
    never started reading. An interrupted download resumes from the next byte
    with ``if_match`` on the original etag, so two versions are never spliced;
    if the object changed, the stream ends at once with
    :class:`PreconditionFailedError` (never retried). Listings
    resume after the last key yielded. ``sleep`` replaces ``asyncio.sleep``
    (tests pass a no-op); ``seed`` makes the jitter reproducible.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        attempts: int = 5,
        deadline: float = 30.0,
        base_delay: float = 0.05,
        max_delay: float = 5.0,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        seed: int | None = None,
        buffer_below: int = 64 * 1024,
    ) -> None:
        super().__init__(inner)
        if attempts < 1 or deadline <= 0 or base_delay < 0 or max_delay < 0:
            raise ConfigurationError("attempts must be >= 1, deadline > 0, delays >= 0")
        self.attempts = attempts
        self.deadline = deadline
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.buffer_below = buffer_below
        self._sleep = sleep
        self._clock = clock
        self._random = random.Random(seed).random
        self._listeners: list[Callable[[RetryEvent], None]] = []
        caps = inner.capabilities
        self._resumable = caps.ranges and caps.conditional_get

    def add_listener(self, listener: Callable[[RetryEvent], None]) -> None:
        """Call ``listener`` before every retry (metrics, logs)."""
        self._listeners.append(listener)

    async def _backoff(self, operation: str, key: str | None, attempt: int, exc: TransientError, since: float) -> None:
        """Sleep before try ``attempt + 1``, or re-raise ``exc`` if the budget is spent."""
        if attempt >= self.attempts:
            raise exc
        delay = self._random() * min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        if exc.retry_after is not None and exc.retry_after > delay:
            delay = exc.retry_after
        if self._clock() + delay - since > self.deadline:
            raise exc
        event = RetryEvent(operation, key, attempt, delay, exc)
        for listener in self._listeners:
            listener(event)
        await self._sleep(delay)

    async def _around(
        self,
        operation: str,
        key: str | None,
        call: Callable[[], Awaitable[T]],
        replayable: Callable[[], bool] | None = None,
    ) -> T:
        since = self._clock()
        attempt = 1
        while True:
            try:
                return await call()
            except TransientError as exc:
                if replayable is not None and not replayable():
                    raise
                await self._backoff(operation, key, attempt, exc, since)
                attempt += 1

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        inner, small = self.inner, self.buffer_below

        async def attempt() -> Download:
            dl = await inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
            if dl.content_length < small and in_memory(dl) is None:
                return rewrap(dl, await dl.read())  # a break restarts the whole read: one version, always
            return dl

        dl = await self._around("open", key, attempt)
        if not self._resumable or in_memory(dl) is not None:
            return dl
        stream = _Resumed(self, key, dl)
        return rewrap(dl, stream.chunks(), stream.aclose)

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
        source = _Replay(body)
        return await self._around(
            "put",
            key,
            lambda: self.inner.put_object(
                key,
                source.body(),
                content_type=content_type,
                metadata=metadata,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            ),
            source.replayable,
        )

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for info in self._resume_listing(
            prefix, start_after, lambda after: self.inner.iter_objects(prefix, start_after=after)
        ):
            yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for info in self._resume_listing(
            prefix, start_after, lambda after: self.inner.iter_keys(prefix, start_after=after)
        ):
            yield info

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """The inner store's folder listing; after a transient error it resumes past the last
        entry (object key or folder prefix) it yielded."""
        async for entry in self._resume_listing(
            prefix,
            start_after,
            lambda after: self.inner.iter_entries(prefix, delimiter=delimiter, start_after=after),
        ):
            yield entry

    async def _resume_listing(
        self, prefix: str, after: str | None, listing: Callable[[str | None], AsyncIterator[Any]]
    ) -> AsyncIterator[Any]:
        since, attempt = self._clock(), 1
        while True:
            try:
                async for item in listing(after):
                    yield item
                    after = item if isinstance(item, str) else _cursor(item)
                    attempt = 1
                return
            except TransientError as exc:
                await self._backoff("list", prefix, attempt, exc, since)
                attempt += 1


def _cursor(item: ObjectInfo | CommonPrefix) -> str:
    return item.prefix if isinstance(item, CommonPrefix) else item.key


class _Replay:
    """A write body and whether another attempt can send it again from its start."""

    __slots__ = ("_body", "_pos", "_started", "_tracked")

    def __init__(self, body: Body) -> None:
        self._body = body
        self._pos: int | None = None
        self._tracked = False
        self._started = False
        if isinstance(body, bytes | bytearray | memoryview | os.PathLike):
            return
        seek = getattr(body, "seek", None)
        seekable = getattr(body, "seekable", None)
        if seek is not None and seekable is not None and not inspect.iscoroutinefunction(seek):
            try:
                if seekable():
                    self._pos = body.tell()  # type: ignore[union-attr]
                    return
            except (OSError, ValueError):
                pass
        self._tracked = True

    def body(self) -> Body:
        if self._pos is not None:
            f: IO[bytes] = self._body  # type: ignore[assignment]
            f.seek(self._pos)
        if self._tracked:
            return _Tracked(self)
        return self._body

    def replayable(self) -> bool:
        return not self._started

    def source(self) -> AsyncIterator[bytes]:
        self._started = True
        body = self._body
        if isinstance(body, AsyncIterable):
            return aiter(body)
        return iter_body(body)


class _Tracked:
    """An async iterable over a one-shot body that records whether reading started."""

    __slots__ = ("_it", "_replay")

    def __init__(self, replay: _Replay) -> None:
        self._replay = replay
        self._it: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self

    async def __anext__(self) -> bytes:
        if self._it is None:
            self._it = self._replay.source()
        return await self._it.__anext__()


class _Resumed:
    """The chunks of a download that reopens from the next byte when its stream breaks."""

    __slots__ = ("current", "dl", "key", "retry")

    def __init__(self, retry: Retry, key: str, dl: Download) -> None:
        self.retry, self.key, self.dl = retry, key, dl
        self.current: Download | None = dl

    async def chunks(self) -> AsyncIterator[bytes]:
        retry, pos, end, etag = self.retry, self.dl.start, self.dl.end, self.dl.info.etag
        attempt, since = 1, 0.0
        while pos < end:
            try:
                if self.current is None:
                    rng = ByteRange(pos, end)
                    try:
                        self.current = await retry.inner.open(self.key, range=rng, if_match=etag)
                    except (PreconditionFailedError, InvalidRangeError) as exc:
                        # Final, never retried: resending the if_match request cannot succeed.
                        raise PreconditionFailedError(
                            "the object changed during the read; not resuming (it would splice two versions)",
                            key=self.key,
                            backend=retry.name,
                            operation="open",
                        ) from exc
                data = in_memory(self.current)
                if data is not None:
                    pos += len(data)
                    self.current = None
                    if data:
                        yield data
                    continue
                async for chunk in self.current:
                    pos += len(chunk)
                    attempt = 1
                    yield chunk
                await self.aclose()
                return
            except TransientError as exc:
                await self.aclose()
                if pos >= end:
                    return
                if attempt == 1:
                    since = retry._clock()  # the budget restarts after progress
                await retry._backoff("open", self.key, attempt, exc, since)
                attempt += 1

    async def aclose(self) -> None:
        current, self.current = self.current, None
        if current is not None:
            await current.aclose()
