"""Tree transfers (``unistore cp -r``, ``sync``, ``mv -r``) and prefix-wide ``rm -r`` / ``du``.

A tree is a store prefix or a local directory. Both sides are listed lazily in
code-point order and merged, so memory stays bounded however many files there
are; a bounded queue feeds ``transfers`` workers.

- A file is **unchanged** when the sizes are equal and the destination is not older
  than the source (whole seconds: S3 keeps no more); with ``checksum`` when the
  SHA-256 digests are equal (an object's ``sha256`` metadata when it has one, else its
  bytes are read). Downloaded files get the object's modification time, so the next
  run compares equal.
- Unchanged files are skipped, which is what makes a rerun after Ctrl-C cheap; large
  files (``RESUME_AT``) resume where they stopped (see :mod:`unistore.cli._transfer`):
  downloads are parallel ranged reads written in place, uploads resumable multipart sessions
  whose parts are streamed from the file.
- Small files (``SMALL``) move in one piece: one read and one request up; one request down
  and one write through a temp file and a rename, on a writer thread beside the event loop.
- Filters: a path (relative to the tree, ``/``-separated) is selected when it matches
  one ``--include`` glob (if any are given) and no ``--exclude`` glob. ``*`` matches
  across ``/`` (as in aws-cli), so ``*.jpg`` selects JPEGs at any depth. Files left out
  by the filters are neither copied nor deleted.
- ``sync --delete`` removes destination files that the source lacks, after every copy
  succeeded (nothing is deleted when a copy failed).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fnmatch
import hashlib
import math
import os
import queue
import shutil
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import typer

from .._base import StorageBackend
from .._errors import AlreadyExistsError, IntegrityError, InvalidRangeError, StorageError
from .._types import ObjectInfo, WriteMode
from ._transfer import Advance, _ignore, _s3, download, download_ranges, err, human, note, upload

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = [
    "Filters",
    "LocalTree",
    "Options",
    "StoreTree",
    "Tree",
    "TreeStats",
    "remove_tree",
    "stdin_confirms",
    "transfer_tree",
]

LARGE = 32 * 1024 * 1024
"""Files at least this large get a bar of their own in the shared display."""

RESUME_AT = LARGE
"""Downloads at least this large keep a resumable ``.part`` (locked, fsynced); smaller ones
are written in one go through a temp file and a rename (as ``get --no-resume``), which
costs a fraction of the system calls: a rerun simply fetches them again."""

SMALL = 1024 * 1024
"""Files up to this size move in one piece: read in one call, or written through a temp file and
a rename with their modification time; sent or fetched in one request."""

DOWNLOAD_STREAMS = 8
"""Ranged reads in flight across all of a tree's large downloads (sized by ``_transfer._range_size``)."""

UPLOAD_PARTS = 6
"""S3 parts in flight across all of a tree's multipart uploads (8 MiB each by default): what
bounds memory however many large files are sent at once (each file alone would use the
store's ``max_concurrency``, 8, so ``-j 4`` held 32 parts, over 400 MiB)."""

_OWN_FILES = (".part", ".part.json", ".part.lock")


@dataclass(frozen=True, slots=True)
class Item:
    """One file of a tree."""

    rel: str
    size: int
    mtime: float
    info: ObjectInfo | None = None  # what the store said, for objects


@dataclass(frozen=True, slots=True)
class Filters:
    """``--include`` / ``--exclude`` globs over tree-relative paths."""

    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def selects(self, rel: str) -> bool:
        """Whether ``rel`` takes part (see the module docstring)."""
        if self.include and not any(fnmatch.fnmatchcase(rel, g) for g in self.include):
            return False
        return not any(fnmatch.fnmatchcase(rel, g) for g in self.exclude)


@dataclass(frozen=True, slots=True)
class Options:
    """How a tree transfer runs."""

    transfers: int = 16
    checksum: bool = False
    ignore_existing: bool = False
    delete: bool = False
    move: bool = False
    dry_run: bool = False
    quiet: bool = False
    filters: Filters = Filters()
    content_type: str | None = None
    cache_control: str | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    state_dir: str | None = None


