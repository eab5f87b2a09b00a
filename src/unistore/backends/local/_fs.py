"""File-system mechanics of :class:`LocalBackend`: layout names, temp files, stripe locks,
the persisted URL secret, and the sorted directory scan. No policy lives here: the backend
decides what a write or read means; these helpers only do it safely on disk. Every path
is opened through :class:`~._beneath.Beneath` (never through a symbolic link).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import re
import secrets
import stat as stat_mod
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from ..._errors import InvalidKeyError
from ..._keys import RESERVED_PREFIX, validate_key, validate_prefix
from ._beneath import NOT_THERE, Beneath

__all__ = [
    "O_CLOEXEC",
    "O_NOFOLLOW",
    "O_NONBLOCK",
    "PROCESS",
    "StripeLocks",
    "TMP_PREFIX",
    "Temp",
    "copy_to_fd",
    "holds_key",
    "load_secret",
    "meta_path",
    "read_small",
    "scan_dir",
    "write_all",
]

TMP_PREFIX = RESERVED_PREFIX + ".tmp."
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO placed in the tree must not hang
# A file name with one of these may not be a valid key (placed by hand): checked in full.
_SUSPECT_NAME = re.compile(r"[\\%:\x00-\x1f\x7f-\x9f\ud800-\udfff]")


class _Process:
    """This process's id, kept current across ``fork`` without a ``getpid()`` system call per write."""

    __slots__ = ("pid",)

    def __init__(self) -> None:
        self.pid = os.getpid()

    def forked(self) -> None:
        self.pid = os.getpid()


PROCESS = _Process()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=PROCESS.forked)


def meta_path(path: str) -> str:
    """The sidecar of the data file ``path``: ``.unistore.<name>.meta`` beside it (hashed
    when the name is too long to carry the extra characters)."""
    d, name = os.path.split(path)
    if len(name.encode()) > 240:
        name = "h." + hashlib.sha256(name.encode()).hexdigest()[:40]
    return os.path.join(d, f"{RESERVED_PREFIX}.{name}.meta")


def read_small(fs: Beneath, rel: str, limit: int = 1 << 16) -> bytes:
    """The first ``limit`` bytes of the regular file ``rel`` (``O_NONBLOCK``: a FIFO put in
    its place never blocks). ``FileNotFoundError`` if it is not a regular file."""
    fd = fs.open(rel, os.O_RDONLY | O_NONBLOCK)
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", rel)
        return os.read(fd, limit)
    finally:
        os.close(fd)


def load_secret(fs: Beneath, internal: str) -> bytes:
    """The URL secret kept in ``internal/url-secret`` (0600), created on first use.

    Several workers starting together agree on one secret: each writes a private temp
    file and ``link()``s it into place, which fails for all but the first.
    """
    path = f"{internal}/url-secret"
    with contextlib.suppress(FileNotFoundError):
        return read_small(fs, path).strip()
    dfd = fs.open_dir(internal)
    try:
        tmp = f"{TMP_PREFIX}{secrets.token_hex(8)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o600, dir_fd=dfd)
        try:
            os.write(fd, secrets.token_urlsafe(48).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, "url-secret", src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp, dir_fd=dfd)
        os.fsync(dfd)  # URLs signed with it must still verify after a power cut
    finally:
        os.close(dfd)
    return read_small(fs, path).strip()


