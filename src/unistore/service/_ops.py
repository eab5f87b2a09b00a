"""Operations: request ids, access logs, HTTP metrics and the one error format of the service.

Every response carries ``X-Request-Id`` (the client's, when it sent a sane
one, else a new one) and every log line emitted while serving the request has
it too (:class:`RequestIdFilter`). Every error is JSON
``{"error": {"type", "message", "key"}}`` with the error's HTTP status; bad
input is a 4xx, never a 5xx.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Coroutine, Generator
from contextvars import ContextVar
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._errors import InvalidRangeError, NotModifiedError, StorageError, TransientError
from ..fastapi import error_body
from ..layers._observe import tag_request
from ._auth import UnauthorizedError

__all__ = [
    "InContext",
    "RequestIdFilter",
    "RequestIdMiddleware",
    "access_record",
    "current_request_id",
    "error_response",
    "install_error_handlers",
    "new_request_id",
    "storage_error_answer",
]

LOGGER = logging.getLogger("unistore.service")
_REQUEST_ID: ContextVar[str] = ContextVar("unistore_service_request_id", default="-")
_SANE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
_METHODS = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH"})

_HTTP_TYPES = {
    400: "InvalidArgumentError",
    401: "UnauthorizedError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    413: "QuotaExceededError",
}


def current_request_id() -> str:
    """The id of the request being served (``"-"`` outside one)."""
    return _REQUEST_ID.get()


class RequestIdFilter(logging.Filter):
    """Adds ``record.request_id`` (the current request's id) to every log record."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True


def _body(kind: str, message: str, key: str | None) -> dict[str, Any]:
    return error_body(kind, message, key)


def error_response(exc: StorageError) -> Response:
    """The service's response for a storage error: its status, JSON body and helpful headers."""
    headers: dict[str, str] = {}
    if isinstance(exc, NotModifiedError):
        if exc.etag:
            headers["ETag"] = f'"{exc.etag}"'
        return Response(status_code=304, headers=headers)
    if isinstance(exc, TransientError):
        retry_after = exc.retry_after if exc.retry_after is not None else 1.0
        headers["Retry-After"] = str(max(1, round(retry_after + 0.49)))
    if isinstance(exc, InvalidRangeError) and exc.size is not None:
        headers["Content-Range"] = f"bytes */{exc.size}"
    if isinstance(exc, UnauthorizedError):
        headers["WWW-Authenticate"] = 'Bearer realm="unistore"'
    status = exc.status if 300 <= exc.status < 600 else 500
    return JSONResponse(_body(type(exc).__name__, exc.message or type(exc).__name__, exc.key), status, headers=headers)


def storage_error_answer(exc: StorageError) -> Response:
    """What the app answers a storage error raised by a route: :func:`error_response`, logged when a 5xx
    that is not transient (a server fault rather than bad input or an overload)."""
    if exc.status >= 500 and not isinstance(exc, TransientError):
        LOGGER.error("storage error: %s", exc)
    return error_response(exc)


async def _storage_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StorageError)
    return storage_error_answer(exc)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    message = f"{where}: {first.get('msg', 'invalid request')}" if where else "invalid request"
    return JSONResponse(_body("InvalidArgumentError", message, None), 400)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = _HTTP_TYPES.get(exc.status_code, "HTTPError")
    return JSONResponse(_body(kind, str(exc.detail), None), exc.status_code, headers=exc.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Route storage, validation and HTTP errors to the one JSON error format."""
    app.add_exception_handler(StorageError, _storage_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)


class RequestIdMiddleware:
    """Outermost ASGI middleware: request id, access log line, HTTP metrics, last-resort 500.

    An exception that escapes the app becomes a JSON 500 here (with the id),
    logged with its traceback, when the response has not started.

    Each request runs in a fresh :class:`contextvars.Context`: uvicorn may
    create a connection's next request from inside the previous request's
    context (its reader is re-registered there when reading resumes), and a
    value such as an idempotency key or the reserved-keys switch must never
    carry over to another request.
    """

    def __init__(self, app: ASGIApp, *, counter: Any = None, histogram: Any = None) -> None:
        self.app = app
        self.counter = counter
        self.histogram = histogram
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await InContext(self._serve(scope, receive, send), contextvars.Context())

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        sent = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                sent = value.decode("latin-1")
                break
        rid = sent if sent and _SANE_ID.fullmatch(sent) else new_request_id()
        header = (b"x-request-id", rid.encode("latin-1"))
        _REQUEST_ID.set(rid)  # this task's own context: nothing to reset
        tag_request(request_id=rid)  # the storage operations' too
        status = 0
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message["headers"].append(header)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            LOGGER.exception("unhandled error serving %s %s", scope["method"], scope["path"])
            if status == 0:
                response = JSONResponse(_body("InternalError", "internal error", None), 500)
                await response(scope, receive, send_with_id)
            status = status or 500
        finally:
            elapsed = time.perf_counter() - started
            if LOGGER.isEnabledFor(logging.INFO):  # the access line, without looking up its caller's frame
                args = (scope["method"], scope["path"], status, elapsed * 1000)
                LOGGER.handle(access_record(args))
            if self.counter is not None:
                self._count(scope["method"], status, elapsed)

    def _count(self, method: str, status: int, elapsed: float) -> None:
        children = self._children.get((method, status))
        if children is None:
            label = method if method in _METHODS else "OTHER"  # bounded label values
            children = self.counter.labels(label, str(status)), self.histogram.labels(label)
            if method in _METHODS:
                self._children[method, status] = children
        children[0].inc()
        children[1].observe(elapsed)


class InContext:
    """Await ``coro`` with every step of it run in ``context``, in the awaiting task: what
    ``await asyncio.create_task(coro, context=context)`` does, without a second task (its
    creation, its scheduling and the wake-up of the awaiting task, on every request).
    Cancelling the awaiting task cancels ``coro``."""

    __slots__ = ("context", "coro")

    def __init__(self, coro: Coroutine[Any, Any, Any], context: contextvars.Context) -> None:
        self.coro, self.context = coro, context

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run = self.coro, self.context.run
        send: Any = coro.send
        arg: Any = None
        while True:
            try:
                waited = run(send, arg)
            except StopIteration as done:
                return done.value
            try:
                arg = yield waited
                send = coro.send
            except BaseException as exc:  # thrown into the awaiting task (a cancellation): pass it on
                arg, send = exc, coro.throw


_ACCESS = "%s %s %d %.1fms"
_RECORDS: dict[tuple[int, int], dict[str, Any]] = {}


def access_record(args: tuple[Any, ...]) -> logging.LogRecord:
    """The access line's record: what ``LOGGER.makeRecord`` makes, built from a copy of the first one made
    in this thread of this process (the thread, process and file are the same: only the time, the
    arguments and the asyncio task differ), at a fraction of the cost. With a custom record factory or
    logger class, that factory makes each one."""
    if logging.getLogRecordFactory() is not logging.LogRecord or type(LOGGER) is not logging.Logger:
        return LOGGER.makeRecord(LOGGER.name, logging.INFO, __file__, 0, _ACCESS, args, None)
    where = (os.getpid(), threading.get_ident())
    base = _RECORDS.get(where)
    if base is None:
        record = LOGGER.makeRecord(LOGGER.name, logging.INFO, __file__, 0, _ACCESS, args, None)
        if len(_RECORDS) < 64:
            _RECORDS[where] = dict(record.__dict__)
        return record
    record = logging.LogRecord.__new__(logging.LogRecord)
    fields = record.__dict__
    fields.update(base)
    now = time.time()
    fields["args"] = args
    fields["created"] = now
    fields["msecs"] = int((now - int(now)) * 1000) + 0.0
    fields["relativeCreated"] = base["relativeCreated"] + (now - base["created"]) * 1000
    if "taskName" in base:  # Python 3.12+: the task logging the line
        fields["taskName"] = _task_name()
    return record


def _task_name() -> str | None:
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return None
    return task.get_name() if task is not None and getattr(logging, "logAsyncioTasks", True) else None


_ID_PREFIX: list[str] = []
_ID_COUNT = itertools.count()


def new_request_id() -> str:
    """A new request id: 32 hex digits, 16 random per process and a 16-digit counter (unique, and
    cheaper than a UUID: no system call)."""
    if not _ID_PREFIX:
        _ID_PREFIX.append(secrets.token_hex(8))
    return f"{_ID_PREFIX[0]}{next(_ID_COUNT):016x}"


os.register_at_fork(after_in_child=_ID_PREFIX.clear)  # a forked worker draws its own prefix