@dataclass(slots=True)
class TreeStats:
    """What a run did."""

    copied: int = 0
    bytes: int = 0
    unchanged: int = 0
    existing: int = 0
    deleted: int = 0
    failed: int = 0
    first_error: BaseException | None = None

    def summary(self, seconds: float, dry_run: bool = False) -> str:
        would = "would " if dry_run else ""
        parts = [f"{would}{'copy' if dry_run else 'copied'} {self.copied} ({human(self.bytes)})"]
        if self.unchanged:
            parts.append(f"skipped {self.unchanged} unchanged")
        if self.existing:
            parts.append(f"skipped {self.existing} existing")
        if self.deleted:
            parts.append(f"{would}{'delete' if dry_run else 'deleted'} {self.deleted}")
        if self.failed:
            parts.append(f"failed {self.failed}")
        return ", ".join(parts) + f" in {seconds:.1f} s"


class Tree(ABC):
    """One side of a tree transfer."""

    @abstractmethod
    def items(self) -> AsyncIterator[Item]:
        """Every file, in code-point order of ``rel``."""

    @abstractmethod
    def name(self, rel: str) -> str:
        """How messages name a file of the tree."""

    @abstractmethod
    async def sha256(self, item: Item) -> str:
        """The file's SHA-256 (hex)."""

    @abstractmethod
    async def remove(self, rel: str) -> None:
        """Delete one file (missing is fine)."""


@dataclass(slots=True)
class StoreTree(Tree):
    """The objects under ``prefix`` of a store."""

    store: StorageBackend
    prefix: str = ""

    async def items(self) -> AsyncIterator[Item]:
        async for info in self.store.iter_objects(self.prefix):
            yield Item(info.key[len(self.prefix) :], info.size, info.last_modified.timestamp(), info)

    def name(self, rel: str) -> str:
        return self.prefix + rel

    async def sha256(self, item: Item) -> str:
        recorded = item.info.metadata.get("sha256") if item.info is not None else None
        if recorded:
            return recorded
        digest = hashlib.sha256()
        async with await self.store.open(self.prefix + item.rel) as dl:
            async for chunk in dl:
                digest.update(chunk)
        return digest.hexdigest()

    async def remove(self, rel: str) -> None:
        await self.store.remove(self.prefix + rel)


@dataclass(slots=True)
class LocalTree(Tree):
    """The regular files under a local directory (symbolic links and the CLI's own partial
    files are not part of it)."""

    root: Path

    async def items(self) -> AsyncIterator[Item]:
        walk = _walk(self.root, "")
        while batch := await asyncio.to_thread(_take, walk, 512):
            for item in batch:
                yield item

    def name(self, rel: str) -> str:
        return str(self.root / rel)

    async def sha256(self, item: Item) -> str:
        return await asyncio.to_thread(_file_sha256, self.root / item.rel)

    async def remove(self, rel: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, self.root / rel)


def _walk(directory: Path, rel: str) -> Iterator[Item]:
    """Files under ``directory`` in code-point order of their relative path (a directory ``d``
    sorts as ``d/``, which is where its files fall in that order)."""
    try:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
    except FileNotFoundError:
        return
    for sort_name, entry in sorted(entries, key=lambda pair: pair[0]):
        if sort_name.endswith("/"):
            yield from _walk(Path(entry.path), rel + sort_name)
        elif entry.is_file(follow_symlinks=False) and not entry.name.endswith(_OWN_FILES):
            if entry.name.startswith(".unistore."):
                continue  # a temp file of an interrupted write
            st = entry.stat(follow_symlinks=False)
            yield Item(rel + entry.name, st.st_size, st.st_mtime)


def _take(items: Iterator[Item], n: int) -> list[Item]:
    out = []
    for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


async def _merged(src: AsyncIterator[Item], dst: AsyncIterator[Item]) -> AsyncIterator[tuple[Item | None, Item | None]]:
    """Pairs of same-named files from two sorted listings (``None`` where one side lacks it).

    A listing out of code-point order would pair the wrong files (and ``--delete`` would
    remove files the source has), so it stops the run with :class:`IntegrityError`."""
    src, dst = _ordered(src), _ordered(dst)
    a = await anext(src, None)
    b = await anext(dst, None)
    while a is not None or b is not None:
        if b is None or (a is not None and a.rel < b.rel):
            yield a, None
            a = await anext(src, None)
        elif a is None or b.rel < a.rel:
            yield None, b
            b = await anext(dst, None)
        else:
            yield a, b
            a, b = await anext(src, None), await anext(dst, None)


