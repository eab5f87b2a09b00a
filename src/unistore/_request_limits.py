"""Bounded request bodies for ASGI apps: a size-capped read and idle/total body timeouts.

Used by the storage service and offered to FastAPI apps (``unistore.fastapi.BodyTimeouts``).
A body is never read past its bound: a declared ``Content-Length`` over the limit is
refused before a byte is read, a chunked body as soon as the count passes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Generator
from typing import Any, cast

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._errors import InvalidArgumentError, QuotaExceededError, StorageError

__all__ = ["BodyTimeouts", "RequestTimeoutError", "declared_length", "read_limited", "replay"]


class RequestTimeoutError(StorageError):
    """The client stopped sending the request body (408, RFC 9110 §15.5.9); the connection is closed."""

    status = 408


def declared_length(request: Request) -> int | None:
    """The request's ``Content-Length`` as a number (``None`` when absent or not a number)."""
    value = request.headers.get("content-length")
    return int(value) if value is not None and value.strip().isdigit() else None


async def read_limited(request: Request, limit: int, *, key: str | None = None) -> bytes:
    """The whole body, at most ``limit`` bytes: 413 from ``Content-Length`` before reading,
    else as soon as more than ``limit`` bytes have arrived (chunked bodies)."""
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise QuotaExceededError(f"request body is larger than {limit} bytes", key=key)
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise QuotaExceededError(f"request body is larger than {limit} bytes", key=key)
            chunks.append(chunk)
    except ClientDisconnect:
        raise InvalidArgumentError("the client disconnected before the body ended", key=key) from None
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives ``body`` as the whole request body, then defers to ``receive``."""
    pending = True

    async def again() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


def _ready(awaitable: Awaitable[Message]) -> tuple[bool, Any]:
    """Run ``receive()``'s coroutine up to its first wait: ``(True, message)`` when it finished
    without one (the body was already there, the common case), else ``(False, rest)``, an awaitable
    that goes on from there. A message at hand thus costs no timer."""
    if not isinstance(awaitable, Coroutine):
        return False, awaitable
    try:
        first = awaitable.send(None)
    except StopIteration as done:
        return True, done.value
    return False, _Rest(awaitable, first)


class _Rest:
    """The rest of a coroutine that has yielded ``first`` to the event loop (see :func:`_ready`)."""

    __slots__ = ("coro", "first")

    def __init__(self, coro: Coroutine[Any, Any, Message], first: Any) -> None:
        self.coro, self.first = coro, first

    def __await__(self) -> Generator[Any, Any, Message]:
        coro, value = self.coro, self.first
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation (the timeout): into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as done:
                    return cast(Message, done.value)
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as done:
                    return cast(Message, done.value)


class BodyTimeouts:
    """ASGI middleware: a request body that stalls gets 408 instead of holding the connection.

    While the app waits for body bytes (and has not started its response), each
    wait for the next chunk is bounded by ``idle`` seconds and the whole body by
    ``total`` seconds from the request's start (``None``: no total). Past either,
    ``receive()`` raises :class:`RequestTimeoutError`, which the app's error
    handler answers with 408, and that response closes the connection. Waits for
    a disconnect after the body has ended are never bounded.
    """

    def __init__(self, app: ASGIApp, *, idle: float = 30.0, total: float | None = None) -> None:
        if idle <= 0 or (total is not None and total <= 0):
            raise ValueError("body timeouts must be > 0")
        self.app = app
        self.idle = idle
        self.total = total

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        deadline = None if self.total is None else loop.time() + self.total
        ended = started = expired = False

        async def timed_receive() -> Message:
            nonlocal ended, expired
            if ended or started:
                return await receive()
            if expired:
                raise RequestTimeoutError("the request body stalled", operation="receive")
            ready, got = _ready(receive())
            message: Message = got
            if not ready:  # the server has no message yet: wait for it, bounded
                wait = self.idle if deadline is None else min(self.idle, deadline - loop.time())
                try:
                    async with asyncio.timeout(max(wait, 0.0)):
                        message = await got
                except TimeoutError:
                    expired = True
                    what = "no body bytes" if wait == self.idle else "the body did not end"
                    raise RequestTimeoutError(f"{what} within {wait:.3g} s", operation="receive") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                ended = True
            return message

        async def closing_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if expired:  # the rest of the body will never come: do not wait for it
                    MutableHeaders(scope=message)["Connection"] = "close"
            await send(message)

        await self.app(scope, timed_receive, closing_send)
