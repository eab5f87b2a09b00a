"""The transfers of ``unistore put`` / ``get``: progress bars, and resume of interrupted runs.

``get KEY DEST`` downloads into ``DEST.part`` and records the object's etag and
size in ``DEST.part.json`` before the first byte. A rerun that finds both reads
only the rest, with ``If-Match`` on the recorded etag, and checks that the
answer is that version from that offset; an object that changed meanwhile
(or a store without conditional ranged reads) starts over, so two versions are
never spliced. The complete file is checked against the recorded size and
renamed to ``DEST``.

``put KEY FILE`` resumes large files where the store keeps partial uploads:

* an ``http(s)://`` unistore service: :meth:`HttpBackend.upload_file` (files of at
  least ``multipart_threshold``), its upload sessions recorded under the state dir;
* S3 (files above ``part_size``): a session of ``S3Backend.uploads`` whose token and
  stored parts (number, size, etag, checksum) are recorded in a state file named
  after the store, key, content type, metadata and the file's absolute path, size
  and mtime. A rerun resumes the session, asks which recorded parts the server
  really holds, sends only the others and completes with the manifest. A session
  the server no longer knows starts over; the state file is removed on success.

Elsewhere (local, memory, GCS, Cloudinary; small files; stdin) a put is one
atomic write: an interrupted one leaves nothing visible and nothing to resume.
The state dir is ``--state-dir``/``UNISTORE_STATE_DIR``, else the store's
``upload_state_dir``, else ``~/.cache/unistore/uploads``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import hashlib
import http.client
import json
import os
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from .._base import StorageBackend
from .._errors import IntegrityError, InvalidArgumentError, InvalidRangeError, NotFoundError, PreconditionFailedError
from .._records import exclusive, write_json
from .._types import ByteRange, Download, ObjectInfo, WriteMode

if TYPE_CHECKING:
    from rich.console import Console

    from ..backends.s3 import PartInfo, S3Backend
    from ..backends.s3._sessions import UploadSession

__all__ = ["Bars", "download", "download_ranges", "human", "note", "progress", "read_file", "upload", "write_file"]

_consoles: list[Console] = []


def err() -> Console:
    """The CLI's stderr: progress bars, notes and one-line errors (rich, imported on first use)."""
    if not _consoles:
        from rich.console import Console

        _consoles.append(Console(stderr=True))
    return _consoles[0]


Advance = Callable[[int], None]
Bars = Callable[[str, "int | None", int], contextlib.AbstractContextManager[Advance]]
"""Makes a progress display for one transfer: ``(label, total, done) -> context yielding advance(n)``."""


def human(size: float) -> str:
    """``size`` bytes in binary units: ``0 B``, ``1023 B``, ``1.5 KiB``, ``117.0 MiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(size) < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def note(message: str) -> None:
    """One line on stderr, prefixed ``unistore:``."""
    err().print(f"unistore: {message}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(label: str, total: int | None, quiet: bool, done: int = 0) -> Iterator[Advance]:
    """A transfer bar (bytes, rate, ETA) on stderr when it is a terminal, starting at ``done``;
    yields ``advance(n)``."""
    if quiet or not err().is_terminal:
        yield _ignore
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err(),
        transient=False,
    )
    with bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


def _ignore(n: int) -> None:
    """The ``advance`` of a display that shows nothing."""


async def read_file(path: Path | None, advance: Advance, chunk: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """The file at ``path`` (stdin if ``None``) in chunks, read in a thread."""
    f = sys.stdin.buffer if path is None else await asyncio.to_thread(path.open, "rb")
    try:
        while data := await asyncio.to_thread(f.read, chunk):
            advance(len(data))
            yield data
    finally:
        if path is not None:
            await asyncio.to_thread(f.close)


async def write_file(path: Path | None, chunks: AsyncIterator[bytes], advance: Advance) -> int:
    """Stream ``chunks`` to ``path`` atomically (temp file + rename), or to stdout; bytes written."""
    written = 0
    if path is None:
        async for data in chunks:
            sys.stdout.buffer.write(data)
            written += len(data)
            advance(len(data))
        sys.stdout.buffer.flush()
        return written
    fd, tmp = tempfile.mkstemp(prefix=".unistore.", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            async for data in chunks:
                await asyncio.to_thread(f.write, data)
                written += len(data)
                advance(len(data))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return written


# --- get ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Partial:
    """What ``DEST.part`` holds of one version of an object: a prefix (its length), or with
    ``done`` the byte spans written so far (a parallel ranged download, see :func:`download_ranges`)."""

    key: str
    etag: str
    size: int
    done: tuple[tuple[int, int], ...] | None = None

    def prefix(self, have: int) -> int:
        """How many bytes from the start are known to be that version's, of ``have`` on disk."""
        if self.done is None:
            return have
        first = next((end for start, end in self.done if start == 0), 0)
        return min(first, have)


