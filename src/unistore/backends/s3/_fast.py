"""A lean HTTP/1.1 keep-alive pool for small S3 requests whose whole body fits in memory.

Small PUTs, HEADs, DELETEs, listings and multipart control calls are most of an
S3 client's requests. aiohttp spends more CPU on each than the request itself
(on Python 3.11 it writes every request body from a task of its own), so these
go through this pool instead: the request is written with one ``write``, the
response read with ``readuntil``/``readexactly`` on asyncio streams. Downloads
are streamed from the same connections (:meth:`FastPool.stream`), so reading an
object never loads aiohttp (~0.1 CPU-s to import) nor pays its per-chunk parsing.

A connection is reused only after a complete response that did not ask to
close. A reused connection that turns out to be closed before any response
byte arrives is replaced once (the server never saw the request).

A body that is a byte range of a file (:class:`FileRange`, a multipart part read from
disk) goes the same way on a plain-TCP connection: the kernel sends it with
``sendfile`` (``loop.sendfile``), so its bytes are never copied into Python.
"""

from __future__ import annotations

import asyncio
import collections
import os
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar, cast

from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["FastPool", "FastResponse", "FastStream", "FileRange", "ShortFile", "StaleConnection"]

_MAX_HEADER = 64 * 1024
_HIGH_WATER = 2 * 1024 * 1024  # received body bytes a stream holds before it stops reading
_T = TypeVar("_T")


def _request_head(method: str, target: str, host_header: str, headers: Mapping[str, str], length: int | None) -> bytes:
    """The request line and headers, with a ``Content-Length`` of ``length`` unless given or ``None``."""
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\n"]
    for name, value in headers.items():
        lines.append(f"{name}: {value}\r\n")
    if length is not None and "content-length" not in headers:
        lines.append(f"Content-Length: {length}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1")


class StaleConnection(ConnectionError):
    """A kept-alive connection was closed by the server before it answered."""


class ShortFile(Exception):
    """A :class:`FileRange` body ended early: the file shrank while it was being sent."""


@dataclass(frozen=True, slots=True)
class FileRange:
    """A request body of ``length`` bytes at ``offset`` of the open file ``fd``. ``chunks()``
    yields the same bytes, for transports that cannot ``sendfile`` (TLS, aiohttp)."""

    fd: int
    offset: int
    length: int
    chunks: Callable[[], AsyncIterator[bytes]]


@dataclass(frozen=True, slots=True)
class FastResponse:
    """A complete response: status, headers (case-insensitive) and body."""

    status: int
    headers: CIMultiDictProxy[str]
    body: bytes


