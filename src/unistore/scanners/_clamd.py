"""A small asyncio client for ClamAV's daemon protocol (``clamd``): ``PING``, ``VERSION`` and ``INSTREAM``.

The protocol (``man clamd``): a command is sent as ``z<COMMAND>\\0`` and answered
with one NUL-terminated line. ``INSTREAM`` then takes the data as chunks, each
prefixed with its length as a 4-byte big-endian unsigned integer, ended by a
zero-length chunk; clamd answers ``stream: OK``, ``stream: <signature> FOUND``,
or ``<reason> ERROR`` (``INSTREAM size limit exceeded`` past its
``StreamMaxLength``, after which it closes the connection).

Each chunk sent is at most ``chunk_size`` bytes and is drained before the next
is read, so memory stays bounded whatever the stream's length. Every read and
write has a ``timeout``; a daemon that cannot be reached, times out or drops
the connection raises :class:`ScannerUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections.abc import AsyncIterable
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit

from .._errors import ConfigurationError, QuotaExceededError, StorageError, UnavailableError

__all__ = [
    "ClamdClient",
    "DEFAULT_URL",
    "InstreamSession",
    "MalwareFoundError",
    "ScanError",
    "ScanResult",
    "ScanTooLargeError",
    "ScannerUnavailableError",
]

DEFAULT_URL = "unix:///var/run/clamav/clamd.ctl"
"""Debian's ``clamav-daemon`` socket, used when neither a URL nor ``UNISTORE_CLAMD_URL`` is given."""

_MAX_REPLY = 64 * 1024
VERSION_TTL = 300.0
"""Seconds a :meth:`ClamdClient.engine` answer is reused (a database update changes it)."""


class ScanError(StorageError):
    """A scan failed or refused an upload."""

    status = 422


class MalwareFoundError(ScanError):
    """The scanner reported a signature in the body; nothing was stored under the key (422).

    ``signature`` is the scanner's name for what it found; ``quarantine_key`` the
    key the body was kept under in quarantine mode (``None`` otherwise).
    """

    status = 422

    def __init__(
        self, message: str = "", *, signature: str = "", quarantine_key: str | None = None, **kw: str | None
    ) -> None:
        super().__init__(message, **kw)
        self.signature = signature
        self.quarantine_key = quarantine_key


class ScanTooLargeError(ScanError, QuotaExceededError):
    """The body is longer than the scanner accepts (clamd's ``StreamMaxLength``) (413)."""

    status = 413


class ScannerUnavailableError(UnavailableError):
    """The scanner could not be reached, timed out or failed mid-stream (503, with ``retry_after``)."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scan's verdict: ``signature`` is the name of what was found (``None`` when clean)."""

    is_infected: bool
    signature: str | None
    scanner: str
    size: int

    @property
    def is_clean(self) -> bool:
        """Whether nothing was found."""
        return not self.is_infected


