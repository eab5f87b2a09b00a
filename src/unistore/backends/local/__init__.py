"""Objects as files under one directory, safe for several processes sharing it.

Layout: the object ``a/b.txt`` is the file ``ROOT/a/b.txt``. Everything the
store keeps for itself starts with ``.unistore`` (a segment prefix no key may
use): temp files ``.unistore.tmp.<pid>.<tag>.<n>`` beside their target,
sidecars ``.unistore.<inode>.<name>.vm`` (see ``_meta``), and
``ROOT/.unistore/`` for lock stripes and the persisted URL secret.

Versions. Every write sets the data file's mtime to a fresh stamp: a
per-process strictly increasing microsecond clock, whose sub-microsecond digits
are ``777`` when the version has a metadata record and random otherwise. Only
versions with custom metadata, cache-control, content-disposition or a content
type not guessable from the key get a record (JSON: etag, content type,
metadata, and the size and mtime of the data it describes). A version without
one has the etag ``inode-mtime-size``; reading it costs no extra I/O. On a file
system that does not keep nanosecond mtimes as set (probed at start), every
version gets a record instead.

Writes stream into a fresh temp file in the target directory, locked with
``flock`` by its writer. The commit stamps it, attaches the record (the
extended attribute ``user.unistore`` of the temp file itself; where the file
system has none or the record does not fit, a sidecar named by the temp file's
inode), fsyncs (unless ``fsync=False``), then, under a per-key-stripe lock
(``fcntl.flock``, so it holds across processes and threads), decides the
precondition and renames the data into place: that one rename commits data and
record together. The replaced version's sidecar, if any, is removed after it.
Readers take no lock: they read the record of the inode they opened and accept
it only if it names that size and mtime. A sweep (at the first write, every
``SWEEP_EVERY`` seconds, or :meth:`LocalBackend.sweep`) removes temp files and
sidecars that killed writers left.

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
import functools
import itertools
import logging
import os
import random
import secrets
import stat as stat_mod
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar, TypeAlias

from ..._base import (
    BaseBackend,
    check_listing_args,
    check_read_conditions,
    check_remove_condition,
    check_write_mode,
    iter_body,
    refuse_storage_class,
    settings_from,
)
from ..._errors import (
    ConfigurationError,
    InvalidKeyError,
    InvalidRangeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    StorageError,
)
from ..._keys import RESERVED_PREFIX, validate_key
from ..._signing import UrlSigner
from ..._types import (
    Body,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_content_type,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._beneath import NOT_THERE, Beneath
from ._fs import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    PROCESS,
    TMP_PREFIX,
    StripeLocks,
    Temp,
    copy_to_fd,
    holds_key,
    load_secret,
    meta_path,
    scan_dir,
    write_all,
)
from ._info import Written as _Written
from ._info import as_info as _as_info
from ._info import stat_etag as _stat_etag
from ._info import stat_info as _stat_info
from ._info import written_info as _written_info
from ._meta import (
    encode,
    matches,
    probe_xattr,
    read_sidecar,
    read_xattr,
    sidecar_path,
    try_set_xattr,
    write_sidecar,
)
from ._pool import run_in_thread, run_write
from ._settings import LocalSettings
from ._sweep import clear_dir, sweep_tree

__all__ = ["LocalBackend", "LocalSettings"]

STALE_AFTER = 600.0
"""Seconds a temp file or sidecar must stay untouched before a sweep may remove it."""
SWEEP_EVERY = 6 * 3600.0
"""Seconds between the sweeps a store starts by itself (the first at its first write)."""
LOGGER = logging.getLogger("unistore.local")


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
            new = not self.root.is_dir()
            self.root.mkdir(parents=True, exist_ok=True)
            self._fs = Beneath(str(self.root))  # every path below is opened relative to it
            # an existing folder unistore never wrote to stays untouched until its first write (it
            # may be a read-only source); the URL secret is made when the first URL is signed
            prepared = _has_dir(self._fs, RESERVED_PREFIX)
            if new and not prepared:
                os.close(self._fs.make_dirs(f"{RESERVED_PREFIX}/locks"))
                prepared = True
            # a secret already there (or anything in its place) is read, and refused, now
            secret = None
            if not self.settings.url_secret and prepared and _has_entry(self._fs, RESERVED_PREFIX, "url-secret"):
                secret = load_secret(self._fs, RESERVED_PREFIX)
        except OSError as exc:
            why = "a symbolic link or non-directory in the way" if exc.errno in NOT_THERE else exc.strerror
            raise ConfigurationError(
                f"cannot set up base_path {str(self.root)!r} ({why}); set STORAGE_BASE_PATH",
                backend=self.name,
            ) from exc
        self._signer_lock = threading.Lock()
        self._signer_now: UrlSigner | None = None
        if self.settings.url_secret or secret:
            key = secret or (self.settings.url_secret or "").encode()
            self._signer_now = UrlSigner(key, self.settings.base_url)
        self.default_expires_in = self.settings.url_expiration
        self._locks = StripeLocks(self._fs, f"{RESERVED_PREFIX}/locks")
        self._clock_lock = threading.Lock()
        self._last_us = 0
        # Per-process sources of unique names and stamp jitter: no getrandom() per write.
        self._jitter = random.Random(secrets.token_bytes(16))
        self._temp_seq = itertools.count()
        self._temp_tag = secrets.token_hex(4)
        self._temp_head = (0, "")  # (pid, name prefix) of this process's temp files
        # unprobed, the safe choices: look for a record on every file; try xattrs, else sidecars
        self._exact, self._xattr = (self._probe_exact_mtime(), self._probe_xattr()) if prepared else (False, True)
        self._prepared = prepared
        self._sweep_lock = threading.Lock()
        self._next_sweep = 0.0  # the first write starts a sweep of crash leftovers

    def __repr__(self) -> str:
        return f"LocalBackend(base_path={str(self.root)!r}, fsync={self.settings.fsync})"

    @property
    def signer(self) -> UrlSigner:
        """The signer the file route verifies this backend's URLs with (its secret is created in
        ``<base_path>/.unistore/url-secret`` on first use unless ``url_secret`` is set)."""
        if self._signer_now is None:
            with self._signer_lock:
                if self._signer_now is None:
                    try:
                        os.close(self._fs.make_dirs(RESERVED_PREFIX))
                        secret = load_secret(self._fs, RESERVED_PREFIX)
                    except OSError as exc:
                        raise ConfigurationError(
                            f"cannot create the URL secret in {str(self.root)!r}: {exc.strerror}", backend=self.name
                        ) from exc
                    self._signer_now = UrlSigner(secret, self.settings.base_url)
        return self._signer_now

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
        """Run ``fn(*args)`` in a worker thread (see ``_pool``), translating its errors."""
        try:
            return await run_in_thread(fn, *args)
        except (StorageError, OSError) as exc:
            mapped = self._translate(exc, operation, key)
            if mapped is exc:
                raise
            raise mapped from exc

    async def _write(self, key: str, fn: Any, *args: Any) -> Any:
        """Run a whole write ``fn(*args)`` in a worker thread (one of the writer pool's if it fsyncs,
        see ``_pool``), translating its errors."""
        try:
            return await (run_write if self.settings.fsync else run_in_thread)(fn, *args)
        except (StorageError, OSError) as exc:
            mapped = self._translate(exc, "put", key)
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

    def _probe_xattr(self) -> bool:
        """Whether this file system keeps ``user.*`` extended attributes, where records go."""
        dfd = self._fs.open_dir(RESERVED_PREFIX)
        try:
            return probe_xattr(dfd, f"{TMP_PREFIX}{secrets.token_hex(8)}")
        finally:
            os.close(dfd)

    def _own_temps(self) -> str:
        """The name prefix of this process's temp files (see ``_temp_name``)."""
        return f"{TMP_PREFIX}{PROCESS.pid:x}.{self._temp_tag}."

    def _temp_name(self) -> str:
        """A temp-file name unique to this process (``O_EXCL`` guards the rest)."""
        pid, head = self._temp_head
        if pid != PROCESS.pid:  # the first write, or the first in a forked child
            pid = PROCESS.pid
            head = f"{TMP_PREFIX}{pid:x}.{self._temp_tag}."
            self._temp_head = (pid, head)
        return f"{head}{next(self._temp_seq):x}"

    def _stamp(self, marked: bool) -> int:
        """A new mtime in ns: strictly increasing in this process (µs clock), with the
        sub-µs digits ``_MARK`` for a version that has a sidecar, random otherwise."""
        with self._clock_lock:
            us = max(time.time_ns() // 1000, self._last_us + 1)
            self._last_us = us
        if marked:
            return us * 1000 + _MARK
        low = int(self._jitter.random() * 999)  # 0..998, skipping _MARK: random() is one C call
        return us * 1000 + low + (low >= _MARK)

    def _info(
        self, key: str, st: os.stat_result, ignore_sidecar: bool, fd: int, d: int | None = None
    ) -> ObjectInfo | os.stat_result:
        """Info of the data-file version ``st`` open as ``fd``: its record's, or ``st`` itself
        when it has none (``_stat_info`` turns that into an ObjectInfo, on the event loop: work
        in a worker thread is the expensive kind). A sidecar is read beneath the base, or by
        name in ``key``'s directory open as ``d``. Raises ``_Torn`` if the version was replaced
        or deleted before its sidecar was read."""
        if ignore_sidecar or (self._exact and st.st_mtime_ns % 1000 != _MARK):
            return st
        meta = None
        if self._xattr:
            meta = read_xattr(fd)
            if meta is not None and not matches(meta, st, ino=False):
                meta = None  # edited in place by hand: the record is not this content's
        if meta is None:
            where, opener = (key, self._fs.open) if d is None else (key.rpartition("/")[2], _opener(d))
            meta = read_sidecar(sidecar_path(where, st.st_ino), opener) or read_sidecar(meta_path(where), opener)
            if meta is not None and not matches(meta, st, ino=True):
                meta = None
        if meta is None:
            if os.fstat(fd).st_nlink == 0:
                raise _Torn  # replaced (or deleted) and its sidecar removed while we looked
            return st  # a crash leftover, or a file placed by hand
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
        """Run ``read(ignore_sidecar)`` until it sees a version whose sidecar was still there;
        after a few tries, take the key's lock, under which no writer replaces one."""
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
            fd = os.open(key.rpartition("/")[2], os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in NOT_THERE or exc.errno == errno.ENXIO:
                return None
            raise
        try:
            st = os.fstat(fd)
            if not stat_mod.S_ISREG(st.st_mode):
                return None
            try:
                return _as_info(key, self._info(key, st, False, fd, dir_fd))
            except _Torn:  # we hold the lock, so no writer is mid-commit: a crash leftover
                return _stat_info(key, st)
        finally:
            os.close(fd)

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
                info = self._info(key, st, ignore_sidecar, fd)
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
        try:
            opened, start, end = await self._run("open", key, self._open_sync, key, range, chunk)
        except InvalidRangeError:
            if if_match is None and if_none_match is None:
                raise
            # Preconditions come before Range (RFC 9110 §13.2.2): a 412/304 wins over the 416.
            looked, _, _ = await self._run("open", key, self._open_sync, key, None, -1)
            check_read_conditions(_as_info(key, looked.info), if_match, if_none_match, self.name)
            raise
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
        """The bytes ``[start, end)`` of ``fd`` in chunks; the next chunk is read in a worker thread
        while the caller uses this one (a consumer that decrypts, hashes or sends overlaps the read)."""
        pos, step = start, self.settings.chunk_size
        ahead: asyncio.Future[bytes] | None = (
            run_in_thread(os.pread, fd, min(step, end - pos), pos) if pos < end else None
        )
        try:
            while ahead is not None:
                try:
                    chunk = await asyncio.shield(ahead)  # a cancelled caller leaves the read to finish
                except (StorageError, OSError) as exc:
                    ahead = None
                    mapped = self._translate(exc, "read", key)
                    if mapped is exc:
                        raise
                    raise mapped from exc
                ahead = None
                if not chunk:
                    raise StorageError("object shrank while reading", key=key, backend=self.name)
                pos += len(chunk)
                if pos < end:
                    ahead = run_in_thread(os.pread, fd, min(step, end - pos), pos)
                yield chunk
        finally:
            if ahead is None or ahead.done():
                _close_after(fd, ahead)
            else:  # a worker thread may be reading the file now: close it (and free its number) after
                ahead.add_done_callback(functools.partial(_close_after, fd))

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
        refuse_storage_class(self.name, key)
        if not self._prepared:
            self._prepare()
        if time.monotonic() >= self._next_sweep:
            self._start_sweep()
        guessed = guess_content_type(key)
        meta: dict[str, Any]
        if content_type is None and not metadata and cache_control is None and content_disposition is None:
            meta = {"ct": guessed, "meta": {}, "cc": None, "cd": None, "marked": not self._exact}
        else:
            cd = content_disposition
            meta = {
                "ct": (content_type is not None and check_content_type(content_type)) or guessed,
                "meta": normalize_metadata(metadata) if metadata else {},
                "cc": None if cache_control is None else check_header_value("cache_control", cache_control),
                "cd": None if cd is None else check_header_value("content_disposition", cd),
            }
            # Only a version the key's name cannot describe needs a record.
            meta["marked"] = not self._exact or bool(meta["meta"] or meta["cc"] or meta["cd"]) or meta["ct"] != guessed
        if mode != "overwrite" and isinstance(mode, str) and mode != "create":
            raise TypeError(f"invalid write mode {mode!r}")
        if type(body) is bytes or isinstance(body, _BYTES_LIKE):
            data = body if type(body) is bytes else bytes(body)
            if self.settings.max_object_size is not None:
                self._check_size(key, len(data))
            # One worker-thread call writes and commits it (awaited here, not through _write: one
            # coroutine less per write; errors are translated the same way).
            try:
                run = run_write if self.settings.fsync else run_in_thread
                written = await run(self._put_chunks_sync, key, [data], len(data), meta, mode)
            except (StorageError, OSError) as exc:
                mapped = self._translate(exc, "put", key)
                if mapped is exc:
                    raise
                raise mapped from exc
            return _written_info(key, meta, written)
        if isinstance(body, os.PathLike) or (hasattr(body, "fileno") and hasattr(body, "readinto")):
            # A local file: copied in one worker-thread call, in the kernel where it can.
            return _written_info(key, meta, await self._write(key, self._put_file_sync, key, body, meta, mode))
        # A stream that ends within one chunk (a request body, mostly) is written and committed
        # in one worker-thread call, like bytes; a longer one gets a temp file at its first chunk.
        chunk_size = self.settings.chunk_size
        chunks = iter_body(body, chunk_size)
        size = 0
        buf: list[bytes] = []
        async for chunk in chunks:
            size += len(chunk)
            self._check_size(key, size)
            buf.append(chunk)
            if size >= chunk_size:
                break
        else:
            written = await self._write(key, self._put_chunks_sync, key, buf, size, meta, mode)
            return _written_info(key, meta, written)
        temp: Temp = await self._run("put", key, self._create_temp, key)
        committed = False
        try:
            await self._run("put", key, write_all, temp.fd, buf)
            buf, buffered = [], 0
            async for chunk in chunks:
                size += len(chunk)
                self._check_size(key, size)
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= chunk_size:
                    await self._run("put", key, write_all, temp.fd, buf)
                    buf, buffered = [], 0
            if buf:
                await self._run("put", key, write_all, temp.fd, buf)
            written = await self._write(key, self._commit, key, temp, size, meta, mode)
            committed = True
            return _written_info(key, meta, written)
        finally:
            if not committed:
                await asyncio.to_thread(temp.discard)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Native: the kernel copies the data file (``copy_file_range``, a reflink where the file
        system has them) into a new version that commits with its record under ``IfMatch`` of
        the version copied, so a concurrent write is never overwritten."""
        validate_key(key)
        user = normalize_metadata(metadata)
        info: ObjectInfo = await self._run("replace_metadata", key, self._replace_metadata_sync, key, user, if_match)
        return info

    def _replace_metadata_sync(self, key: str, user: dict[str, str], if_match: str | None) -> ObjectInfo:
        opened, _, _ = self._open_sync(key, None, 0)
        fd = opened.fd
        current = _as_info(key, opened.info)
        try:
            check_read_conditions(current, if_match, None, self.name)
            guessed = guess_content_type(key)
            cc, cd = current.cache_control, current.content_disposition
            meta: dict[str, Any] = {"ct": current.content_type, "meta": user, "cc": cc, "cd": cd}
            self._prepare()
            meta["marked"] = not self._exact or bool(user or cc or cd) or meta["ct"] != guessed
            temp = self._create_temp(key)
            try:
                if fd is None:
                    size = 0
                else:
                    with os.fdopen(fd, "rb", closefd=True) as src:
                        fd = None
                        size = copy_to_fd(src, temp.fd, self.settings.chunk_size, lambda n: None)
                written = self._commit(key, temp, size, meta, IfMatch(current.etag))
            except BaseException:
                temp.discard()
                raise
        finally:
            if fd is not None:
                os.close(fd)
        return _written_info(key, meta, written)

    async def sweep(self, *, older_than: float = STALE_AFTER) -> int:
        """Remove what killed writers left: temp files no live writer holds and sidecars of
        versions that never committed, untouched for ``older_than`` seconds, and directories
        that leaves empty; returns how many files were removed. Also runs by itself, in a
        background thread, at the first write and every ``SWEEP_EVERY`` seconds after."""
        removed: int = await self._run("sweep", None, sweep_tree, self._fs, older_than, self._own_temps())
        return removed

    def _start_sweep(self) -> None:
        with self._sweep_lock:
            now = time.monotonic()
            if now < self._next_sweep:
                return
            self._next_sweep = now + SWEEP_EVERY
        threading.Thread(target=self._sweep_quietly, name="unistore-local-sweep", daemon=True).start()

    def _sweep_quietly(self) -> None:
        try:
            sweep_tree(self._fs, STALE_AFTER, self._own_temps())
        except Exception as exc:  # a background chore: logged, retried at the next interval
            LOGGER.warning("sweeping crash leftovers under %s failed: %s", self.root, exc)

    def _check_size(self, key: str, size: int) -> None:
        limit = self.settings.max_object_size
        if limit is not None and size > limit:
            raise QuotaExceededError(
                f"object is larger than max_object_size={limit}", key=key, backend=self.name, operation="put"
            )

    def _prepare(self) -> None:
        """Before the first write to a folder unistore never wrote to: its state directory, and
        the file system probes (until then reads take the safe choices)."""
        if self._prepared:
            return
        with self._signer_lock:
            if not self._prepared:
                os.close(self._fs.make_dirs(f"{RESERVED_PREFIX}/locks"))
                self._exact, self._xattr = self._probe_exact_mtime(), self._probe_xattr()
                self._prepared = True

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

    def _put_chunks_sync(
        self, key: str, chunks: list[bytes], size: int, meta: dict[str, Any], mode: WriteMode
    ) -> _Written:
        """Write ``chunks`` (``size`` bytes in all) to a new temp file and commit it, in one call."""
        temp = self._create_temp(key)
        try:
            write_all(temp.fd, chunks)
            return self._commit(key, temp, size, meta, mode)
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
        """Make the temp file ``key``'s new version: stamp it, attach its record (extended
        attribute, else a sidecar named by the temp file's inode), fsync, then under the key's
        lock decide the precondition and rename: that one rename commits data and record
        together. The replaced version's sidecar, if any, is removed only after it. Returns
        the raw facts; the event loop builds the ObjectInfo (see ``_info``). Every name is
        relative to the temp file's directory, ``d``."""
        fsync = self.settings.fsync
        marked = meta["marked"]
        if _crash_hook is not None:
            _crash_hook("temp-written", key)
        stamp = self._stamp(marked)
        d, name = temp.dir_fd, key.rpartition("/")[2]
        os.utime(temp.fd, ns=(stamp, stamp))  # futimens
        st = os.fstat(temp.fd)
        sidecar: str | None = None
        if marked:
            etag = secrets.token_hex(8)
            record = {k: meta[k] for k in ("ct", "meta", "cc", "cd")}
            record.update(v=3, etag=etag, size=size, mt=st.st_mtime_ns)
            if not (self._xattr and try_set_xattr(temp.fd, encode(record))):
                record.update(ino=st.st_ino, name=name)
                sidecar = sidecar_path(name, st.st_ino)
                write_sidecar(sidecar, encode(record), fsync, d)
                if _crash_hook is not None:
                    _crash_hook("sidecar-written", key)
        else:
            etag = _stat_etag(st)
        if fsync:
            os.fsync(temp.fd)
            if _crash_hook is not None:
                _crash_hook("temp-synced", key)
        committed = False
        try:
            stripe = self._locks.acquire(key)
            try:
                if mode != "overwrite":
                    check_write_mode(self._current(key, d), mode, key, self.name)
                if sidecar is not None and not _has_entry_at(d, sidecar):
                    # Our temp file took the inode of a version another writer just replaced, and
                    # that writer then removed "its" old sidecar: ours (the same name). Write it again.
                    write_sidecar(sidecar, encode(record), fsync, d)
                old = self._old_sidecar(d, name)
                self._replace_data(key, d, temp.name, name)
                committed = True
                if _crash_hook is not None:
                    _crash_hook("data-renamed", key)
                if old is not None:
                    with contextlib.suppress(OSError):
                        os.unlink(old, dir_fd=d)
                    if _crash_hook is not None:
                        _crash_hook("old-sidecar-removed", key)
            finally:
                self._locks.release(stripe)
        finally:
            temp.close()  # its lock told sweepers this temp file was alive until now
            if sidecar is not None and not committed:
                with contextlib.suppress(OSError):
                    os.unlink(sidecar, dir_fd=d)
        if fsync:
            os.fsync(d)  # make the renames durable
            if _crash_hook is not None:
                _crash_hook("dir-synced", key)
        temp.release()
        return size, stamp, etag

    def _old_sidecar(self, d: int, name: str) -> str | None:
        """The sidecar the version ``name`` in directory ``d`` may have (call with the key's lock held)."""
        try:
            st = os.stat(name, dir_fd=d, follow_symlinks=False)
        except OSError:
            return None
        if not stat_mod.S_ISREG(st.st_mode) or (self._exact and st.st_mtime_ns % 1000 != _MARK):
            return None
        return sidecar_path(name, st.st_ino)

    @staticmethod
    def _replace_data(key: str, d: int, tmp: str, name: str) -> None:
        try:
            os.replace(tmp, name, src_dir_fd=d, dst_dir_fd=d)
        except IsADirectoryError:
            # A directory left behind holding no object, only crash leftovers, is removed.
            clear_dir(d, name)
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
                old = self._old_sidecar(d, name)
                try:
                    st = os.stat(name, dir_fd=d, follow_symlinks=False)
                    if not stat_mod.S_ISREG(st.st_mode):
                        return False
                    os.unlink(name, dir_fd=d)
                except (FileNotFoundError, NotADirectoryError):
                    return False
                for sidecar in (old, meta_path(name)):
                    if sidecar is not None:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(sidecar, dir_fd=d)
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

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """One directory level: a sorted scan of the prefix's directory (subdirectories sort as
        ``name/``), files as objects, a subdirectory as a folder when it holds a key at any depth
        (found by a walk that stops at the first file). Store files never show. Delimiters other
        than ``/`` use the computed default."""
        if delimiter != "/":
            async for entry in super().iter_entries(prefix, delimiter=delimiter, start_after=start_after):
                yield entry
            return
        check_listing_args(prefix, start_after)
        dir_rel, _, name_prefix = prefix.rpartition("/")
        scan = await self._run("list", prefix, scan_dir, self._fs, dir_rel, name_prefix, start_after)
        for i in range(0, len(scan), 256):
            for entry in await self._run("list", prefix, self._level, scan[i : i + 256], start_after):
                yield entry

    def _level(self, scan: list[tuple[str, str, bool]], start_after: str | None) -> list[ObjectInfo | CommonPrefix]:
        out: list[ObjectInfo | CommonPrefix] = []
        for _, k, is_dir in scan:
            if is_dir:
                folder = k + "/"
                if (start_after is None or folder > start_after) and holds_key(self._fs, k):
                    out.append(CommonPrefix(folder))
                continue
            try:
                out.append(self._head_sync(k))
            except OSError as exc:
                if exc.errno not in NOT_THERE:
                    raise  # else deleted (or a link put in its way) since the scan: skip
        return out

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
        return self.signer.sign(
            key,
            expires_in=self.default_expires_in if expires_in is None else expires_in,
            download=download,
            method=method,
        )

    async def ping(self) -> None:
        await self._run("ping", None, self._ping_sync)

    def _ping_sync(self) -> None:
        if self._fs.refresh():  # base_path was replaced: use the new directory from now on
            os.close(self._fs.make_dirs(f"{RESERVED_PREFIX}/locks"))
            self._locks.close()  # lock files of the old directory
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "base_path is not writable")

    async def aclose(self) -> None:
        self._locks.close()


_NOT_OBJECT = frozenset({errno.ELOOP, errno.ENXIO})
"""Errors that mean "not an object": a symbolic link met on the way; a socket opened."""

_MARK = 777
_BYTES_LIKE = (bytes, bytearray, memoryview)
"""``mtime_ns % 1000`` of a data file whose version has a record (see ``_stamp``)."""

CrashHook: TypeAlias = "Callable[[str, str], None]"
_crash_hook: CrashHook | None = None
"""Test seam: called with the name of each step of a commit as it completes, and the key (a
crash test's child process installs one that stops there, to be killed). ``None`` in normal use."""


def _close_after(fd: int, read: asyncio.Future[bytes] | None) -> None:
    """Close ``fd`` once ``read`` (a read-ahead nobody will use, if any) is over."""
    if read is not None and not read.cancelled():
        read.exception()  # retrieved: an unused read's error is not "never retrieved"
    os.close(fd)


def _has_entry_at(d: int, name: str) -> bool:
    """Whether ``name`` exists in the directory ``d`` (a symbolic link counts, not followed)."""
    try:
        os.stat(name, dir_fd=d, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _set_mtime(fd: int, stamp: int) -> None:
    os.utime(fd, ns=(stamp, stamp))  # futimens: every POSIX system this runs on has it


def _has_dir(fs: Beneath, rel: str) -> bool:
    try:
        os.close(fs.open_dir(rel))
    except FileNotFoundError:
        return False
    return True


def _has_entry(fs: Beneath, directory: str, name: str) -> bool:
    """Whether ``directory`` holds anything named ``name`` (of any type, a link not followed)."""
    dfd = fs.open_dir(directory)
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    finally:
        os.close(dfd)
    return True


def _opener(d: int) -> Callable[[str, int], int]:
    """Open a name in the directory open as ``d`` (never a symbolic link)."""
    return lambda name, flags: os.open(name, flags | O_NOFOLLOW | O_CLOEXEC, dir_fd=d)


class _Torn(Exception):
    """The version read was replaced before its sidecar could be read (retry)."""