def _load_partial(side: Path) -> _Partial | None:
    try:
        raw = json.loads(side.read_text())
        done = raw.get("done")
        spans = None if done is None else tuple((int(a), int(b)) for a, b in done)
        return _Partial(str(raw["key"]), str(raw["etag"]), int(raw["size"]), spans)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1


def _discard(*paths: Path) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _open_rest(store: StorageBackend, key: str, part: Path, side: Path) -> tuple[Download, int]:
    """The rest of the object the partial file holds a prefix of, or (after discarding it) all of it."""
    recorded, have = await asyncio.to_thread(_load_partial, side), await asyncio.to_thread(_size, part)
    if recorded is not None and recorded.done is not None and have > 0:  # a ranged download's spans
        have = recorded.prefix(have)
        if have > 0:
            await asyncio.to_thread(os.truncate, part, have)
    if recorded is not None and recorded.key == key and recorded.etag and 0 < have <= recorded.size:
        caps = store.capabilities
        why = f"{store.name} cannot read one version from an offset"
        if caps.ranges and caps.conditional_get:
            dl: Download | None = None
            with contextlib.suppress(PreconditionFailedError, InvalidRangeError):
                if have == recorded.size:  # complete, not yet renamed: still that version?
                    dl = Download(await store.head(key), b"", start=have, end=have)
                else:
                    dl = await store.open(key, range=ByteRange(have), if_match=recorded.etag)
            if dl is None or (dl.info.etag, dl.info.size) != (recorded.etag, recorded.size):
                why = f"{key} changed since the partial download"
            elif dl.start == have:
                return dl, have
            else:
                why = f"{store.name} did not serve the range"
            if dl is not None:
                await dl.aclose()
        note(f"{why}; starting over")
    await asyncio.to_thread(_discard, part, side)  # the prefix goes before a new record is written
    dl = await store.open(key)
    try:
        await asyncio.to_thread(write_json, side, {"key": key, "etag": dl.info.etag, "size": dl.info.size})
    except BaseException:
        await dl.aclose()
        raise
    return dl, 0


async def _append(part: Path, chunks: AsyncIterator[bytes], offset: int, advance: Advance) -> int:
    """Append ``chunks`` to ``part`` (which must hold ``offset`` bytes), fsync; the final size."""
    f = await asyncio.to_thread(part.open, "ab")
    try:
        if f.tell() != offset:
            raise IntegrityError(f"{part} changed size during the download")
        async for data in chunks:
            await asyncio.to_thread(f.write, data)
            advance(len(data))
        await asyncio.to_thread(f.flush)
        await asyncio.to_thread(os.fsync, f.fileno())
        return f.tell()
    finally:
        await asyncio.to_thread(f.close)


async def download(
    store: StorageBackend, key: str, dest: Path, *, resume: bool, quiet: bool, bars: Bars | None = None
) -> int:
    """Download ``key`` to ``dest`` (see the module docstring); the bytes read in this run.

    With ``resume=False`` any partial download is discarded and the object is
    written through a temp file that a failure removes. ``bars`` replaces the
    default progress bar (the tree transfers' shared display).
    """
    bar = bars or _bar(quiet)
    if not await asyncio.to_thread(dest.parent.is_dir):
        raise FileNotFoundError(errno.ENOENT, "no such directory", str(dest.parent))
    part = dest.with_name(dest.name + ".part")
    side = dest.with_name(dest.name + ".part.json")
    if not resume:
        await asyncio.to_thread(_discard, part, side)
        async with await store.open(key) as whole:
            with bar(f"get {key}", whole.content_length, 0) as advance:
                return await write_file(dest, whole.__aiter__(), advance)
    with exclusive(dest.with_name(dest.name + ".part.lock"), str(dest)):
        dl, offset = await _open_rest(store, key, part, side)
        if offset:
            note(f"resuming {key} at {human(offset)}")
        async with dl:
            with bar(f"get {key}", dl.info.size, offset) as advance:
                size = await _append(part, dl.__aiter__(), offset, advance)
        if size != dl.info.size:
            raise IntegrityError(f"{part} holds {size} bytes, the object {dl.info.size}: rerun to resume", key=key)
        await asyncio.to_thread(os.replace, part, dest)
        await asyncio.to_thread(_discard, side)
        return size - offset


