"""Completion hooks: Python callables, and webhooks that POST each event as signed JSON.

A webhook is delivered in the background (completing an upload never waits on a
slow receiver), retried with exponential backoff on a network error or a 5xx/429
answer, and signed so the receiver can tell it came from this service::

    X-Unistore-Event: upload.completed
    X-Unistore-Delivery: <unique id; the same on every retry of one event>
    X-Unistore-Signature: t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>">

:func:`verify_signature` is the receiver's check. Delivery is at least once
while the process lives; :meth:`Webhook.aclose` (run at the app's shutdown)
waits for deliveries still in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from .._errors import ConfigurationError

__all__ = ["Hook", "Webhook", "sign_payload", "verify_signature"]

LOGGER = logging.getLogger("unistore.service")

Hook = Callable[[dict[str, Any]], Awaitable[None] | None]
"""A completion hook: called with ``{"event": "upload.completed", "upload_id", "key", "size", "etag"}``."""


def sign_payload(secret: bytes, body: bytes, timestamp: int) -> str:
    """The ``X-Unistore-Signature`` value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify_signature(secret: bytes, body: bytes, header: str, *, tolerance: float = 300.0) -> bool:
    """Whether ``header`` signs ``body`` with ``secret`` within ``tolerance`` seconds of now."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    return hmac.compare_digest(sign_payload(secret, body, timestamp), f"t={timestamp},v1={fields.get('v1', '')}")


class Webhook:
    """A hook that POSTs each event to ``url`` (``http``/``https``), signed with ``secret``.

    ``attempts`` bounds the tries per event (backoff ``base_delay`` doubling, full
    jitter, capped at 30 s); ``timeout`` bounds each try, from connecting to the
    response's status line (the response body is never read).
    """

    def __init__(
        self,
        url: str,
        *,
        secret: bytes | None = None,
        attempts: int = 5,
        base_delay: float = 0.5,
        timeout: float = 10.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(f"webhook URL must be http(s): {url!r}")
        if attempts < 1:
            raise ConfigurationError("webhook attempts must be >= 1")
        self.url = url
        self.secret = secret
        self.attempts = attempts
        self.base_delay = base_delay
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0
        self._client: Any = None
        self._pending: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"Webhook({self.url!r})"

    def __call__(self, event: Mapping[str, Any]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(dict(event)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, event: dict[str, Any]) -> None:
        import httpx

        if self._client is None:
            from ..backends._httpclient import pooled_client

            self._client = pooled_client(self.timeout, 8)
        body = json.dumps(event, separators=(",", ":")).encode()
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "unistore-webhook/1",
            "X-Unistore-Event": str(event.get("event", "")),
            "X-Unistore-Delivery": secrets.token_hex(12),
        }
        for attempt in range(1, self.attempts + 1):
            if self.secret:
                headers["X-Unistore-Signature"] = sign_payload(self.secret, body, int(time.time()))
            try:
                # The whole try is bounded and the receiver's body is never read: a receiver
                # answering slowly or endlessly cannot hold a delivery or fill memory.
                async with (
                    asyncio.timeout(self.timeout),
                    self._client.stream("POST", self.url, content=body, headers=headers) as r,
                ):
                    status = r.status_code
                if status < 300:
                    self.delivered += 1
                    return
                if status < 500 and status != 429:
                    break  # the receiver refused this event: a retry would be refused too
                reason = f"HTTP {status}"
            except (httpx.HTTPError, TimeoutError) as exc:
                reason = type(exc).__name__
            if attempt < self.attempts:
                await asyncio.sleep(random.uniform(0, min(30.0, self.base_delay * 2 ** (attempt - 1))))
        else:
            LOGGER.warning("webhook %s: %s undelivered after %d attempts (%s)", self.url, event, self.attempts, reason)
            self.failed += 1
            return
        LOGGER.warning("webhook %s refused %s: HTTP %d", self.url, event, status)
        self.failed += 1

    async def drain(self) -> None:
        """Wait until every delivery started so far has ended."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def aclose(self) -> None:
        """Wait up to ``timeout`` seconds for deliveries in flight, cancel the rest, close the client."""
        if self._pending:
            _, late = await asyncio.wait(list(self._pending), timeout=self.timeout)
            for task in late:
                task.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None
