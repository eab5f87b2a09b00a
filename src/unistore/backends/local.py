"""Objects as files under one directory, safe for several processes sharing it.

Layout: the object ``a/b.txt`` is the file ``ROOT/a/b.txt``. Everything the
store keeps for itself starts with ``.unistore`` (a segment prefix no key may
use): sidecars ``ROOT/a/.unistore.b.txt.meta``, temp files
``.unistore.tmp.<random>`` beside their target, and ``ROOT/.unistore/`` for
lock stripes and the persisted URL secret.

Versions. Every write sets the data file's mtime to a fresh stamp: a
per-process strictly increasing microsecond clock, whose sub-microsecond digits
are ``777`` when the version has a sidecar and random otherwise. Only versions
with custom metadata, cache-control, content-disposition or a content type not
guessable from the key get a sidecar (JSON: etag, content type, metadata, and
the inode, size and mtime of the data file it belongs to). A version without
one has the etag ``inode-mtime-size``; reading it costs no extra I/O. On a file
system that does not keep nanosecond mtimes as set (probed at start), every
version gets a sidecar instead.

Writes stream into a fresh temp file in the target directory (fsync'd unless
``fsync=False``), then, under a per-key-stripe lock (``fcntl.flock``, so it
holds across processes and threads), the precondition is decided, the sidecar
is renamed into place, then the data file: the data rename is the commit point.
Readers take no lock: they open the data file; if its stamp says it has a
sidecar, they accept the sidecar only if it names that inode, size and mtime,
retrying briefly (then under the lock) while a writer is between its renames.
A mismatch that survives the lock is a crash leftover: the data is served with
a stat-derived etag and a guessed content type, as are files placed by hand.

Deviations: a key cannot be both an object and a "directory" (``a`` and
``a/b``): the second write raises :class:`InvalidKeyError`. Symbolic links are
neither listed nor followed, at any position: every path is opened relative to a
descriptor of the base directory with no link allowed on the way (``openat2``, or a
walk; see ``_beneath``), then acted on by name relative to its opened directory, so a
link swapped in concurrently is never followed either. A key through a linked
directory is not found, and writing one raises :class:`InvalidKeyError`. Files placed by hand under
names no key can have (backslashes, control characters, invalid UTF-8, paths
over 1024 bytes) and special files (FIFOs, sockets) are not objects.
Cross-process locking needs POSIX ``flock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import json
import os
import random
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from .._base import (
    DEFAULT_CHUNK_SIZE,
    BaseBackend,
    check_listing_args,
    check_read_conditions,
    check_remove_condition,
    check_write_mode,
    iter_body,
    settings_from,
)
from .._errors import (
    ConfigurationError,
    InvalidKeyError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    StorageError,
)
from .._keys import RESERVED_PREFIX, validate_key
from .._signing import UrlSigner
from .._types import (
    Body,
    Capabilities,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._beneath import NOT_THERE, Beneath
from ._localfs import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    TMP_PREFIX,
    StripeLocks,
    Temp,
    copy_to_fd,
    load_secret,
    meta_path,
    read_small,
    scan_dir,
    write_all,
)

__all__ = ["LocalBackend", "LocalSettings"]


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """Settings of :class:`LocalBackend`, named after ``STORAGE_*`` variables without the prefix."""

    base_path: str = "/data/uploads"
    base_url: str = "http://localhost:8000/files"
    url_secret: str | None = field(default=None, repr=False)
    url_expiration: int = 3600
    fsync: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_object_size: int | None = None

    def __post_init__(self) -> None:
        if self.url_expiration <= 0:
            raise ConfigurationError("url_expiration must be positive")
        if self.chunk_size <= 0:
            raise ConfigurationError("chunk_size must be positive")
        if self.max_object_size is not None and self.max_object_size < 0:
            raise ConfigurationError("max_object_size must be >= 0")


@dataclass(frozen=True, slots=True)
class _Opened:
    info: ObjectInfo | os.stat_result
    fd: int | None
    data: bytes | None


class LocalBackend(BaseBackend):
    """Files in a directory, atomic and process-safe. See the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
    )

    def __init__(self, settings: LocalSettings | None = None, **options: Any) -> None:
        self.settings = settings_from(LocalSettings, settings, options)
        self.root = Path(self.settings.base_path).absolute()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._fs = Beneath(str(self.root))  # every path below is opened relative to it
            os.close(self._fs.make_dirs(f"{RESERVED_PREFIX}/locks"))
            secret = (
                self.settings.url_secret.encode()
                if self.settings.url_secret
                else load_secret(self._fs, RESERVED_PREFIX)
            )
        except OSError as exc:
            why = "a symbolic link or non-directory in the way" if exc.errno in NOT_THERE else exc.strerror
            raise ConfigurationError(
                f"cannot set up base_path {str(self.root)!r} ({why}); set STORAGE_BASE_PATH",
                backend=self.name,
            ) from exc
        self._signer = UrlSigner(secret, self.settings.base_url)
        self.default_expires_in = self.settings.url_expiration
        self._locks = StripeLocks(self._fs, f"{RESERVED_PREFIX}/locks")
        self._clock_lock = threading.Lock()
        self._last_us = 0
        # Per-process sources of unique names and stamp jitter: no getrandom() per write.
        self._jitter = random.Random(secrets.token_bytes(16))
        self._temp_seq = itertools.count()
        self._temp_tag = secrets.token_hex(4)
        self._exact = self._probe_exact_mtime()

    def __repr__(self) -> str:
        return f"LocalBackend(base_path={str(self.root)!r}, fsync={self.settings.fsync})"

    @property
    def signer(self) -> UrlSigner:
        """The signer the file route verifies this backend's URLs with."""
        return self._signer

    # --- error boundary ---------------------------------------------------------------

    def _translate(self, exc: BaseException, operation: str, key: str | None) -> BaseException:
        """The error-tree equivalent of ``exc`` (``OSError`` mapped, ``StorageError`` annotated,
        anything else unchanged): the one boundary every file-system call goes through."""
        if isinstance(exc, StorageError):
            exc.backend = exc.backend or self.name
            exc.operation = exc.operation or operation
            return exc
        if not isinstance(exc, OSError):
            return exc
        where = {"key": key, "backend": self.name, "operation": operation}
        if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError) or exc.errno in _NOT_OBJECT:
            return NotFoundError("no such object", **where)
        if isinstance(exc, PermissionError):
            return PermissionDeniedError(f"permission denied ({exc.strerror})", **where)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return QuotaExceededError(f"no space left ({exc.strerror})", **where)
        if exc.errno == errno.ENAMETOOLONG:
            return InvalidKeyError("key is too long for the file system", key=key)
        if exc.errno == errno.EROFS:
            return PermissionDeniedError("file system is read-only", **where)
        return StorageError(f"I/O error ({exc.strerror or exc})", **where)

    async def _run(self, operation: str, key: str | None, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` in a worker thread, translating its errors. (``run_in_executor``
        rather than ``to_thread``: these functions read no context variables.)"""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except (StorageError, OSError) as exc:
            mapped = self._translate(exc, operation, key)
            if mapped is exc:
                raise
            raise mapped from exc

    # --- versions: stamps, sidecars, consistent reads -----------------------------------

    def _probe_exact_mtime(self) -> bool:
        """Whether this file system keeps a nanosecond mtime exactly as set (ext4, xfs,
        btrfs, tmpfs, APFS do); if not, every object gets a sidecar."""
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        stamp = self._stamp(True)
        dfd = self._fs.open_dir(RESERVED_PREFIX)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o600, dir_fd=dfd)
            try:
                _set_mtime(fd, stamp)
                return os.fstat(fd).st_mtime_ns == stamp
            finally:
                os.close(fd)
                os.unlink(tmp, dir_fd=dfd)
        finally:
            os.close(dfd)

    def _temp_name(self) -> str:
        """A temp-file name unique to this process (``O_EXCL`` guards the rest)."""
        return f"{TMP_PREFIX}{os.getpid():x}.{self._temp_tag}.{next(self._temp_seq):x}"

    def _stamp(self, marked: bool) -> int:
        """A new mtime in ns: strictly increasing in this process (µs clock), with the
        sub-µs digits ``_MARK`` for a version that has a sidecar, random otherwise."""
        with self._clock_lock:
            us = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = us
        if marked:
            return us * 1000 + _MARK
        low = self._jitter.randrange(999)
        return us * 1000 + low + (low >= _MARK)

    def _info(self, key: str, st: os.stat_result, ignore_sidecar: bool) -> ObjectInfo | os.stat_result:
        """Info of the data-file version ``st``: its sidecar's, or ``st`` itself when it has none
        (``_stat_info`` turns that into an ObjectInfo, on the event loop: work in a worker
        thread is the expensive kind). Raises ``_Torn`` if the sidecar is not (yet) the one
        written with it."""
        if ignore_sidecar or (self._exact and st.st_mtime_ns % 1000 != _MARK):
            return st
        meta = _read_sidecar(self._fs, meta_path(key))
        if meta is None:
            if not self._exact:
                return st  # always-sidecar mode: this file was placed by hand
            raise _Torn
        if meta.get("ino") != st.st_ino or meta.get("size") != st.st_size or meta.get("mt") != st.st_mtime_ns:
            raise _Torn
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=meta["etag"],
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
            content_type=meta.get("ct") or guess_content_type(key),
            metadata=meta.get("meta") or {},
            cache_control=meta.get("cc"),
            content_disposition=meta.get("cd"),
        )

    def _consistent(self, key: str, read: Any) -> Any:
        """Run ``read(ignore_sidecar)`` until the data file and sidecar it sees belong to one
        write; after a few tries, take the key's lock so no writer is mid-commit. A mismatch
        that survives the lock is a crash leftover: the data is served without that sidecar."""
        for attempt in range(4):
            try:
                return read(False)
            except _Torn:
                time.sleep(0.0005 * attempt)
        with self._locks.hold(key):
            try:
                return read(False)
            except _Torn:
                return read(True)

    def _current(self, key: str, dir_fd: int) -> ObjectInfo | None:
        """The stored version's info (``key``'s directory open as ``dir_fd``), or ``None``;
        call with the key's lock held."""
        try:
            st = os.stat(key.rpartition("/")[2], dir_fd=dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if not stat_mod.S_ISREG(st.st_mode):
            return None
        try:
            return _as_info(key, self._info(key, st, False))
        except _Torn:  # we hold the lock, so no writer is mid-commit: a crash leftover
            return _stat_info(key, st)

    def _head_sync(self, key: str) -> ObjectInfo:
        opened, _, _ = self._open_sync(key, None, -1)
        return _as_info(key, opened.info)

    def _open_sync(self, key: str, rng: Range | None, small: int) -> tuple[_Opened, int, int]:
        """Open one version of ``key``; read it right away if the span is at most ``small``
        bytes (``small < 0``: only look, keep nothing open)."""

        def attempt(ignore_sidecar: bool) -> tuple[ObjectInfo | os.stat_result, int]:
            fd = self._fs.open(key, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode):
                    raise FileNotFoundError(errno.ENOENT, "not a regular file", key)
                info = self._info(key, st, ignore_sidecar)
            except BaseException:
                os.close(fd)
                raise
            return info, fd

        try:
            info, fd = attempt(False)  # the common case: no writer mid-commit
        except _Torn:
            info, fd = self._consistent(key, attempt)
        size = info.size if isinstance(info, ObjectInfo) else info.st_size
        try:
            if small < 0:
                os.close(fd)
                return _Opened(info, None, None), 0, size
            start, end = (0, size) if rng is None else rng.resolve(size)
            if end - start <= small:
                data = os.pread(fd, end - start, start) if end > start else b""
                os.close(fd)
                return _Opened(info, None, data), start, end
        except BaseException:
            os.close(fd)
            raise
        return _Opened(info, fd, None), start, end

    # --- primitives -------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        info: ObjectInfo = await self._run("head", key, self._head_sync, key)
        return info

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        chunk = self.settings.chunk_size
        opened, start, end = await self._run("open", key, self._open_sync, key, range, chunk)
        info = _as_info(key, opened.info)
        try:
            check_read_conditions(info, if_match, if_none_match, self.name)
        except BaseException:
            if opened.fd is not None:
                os.close(opened.fd)
            raise
        if opened.data is not None:
            return Download(info, opened.data, start=start, end=end, range_requested=range is not None)
        return Download(
            info,
            self._stream(opened.fd, key, start, end),
            start=start,
            end=end,
            range_requested=range is not None,
        )

    async def _stream(self, fd: int, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            pos, step = start, self.settings.chunk_size
            while pos < end:
                chunk = await self._run("read", key, os.pread, fd, min(step, end - pos), pos)
                if not chunk:
                    raise StorageError("object shrank while reading", key=key, backend=self.name)
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        guessed = guess_content_type(key)
        meta: dict[str, Any] = {
            "ct": check_header_value("content_type", content_type) or guessed,
            "meta": normalize_metadata(metadata),
            "cc": check_header_value("cache_control", cache_control),
            "cd": check_header_value("content_disposition", content_disposition),
        }
        # Only a version the key's name cannot describe needs a sidecar.
        meta["marked"] = not self._exact or bool(meta["meta"] or meta["cc"] or meta["cd"]) or meta["ct"] != guessed
        if isinstance(mode, str) and mode not in ("overwrite", "create"):
            raise TypeError(f"invalid write mode {mode!r}")
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body) if not isinstance(body, bytes) else body
            self._check_size(key, len(data))
            return _written_info(key, meta, await self._run("put", key, self._put_bytes_sync, key, data, meta, mode))
        if isinstance(body, os.PathLike) or (hasattr(body, "fileno") and hasattr(body, "readinto")):
            # A local file: copied in one worker-thread call, in the kernel where it can.
            return _written_info(key, meta, await self._run("put", key, self._put_file_sync, key, body, meta, mode))
        temp: Temp = await self._run("put", key, self._create_temp, key)
        committed = False
        try:
            size = 0
            buf: list[bytes] = []
            buffered = 0
            async for chunk in iter_body(body, self.settings.chunk_size):
                size += len(chunk)
                self._check_size(key, size)
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= self.settings.chunk_size:
                    await self._run("put", key, write_all, temp.fd, buf)
                    buf, buffered = [], 0
            if buf:
                await self._run("put", key, write_all, temp.fd, buf)
            written = await self._run("put", key, self._commit, key, temp, size, meta, mode)
            committed = True
            return _written_info(key, meta, written)
        finally:
            if not committed:
                await asyncio.to_thread(temp.discard)

    def _check_size(self, key: str, size: int) -> None:
        limit = self.settings.max_object_size
        if limit is not None and size > limit:
            raise QuotaExceededError(
                f"object is larger than max_object_size={limit}", key=key, backend=self.name, operation="put"
            )

    def _create_temp(self, key: str) -> Temp:
        """A new temp file in ``key``'s directory, creating (real, never linked) directories."""
        head = key.rpartition("/")[0]
        for _ in range(32):
            try:
                try:
                    dfd = self._fs.open_dir(head)
                except FileNotFoundError:
                    dfd = self._fs.make_dirs(head)
            except FileNotFoundError:
                continue  # a delete removed an emptied ancestor while we created its child
            except OSError as exc:
                if exc.errno in NOT_THERE:  # ENOTDIR, ELOOP
                    raise InvalidKeyError("key passes through an existing object or a symbolic link", key=key) from exc
                raise
            name = self._temp_name()
            try:
                return Temp(
                    os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644, dir_fd=dfd), dfd, name
                )
            except (FileExistsError, FileNotFoundError):
                os.close(dfd)  # a crash leftover of a process that had our pid; or the directory was removed
            except BaseException:
                os.close(dfd)
                raise
        raise StorageError("could not create a temp file", key=key, backend=self.name)

    def _put_bytes_sync(self, key: str, data: bytes, meta: dict[str, Any], mode: WriteMode) -> _Written:
        temp = self._create_temp(key)
        try:
            write_all(temp.fd, [data])
            return self._commit(key, temp, len(data), meta, mode)
        except BaseException:
            temp.discard()
            raise

    def _put_file_sync(self, key: str, source: Any, meta: dict[str, Any], mode: WriteMode) -> _Written:
        with contextlib.ExitStack() as stack:
            src = stack.enter_context(open(os.fspath(source), "rb")) if isinstance(source, os.PathLike) else source
            temp = self._create_temp(key)
            try:
                size = copy_to_fd(src, temp.fd, self.settings.chunk_size, lambda n: self._check_size(key, n))
                return self._commit(key, temp, size, meta, mode)
            except BaseException:
                temp.discard()
                raise

    def _commit(self, key: str, temp: Temp, size: int, meta: dict[str, Any], mode: WriteMode) -> _Written:
        """Make the temp file ``key``'s new version: stamp, sidecar if needed, precondition,
        then the renames under the key's lock. The data rename is the commit point. Returns
        the raw facts; the event loop builds the ObjectInfo (see ``_info``). Every name is
        relative to the temp file's directory, ``d``."""
        fsync = self.settings.fsync
        marked = meta["marked"]
        stamp = self._stamp(marked)
        d, name = temp.dir_fd, key.rpartition("/")[2]
        _set_mtime(temp.fd, stamp)
        if fsync:
            os.fsync(temp.fd)
        st = os.fstat(temp.fd)
        temp.close()
        sidecar = meta_path(name) if marked else ""
        mtmp: str | None = None
        if marked:
            etag = secrets.token_hex(8)
            record = {k: meta[k] for k in ("ct", "meta", "cc", "cd")}
            record.update(v=2, etag=etag, ino=st.st_ino, size=size, mt=st.st_mtime_ns)
            mtmp = self._temp_name()
            mfd = os.open(mtmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644, dir_fd=d)
            try:
                os.write(mfd, json.dumps(record, separators=(",", ":")).encode())
                if fsync:
                    os.fsync(mfd)
            finally:
                os.close(mfd)
        else:
            etag = _stat_etag(st)
        try:
            stripe = self._locks.acquire(key)
            try:
                if mode != "overwrite":
                    check_write_mode(self._current(key, d), mode, key, self.name)
                if mtmp is not None:
                    os.replace(mtmp, sidecar, src_dir_fd=d, dst_dir_fd=d)  # readers ignore it until the data names it
                    mtmp = None
                try:
                    self._replace_data(key, d, temp.name, name)
                except BaseException:
                    if marked:
                        with contextlib.suppress(OSError):
                            os.unlink(sidecar, dir_fd=d)
                    raise
            finally:
                self._locks.release(stripe)
        finally:
            if mtmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(mtmp, dir_fd=d)
        if fsync:
            os.fsync(d)  # make the renames durable
        temp.release()
        return size, stamp, etag

    @staticmethod
    def _replace_data(key: str, d: int, tmp: str, name: str) -> None:
        try:
            os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
        except IsADirectoryError:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=d)  # an empty leftover directory
            try:
                os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
            except IsADirectoryError as exc:
                raise InvalidKeyError("key is a directory of other objects", key=key) from exc

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        removed: bool = await self._run("delete", key, self._remove_sync, key, if_match)
        return removed

    def _remove_sync(self, key: str, if_match: str | None) -> bool:
        head, _, name = key.rpartition("/")
        try:
            d = self._fs.open_dir(head)
        except OSError as exc:
            if exc.errno not in NOT_THERE:
                raise
            check_remove_condition(None, if_match, key, self.name)
            return False
        try:
            with self._locks.hold(key):
                if if_match is not None:
                    check_remove_condition(self._current(key, d), if_match, key, self.name)
                try:
                    st = os.stat(name, dir_fd=d, follow_symlinks=False)
                    if not stat_mod.S_ISREG(st.st_mode):
                        return False
                    os.unlink(name, dir_fd=d)
                except (FileNotFoundError, NotADirectoryError):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(meta_path(name), dir_fd=d)
        finally:
            os.close(d)
        self._prune(head)
        return True

    def _prune(self, head: str) -> None:
        """Remove directory ``head`` and its ancestors while they are empty (writers recreate
        them if they race us), each by name in its opened parent."""
        while head:
            parent, _, name = head.rpartition("/")
            try:
                d = self._fs.open_dir(parent)
            except OSError:
                return
            try:
                os.rmdir(name, dir_fd=d)
            except OSError:
                return
            finally:
                os.close(d)
            head = parent

    # --- listing ----------------------------------------------------------------------

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        """Depth-first over sorted directory scans (one worker call per directory), with an
        explicit stack so each key passes through one generator, not one per level."""
        check_listing_args(prefix, start_after)
        dir_rel, _, name_prefix = prefix.rpartition("/")
        scan = await self._run("list", prefix, scan_dir, self._fs, dir_rel, name_prefix, start_after)
        stack = [iter(scan)]
        n = 0
        while stack:
            for _, k, is_dir in stack[-1]:
                if is_dir:
                    sub = await self._run("list", prefix, scan_dir, self._fs, k, "", start_after)
                    stack.append(iter(sub))
                    break  # descend; this level's iterator resumes after the subtree
                yield k
                n += 1
                if n % 500 == 0:
                    await asyncio.sleep(0)  # a huge directory must not hold the event loop
            else:
                stack.pop()

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        batch: list[str] = []
        async for k in self.iter_keys(prefix, start_after=start_after):
            batch.append(k)
            if len(batch) >= 256:
                for info in await self._run("list", prefix, self._infos, batch):
                    yield info
                batch = []
        if batch:
            for info in await self._run("list", prefix, self._infos, batch):
                yield info

    def _infos(self, keys: list[str]) -> list[ObjectInfo]:
        out = []
        for k in keys:
            try:
                out.append(self._head_sync(k))
            except OSError as exc:
                if exc.errno not in NOT_THERE:
                    raise  # else deleted (or a link put in its way) since the scan: skip
        return out

    # --- URLs, health -------------------------------------------------------------------

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        validate_key(key)
        return self._signer.sign(
            key, expires_in=expires_in or self.default_expires_in, download=download, method=method
        )

    async def ping(self) -> None:
        await self._run("ping", None, self._ping_sync)

    def _ping_sync(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "base_path is not writable")
        if self._fs.replaced():
            raise StorageError("base_path was replaced since the store opened it: restart", backend=self.name)

    async def aclose(self) -> None:
        self._locks.close()


_NOT_OBJECT = frozenset({errno.ELOOP, errno.ENXIO})
"""Errors that mean "not an object": a symbolic link met on the way; a socket opened."""

_MARK = 777
"""``mtime_ns % 1000`` of a data file whose version has a sidecar (see ``_stamp``)."""


def _set_mtime(fd: int, stamp: int) -> None:
    os.utime(fd, ns=(stamp, stamp))  # futimens: every POSIX system this runs on has it


def _stat_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _stat_info(key: str, st: os.stat_result) -> ObjectInfo:
    """Info of a version without a sidecar: etag from inode, mtime and size; type from the name."""
    return ObjectInfo(
        key=key,
        size=st.st_size,
        etag=_stat_etag(st),
        last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
        content_type=guess_content_type(key),
    )


_Written: TypeAlias = tuple[int, int, str]
"""What a commit returns: size, mtime stamp (ns), etag."""


def _written_info(key: str, meta: dict[str, Any], written: _Written) -> ObjectInfo:
    size, stamp, etag = written
    return ObjectInfo(
        key=key,
        size=size,
        etag=etag,
        last_modified=datetime.fromtimestamp(stamp / 1e9, UTC),
        content_type=meta["ct"],
        metadata=meta["meta"],
        cache_control=meta["cc"],
        content_disposition=meta["cd"],
    )


def _as_info(key: str, info: ObjectInfo | os.stat_result) -> ObjectInfo:
    return info if isinstance(info, ObjectInfo) else _stat_info(key, info)


def _read_sidecar(fs: Beneath, rel: str) -> dict[str, Any] | None:
    try:
        raw = read_small(fs, rel)
    except OSError:
        return None
    try:
        meta = json.loads(raw)
    except ValueError:
        return None
    return meta if isinstance(meta, dict) else None


class _Torn(Exception):
    """The sidecar read does not describe the data file read (a writer is mid-commit)."""