class StripeLocks:
    """Exclusive per-key locks that hold across threads and processes.

    A key hashes to one of ``stripes`` lock files in ``fs``'s ``directory``; a thread lock
    serialises this process's threads and ``fcntl.flock`` serialises processes. Lock
    file descriptors are cached and reopened after ``fork`` (inherited descriptors
    would share the parent's locks).
    """

    def __init__(self, fs: Beneath, directory: str, stripes: int = 256) -> None:
        self._fs = fs
        self._dir = directory
        self._stripes = stripes
        self._thread_locks = [threading.Lock() for _ in range(stripes)]
        self._fds: dict[int, int] = {}
        self._guard = threading.Lock()
        self._pid = PROCESS.pid

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """Hold ``key``'s stripe lock for the block."""
        stripe = self.acquire(key)
        try:
            yield
        finally:
            self.release(stripe)

    def acquire(self, key: str) -> int:
        """Take ``key``'s stripe lock; returns the stripe to :meth:`release`."""
        stripe = zlib.crc32(key.encode("utf-8", "surrogatepass")) % self._stripes
        lock = self._thread_locks[stripe]
        lock.acquire()
        try:
            fcntl.flock(self._fd(stripe), fcntl.LOCK_EX)
        except BaseException:
            lock.release()
            raise
        return stripe

    def release(self, stripe: int) -> None:
        """Release a stripe taken with :meth:`acquire`."""
        try:
            fd = self._fds.get(stripe)
            if fd is not None:  # None: close() ran meanwhile, and closing released the lock
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            self._thread_locks[stripe].release()

    def _fd(self, stripe: int) -> int:
        if self._pid == PROCESS.pid:  # the common case: opened before, in this process
            fd = self._fds.get(stripe)
            if fd is not None:
                return fd
        with self._guard:
            if self._pid != PROCESS.pid:
                self._fds = {}
                self._pid = PROCESS.pid
            fd = self._fds.get(stripe)
            if fd is None:
                path = f"{self._dir}/{stripe:03d}.lock"
                try:
                    fd = self._fs.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                except FileNotFoundError:  # the first lock taken in this store: make the directory
                    os.close(self._fs.make_dirs(self._dir))
                    fd = self._fs.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                self._fds[stripe] = fd
            return fd

    def close(self) -> None:
        """Close the cached descriptors (locks are re-opened on next use)."""
        with self._guard:
            fds, self._fds = self._fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def scan_dir(fs: Beneath, dir_rel: str, name_prefix: str, start_after: str | None) -> list[tuple[str, str, bool]]:
    """Sorted ``(sort_name, key, is_dir)`` entries of one directory that can match.

    A subdirectory ``d`` sorts as ``d/``, which makes a depth-first walk yield keys in
    global code-point order. Store files, symbolic links, special files and names no
    key can have are skipped; subtrees wholly at or before ``start_after`` are pruned.
    """
    out: list[tuple[str, str, bool]] = []
    head = dir_rel + "/" if dir_rel else ""
    try:
        dfd = fs.open_dir(dir_rel)  # never through a symbolic link
    except OSError as exc:
        if exc.errno in NOT_THERE:
            return out
        raise
    try:
        it = os.scandir(dfd)  # scans a duplicate of dfd
    finally:
        os.close(dfd)
    with it:
        for e in it:
            name = e.name
            if name.startswith(RESERVED_PREFIX) or not name.startswith(name_prefix):
                continue
            # 250 characters cannot exceed the 1024-byte key limit; longer ones are checked
            suspect = _SUSPECT_NAME.search(name) is not None or len(head) + len(name) > 250
            if e.is_dir(follow_symlinks=False):
                sub = head + name + "/"
                if suspect and not _usable(validate_prefix, sub):
                    continue  # placed by hand under a name no key can have
                if start_after is not None and start_after >= sub and not start_after.startswith(sub):
                    continue
                out.append((name + "/", head + name, True))
            elif e.is_file(follow_symlinks=False):
                k = head + name
                if suspect and not _usable(validate_key, k):
                    continue
                if start_after is None or k > start_after:
                    out.append((name, k, False))
    out.sort()
    return out


def holds_key(fs: Beneath, dir_rel: str) -> bool:
    """Whether directory ``dir_rel`` holds, at any depth, a file a listing shows (an empty
    directory, or one with only in-progress temp files and sidecars, stands for no key).
    Depth first, stopping at the first such file."""
    pending = [dir_rel]
    while pending:
        entries = scan_dir(fs, pending.pop(), "", None)
        if any(not is_dir for _, _, is_dir in entries):
            return True
        pending += [k for _, k, _ in reversed(entries)]
    return False


def _usable(validate: Callable[[object], str], text: str) -> bool:
    """Whether ``text`` passes ``validate`` (a file placed by hand may have any name)."""
    try:
        validate(text)
    except InvalidKeyError:
        return False
    return True


class Temp:
    """A temp file ``name`` being written in the directory open as ``dir_fd``, locked by its
    writer: closed exactly once, removed unless renamed into place. ``release()`` closes the
    directory."""

    __slots__ = ("dir_fd", "fd", "name", "open")

    def __init__(self, fd: int, dir_fd: int, name: str) -> None:
        self.fd, self.dir_fd, self.name, self.open = fd, dir_fd, name, True
        # Held until the commit: a sweep in any process removes only temp files nobody holds.
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def close(self) -> None:
        if self.open:
            self.open = False
            os.close(self.fd)

    def release(self) -> None:
        if self.dir_fd >= 0:
            fd, self.dir_fd = self.dir_fd, -1
            os.close(fd)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.close()
        if self.dir_fd >= 0:
            with contextlib.suppress(OSError):
                os.unlink(self.name, dir_fd=self.dir_fd)  # already renamed into place: ENOENT, ignored
            with contextlib.suppress(OSError):
                self.release()


def write_all(fd: int, chunks: list[bytes] | list[memoryview]) -> None:
    """Write every chunk completely (``os.write`` may write less than asked)."""
    for chunk in chunks:
        n = os.write(fd, chunk)
        if n == len(chunk):
            continue
        view = memoryview(chunk)[n:]
        while view:
            n = os.write(fd, view)
            view = view[n:]


def copy_to_fd(src: Any, fd: int, chunk_size: int, check: Callable[[int], None]) -> int:
    """Copy the rest of binary file ``src`` into ``fd``; return the bytes copied.

    Uses ``os.copy_file_range`` (in-kernel, no user-space buffer) from the file's
    current position when both ends allow it, else a ``readinto`` loop with one
    reused buffer. ``check(total)`` runs after every step and may raise to stop.
    """
    total = 0
    copy_range = getattr(os, "copy_file_range", None)
    try:
        in_fd = src.fileno()
        offset = src.tell()
    except (AttributeError, OSError, ValueError):
        copy_range = None
    if copy_range is not None:
        step = max(chunk_size, 8 << 20)
        try:
            while n := copy_range(in_fd, fd, step, offset + total):
                total += n
                check(total)
            src.seek(offset + total)
            return total
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP) or total:
                raise
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    while n := src.readinto(buf):
        write_all(fd, [view[:n]])
        total += n
        check(total)
    return total