async def _ordered(items: AsyncIterator[Item]) -> AsyncIterator[Item]:
    last: str | None = None
    async for item in items:
        if last is not None and item.rel <= last:
            raise IntegrityError(
                f"the store listed {item.rel!r} after {last!r}: not in key order, so trees cannot be compared"
            )
        last = item.rel
        yield item


class _Display:
    """One progress display for a whole tree: files and bytes overall, a bar per large file.
    Disabled (quiet, or stderr not a terminal) it only counts: nothing per file goes through rich."""

    def __init__(self, quiet: bool) -> None:
        self.live = not quiet and err().is_terminal
        self.files = self.done = 0
        self.bar: Progress | contextlib.nullcontext[None] = contextlib.nullcontext()
        if self.live:  # rich's progress display is imported only to be shown
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=err(),
                transient=False,
            )
            self.total: TaskID = self._bar.add_task("", total=0)
            self._describe()

    def _describe(self) -> None:
        self._bar.update(self.total, description=f"{self.done}/{self.files} files")

    def plan(self, size: int) -> None:
        self.files += 1
        if self.live:
            task = self._bar.tasks[self.total]
            self._bar.update(self.total, total=(task.total or 0) + size)
            self._describe()

    def finish(self) -> None:
        self.done += 1
        if self.live:
            self._describe()

    @contextlib.contextmanager
    def bars(self, label: str, total: int | None, done: int) -> Iterator[Advance]:
        if not self.live:
            yield _ignore
            return
        own = self._bar.add_task(label, total=total, completed=done) if (total or 0) >= LARGE else None
        self._bar.advance(self.total, done)

        def advance(n: int) -> None:
            self._bar.advance(self.total, n)
            if own is not None:
                self._bar.advance(own, n)

        try:
            yield advance
        finally:
            if own is not None:
                self._bar.remove_task(own)


Action = Literal["copy", "check", "skip"]
"""copy; compare digests, then copy if they differ; nothing to copy (a move still removes the source)."""


async def transfer_tree(src: Tree, dst: Tree, opts: Options) -> TreeStats:
    """Make ``dst`` hold ``src``'s selected files (see the module docstring)."""
    stats, started = TreeStats(), time.monotonic()
    queue: asyncio.Queue[_Job | None] = asyncio.Queue(maxsize=2 * opts.transfers)
    display = _Display(opts.quiet or opts.dry_run)
    shared = _Shared(display)

    async def produce() -> None:
        async for a, b in _merged(src.items(), dst.items()):
            if a is None or not opts.filters.selects(a.rel):
                continue
            if b is not None and opts.ignore_existing:
                stats.existing += 1
                continue
            if b is not None and not opts.checksum and _same_by_time(a, b):
                stats.unchanged += 1
                if opts.move and not opts.dry_run:
                    display.plan(0)
                    await queue.put(("skip", a, b))
                continue
            if opts.dry_run:
                typer.echo(f"would copy {src.name(a.rel)} -> {dst.name(a.rel)} ({human(a.size)})")
                stats.copied, stats.bytes = stats.copied + 1, stats.bytes + a.size
                continue
            display.plan(a.size)
            await queue.put(("check" if b is not None and opts.checksum else "copy", a, b))

    with display.bar, _first_error(), shared.threads, contextlib.closing(shared.writer):
        async with asyncio.TaskGroup() as tg:
            workers = [tg.create_task(_work(queue, src, dst, opts, shared, stats)) for _ in range(opts.transfers)]
            try:
                await produce()
            finally:
                for _ in workers:
                    await queue.put(None)
    if opts.delete and stats.failed == 0:
        with _first_error():
            await _delete_extra(src, dst, opts, stats)
    if not opts.quiet:
        note(stats.summary(time.monotonic() - started, opts.dry_run))
    return stats