class FastStream:
    """A response whose body is read as it arrives (:meth:`FastPool.stream`). The connection goes
    back to the pool once the whole body is read; :meth:`release` before that closes it."""

    __slots__ = ("_conn", "_keep", "_left", "_open", "_pool", "_reader", "headers", "status")

    def __init__(
        self,
        pool: FastPool,
        conn: _Conn | None,
        reader: asyncio.StreamReader,
        status: int,
        headers: CIMultiDictProxy[str],
        left: int | None,
        keep: bool,
    ) -> None:
        self._pool, self._conn, self._reader = pool, conn, reader
        self.status, self.headers = status, headers
        self._left = left  # body bytes still to read; None: until the connection closes
        self._keep = keep
        self._open = True  # holding a slot of the pool

    async def iter_chunks(self, size: int) -> AsyncIterator[bytes]:
        """The body in chunks of at most ``size`` bytes, as they arrive: each is one ``recv`` of the
        socket, handed on without a copy (what the stream reader already held comes first)."""
        conn, timeout = self._conn, self._pool._timeout
        reader = self._reader
        held: bytearray = reader._buffer  # type: ignore[attr-defined]  # body bytes read with the head
        first = b""
        if held and self._open:
            take = len(held) if self._left is None else min(len(held), self._left)
            first = bytes(memoryview(held)[:take])
            del held[:take]
            if self._left is not None:
                self._left -= take
        if conn is None or not (self._left is None or self._left > 0) or reader.at_eof() or conn.writer.is_closing():
            for at in range(0, len(first), size):
                yield first[at : at + size]
            if self._left:
                raise ConnectionResetError(f"connection closed with {self._left} body bytes to come")
            self._left = 0
            self.release()
            return
        # The body's protocol takes over before anything is yielded: bytes that arrive while the
        # caller holds a chunk must not land in the stream reader's buffer, where nobody reads them.
        transport = cast(asyncio.Transport, conn.writer.transport)
        stream_protocol = transport.get_protocol()
        body = _Body(transport, self._left)
        transport.set_protocol(body)
        if reader._paused:  # type: ignore[attr-defined]  # the stream reader had paused the socket
            reader._paused = False  # type: ignore[attr-defined]
            transport.resume_reading()
        try:
            for at in range(0, len(first), size):
                yield first[at : at + size]
            del first
            while True:
                async with asyncio.timeout(timeout):
                    chunk = await body.next()
                if chunk is None:
                    break
                for at in range(0, len(chunk), size):
                    yield chunk if len(chunk) <= size else chunk[at : at + size]
        finally:
            self._left = body.left
            if body.left == 0 and not body.closed and not body.extra:
                transport.set_protocol(stream_protocol)  # the next response's head goes to the stream reader
                if body.paused:
                    transport.resume_reading()
            else:
                self._keep = False
        if self._left is None:
            self._left = 0
        if self._left:
            raise ConnectionResetError(f"connection closed with {self._left} body bytes to come")
        self.release()

    async def read(self) -> bytes:
        """The rest of the body, then the connection is released."""
        if not self._open:
            return b""
        try:
            return b"".join([chunk async for chunk in self.iter_chunks(1 << 30)])
        finally:
            self.release()

    def release(self) -> None:
        """Give the connection back (kept alive only after a complete body); safe to call twice."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool._done(conn, self._keep and self._left == 0)
        if self._open:
            self._open = False
            self._pool._slots.release()


class _Body(asyncio.Protocol):
    """The protocol of a connection while a response body streams in: the chunks the transport
    receives are queued as they are (no copy), reading pauses while ``_HIGH_WATER`` bytes wait."""

    def __init__(self, transport: asyncio.BaseTransport, left: int | None) -> None:
        self.transport = transport
        self.left = left  # body bytes not yet received; None: until the connection closes
        self.chunks: collections.deque[bytes] = collections.deque()
        self.queued = 0
        self.paused = self.closed = self.extra = False
        self.error: BaseException | None = None
        self.waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        if self.left is not None:
            if len(data) > self.left:  # more than the response: the connection cannot be reused
                self.extra = True
                data = data[: self.left]
            self.left -= len(data)
        if data:
            self.chunks.append(data)
            self.queued += len(data)
        if self.queued >= _HIGH_WATER and not self.paused:
            self.paused = True
            self.transport.pause_reading()  # type: ignore[attr-defined]
        self._wake()

    def eof_received(self) -> bool:
        self.closed = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.error = exc
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def next(self) -> bytes | None:
        """The next chunk, or None at the end of the body (or of the connection)."""
        while not self.chunks:
            if self.left == 0 or self.closed:
                if self.error is not None and self.left:
                    raise ConnectionResetError(f"connection lost: {self.error}")
                return None
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        chunk = self.chunks.popleft()
        self.queued -= len(chunk)
        if self.paused and self.queued < _HIGH_WATER // 2 and not self.closed:
            self.paused = False
            self.transport.resume_reading()  # type: ignore[attr-defined]
        return chunk


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class FastPool:
    """Keep-alive connections to one origin, at most ``limit`` open at a time."""

    def __init__(
        self, host: str, port: int, *, tls: bool, server_name: str, limit: int, connect_timeout: float, timeout: float
    ) -> None:
        self._host, self._port, self._server_name = host, port, server_name
        self._ssl: ssl.SSLContext | None = ssl.create_default_context() if tls else None
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(limit)
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._closed = False

    async def request(
        self,
        method: str,
        target: str,
        host_header: str,
        headers: Mapping[str, str],
        body: bytes | bytearray | memoryview | None,
    ) -> FastResponse:
        """Send one request and read its whole response (``TimeoutError``/``OSError`` on failure)."""
        length = None if body is None and method not in ("PUT", "POST") else (0 if body is None else len(body))
        head = _request_head(method, target, host_header, headers, length)
        small = body is not None and len(body) <= 65536
        payload = head + bytes(body) if small and body is not None else head

        async def send(conn: _Conn, reused: bool) -> None:
            conn.writer.write(payload)
            if not small and body is not None:
                conn.writer.write(body)

        async with self._slots:
            conn, (response, keep) = await self._exchange(send, lambda conn, reused: self._read(conn, method, reused))
            self._done(conn, keep)
            return response

    async def stream(self, method: str, target: str, host_header: str, headers: Mapping[str, str]) -> FastStream:
        """Send a request without a body and return once the response head is read; the body is
        read from the :class:`FastStream` (which holds one of the pool's connections until then)."""
        head = _request_head(method, target, host_header, headers, None)

        async def send(conn: _Conn, reused: bool) -> None:
            conn.writer.write(head)

        await self._slots.acquire()
        try:
            conn, (status, fields, keep) = await self._exchange(send, self._head)
            left: int | None
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                left = 0
            elif "chunked" in fields.get("Transfer-Encoding", "").lower():
                try:  # not what S3 sends for objects: read it whole
                    body = await self._chunked(conn.reader)
                except BaseException:
                    conn.close()
                    raise
                self._done(conn, keep)
                held = asyncio.StreamReader()
                held.feed_data(body)
                held.feed_eof()
                return FastStream(self, None, held, status, CIMultiDictProxy(fields), len(body), False)
            elif (length := fields.get("Content-Length")) is not None:
                left = int(length)
            else:
                left, keep = None, False
            return FastStream(self, conn, conn.reader, status, CIMultiDictProxy(fields), left, keep)
        except BaseException:
            self._slots.release()
            raise

    def _done(self, conn: _Conn, keep: bool) -> None:
        if keep and not self._closed:
            self._idle.append(conn)
        else:
            conn.close()

    @property
    def can_sendfile(self) -> bool:
        """Whether :meth:`request_file` may be used (plain TCP: ``sendfile`` cannot encrypt)."""
        return self._ssl is None

    async def request_file(
        self, method: str, target: str, host_header: str, headers: Mapping[str, str], body: FileRange
    ) -> FastResponse:
        """Send one request whose body is ``body``'s file range, sent by the kernel, and read the
        response. :class:`ShortFile` if the file ends before the range does."""
        head = _request_head(method, target, host_header, headers, body.length)

        async def send(conn: _Conn, reused: bool) -> None:
            conn.writer.write(head)
            try:
                await _send_range(conn.writer, body)
            except (BrokenPipeError, ConnectionResetError) as exc:
                if reused:  # closed while idle: the server saw no request
                    raise StaleConnection("connection closed before the request was sent") from exc
                raise

        async with self._slots:
            conn, (response, keep) = await self._exchange(send, lambda conn, reused: self._read(conn, method, reused))
            self._done(conn, keep)
            return response

    async def _exchange(
        self,
        send: Callable[[_Conn, bool], Awaitable[None]],
        receive: Callable[[_Conn, bool], Awaitable[_T]],
    ) -> tuple[_Conn, _T]:
        """Send with ``send`` on a pooled connection and read the answer with ``receive``; a reused
        connection found closed (:class:`StaleConnection`) is replaced by a new one, once. The
        connection is closed on any failure and otherwise returned with what ``receive`` read."""
        for attempt in (0, 1):
            conn, reused = await self._acquire(fresh=attempt > 0)
            try:
                await send(conn, reused)
                async with asyncio.timeout(self._timeout):
                    await conn.writer.drain()
                    return conn, await receive(conn, reused)
            except StaleConnection:
                conn.close()
                if attempt == 0:
                    continue
                raise
            except BaseException:
                conn.close()
                raise
        raise AssertionError("unreachable")

    async def _acquire(self, fresh: bool) -> tuple[_Conn, bool]:
        while self._idle and not fresh:
            conn = self._idle.pop()
            if not conn.writer.is_closing() and not conn.reader.at_eof():
                return conn, True
            conn.close()
        async with asyncio.timeout(self._connect_timeout):
            reader, writer = await asyncio.open_connection(
                self._host,
                self._port,
                ssl=self._ssl,
                server_hostname=self._server_name if self._ssl else None,
                limit=_MAX_HEADER,
            )
        return _Conn(reader, writer), False

    async def _read(self, conn: _Conn, method: str, reused: bool) -> tuple[FastResponse, bool]:
        reader = conn.reader
        status, headers, keep = await self._head(conn, reused)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            body = b""
        elif "chunked" in headers.get("Transfer-Encoding", "").lower():
            body = await self._chunked(reader)
        elif (length := headers.get("Content-Length")) is not None:
            body = await reader.readexactly(int(length))
        else:
            body, keep = await reader.read(), False  # delimited by the connection's close
        return FastResponse(status, CIMultiDictProxy(headers), body), keep

    @staticmethod
    async def _head(conn: _Conn, reused: bool) -> tuple[int, CIMultiDict[str], bool]:
        """The status, headers and keep-alive of the response on ``conn``."""
        reader = conn.reader
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if reused and not exc.partial:
                raise StaleConnection("connection closed before the response") from exc
            raise ConnectionResetError("connection closed in the response head") from exc
        except asyncio.LimitOverrunError as exc:
            raise ConnectionError("response head too large") from exc
        head = raw.decode("latin-1").split("\r\n")
        parts = head[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ConnectionError(f"malformed status line {head[0][:80]!r}")
        status = int(parts[1])
        headers: CIMultiDict[str] = CIMultiDict()
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.add(name.strip(), value.strip())
        keep = headers.get("Connection", "").lower() != "close" and parts[0] == "HTTP/1.1"
        return status, headers, keep

    @staticmethod
    async def _chunked(reader: asyncio.StreamReader) -> bytes:
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return bytes(out)
            out += await reader.readexactly(size)
            await reader.readexactly(2)

    def close(self) -> None:
        """Close every idle connection; connections in use close when their request ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


async def _send_range(writer: asyncio.StreamWriter, body: FileRange) -> None:
    """Write ``body``'s bytes after what ``writer`` holds: ``sendfile`` where the loop has it,
    else 1 MiB ``pread``s in a worker thread. :class:`ShortFile` if the file is too short."""
    # A file object over the shared descriptor that does not own it: sendfile reads at explicit
    # offsets, so its one seek at the end moves a position nobody else uses.
    with os.fdopen(body.fd, "rb", buffering=0, closefd=False) as file:
        try:
            sent = await asyncio.get_running_loop().sendfile(
                writer.transport, file, body.offset, body.length, fallback=False
            )
        except (asyncio.SendfileNotAvailableError, NotImplementedError, RuntimeError):
            sent = None  # refused before a byte was sent (uvloop, an unusual transport)
    if sent is None:
        sent = 0
        async for chunk in body.chunks():
            writer.write(chunk)
            sent += len(chunk)
            await writer.drain()
    if sent != body.length:
        raise ShortFile(f"the file ended {body.length - sent} bytes early")