CHUNK = 8 * 1024 * 1024
"""Bytes per ranged GET of :func:`download_ranges` (files under ``WIDE_AT``)."""

WIDE_AT = 128 * 1024 * 1024
"""Files at least this large are read in ``RANGES_PER_FILE`` ranges of at most ``MAX_RANGE``:
each GET costs the server a lookup and the client a round trip before its first byte, and
in-flight ranges record their progress anyway (see :func:`download_ranges`)."""

RANGES_PER_FILE = 4
MAX_RANGE = 64 * 1024 * 1024


def _range_size(size: int) -> int:
    """Bytes per ranged GET for a file of ``size`` bytes."""
    return CHUNK if size < WIDE_AT else max(CHUNK, min(MAX_RANGE, size // RANGES_PER_FILE))


RECORD_EVERY = 1.0
"""Seconds between records of a ranged download's progress (each an ``fdatasync`` of the
partial file, then the record): an interrupted run reads again at most this long's ranges."""


def _missing(size: int, done: list[tuple[int, int]], chunk: int) -> list[tuple[int, int]]:
    """The spans of ``[0, size)`` not in ``done`` (sorted, disjoint), cut into pieces of at most ``chunk``."""
    out, pos = [], 0
    for start, end in [*done, (size, size)]:
        while pos < start:
            out.append((pos, min(pos + chunk, start)))
            pos = out[-1][1]
        pos = max(pos, end)
    return out


def _merge(spans: list[tuple[int, int]], new: tuple[int, int]) -> list[tuple[int, int]]:
    """``spans`` (sorted, disjoint) with ``new`` added, touching spans joined."""
    out: list[tuple[int, int]] = []
    start, end = new
    for a, b in spans:
        if b < start or a > end:
            out.append((a, b))
        else:
            start, end = min(a, start), max(b, end)
    out.append((start, end))
    out.sort()
    return out


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _sync_record(fd: int, side: Path, doc: dict[str, Any]) -> None:
    """Make the written bytes durable, then record them (so a record never claims unwritten bytes)."""
    os.fdatasync(fd)
    write_json(side, doc)


def _start(fd: int, size: int, side: Path, doc: dict[str, Any]) -> None:
    """Size the partial file and record what it holds so far: the spans in ``doc`` were made
    durable by the run that recorded them, so no sync is needed here."""
    os.ftruncate(fd, size)
    write_json(side, doc)


PROGRESS_EVERY = 0.1
"""Seconds between a range thread's progress reports to the event loop (each one wakes it)."""

_RESIGN_AFTER = 1800.0
"""Seconds a presigned range URL (valid for an hour) is reused before a fresh one is signed."""


class _Refused(Exception):
    """A ranged GET answered with an error status (turned into a unistore error on the loop)."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        super().__init__(status)
        self.status, self.headers, self.body = status, headers, body


def _s3_error(refused: _Refused, key: str, store: StorageBackend) -> Exception:
    from ..backends.s3._wire import error_from_response

    if refused.status == 412:
        return IntegrityError(f"{key} changed during the download: rerun to start over", key=key, operation="get")
    s3 = _s3(store)
    bucket = s3.bucket if s3 is not None else ""
    return error_from_response(
        refused.status, refused.headers, refused.body, key=key, operation="get", backend=store.name, bucket=bucket
    )


_conns = threading.local()


def _connection(url: str) -> tuple[http.client.HTTPConnection, str]:
    """This thread's kept-alive connection to ``url``'s origin, and the request target."""
    parts = urlsplit(url)
    cached: dict[str, http.client.HTTPConnection] = _conns.__dict__.setdefault("by_origin", {})
    conn = cached.get(parts.netloc)
    if conn is None:
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(parts.netloc, timeout=60, context=ssl.create_default_context())
        else:
            conn = http.client.HTTPConnection(parts.netloc, timeout=60)
        cached[parts.netloc] = conn
    return conn, parts.path + ("?" + parts.query if parts.query else "")


def _get_range(
    url: str, span: tuple[int, int], etag: str, fd: int, stop: threading.Event, report: Callable[[int], object]
) -> None:
    """GET bytes ``span`` of ``url`` if its etag is still ``etag``, written into ``fd`` at their offset.

    A plain-HTTP body goes from the socket to the file with ``splice`` (Linux; see
    :func:`_splice_body`), never copied through Python; otherwise (TLS, other systems, a file
    system that refuses ``splice``) it is read into a buffer and written with ``pwrite``."""
    start, end = span
    flushed, written = start, start

    def advance(n: int) -> None:  # bytes written in order: every WRITE_BACK_EVERY of them go to the disk
        nonlocal flushed, written
        report(n)
        written += n
        if written - flushed >= WRITE_BACK_EVERY:
            _write_back(fd, flushed, written)
            flushed = written

    conn, target = _connection(url)
    headers = {"Range": f"bytes={start}-{end - 1}", "If-Match": f'"{etag}"'}
    try:
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
    except (OSError, http.client.HTTPException):  # a kept-alive connection the server closed: once more
        conn.close()
        conn.request("GET", target, headers=headers)
        resp = conn.getresponse()
    try:
        if resp.status != 206:
            raise _Refused(resp.status, dict(resp.getheaders()), resp.read(64 * 1024))
        served = resp.getheader("Content-Range", "").removeprefix("bytes ").partition("/")[0]
        if served != f"{start}-{end - 1}":
            raise IntegrityError(f"asked for bytes {start}-{end - 1}, served {served!r}", operation="get")
        pos = start
        sock = conn.sock
        if _splice_works[0] and type(sock) is socket.socket and not resp.chunked and resp.length == end - start:
            held = resp.read(min(len(resp.fp.peek(1)), end - pos))  # what the response's reader buffered
            _pwrite_all(fd, held, pos)
            pos += len(held)
            advance(len(held))
            spliced = _splice_body(sock, fd, pos, end, stop, advance)
            resp.length -= spliced - pos  # read from the socket itself, past the response's reader
            pos = spliced
        buf = memoryview(bytearray(min(_SLICE, end - pos)))
        while pos < end and not stop.is_set():
            n = resp.readinto(buf[: min(len(buf), end - pos)])
            if not n:
                raise IntegrityError(f"short read: {pos - start} of {end - start} bytes", operation="get")
            _pwrite_all(fd, buf[:n], pos)
            pos += n
            advance(n)
        if pos < end:
            raise InterruptedError("the download was interrupted")
        resp.read()  # the end of the response, so the connection can serve the next range
        _write_back(fd, flushed, end)
    except BaseException:
        conn.close()
        raise


WRITE_BACK = hasattr(os, "posix_fadvise")
"""Whether written ranges are handed to the disk at once (see :func:`_write_back`)."""

WRITE_BACK_EVERY = 8 * 1024 * 1024
"""Bytes a range thread writes between two hand-overs to the disk (and at its end)."""


def _write_back(fd: int, start: int, end: int) -> None:
    """Start writing bytes ``[start, end)`` of ``fd`` to the disk now, without waiting (Linux
    does this for ``POSIX_FADV_DONTNEED`` and drops the pages once clean): the ``fsync`` that
    ends the download then finds little left to write, instead of the whole file."""
    if WRITE_BACK:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)


_splice_works = [hasattr(os, "splice")]
"""Whether ``os.splice`` exists and has not been refused (then the buffered path is used)."""

_PIPE_SIZE = 1024 * 1024
"""Bytes one ``splice`` moves at most (the pipe's capacity, when the system allows it)."""

_pipes = threading.local()


def _pipe() -> tuple[int, int]:
    """This thread's pipe between the socket and the file (made once, as large as allowed)."""
    pair: tuple[int, int] | None = getattr(_pipes, "pair", None)
    if pair is None:
        import fcntl  # Linux, as splice

        pair = os.pipe2(os.O_CLOEXEC)
        with contextlib.suppress(OSError, AttributeError):  # over fs.pipe-max-size: the default 64 KiB
            fcntl.fcntl(pair[1], fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        _pipes.pair = pair
    return pair


def _drop_pipe() -> None:
    """Close this thread's pipe (it may hold bytes of a body that failed half-way)."""
    pair: tuple[int, int] | None = getattr(_pipes, "pair", None)
    _pipes.pair = None
    for end in pair or ():
        os.close(end)


_REFUSED = (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EBADF)
"""``splice`` errors that mean "not supported here" (the bytes are then read and written)."""


def _splice_body(
    sock: socket.socket, fd: int, pos: int, end: int, stop: threading.Event, advance: Callable[[int], object]
) -> int:
    """Move the body bytes ``[pos, end)`` from ``sock`` into ``fd`` at their offset through this
    thread's pipe: the kernel passes the socket's pages to the pipe and copies them once, into
    the page cache. The socket blocks with a receive timeout of ``sock``'s own. Returns the
    offset reached (``end``, or less when stopped or when ``splice`` is refused: the caller
    reads the rest from the response)."""
    timeout = sock.gettimeout()
    sock.settimeout(None)
    if timeout:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(timeout), 0))
    try:
        r, w = _pipe()
        while pos < end and not stop.is_set():
            try:
                n = os.splice(sock.fileno(), w, min(_PIPE_SIZE, end - pos))
            except BlockingIOError:  # SO_RCVTIMEO ran out
                raise TimeoutError(f"no body bytes for {timeout} s") from None
            except OSError as exc:
                if exc.errno not in _REFUSED:
                    raise
                _splice_works[0] = False
                return pos
            if not n:
                raise IntegrityError(f"short read: the connection closed at byte {pos} of {end}", operation="get")
            _pipe_to_file(r, fd, n, pos)
            pos += n
            advance(n)
        return pos
    except BaseException:
        _drop_pipe()
        raise
    finally:
        with contextlib.suppress(OSError):
            sock.settimeout(timeout)


def _pipe_to_file(r: int, fd: int, n: int, pos: int) -> None:
    """Write the ``n`` bytes in the pipe ``r`` into ``fd`` at ``pos``."""
    while n:
        try:
            moved = os.splice(r, fd, n, offset_dst=pos) if _splice_works[0] else 0
        except OSError as exc:
            if exc.errno not in _REFUSED:
                raise
            _splice_works[0] = False  # this file system cannot take spliced pages: read them back
            moved = 0
        if not moved:
            data = os.read(r, n)
            if not data:
                raise IntegrityError(f"the pipe held {n} bytes fewer than spliced into it", operation="get")
            _pwrite_all(fd, data, pos)
            moved = len(data)
        n, pos = n - moved, pos + moved


async def download_ranges(
    store: StorageBackend,
    key: str,
    dest: Path,
    *,
    bars: Bars,
    streams: asyncio.Semaphore,
    chunk: int | None = None,
    threads: concurrent.futures.Executor | None = None,
) -> int:
    """Download ``key`` to ``dest`` with parallel ranged reads (``streams`` bounds the reads in
    flight, shared by a tree's files); the bytes read in this run.

    Each range is written in place (``pwrite``) into ``DEST.part``, made as long as the
    object; ``DEST.part.json`` records the object's etag and size and, as ranges complete
    (after an ``fdatasync``, at most every ``RECORD_EVERY``), the spans written. A rerun
    reads only the missing spans, each with ``If-Match`` on the recorded etag, so two
    versions are never spliced; the complete file is fsynced and renamed to ``DEST``. A
    store without conditional ranged reads gets
    :func:`download` (one resumable stream).

    With ``threads`` an S3 store's ranges are read on those threads (a presigned URL each,
    ``http.client`` reading straight into a buffer that is written in place): receiving is
    most of a download's work, and on one event loop it all ran on one core."""
    caps = store.capabilities
    if caps.ranges and caps.conditional_get:
        with exclusive(dest.with_name(dest.name + ".part.lock"), str(dest)):
            s3 = _s3(store)
            threads = threads if s3 is not None and not s3._read_headers else None  # SSE-C: no presigned reads
            got = await _ranged(store, key, dest, bars, streams, chunk, threads)
        if got is not None:
            return got
    return await download(store, key, dest, resume=True, quiet=True, bars=bars)  # empty, or no ranges


async def _ranged(
    store: StorageBackend,
    key: str,
    dest: Path,
    bars: Bars,
    streams: asyncio.Semaphore,
    chunk: int | None,
    threads: concurrent.futures.Executor | None,
) -> int | None:
    part = dest.with_name(dest.name + ".part")
    side = dest.with_name(dest.name + ".part.json")
    recorded, have = await asyncio.to_thread(_load_partial, side), await asyncio.to_thread(_size, part)
    done: list[tuple[int, int]] = []
    first: Download | None = None
    if recorded is not None and recorded.key == key and recorded.etag and have > 0:
        info = await store.head(key)
        if (info.etag, info.size) == (recorded.etag, recorded.size):
            limit = min(info.size, have)
            spans = recorded.done if recorded.done is not None else ((0, have),)
            for a, b in spans:
                if 0 <= a < min(b, limit):
                    done = _merge(done, (a, min(b, limit)))
        else:
            note(f"{key} changed since the partial download; starting over")
    if done:
        assert recorded is not None
        etag, size = recorded.etag, recorded.size
    else:
        await asyncio.to_thread(_discard, part, side)
        if threads is not None:  # every range on the threads: the version to read is the HEAD's
            head = await store.head(key)
            if not head.size:
                return None
            etag, size = head.etag, head.size
        else:
            try:
                first = await store.open(key, range=ByteRange(0, chunk or CHUNK))
            except InvalidRangeError:  # an empty object
                return None
            etag, size = first.info.etag, first.info.size
    resumed = sum(b - a for a, b in done)
    if resumed:
        note(f"resuming {key} at {human(resumed)}")
    step = chunk or (CHUNK if first is not None else _range_size(size))  # the first range is open already
    todo = _missing(size, done, step)
    try:
        fd = await asyncio.to_thread(os.open, part, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except BaseException:
        if first is not None:
            await first.aclose()
        raise
    record: dict[str, Any] = {"key": key, "etag": etag, "size": size}
    saving, saved, last = asyncio.Lock(), list(done), [time.monotonic()]

    partial: dict[tuple[int, int], int] = {}  # a range in flight -> its bytes written from its start

    async def save() -> None:
        if saving.locked() or time.monotonic() - last[0] < RECORD_EVERY:
            return  # the next save records these spans too
        async with saving:
            snapshot = list(done)  # and the written start of each range in flight
            for (start, _), written in list(partial.items()):
                snapshot = _merge(snapshot, (start, start + written)) if written else snapshot
            if saved != snapshot:
                await asyncio.to_thread(_sync_record, fd, side, {**record, "done": snapshot})
                saved[:], last[0] = snapshot, time.monotonic()

    async def keep_recording() -> None:
        """Save every ``RECORD_EVERY`` until the ranges are done (large ranges complete seldom)."""
        while True:
            try:
                await asyncio.wait_for(finished.wait(), RECORD_EVERY)
                return
            except TimeoutError:
                await save()

    async def fetch(span: tuple[int, int], dl: Download | None, advance: Advance) -> None:
        def tracked(n: int) -> None:  # bytes already written, from the range's start on
            advance(n)
            partial[span] = partial.get(span, 0) + n

        try:
            async with streams:  # released before the record is saved
                if dl is None and threads is not None:
                    await on_thread(span, threads, tracked)
                else:
                    await streamed(span, dl, tracked)
        finally:
            partial.pop(span, None)
            if dl is not None:
                await dl.aclose()
        done[:] = _merge(done, span)
        await save()

    async def on_thread(span: tuple[int, int], threads: concurrent.futures.Executor, advance: Advance) -> None:
        if not urls or time.monotonic() - urls[0][1] > _RESIGN_AFTER:  # one signature serves many ranges
            urls[:] = [(await store.sign_url(key, expires_in=3600), time.monotonic())]
        url = urls[0][0]
        loop = asyncio.get_running_loop()
        held, told = [0], [time.monotonic()]  # bytes not yet shown; when the loop was last told

        def moved(n: int) -> None:  # on the range's thread: the loop is woken at most every PROGRESS_EVERY
            held[0] += n
            now = time.monotonic()
            if now - told[0] >= PROGRESS_EVERY:
                loop.call_soon_threadsafe(advance, held[0])
                held[0], told[0] = 0, now

        job = threads.submit(_get_range, url, span, etag, fd, stop, moved)
        running.add(job)
        try:
            await asyncio.wrap_future(job)
        except _Refused as refused:
            raise _s3_error(refused, key, store) from None
        finally:
            if held[0]:
                advance(held[0])

    async def streamed(span: tuple[int, int], dl: Download | None, advance: Advance) -> None:
        start, end = span
        if dl is None:
            dl = await store.open(key, range=ByteRange(start, end), if_match=etag)
        async with dl:
            if (dl.info.etag, dl.info.size, dl.start, dl.end) != (etag, size, start, end):
                raise IntegrityError(
                    f"{store.name} served bytes {dl.start}-{dl.end} of version {dl.info.etag!r} for "
                    f"{start}-{end} of {etag!r}: rerun to start over",
                    key=key,
                    operation="get",
                )
            pos = start
            async for data in dl:
                await asyncio.to_thread(_pwrite_all, fd, data, pos)
                pos += len(data)
                advance(len(data))
        if pos != end:
            raise IntegrityError(f"short read of {key}: {pos - start} of {end - start} bytes", key=key)
        if WRITE_BACK:
            await asyncio.to_thread(_write_back, fd, start, end)

    stop = threading.Event()  # tells range threads to give up (the run was interrupted)
    running: set[concurrent.futures.Future[None]] = set()
    urls: list[tuple[str, float]] = []
    finished = asyncio.Event()
    recorder: asyncio.Task[None] | None = None
    try:
        await asyncio.to_thread(_start, fd, size, side, {**record, "done": done})
        recorder = asyncio.create_task(keep_recording())
        with bars(f"get {key}", size, resumed) as advance:
            try:
                async with asyncio.TaskGroup() as tg:
                    for span in todo:
                        tg.create_task(fetch(span, first, advance))
                        first = None  # the first task owns it now
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
        finished.set()
        await recorder  # its last save is over (and its error, if any, is the download's)
        await asyncio.to_thread(os.fsync, fd)
    finally:
        stop.set()
        finished.set()
        if recorder is not None:  # no record is written from a thread once fd is closed
            await asyncio.wait([recorder])
            if not recorder.cancelled():
                recorder.exception()  # retrieved: the error being raised is the download's
        if running:  # no thread may write to fd once it is closed (its number is reused)
            await asyncio.to_thread(concurrent.futures.wait, running)
        if first is not None:
            await first.aclose()
        await asyncio.to_thread(os.close, fd)
    if done != [(0, size)]:
        raise IntegrityError(f"{part} is incomplete: rerun to resume", key=key)
    await asyncio.to_thread(os.replace, part, dest)
    await asyncio.to_thread(_discard, side)
    return size - resumed


# --- put ------------------------------------------------------------------------------------------


async def upload(
    store: StorageBackend,
    key: str,
    path: Path | None,
    *,
    content_type: str | None,
    metadata: Mapping[str, str],
    state_dir: str | None,
    quiet: bool,
    bars: Bars | None = None,
    mode: WriteMode = "overwrite",
    cache_control: str | None = None,
    part_slots: asyncio.Semaphore | None = None,
) -> ObjectInfo:
    """Upload the file at ``path`` (stdin if ``None``) to ``key``, resuming where the store allows
    (see the module docstring). A ``mode`` other than overwrite, or a ``cache_control``, makes it
    one atomic write. ``part_slots`` bounds the S3 parts in flight (shared by a tree's uploads;
    default: the store's ``max_concurrency`` for this file)."""
    from ..backends.http import HttpBackend

    size = None if path is None else (await asyncio.to_thread(path.stat)).st_size
    s3 = _s3(store)
    plain = mode == "overwrite" and cache_control is None
    with (bars or _bar(quiet))(f"put {key}", size, 0) as advance:
        if path is not None and size is not None and plain:
            if isinstance(store, HttpBackend) and size >= store.settings.multipart_threshold:
                return await store.upload_file(
                    key, path, content_type=content_type, metadata=metadata, state_dir=state_dir, progress=advance
                )
            if s3 is not None and size > s3.settings.part_size:
                from ..backends.http import _default_state_dir

                state = Path(state_dir or _default_state_dir())
                return await _upload_s3(s3, key, path, content_type, dict(metadata), state, advance, part_slots)
        return await store.put_object(
            key,
            read_file(path, advance),
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
        )


def _bar(quiet: bool) -> Bars:
    return lambda label, total, done: progress(label, total, quiet, done=done)


def _s3(store: StorageBackend) -> S3Backend | None:
    """``store`` if it is an S3 store (its module is loaded iff one was built: no import of the extra)."""
    module = sys.modules.get("unistore.backends.s3")
    return store if module is not None and isinstance(store, module.S3Backend) else None


@dataclass(slots=True)
class _S3State:
    token: str
    part_size: int
    parts: dict[int, PartInfo] = field(default_factory=dict)

    def dump(self) -> dict[str, Any]:
        parts = {n: [p.size, p.etag, p.checksum] for n, p in self.parts.items()}
        return {"token": self.token, "part_size": self.part_size, "parts": parts}


def _load_s3_state(path: Path) -> _S3State | None:
    from ..backends.s3 import PartInfo

    try:
        raw = json.loads(path.read_text())
        parts = {int(n): PartInfo(int(n), int(p[0]), str(p[1]), p[2]) for n, p in raw["parts"].items()}
        return _S3State(str(raw["token"]), int(raw["part_size"]), parts)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None


async def _upload_s3(
    backend: S3Backend,
    key: str,
    path: Path,
    content_type: str | None,
    metadata: dict[str, str],
    state_dir: Path,
    advance: Advance,
    part_slots: asyncio.Semaphore | None = None,
) -> ObjectInfo:
    """Upload ``path`` as a resumable ``backend.uploads`` session recorded under ``state_dir``."""
    from ..backends.s3._multipart import MAX_PARTS

    st = await asyncio.to_thread(os.stat, path)
    s, uploads = backend.settings, backend.uploads
    if -(-st.st_size // s.part_size) > MAX_PARTS:
        raise InvalidArgumentError(f"object needs more than {MAX_PARTS} parts: raise part_size", key=key)
    where = await asyncio.to_thread(os.path.abspath, path)
    ident = [s.endpoint, backend.bucket, s.prefix, key, content_type, metadata, where, st.st_size, st.st_mtime_ns]
    state_file = state_dir / ("s3-" + hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest() + ".json")
    with exclusive(state_file.with_suffix(".lock"), f"{path} to {key}"):
        state = await asyncio.to_thread(_load_s3_state, state_file)
        session = None
        if state is not None:
            try:
                session = uploads.resume(state.token)
                held = {p.number: p for p in await uploads.list_parts(session)}
            except (NotFoundError, InvalidArgumentError):  # expired, aborted or completed: start over
                session = None
            else:
                state.parts = {n: p for n, p in state.parts.items() if (p.size, p.etag) == _facts(held.get(n))}
        if state is None or session is None:
            # the parts are hashed here, so a crc32 store gets CRC-32 parts (a tenth of MD5's CPU)
            session = await uploads.start(key, content_type=content_type, metadata=metadata, keep_crc32=True)
            state = _S3State(session.token, s.part_size)
            await asyncio.to_thread(write_json, state_file, state.dump())
        size, step = st.st_size, state.part_size
        count = -(-size // step)
        resumed = sum(p.size for p in state.parts.values())
        if resumed:
            note(f"resuming {key} at {human(resumed)}")
        advance(resumed)
        slots, record = part_slots or asyncio.Semaphore(s.max_concurrency), asyncio.Lock()
        fd = await asyncio.to_thread(os.open, path, os.O_RDONLY)
        run, opened = state, session

        async def send(number: int) -> None:
            async with slots:
                offset = (number - 1) * step
                length = min(step, size - offset)
                stored = await _send_part(backend, opened, number, fd, offset, length)
                async with record:
                    run.parts[number] = stored
                    await asyncio.to_thread(write_json, state_file, run.dump())
                advance(length)

        try:
            async with asyncio.TaskGroup() as tg:
                for number in range(1, count + 1):
                    if number not in run.parts:
                        tg.create_task(send(number))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        finally:
            await asyncio.to_thread(os.close, fd)
        try:
            info = await uploads.complete(opened, [run.parts[n] for n in sorted(run.parts)])
        except IntegrityError:  # the recorded parts do not add up: the next run starts over
            await asyncio.to_thread(_discard, state_file)
            raise
        await asyncio.to_thread(_discard, state_file)
        return info


_SLICE = 1024 * 1024


async def _send_part(
    backend: S3Backend, session: UploadSession, number: int, fd: int, offset: int, length: int
) -> PartInfo:
    """Send part ``number``, bytes ``[offset, offset + length)`` of the file ``fd``: hashed in a
    first pass (1 MiB slices read into one buffer) when the session has a checksum, then sent by
    the kernel (``sendfile``) over plain HTTP, or read and sent 1 MiB at a time over TLS: memory
    stays about 1 MiB per part in flight, whatever the part size."""
    from ..backends.s3 import _multipart as _s3multipart
    from ..backends.s3._fast import FileRange
    from ..backends.s3._wire import checksum_header

    def short() -> IntegrityError:
        return IntegrityError("the file changed size during the upload", key=session.key, operation="put")

    def read(pos: int) -> bytes:
        n = min(_SLICE, offset + length - pos)
        data = os.pread(fd, n, pos)
        if len(data) != n:
            raise short()
        return data

    def slices() -> Iterator[memoryview]:
        view = memoryview(bytearray(min(_SLICE, length)))
        for pos in range(offset, offset + length, _SLICE):
            want = min(_SLICE, offset + length - pos)
            if os.preadv(fd, [view[:want]], pos) != want:
                raise short()
            yield view[:want]

    def digest() -> tuple[dict[str, str], str | None]:
        return checksum_header(session.checksum, slices())

    async def chunks() -> AsyncIterator[bytes]:
        for pos in range(offset, offset + length, _SLICE):
            yield await asyncio.to_thread(read, pos)

    headers, checksum = ({}, None) if session.checksum == "none" else await asyncio.to_thread(digest)
    body = FileRange(fd, offset, length, chunks)
    return await _s3multipart._put_part(
        backend, session.key, session.upload_id, number, body, length, headers, checksum
    )


def _facts(part: PartInfo | None) -> tuple[int, str] | None:
    return None if part is None else (part.size, part.etag)