_Job = tuple[Action, Item, "Item | None"]


async def _work(
    queue: asyncio.Queue[_Job | None], src: Tree, dst: Tree, opts: Options, shared: _Shared, stats: TreeStats
) -> None:
    """One transfer slot: jobs from ``queue`` until ``None``, each file's failure counted and told."""
    while (job := await queue.get()) is not None:
        action, a, b = job
        try:
            if action == "skip":
                pass
            elif action == "check" and b is not None and await _same_digest(src, dst, a, b):
                stats.unchanged += 1
            else:
                await _copy(src, dst, a, opts, shared)
                stats.copied, stats.bytes = stats.copied + 1, stats.bytes + a.size
            if opts.move:
                await src.remove(a.rel)
        except AlreadyExistsError:
            stats.existing += 1
        except (StorageError, OSError) as exc:
            stats.failed += 1
            stats.first_error = stats.first_error or exc
            message = exc.message if isinstance(exc, StorageError) else str(exc)
            note(f"{type(exc).__name__}: {message or exc} ({src.name(a.rel)})")
        finally:
            shared.display.finish()


def _same_by_time(a: Item, b: Item) -> bool:
    return a.size == b.size and b.mtime >= math.floor(a.mtime)


async def _same_digest(src: Tree, dst: Tree, a: Item, b: Item) -> bool:
    return a.size == b.size and await src.sha256(a) == await dst.sha256(b)


_MORE: Any = object()  # the writer's queue ran empty: wait for more


