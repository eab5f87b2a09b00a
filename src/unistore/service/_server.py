"""Serving with uvicorn: a deadline for request headers, which uvicorn itself does not have.

uvicorn's ``timeout_keep_alive`` is cancelled by the first byte of the next
request, and a new connection has no timer at all, so a client that sends half
its headers (or one byte every few seconds: slow loris) holds a connection
forever. :func:`http_protocol` adds one timer per connection: the headers of a
request must be complete within ``header_timeout`` seconds of the connection
opening or of the previous response ending, else the connection is closed.
The same timer bounds how long the rest of a body the app did not read (an
early 401 or 413) is drained after the response. Stalled bodies the app is
reading are :class:`~unistore._request_limits.BodyTimeouts`' job (408).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Host
else:
    _Host = asyncio.Protocol

__all__ = ["http_protocol"]

LOGGER = logging.getLogger("unistore.service")


class _HeaderDeadline(_Host):
    """Mixed into uvicorn's h11 or httptools protocol: one timer for "waiting for the next request"."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _serving(self) -> bool:
        cycle: Any = self.cycle
        return cycle is not None and not cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._serving() or self.transport.is_closing():
            return
        LOGGER.info("%s closed: no complete request headers within %.3g s", self.client, self.header_timeout)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a new request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._serving():  # no pipelined request started: wait for the next one's headers
            self._arm()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm()  # the connection now belongs to the websocket protocol
        super().handle_websocket_upgrade(*args)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as uvicorn's ``auto``)
    with a ``header_timeout``-second deadline for request headers: pass it as ``http=``."""
    if header_timeout <= 0:
        raise ValueError("header_timeout must be > 0")
    base: type[asyncio.Protocol]
    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    return type(f"HeaderDeadline{base.__name__}", (_HeaderDeadline, base), {"header_timeout": header_timeout})
