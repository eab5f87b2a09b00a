"""Back-pressure: a concurrency limit held for a download's whole life, and a token-bucket rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from .._base import StorageBackend, signing_for_put
from .._errors import ConfigurationError, RateLimitedError
from .._types import CommonPrefix, Download, ObjectInfo, Range
from ._layer import Layer, in_memory, rewrap

__all__ = ["RateLimit"]

T = TypeVar("T")


class RateLimit(Layer):
    """Bounds the requests in flight (``max_concurrency``) and their rate (``rate`` per second, ``burst``).

    Where it belongs: under Observe (so time spent queueing is measured) and
    above Cache and Retry, so a retried request keeps the one permit it holds
    instead of queueing again. Put it below Cache to throttle only the requests
    that reach the store.

    A streamed download holds its permit until it is exhausted, fails or is
    closed (an in-memory one releases it at once). A listing holds it until its
    first item, and takes one token per page of :attr:`LIST_PAGE` entries. When
    saturated, ``wait=True`` queues; ``wait=False`` raises
    :class:`RateLimitedError` at once with ``retry_after``: the time until the
    next token, or ``busy_retry_after`` when every permit is taken.
    """

    LIST_PAGE = 1000
    """Entries per listing page (S3's and GCS's page): a listing takes a token per page."""

    def __init__(
        self,
        inner: StorageBackend,
        *,
        max_concurrency: int | None = None,
        rate: float | None = None,
        burst: int | None = None,
        wait: bool = True,
        busy_retry_after: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        super().__init__(inner)
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be >= 1")
        if rate is not None and rate <= 0:
            raise ConfigurationError("rate must be > 0")
        if burst is not None and burst < 1:
            raise ConfigurationError("burst must be >= 1")
        self.max_concurrency = max_concurrency
        self.rate = rate
        self.burst = burst if burst is not None else max(1, int(rate or 1))
        self.wait = wait
        self.busy_retry_after = busy_retry_after
        self._sem = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._tokens = float(self.burst)
        self._stamp = clock()
        self._clock = clock
        self._sleep = sleep

    @property
    def in_flight(self) -> int:
        """Permits currently held."""
        if self.max_concurrency is None or self._sem is None:
            return 0
        return self.max_concurrency - self._sem._value  # asyncio keeps the count private

    async def _take_token(self, operation: str, key: str | None) -> None:
        rate = self.rate
        if rate is None:
            return
        while True:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._stamp) * rate)
            self._stamp = now
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return
            wait = (1.0 - self._tokens) / rate
            if not self.wait:
                raise RateLimitedError(
                    "request rate limit reached", retry_after=wait, key=key, backend=self.name, operation=operation
                )
            await self._sleep(wait)

    async def _acquire(self, operation: str, key: str | None) -> bool:
        """Take a token and a permit; ``True`` if a permit is held."""
        await self._take_token(operation, key)
        sem = self._sem
        if sem is None:
            return False
        if not self.wait and sem.locked():
            raise RateLimitedError(
                "concurrency limit reached",
                retry_after=self.busy_retry_after,
                key=key,
                backend=self.name,
                operation=operation,
            )
        await sem.acquire()
        return True

    def _release(self, held: bool) -> None:
        if held and self._sem is not None:
            self._sem.release()

    async def _around(self, operation: str, key: str | None, call: Callable[[], Awaitable[T]]) -> T:
        held = await self._acquire(operation, key)
        try:
            return await call()
        finally:
            self._release(held)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        held = await self._acquire("open", key)
        try:
            dl = await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        except BaseException:
            self._release(held)
            raise
        if not held or in_memory(dl) is not None:
            self._release(held)
            return dl
        permit = _Permit(self)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in dl:
                    yield chunk
            finally:
                permit.release()

        async def close() -> None:
            try:
                await dl.aclose()
            finally:
                permit.release()

        return rewrap(dl, chunks(), close)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for info in self._listing(self.inner.iter_objects(prefix, start_after=start_after)):
            yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for key in self._listing(self.inner.iter_keys(prefix, start_after=start_after)):
            yield key

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        return self._listing(self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after))

    async def _listing(self, items: AsyncIterator[T]) -> AsyncIterator[T]:
        held = await self._acquire("list", None)
        try:
            first = await anext(items, None)
        finally:
            self._release(held)
        if first is None:
            return
        yield first
        count = 1
        async for item in items:
            if count % self.LIST_PAGE == 0:  # the first item of the next page
                await self._take_token("list", None)
            count += 1
            yield item

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        # Signing is local computation for most stores; it takes a token but no permit, and none
        # when it makes the URL a put returns (the write already took the operation's token).
        if not signing_for_put():
            await self._take_token("sign_url", key)
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)


class _Permit:
    """A concurrency permit released exactly once."""

    __slots__ = ("_limit",)

    def __init__(self, limit: RateLimit) -> None:
        self._limit: RateLimit | None = limit

    def release(self) -> None:
        limit, self._limit = self._limit, None
        if limit is not None:
            limit._release(True)
