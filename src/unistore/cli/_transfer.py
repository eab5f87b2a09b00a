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
import contextlib
import errno
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .._base import StorageBackend
from .._errors import IntegrityError, InvalidArgumentError, InvalidRangeError, NotFoundError, PreconditionFailedError
from .._records import exclusive, write_json
from .._types import ByteRange, Download, ObjectInfo, WriteMode

if TYPE_CHECKING:
    from ..backends.s3 import PartInfo, S3Backend

__all__ = ["Bars", "download", "human", "note", "progress", "read_file", "upload", "write_file"]

err = Console(stderr=True)
"""The CLI's stderr: progress bars, notes and one-line errors."""

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
    err.print(f"unistore: {message}", markup=False, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def progress(label: str, total: int | None, quiet: bool, done: int = 0) -> Iterator[Advance]:
    """A transfer bar (bytes, rate, ETA) on stderr when it is a terminal, starting at ``done``;
    yields ``advance(n)``."""
    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet or not err.is_terminal,
        transient=False,
    )
    with bar:
        task = bar.add_task(label, total=total, completed=done)
        yield lambda n: bar.advance(task, n)


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
    """What ``DEST.part`` is a prefix of."""

    key: str
    etag: str
    size: int


def _load_partial(side: Path) -> _Partial | None:
    try:
        raw = json.loads(side.read_text())
        return _Partial(str(raw["key"]), str(raw["etag"]), int(raw["size"]))
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
    from ..backends._s3multipart import MAX_PARTS

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
            session = await uploads.start(key, content_type=content_type, metadata=metadata)
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
                data = await asyncio.to_thread(os.pread, fd, length, offset)
                if len(data) != length:
                    raise IntegrityError("the file changed size during the upload", key=key, operation="put")
                stored = await uploads.upload_part(opened, number, data)
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


def _facts(part: PartInfo | None) -> tuple[int, str] | None:
    return None if part is None else (part.size, part.etag)
