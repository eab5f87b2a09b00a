"""Back-pressure at the HTTP edge: token buckets per client and for the whole service (429 + Retry-After).

A client is the verified token (its id, so re-spelling the ``Authorization``
header gives no new budget), or the client address for a request without a
valid token and when auth is off. Requests without a valid token spend only
their address's budget, never the service's, so they cannot starve clients
that have one.

:class:`Buckets` are held in memory and bounded (the least recently used client
is forgotten past ``max_clients``): a per-replica budget. With Redis
(``UNISTORE_REDIS_URL``) every replica spends from the same buckets instead
(:class:`~._redis.RedisBuckets`).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import RateLimitedError
from ._auth import Grant
from ._ops import error_response

__all__ = ["Buckets", "GRANT_STATE", "LimitMiddleware", "Limiter"]

GRANT_STATE = "unistore_grant"
"""The ``request.state`` attribute holding the grant the middleware verified."""


class Limiter(Protocol):
    """Spends one token of a client's bucket."""

    async def take(self, client: str) -> float | None:
        """``None`` if admitted, else the seconds until a token is available."""


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

    def spend(self, client: str) -> float | None:
        """Spend one token of ``client``: ``None`` if there was one, else the seconds until the next."""
        now = self._clock()
        tokens, stamp = self._state.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - stamp) * self.rate)
        if tokens < 1.0:
            self._state[client] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._state[client] = (tokens - 1.0, now)
        if len(self._state) > self.max_clients:
            self._state.popitem(last=False)
        return None

    async def take(self, client: str) -> float | None:
        return self.spend(client)


Identify = Callable[[Request], tuple[str, Grant | None, bool]]
"""A request's rate-limit identity, its verified grant (if any) and whether it spends the service budget."""


class LimitMiddleware:
    """Rate-limits every ``/v1/`` request before routing, so before any body is read (429 + Retry-After).

    The grant verified here is left in ``request.state`` for the route, which
    still answers 401 for a missing or bad token and 403 outside its scope.
    """

    def __init__(
        self, app: ASGIApp, *, identify: Identify, per_client: Limiter | None, overall: Limiter | None
    ) -> None:
        self.app = app
        self.identify = identify
        self.per_client = per_client
        self.overall = overall

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        client, grant, counted = self.identify(request)
        wait = what = None
        if self.per_client is not None:
            wait, what = await self.per_client.take(client), "per-client rate limit reached"
        if wait is None and counted and self.overall is not None:
            wait, what = await self.overall.take("*"), "service rate limit reached"
        if wait is not None:
            await error_response(RateLimitedError(what or "", retry_after=wait))(scope, receive, send)
            return
        if grant is not None:
            setattr(request.state, GRANT_STATE, grant)
        await self.app(scope, receive, send)