class _Writer:
    """A thread that writes small downloaded files beside the event loop: creating a file is most
    of a small download's cost, and it runs in parallel with the requests on the loop. Results
    come back to the loop in batches (one wake-up for all the files written meanwhile)."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Path, bytes, float, set[Path], asyncio.Future[None]] | None] = (
            queue.SimpleQueue()
        )
        self.thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def write(self, path: Path, data: bytes, mtime: float, folders: set[Path]) -> None:
        """:func:`_write_small` on the writer thread."""
        if self.thread is None:
            self.loop = asyncio.get_running_loop()
            self.thread = threading.Thread(target=self._run, name="unistore-writer", daemon=True)
            self.thread.start()
        assert self.loop is not None
        done = self.loop.create_future()
        self.jobs.put((path, data, mtime, folders, done))
        await done

    def _run(self) -> None:
        assert self.loop is not None
        job = self.jobs.get()
        while job is not None:
            settled: list[tuple[asyncio.Future[None], BaseException | None]] = []
            while job is not None:  # everything queued meanwhile is one batch
                path, data, mtime, folders, done = job
                try:
                    _write_small(path, data, mtime, folders)
                    settled.append((done, None))
                except BaseException as exc:  # handed to the waiting task
                    settled.append((done, exc))
                try:
                    job = self.jobs.get_nowait()
                except queue.Empty:
                    job = _MORE
                    break
            try:
                self.loop.call_soon_threadsafe(_settle, settled)
            except RuntimeError:  # the loop is closed
                return
            if job is _MORE:
                job = self.jobs.get()

    def close(self) -> None:
        if self.thread is not None:
            self.jobs.put(None)


def _settle(settled: list[tuple[asyncio.Future[None], BaseException | None]]) -> None:
    for done, exc in settled:
        if done.done():
            continue
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)


@dataclass(slots=True)
class _Shared:
    """What a tree's transfers share: the progress display, the bounds on S3 parts and ranged
    reads in flight, and the local folders known to exist."""

    display: _Display
    parts: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(UPLOAD_PARTS))
    streams: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(DOWNLOAD_STREAMS))
    folders: set[Path] = field(default_factory=set)
    writer: _Writer = field(default_factory=lambda: _Writer())
    threads: concurrent.futures.ThreadPoolExecutor = field(
        default_factory=lambda: concurrent.futures.ThreadPoolExecutor(DOWNLOAD_STREAMS, "unistore-range")
    )


async def _copy(src: Tree, dst: Tree, a: Item, opts: Options, shared: _Shared) -> None:
    mode: WriteMode = "create" if opts.ignore_existing else "overwrite"
    metadata = dict(a.info.metadata) if a.info is not None else {}
    metadata.update(opts.metadata)
    display = shared.display
    if isinstance(dst, StoreTree):
        key = dst.prefix + a.rel
        if opts.checksum:
            metadata["sha256"] = await src.sha256(a)
        if isinstance(src, LocalTree):
            data = await asyncio.to_thread(_read_small, src.root / a.rel) if a.size <= SMALL else None
            if data is not None:
                with display.bars(f"cp {a.rel}", len(data), 0) as advance:
                    await dst.store.put_object(
                        key,
                        data,
                        content_type=opts.content_type,
                        metadata=metadata,
                        mode=mode,
                        cache_control=opts.cache_control,
                    )
                    advance(len(data))
                return
            await upload(
                dst.store,
                key,
                src.root / a.rel,
                content_type=opts.content_type,
                metadata=metadata,
                state_dir=opts.state_dir,
                quiet=True,
                bars=display.bars,
                mode=mode,
                cache_control=opts.cache_control,
                part_slots=shared.parts,
            )
            return
        assert isinstance(src, StoreTree) and a.info is not None
        async with await src.store.open(src.prefix + a.rel) as dl:
            stored = dl.info  # the object's own fields: a listing (S3's) may not carry them
            with display.bars(f"cp {a.rel}", a.size, 0) as advance:
                await dst.store.put_object(
                    key,
                    _counted(dl.__aiter__(), advance),
                    content_type=opts.content_type or stored.content_type,
                    metadata={**stored.metadata, **metadata},
                    mode=mode,
                    cache_control=opts.cache_control or stored.cache_control,
                    content_disposition=stored.content_disposition,
                )
        return
    assert isinstance(dst, LocalTree)
    path = dst.root / a.rel
    if isinstance(src, StoreTree):
        key = src.prefix + a.rel
        if 0 < a.size <= SMALL and a.size < RESUME_AT:
            data = await _get_small(src.store, key)
            if data is not None:
                with display.bars(f"get {key}", len(data), 0) as advance:
                    await shared.writer.write(path, data, a.mtime, shared.folders)
                    advance(len(data))
                return
        await asyncio.to_thread(_make_folder, path.parent, shared.folders)
        if a.size >= RESUME_AT:
            await download_ranges(
                src.store, key, path, bars=display.bars, streams=shared.streams, threads=shared.threads
            )
        else:
            await download(src.store, key, path, resume=False, quiet=True, bars=display.bars)
    else:
        assert isinstance(src, LocalTree)
        await asyncio.to_thread(_make_folder, path.parent, shared.folders)
        with display.bars(f"cp {a.rel}", a.size, 0) as advance:
            await asyncio.to_thread(shutil.copyfile, src.root / a.rel, path)
            advance(a.size)
    await asyncio.to_thread(os.utime, path, (a.mtime, a.mtime))


async def _get_small(store: StorageBackend, key: str) -> bytes | None:
    """The object's bytes, or ``None`` when it is larger than ``SMALL`` (then it is streamed).

    On S3 one ranged GET (``bytes=0-SMALL``, so a grown object is not read whole) through the
    store's lean keep-alive pool: a third of the CPU of a streamed response."""
    s3 = _s3(store)
    if s3 is None:
        async with await store.open(key) as dl:
            if dl.content_length > SMALL:
                return None
            data = await dl.read()
            if len(data) != dl.content_length:
                raise IntegrityError(f"read {len(data)} of {dl.content_length} bytes", key=key, operation="get")
            return data
    headers = {**s3._read_headers, "range": f"bytes=0-{SMALL}"}
    try:
        r = await s3._send("GET", s3._object_path(key), op="open", key=key, headers=headers)
    except InvalidRangeError:  # empty now
        return None
    total = r.headers.get("Content-Range", "").rpartition("/")[2]
    if r.status not in (200, 206) or (r.status == 206 and not total.isdigit()) or len(r.body) > SMALL:
        return None
    body: bytes = r.body
    return None if r.status == 206 and int(total) != len(body) else body


def _make_folder(folder: Path, known: set[Path]) -> None:
    if folder not in known:
        folder.mkdir(parents=True, exist_ok=True)
        known.add(folder)


