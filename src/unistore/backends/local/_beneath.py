"""Open paths under one directory without ever following a symbolic link.

The decision is made on the descriptors opened, never on a path checked before or
after (a concurrent rename or symlink swap can change a path between a check and a
use). :class:`Beneath` keeps a descriptor of the base directory and opens paths
relative to it:

- on Linux >= 5.6, with one ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` call (made
  through ``ctypes``: Python has no ``os.openat2``), probed once; the kernel refuses a
  symbolic link at any position, and any ``..`` escape;
- elsewhere, or where the call is refused (older kernels, seccomp filters), by a walk
  that opens each directory with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's
  descriptor.

Callers then act on single names relative to an opened directory (``dir_fd=``), so no
path is resolved twice. A symbolic link met on the way is ``ELOOP`` (``ENOTDIR`` from
some kernels for the walk); see :data:`NOT_THERE`.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import platform
import threading
import weakref
from typing import Any

__all__ = ["Beneath", "NOT_THERE", "USE_OPENAT2", "openat2_available"]

USE_OPENAT2 = True
"""Use ``openat2`` where the kernel has it; tests set this to ``False`` to exercise the walk."""

NOT_THERE = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
"""Errors meaning "no such path beneath the base": missing, through a file, or through a link."""

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_DIR_FLAGS = os.O_RDONLY | _O_DIRECTORY | _O_NOFOLLOW | _O_CLOEXEC
_RESOLVE = 0x08 | 0x04 | 0x02  # RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS
_SYS_OPENAT2 = {"x86_64": 437, "amd64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine().lower())


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """The ``openat2`` system call, if this kernel lets us make it (decided by :meth:`probe`)."""

    def __init__(self) -> None:
        self.ok: bool | None = None if _SYS_OPENAT2 is not None and platform.system() == "Linux" else False
        self._guard = threading.Lock()
        self._hows: dict[tuple[int, int], Any] = {}
        self._call: Any = None

    def probe(self, dir_fd: int) -> bool:
        with self._guard:
            if self.ok is None:
                try:
                    libc = ctypes.CDLL(None, use_errno=True)
                    self._call = libc.syscall
                    self._call.restype = ctypes.c_long
                    # syscall() is variadic: every argument is passed as a full register (long)
                    self._call.argtypes = [
                        ctypes.c_long,
                        ctypes.c_long,
                        ctypes.c_char_p,
                        ctypes.c_void_p,
                        ctypes.c_size_t,
                    ]
                    os.close(self.open(dir_fd, ".", _DIR_FLAGS, 0))
                    self.ok = True
                except (OSError, AttributeError):
                    self.ok = False  # ENOSYS (kernel < 5.6), EPERM (seccomp), no libc symbol
        return self.ok

    def open(self, dir_fd: int, path: str, flags: int, mode: int) -> int:
        """``openat2(dir_fd, path, flags, mode, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)``."""
        if not flags & os.O_CREAT:
            mode = 0  # the kernel refuses a mode without O_CREAT
        how = self._hows.get((flags, mode))
        if how is None:
            how = self._hows[(flags, mode)] = ctypes.pointer(_OpenHow(flags, mode, _RESOLVE))
        raw = os.fsencode(path)
        err = 0
        for _ in range(8):
            fd: int = self._call(_SYS_OPENAT2, dir_fd, raw, how, _HOW_SIZE)
            if fd >= 0:
                return fd
            err = ctypes.get_errno()
            if err not in (errno.EINTR, errno.EAGAIN):  # EAGAIN: a rename raced a ".." check
                break
        raise OSError(err, os.strerror(err), path)


_HOW_SIZE = ctypes.sizeof(_OpenHow)
_OPENAT2 = _Openat2()


def openat2_available() -> bool | None:
    """Whether ``openat2`` is used (``None``: not probed yet, no :class:`Beneath` made)."""
    return _OPENAT2.ok


class Beneath:
    """Descriptor-relative access to the directory tree under ``path`` (opened once).

    Every method raises ``OSError`` with an errno in :data:`NOT_THERE` when a component
    is missing, is not a directory, or is a symbolic link. Relative paths use ``/`` and
    have no empty, ``.`` or ``..`` segment (keys never do; the walk refuses them).
    """

    __slots__ = ("__weakref__", "_fd", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        weakref.finalize(self, os.close, self._fd)
        if _OPENAT2.ok is None:
            _OPENAT2.probe(self._fd)

    def refresh(self) -> bool:
        """Reopen ``path`` if it now names another directory than the one opened (the base was
        replaced); return whether it did. The old descriptor stays open for operations still
        using it, until this object is dropped."""
        try:
            fd = os.open(self.path, os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC)
        except OSError:
            return False
        mine, now = os.fstat(self._fd), os.fstat(fd)
        if (mine.st_dev, mine.st_ino) == (now.st_dev, now.st_ino):
            os.close(fd)
            return False
        self._fd = fd
        weakref.finalize(self, os.close, fd)
        return True

    def open(self, rel: str, flags: int, mode: int = 0o644) -> int:
        """Open ``rel`` (a file or directory) with ``flags``; never through a symbolic link."""
        if USE_OPENAT2 and _OPENAT2.ok:
            return _OPENAT2.open(self._fd, rel, flags | _O_NOFOLLOW | _O_CLOEXEC, mode)
        head, _, name = rel.rpartition("/")
        if not head:
            return os.open(_checked(name), flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=self._fd)
        dfd = self._walk(head)
        try:
            return os.open(_checked(name), flags | _O_NOFOLLOW | _O_CLOEXEC, mode, dir_fd=dfd)
        finally:
            os.close(dfd)

    def open_dir(self, rel: str) -> int:
        """A new descriptor of directory ``rel`` (``""``: the base itself), for ``dir_fd=``
        calls, ``fsync`` and ``os.scandir`` (a new open file description, never shared)."""
        if not rel:
            return os.open(".", _DIR_FLAGS, dir_fd=self._fd)
        if "/" not in rel:  # one name: O_NOFOLLOW refuses a link as openat2 would, without ctypes
            return os.open(_checked(rel), _DIR_FLAGS, dir_fd=self._fd)
        if USE_OPENAT2 and _OPENAT2.ok:
            return _OPENAT2.open(self._fd, rel, _DIR_FLAGS, 0)
        return self._walk(rel)

    def make_dirs(self, rel: str) -> int:
        """Like :meth:`open_dir`, creating missing directories (mode ``0o777`` less umask).
        ``FileNotFoundError`` if a concurrent ``rmdir`` removed a parent meanwhile: retry."""
        with contextlib.suppress(FileNotFoundError):
            return self.open_dir(rel)
        fd = os.open(".", _DIR_FLAGS, dir_fd=self._fd)
        try:
            for name in rel.split("/"):
                try:
                    nfd = os.open(_checked(name), _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(name, 0o777, dir_fd=fd)
                    nfd = os.open(name, _DIR_FLAGS, dir_fd=fd)  # ELOOP if a link was put there
                os.close(fd)
                fd = nfd
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _walk(self, rel: str) -> int:
        """Open directory ``rel`` one component at a time, each relative to its parent."""
        fd = self._fd
        try:
            for name in rel.split("/"):
                nfd = os.open(_checked(name), _DIR_FLAGS, dir_fd=fd)
                if fd != self._fd:
                    os.close(fd)
                fd = nfd
        except BaseException:
            if fd != self._fd:
                os.close(fd)
            raise
        return fd


def _checked(name: str) -> str:
    if name in ("", ".", ".."):
        raise FileNotFoundError(errno.ENOENT, "not a name beneath the base", name)
    return name
