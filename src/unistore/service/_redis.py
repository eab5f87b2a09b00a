"""Limits that hold across replicas: token buckets and hot-key counts kept in Redis (``UNISTORE_REDIS_URL``).

Every change is one Lua script, so it is atomic however many replicas run it at
once, and bucket time is Redis's own clock (``TIME``), so replicas' clocks do
not matter. Needs PyPI ``redis`` (``pip install 'unistore[redis]'``), imported
when the first script runs.

When Redis cannot be reached (a refused connection, or no answer within
``timeout``), each replica falls back to its own in-process state: buckets and
hot-key counts per replica, as without Redis. So an outage neither stops the
service (fail closed) nor lifts the limits (fail open); a service of N replicas
admits up to N times the limit until Redis is back. A failure is logged and
Redis is tried again after ``cooldown`` seconds, so an outage adds no
per-request delay.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .._errors import ConfigurationError
from ..layers import HotKeys
from ._limits import Buckets

__all__ = ["RedisBuckets", "RedisHotKeys", "RedisLink"]

LOGGER = logging.getLogger("unistore.service")

_BUCKET = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'stamp')
local tokens, stamp = tonumber(state[1]), tonumber(state[2])
if tokens == nil or stamp == nil then tokens, stamp = burst, now end
tokens = math.min(burst, tokens + math.max(0, now - stamp) * rate)
local admitted = 0
if tokens >= 1 then tokens = tokens - 1; admitted = 1 end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'stamp', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {admitted, tostring((1 - tokens) / rate)}
"""
"""KEYS[1] = the bucket; ARGV = rate, burst. Returns {1, _} if admitted, else {0, seconds to wait}."""

_HOT = """
local ttl, cap, n = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
if #ARGV > 3 then
  for i = 4, #ARGV, 2 do redis.call('ZINCRBY', KEYS[2], ARGV[i + 1], ARGV[i]) end
  local extra = redis.call('ZCARD', KEYS[2]) - cap
  if extra > 0 then redis.call('ZREMRANGEBYRANK', KEYS[2], 0, extra - 1) end
  redis.call('PEXPIRE', KEYS[2], ttl)
end
if n <= 0 then return {} end
redis.call('ZUNIONSTORE', KEYS[1], #KEYS - 1, unpack(KEYS, 2))
local top = redis.call('ZREVRANGE', KEYS[1], 0, n - 1, 'WITHSCORES')
redis.call('DEL', KEYS[1])
return top
"""
"""KEYS[1] = scratch key, KEYS[2] = the current slice, KEYS[3..] = the window's older slices;
ARGV = slice TTL (ms), slice cap, N, then key, count pairs to add. Returns the top N over the window."""


class RedisLink:
    """One ``redis.asyncio`` client shared by the service's buckets and hot-key counts, with a cooldown.

    :meth:`run` answers ``None`` while Redis is unavailable, and callers fall back to local state.
    """

    def __init__(self, url: str, *, prefix: str = "unistore", timeout: float = 0.5, cooldown: float = 5.0) -> None:
        self.url = url
        self.prefix = prefix
        self.timeout = timeout
        self.cooldown = cooldown
        self.failures = 0
        try:
            import redis.asyncio  # noqa: F401  (checked now, so a missing extra stops the service at startup)
        except ImportError as exc:
            raise ConfigurationError("UNISTORE_REDIS_URL needs redis: pip install 'unistore[redis]'") from exc
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        self._down_until = 0.0

    def __repr__(self) -> str:
        return f"RedisLink(prefix={self.prefix!r}, url=<redacted>)"

    def _script(self, source: str) -> Any:
        script = self._scripts.get(source)
        if script is None:
            if self._client is None:
                import redis.asyncio

                self._client = redis.asyncio.Redis.from_url(
                    self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
                )
            script = self._scripts[source] = self._client.register_script(source)
        return script

    @property
    def available(self) -> bool:
        """Whether Redis is tried (``False`` during the cooldown after a failure)."""
        return time.monotonic() >= self._down_until

    async def run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """The result of the Lua script ``source``, or ``None`` if Redis is unavailable."""
        if not self.available:
            return None
        script = self._script(source)
        from redis.exceptions import RedisError

        try:
            return await script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self.failures += 1
            self._down_until = time.monotonic() + self.cooldown
            LOGGER.warning(
                "Redis unavailable (%s); limits and hot keys are per replica for the next %.0fs",
                type(exc).__name__,
                self.cooldown,
            )
            return None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None
            self._scripts.clear()


class RedisBuckets:
    """Token buckets shared by every replica through ``link``; ``local`` while Redis is unavailable."""

    def __init__(self, link: RedisLink, name: str, local: Buckets) -> None:
        self.link = link
        self.name = name
        self.local = local

    async def take(self, client: str) -> float | None:
        """``None`` if admitted, else the seconds until a token is available."""
        key = f"{self.link.prefix}:bucket:{self.name}:{client}"
        result = await self.link.run(_BUCKET, [key], [repr(self.local.rate), repr(self.local.burst)])
        if result is None:
            return self.local.spend(client)
        admitted, wait = result
        return None if int(admitted) else float(wait)


class RedisHotKeys(HotKeys):
    """Hot-key counts summed over every replica in Redis, synced every second or so by :meth:`sync`.

    Counting stays local and synchronous (:meth:`hit` costs no round trip);
    :meth:`sync` adds this replica's counts since the last sync to the current
    window slice in Redis and reads the global top. :meth:`top` answers that
    global top (or this replica's own while Redis is unavailable). Each slice
    keeps at most ``redis_cap`` keys, dropping the least requested, so memory stays
    bounded. The ``hot_threshold`` warning of :class:`~unistore.layers.Observe`
    still counts this replica's requests only.
    """

    def __init__(
        self,
        link: RedisLink,
        name: str,
        *,
        window: float = 60.0,
        buckets: int = 6,
        max_keys: int = 10_000,
        redis_cap: int = 1000,
        top_n: int = 10,
    ) -> None:
        super().__init__(window, buckets, max_keys)
        self.link = link
        self.name = name
        self.redis_cap = redis_cap
        self.top_n = top_n
        self._buckets = buckets
        self._pending: dict[str, int] = {}
        self._global: list[tuple[str, int]] | None = None
        self._synced = -1.0

    def hit(self, key: str, now: float) -> int:
        pending = self._pending
        if key in pending or len(pending) < self.max_keys:
            pending[key] = pending.get(key, 0) + 1
        return super().hit(key, now)

    def top(self, n: int, now: float | None = None) -> list[tuple[str, int]]:
        local = super().top(n, now)
        if self._global is None or not self.link.available:
            return local
        return self._global[:n]

    async def sync(self, *, max_age: float = 0.0) -> None:
        """Add the counts since the last sync to Redis and fetch the global top (keeps local on failure).

        Does nothing if the last sync is less than ``max_age`` seconds old.
        """
        now = time.monotonic()
        if now - self._synced < max_age:
            return
        self._synced = now
        batch, self._pending = self._pending, {}
        index = int(time.time() // self.width)
        base = f"{self.link.prefix}:hot:{self.name}"
        keys = [f"{base}:scratch", *(f"{base}:{index - i}" for i in range(self._buckets))]
        args: list[Any] = [int(self.window * 1000) + 1000, self.redis_cap, self.top_n]
        for key, count in batch.items():
            args += [key, count]
        result = await self.link.run(_HOT, keys, args)
        if result is None:
            self._global = None
            return
        pairs = zip(result[::2], result[1::2], strict=True)
        self._global = [(k.decode("utf-8", "surrogateescape"), int(float(v))) for k, v in pairs]
