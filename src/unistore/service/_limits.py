"""Back-pressure at the HTTP edge: token buckets per client and for the whole service (429 + Retry-After).

Per-client buckets are held in memory and bounded (the least recently used
client is forgotten past ``max_clients``); a rate limit is a per-replica
budget, the one piece of state a replica may keep because losing it is safe.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .._errors import RateLimitedError

__all__ = ["Buckets"]


class Buckets:
    """``rate`` requests per second with bursts of ``burst``, for each of up to ``max_clients`` clients."""

    def __init__(
        self,
        rate: float,
        burst: int | None = None,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, int(rate)))
        self.max_clients = max_clients
        self._clock = clock
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, client: str, *, what: str = "rate limit") -> None:
        """Spend one token of ``client``; :class:`RateLimitedError` with ``retry_after`` if none is left."""
        now = self._clock()
        tokens, stamp = self._state.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._state[client] = (tokens, now)
            raise RateLimitedError(f"{what} reached", retry_after=(1.0 - tokens) / self.rate)
        self._state[client] = (tokens - 1.0, now)
        if len(self._state) > self.max_clients:
            self._state.popitem(last=False)
