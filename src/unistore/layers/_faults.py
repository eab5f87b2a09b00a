"""Fault injection: seeded, reproducible errors, latency and mid-stream cuts, for chaos tests."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .._base import StorageBackend, settings_from
from .._errors import ConfigurationError, RateLimitedError, TransientError, UnavailableError
from .._types import Body, CommonPrefix, Download, ObjectInfo, Range, WriteMode
from ._layer import Layer, in_memory, rewrap

__all__ = ["FaultSettings", "Faults"]

OPERATIONS = ("head", "open", "put", "remove", "list", "sign_url", "copy", "ping")


@dataclass(frozen=True, slots=True)
class FaultSettings:
    """What :class:`Faults` injects. Rates are probabilities in ``[0, 1]``.

    ``error_rate`` is one rate for every operation or a mapping from operation
    name (``head``, ``open``, ``put``, ``remove``, ``list``, ``sign_url``,
    ``copy``, ``ping``) to a rate. ``rate_limited_share`` of the injected errors
    are :class:`RateLimitedError` (with ``retry_after``), the rest
    :class:`UnavailableError`. ``after_effect_rate`` is the share of injected
    *write* errors raised after the write took effect (the ambiguous failure
    a lost response causes); by default every error precedes the effect.
    ``cut_rate`` is the probability that a download's stream breaks with
    :class:`UnavailableError` after ``cut_after`` bytes (a random point if
    ``None``). ``latency`` seconds are added with probability ``latency_rate``.
    """

    seed: int = 0
    error_rate: float | Mapping[str, float] = 0.0
    rate_limited_share: float = 0.25
    retry_after: float = 0.01
    after_effect_rate: float = 0.0
    cut_rate: float = 0.0
    cut_after: int | None = None
    latency: float = 0.0
    latency_rate: float = 0.0
    rates: Mapping[str, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.error_rate, Mapping):
            unknown = set(self.error_rate) - set(OPERATIONS)
            if unknown:
                raise ConfigurationError(f"unknown operations in error_rate: {sorted(unknown)}")
            rates = {op: float(self.error_rate.get(op, 0.0)) for op in OPERATIONS}
        else:
            rates = dict.fromkeys(OPERATIONS, float(self.error_rate))
        probs = [*rates.values(), self.rate_limited_share, self.after_effect_rate, self.cut_rate, self.latency_rate]
        if any(not 0.0 <= p <= 1.0 for p in probs):
            raise ConfigurationError("fault rates must be within [0, 1]")
        if self.latency < 0 or self.retry_after < 0 or (self.cut_after is not None and self.cut_after < 0):
            raise ConfigurationError("latency, retry_after and cut_after must be >= 0")
        object.__setattr__(self, "rates", rates)


class Faults(Layer):
    """Injects transient failures into the store below, reproducibly (one seeded RNG).

    Where it belongs: innermost, directly over the real store, under Retry, so
    it stands in for the network. Errors come before the inner call by default,
    so a failed write had no effect; ``after_effect_rate`` makes some write
    failures happen after the write, to test what Idempotency and conditional
    writes must absorb. ``counts`` records injected faults per kind.
    """

    def __init__(
        self,
        inner: StorageBackend,
        settings: FaultSettings | None = None,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        **options: Any,
    ) -> None:
        super().__init__(inner)
        self.settings = settings_from(FaultSettings, settings, options)
        self._rng = random.Random(self.settings.seed)
        self._sleep = sleep
        self.enabled = True
        self.counts: dict[str, int] = {"error": 0, "after_effect": 0, "cut": 0, "latency": 0}

    def _error(self, operation: str, key: str | None) -> TransientError:
        s = self.settings
        self.counts["error"] += 1
        if self._rng.random() < s.rate_limited_share:
            return RateLimitedError(
                "injected fault: throttled", retry_after=s.retry_after, key=key, backend=self.name, operation=operation
            )
        return UnavailableError("injected fault: unavailable", key=key, backend=self.name, operation=operation)

    async def _before(self, operation: str, key: str | None) -> bool:
        """Maybe sleep, maybe raise before the call; ``True`` if a write should fail after its effect."""
        if not self.enabled:
            return False
        s, rng = self.settings, self._rng
        if s.latency_rate and rng.random() < s.latency_rate:
            self.counts["latency"] += 1
            await self._sleep(s.latency)
        rate = s.rates[operation]
        if rate and rng.random() < rate:
            if operation in ("put", "copy", "remove") and s.after_effect_rate and rng.random() < s.after_effect_rate:
                return True
            raise self._error(operation, key)
        return False

    def _after(self, operation: str, key: str) -> TransientError:
        self.counts["after_effect"] += 1
        err = self._error(operation, key)
        err.message += " (after the write took effect)"
        return err

    async def head(self, key: str) -> ObjectInfo:
        await self._before("head", key)
        return await self.inner.head(key)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        await self._before("open", key)
        dl = await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        s = self.settings
        if not (self.enabled and s.cut_rate and dl.content_length > 0 and self._rng.random() < s.cut_rate):
            return dl
        self.counts["cut"] += 1
        at = s.cut_after if s.cut_after is not None else self._rng.randrange(dl.content_length)
        return rewrap(dl, self._cut(dl, key, at), dl.aclose)

    async def _cut(self, dl: Download, key: str, at: int) -> AsyncIterator[bytes]:
        data = in_memory(dl)
        source: AsyncIterator[bytes] = _once(data) if data is not None else aiter(dl)
        sent = 0
        async for chunk in source:
            if sent + len(chunk) > at:
                if at > sent:
                    yield chunk[: at - sent]
                raise UnavailableError(f"injected fault: stream cut after {at} bytes", key=key, backend=self.name)
            sent += len(chunk)
            yield chunk

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
        fail_after = await self._before("put", key)
        info = await self.inner.put_object(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        if fail_after:
            raise self._after("put", key)
        return info

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        fail_after = await self._before("remove", key)
        existed = await self.inner.remove(key, if_match=if_match)
        if fail_after:
            raise self._after("remove", key)
        return existed

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        await self._before("list", None)
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        await self._before("list", None)
        async for key in self.inner.iter_keys(prefix, start_after=start_after):
            yield key

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        await self._before("list", None)
        async for entry in self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after):
            yield entry

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        await self._before("sign_url", key)
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        fail_after = await self._before("copy", dst)
        info = await self.inner.copy(src, dst, mode=mode)
        if fail_after:
            raise self._after("copy", dst)
        return info

    async def ping(self) -> None:
        await self._before("ping", None)
        await self.inner.ping()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data