def _parse_url(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    if parts.scheme == "unix" and parts.path:
        return "unix", parts.path, 0
    if parts.scheme == "tcp" and parts.hostname and parts.port:
        return "tcp", parts.hostname, parts.port
    raise ConfigurationError(f"clamd URL must be unix:///path or tcp://host:port, not {url!r}")


class InstreamSession:
    """One ``INSTREAM`` scan in progress: :meth:`send` chunks, then :meth:`finish` for the verdict."""

    def __init__(self, client: ClamdClient, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._client = client
        self._writer = writer
        # clamd may answer before the stream ends (a size-limit error, then it closes): read all along.
        self._reply = asyncio.ensure_future(reader.readuntil(b"\0"))
        self.size = 0

    async def __aenter__(self) -> InstreamSession:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        """Send ``data`` in chunks of at most ``chunk_size`` bytes (:class:`ScanTooLargeError` past ``max_size``)."""
        client = self._client
        view = memoryview(data).cast("B")
        if client.max_size is not None and self.size + len(view) > client.max_size:
            raise ScanTooLargeError(f"the body is longer than the scanner accepts ({client.max_size} bytes)")
        for start in range(0, len(view), client.chunk_size):
            piece = view[start : start + client.chunk_size]
            if self._reply.done():
                raise await self._failure(None)
            try:
                async with asyncio.timeout(client.timeout):
                    self._writer.write(struct.pack(">I", len(piece)))
                    self._writer.write(piece)
                    await self._writer.drain()
            except (OSError, TimeoutError) as exc:
                await asyncio.wait({self._reply}, timeout=1.0)
                raise await self._failure(exc) from exc
            self.size += len(piece)

    async def _failure(self, exc: BaseException | None) -> StorageError:
        """The error for a stream clamd answered, dropped or stalled before its end."""
        reply = ""
        if self._reply.done() and not self._reply.cancelled() and self._reply.exception() is None:
            reply = self._reply.result().rstrip(b"\0").decode("utf-8", "replace")
        if "size limit" in reply:
            return ScanTooLargeError("the body is longer than the scanner accepts (StreamMaxLength)")
        if not reply and not isinstance(exc, TimeoutError) and await self._client.alive():
            # clamd answers but dropped this stream: its reply (the size limit) was lost with the connection.
            return ScanTooLargeError("clamd closed the stream early (most likely past its StreamMaxLength)")
        why = type(exc).__name__ if exc is not None else (reply[:120] or "connection closed")
        return self._client.unavailable(f"clamd failed mid-stream ({why})")

    async def finish(self) -> ScanResult:
        """End the stream and return clamd's verdict."""
        client = self._client
        try:
            if self._reply.done():
                raise await self._failure(None)
            async with asyncio.timeout(client.timeout):
                self._writer.write(b"\0\0\0\0")
                await self._writer.drain()
                raw = await self._reply
        except (OSError, asyncio.IncompleteReadError) as exc:
            raise await self._failure(exc) from exc
        except (TimeoutError, asyncio.LimitOverrunError) as exc:
            raise client.unavailable(f"clamd gave no verdict ({type(exc).__name__})") from exc
        finally:
            await self.aclose()
        return client.verdict(raw.rstrip(b"\0").decode("utf-8", "replace"), self.size)

    async def aclose(self) -> None:
        """Close the connection (an unfinished scan is abandoned)."""
        if not self._reply.done():
            self._reply.cancel()
        elif not self._reply.cancelled():
            self._reply.exception()  # retrieved: a dropped connection is reported by send or finish
        writer = self._writer
        if not writer.is_closing():
            writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


class ClamdClient:
    """A clamd at ``url`` (``unix:///path`` or ``tcp://host:port``; default ``UNISTORE_CLAMD_URL``, else
    Debian's socket). ``timeout`` bounds each connect, read and write, in seconds; ``chunk_size`` each
    ``INSTREAM`` chunk; ``max_size`` (clamd's ``StreamMaxLength``, when set) is refused before it is sent.
    ``retry_after`` is what :class:`ScannerUnavailableError` suggests, in seconds.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = 30.0,
        chunk_size: int = 64 * 1024,
        max_size: int | None = None,
        retry_after: float = 5.0,
    ) -> None:
        self.url = url or os.environ.get("UNISTORE_CLAMD_URL") or DEFAULT_URL
        self._kind, self._host, self._port = _parse_url(self.url)
        if timeout <= 0 or not 1 <= chunk_size <= 16 * 1024 * 1024 or (max_size is not None and max_size < 1):
            raise ConfigurationError("need timeout > 0, 1 <= chunk_size <= 16 MiB and max_size >= 1")
        self.timeout = timeout
        self.chunk_size = chunk_size
        self.max_size = max_size
        self.retry_after = retry_after
        self._version: tuple[float, str] | None = None

    def __repr__(self) -> str:
        return f"ClamdClient({self.url!r})"

    def unavailable(self, message: str) -> ScannerUnavailableError:
        """The error for a scanner that is down or failing."""
        return ScannerUnavailableError(f"{message} at {self.url}", retry_after=self.retry_after)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            async with asyncio.timeout(self.timeout):
                if self._kind == "unix":
                    return await asyncio.open_unix_connection(self._host, limit=_MAX_REPLY)
                return await asyncio.open_connection(self._host, self._port, limit=_MAX_REPLY)
        except (OSError, TimeoutError) as exc:
            raise self.unavailable(f"cannot reach clamd ({type(exc).__name__})") from exc

    async def command(self, name: str) -> str:
        """Send ``z<name>\\0`` and return the reply line."""
        reader, writer = await self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(b"z" + name.encode("ascii") + b"\0")
                await writer.drain()
                raw = await reader.readuntil(b"\0")
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise self.unavailable(f"clamd did not answer {name} ({type(exc).__name__})") from exc
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
        return raw.rstrip(b"\0").decode("utf-8", "replace")

    async def alive(self) -> bool:
        """Whether clamd answers ``PING`` within ``min(timeout, 2)`` seconds."""
        try:
            async with asyncio.timeout(min(self.timeout, 2.0)):
                await self.ping()
        except (ScannerUnavailableError, TimeoutError):
            return False
        return True

    async def ping(self) -> None:
        """Check that clamd answers ``PONG`` (:class:`ScannerUnavailableError` otherwise)."""
        reply = await self.command("PING")
        if reply != "PONG":
            raise self.unavailable(f"clamd answered PING with {reply[:80]!r}")

    async def version(self) -> str:
        """clamd's version line, e.g. ``ClamAV 1.4.6/27850/Fri Dec  5 08:00:00 2026`` (engine/database)."""
        return await self.command("VERSION")

    async def engine(self) -> str:
        """:meth:`version`, asked at most every ``VERSION_TTL`` seconds (it names the database in use)."""
        now = time.monotonic()
        if self._version is None or now - self._version[0] > VERSION_TTL:
            self._version = (now, await self.version())
        return self._version[1]

    async def session(self) -> InstreamSession:
        """Start an ``INSTREAM`` scan (use it as an async context manager, or call :meth:`~InstreamSession.finish`)."""
        await self.engine()
        reader, writer = await self._connect()
        try:
            async with asyncio.timeout(self.timeout):
                writer.write(b"zINSTREAM\0")
                await writer.drain()
        except (OSError, TimeoutError) as exc:
            writer.close()
            raise self.unavailable(f"clamd refused INSTREAM ({type(exc).__name__})") from exc
        return InstreamSession(self, reader, writer)

    async def scan_stream(self, chunks: AsyncIterable[bytes]) -> ScanResult:
        """Scan an async stream of byte chunks."""
        async with await self.session() as scan:
            async for chunk in chunks:
                await scan.send(chunk)
            return await scan.finish()

    def _engine_name(self) -> str:
        return self._version[1] if self._version is not None else "clamd"

    def verdict(self, reply: str, size: int) -> ScanResult:
        """Turn an ``INSTREAM`` reply into a :class:`ScanResult` (or the error it reports)."""
        body = reply.partition(": ")[2] if reply.startswith("stream: ") else reply
        if body == "OK":
            return ScanResult(False, None, self._engine_name(), size)
        if body.endswith(" FOUND"):
            return ScanResult(True, body[: -len(" FOUND")], self._engine_name(), size)
        if "size limit" in body:
            raise ScanTooLargeError("the body is longer than the scanner accepts (StreamMaxLength)")
        raise self.unavailable(f"clamd could not scan the stream ({body[:120]})")