def _read_small(path: Path) -> bytes | None:
    """The file's bytes, or ``None`` when it has grown past ``SMALL`` (then it is streamed)."""
    chunks, n = [], 0
    with open(path, "rb", buffering=0) as f:
        while n <= SMALL and (chunk := f.read(SMALL + 1 - n)):
            chunks.append(chunk)
            n += len(chunk)
    return (chunks[0] if len(chunks) == 1 else b"".join(chunks)) if n <= SMALL else None


def _write_small(path: Path, data: bytes, mtime: float, known: set[Path]) -> None:
    """Write ``path`` atomically: a temp file beside it (``.unistore.*``, which listings skip)
    gets the bytes and ``mtime``, then is renamed over ``path``. A partial download left by a
    larger earlier version of the file goes."""
    _make_folder(path.parent, known)
    for leftover in (".part", ".part.json"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path.with_name(path.name + leftover))
    while True:
        tmp = path.with_name(f".unistore.{os.urandom(6).hex()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue
        break
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.utime(fd, (mtime, mtime))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


async def _counted(chunks: AsyncIterator[bytes], advance: Advance) -> AsyncIterator[bytes]:
    async for data in chunks:
        advance(len(data))
        yield data


async def _delete_extra(src: Tree, dst: Tree, opts: Options, stats: TreeStats) -> None:
    """Delete the selected destination files the source lacks (a second merged pass)."""
    gate = asyncio.Semaphore(opts.transfers)

    async def delete(rel: str) -> None:
        try:
            await dst.remove(rel)
            stats.deleted += 1
        finally:
            gate.release()

    async with asyncio.TaskGroup() as tg:
        async for a, b in _merged(src.items(), dst.items()):
            if a is None and b is not None and opts.filters.selects(b.rel):
                if opts.dry_run:
                    typer.echo(f"would delete {dst.name(b.rel)}")
                    stats.deleted += 1
                else:
                    await gate.acquire()  # bounds the tasks in flight, so memory stays bounded
                    tg.create_task(delete(b.rel))


async def remove_tree(
    store: StorageBackend,
    prefix: str,
    *,
    filters: Filters,
    dry_run: bool,
    confirm: Callable[[int], bool],
    threshold: int = 1000,
    transfers: int = 8,
) -> int:
    """Delete every selected object under ``prefix``; more than ``threshold`` need ``confirm(n)``
    (``n`` is a lower bound when the listing is longer). The count deleted (or that would be)."""
    tree = StoreTree(store, prefix)
    if not dry_run:
        seen = 0
        async for item in tree.items():
            seen += filters.selects(item.rel)
            if seen > threshold:
                break
        if seen > threshold and not confirm(seen):
            return 0
    count, gate = 0, asyncio.Semaphore(transfers)

    async def delete(key: str) -> None:  # "" counts a dry run's would-be deletion
        nonlocal count
        if not key:
            count += 1
            return
        try:
            if await store.remove(key):
                count += 1
        finally:
            gate.release()

    with _first_error():
        await _delete_all(tree, filters, dry_run, gate, delete)
    return count


async def _delete_all(
    tree: StoreTree,
    filters: Filters,
    dry_run: bool,
    gate: asyncio.Semaphore,
    delete: Callable[[str], Coroutine[Any, Any, None]],
) -> None:
    async with asyncio.TaskGroup() as tg:
        async for item in tree.items():
            if not filters.selects(item.rel):
                continue
            if dry_run:
                typer.echo(f"would delete {tree.prefix + item.rel}")
                await delete("")
                continue
            await gate.acquire()
            tg.create_task(delete(tree.prefix + item.rel))


@contextlib.contextmanager
def _first_error() -> Iterator[None]:
    """A task group's first error as itself (the CLI maps error types to exit codes)."""
    try:
        yield
    except BaseExceptionGroup as group:
        first = group.exceptions[0]
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


def stdin_confirms(count: int) -> bool:
    """Ask on the terminal; refuse when there is none."""
    if not sys.stdin.isatty():
        return False
    return typer.confirm(f"delete more than {count - 1} objects?", default=False)
