"""Removal of what killed writers leave behind in a :class:`LocalBackend` tree.

A writer holds an exclusive ``flock`` on its temp file from creation until its
commit, so a temp file is stale only when nobody holds that lock *and* it has
not been written for ``stale_after`` seconds (the age covers the instant
between creating a file and locking it, and other processes' pid namespaces
make pids useless). A versioned sidecar is stale when it is that old and no
file in its directory (data or temp) is the inode it names. Directories that
the sweep empties are removed; directories it found empty are left alone.

Every directory is opened relative to its parent's descriptor without following a
symbolic link (see ``_beneath``), and every file is named relative to its opened
directory: a link swapped into the tree never leads a sweep outside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat as stat_mod
import time
from collections.abc import Callable
from typing import Any

from ..._keys import RESERVED_PREFIX
from ._beneath import Beneath
from ._meta import LEGACY_SUFFIX, SIDECAR_SUFFIX, read_sidecar

__all__ = ["clear_dir", "sweep_tree"]

TMP_PREFIX = RESERVED_PREFIX + ".tmp."
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
_KEEP = {"", RESERVED_PREFIX, f"{RESERVED_PREFIX}/locks"}


def _opener(d: int) -> Callable[[str, int], int]:
    return lambda name, flags: os.open(name, flags | _O_NOFOLLOW | _O_CLOEXEC, dir_fd=d)


def _scan(d: int) -> list[os.DirEntry[str]] | None:
    """The entries of the directory open as ``d`` (names only: ``e.path == e.name``)."""
    try:
        with os.scandir(d) as it:
            return list(it)
    except OSError:
        return None


def _unlink_if_dead(d: int, name: str) -> bool:
    """Remove the temp file ``name`` (in ``d``) unless a live writer holds its lock."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK, dir_fd=d)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # held: a live writer
    try:
        os.unlink(name, dir_fd=d)  # still holding the lock, so no writer can be using it now
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _sweep_dir(d: int, stale_before: float, own: str) -> tuple[int, bool]:
    """Sweep the directory open as ``d``; returns (files removed, whether any entry is left)."""
    removed = 0
    left = False
    holders: dict[int, str] = {}  # inode -> a file (object or temp) that has it
    sidecars: list[tuple[str, int, float]] = []
    entries = _scan(d)
    if entries is None:
        return 0, True
    for e in entries:
        name = e.name
        if not name.startswith(RESERVED_PREFIX) or e.is_dir(follow_symlinks=False):
            holders[e.inode()] = name  # from the directory entry itself: no stat per object
            left = True  # subdirectories are handled (and removed) by the walk itself
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if name.endswith(SIDECAR_SUFFIX):
            ino_hex = name[len(RESERVED_PREFIX) + 1 :].partition(".")[0]
            with contextlib.suppress(ValueError):
                sidecars.append((name, int(ino_hex, 16), st.st_mtime))
                continue
        temp = name.startswith(TMP_PREFIX) and not name.endswith(LEGACY_SUFFIX) and stat_mod.S_ISREG(st.st_mode)
        # never our own: where flock is emulated with per-process locks (NFS) ours would not block us
        temp = temp and not (own and name.startswith(own))
        if temp and st.st_mtime < stale_before and _unlink_if_dead(d, name):
            removed += 1
            continue
        holders[st.st_ino] = name
        left = True
    for name, ino, mtime in sidecars:
        if mtime >= stale_before or _describes_a_file(d, read_sidecar(name, _opener(d)), ino, holders.get(ino)):
            left = True
            continue
        try:
            os.unlink(name, dir_fd=d)
            removed += 1
        except OSError:
            left = True
    return removed, left


def _describes_a_file(d: int, record: dict[str, Any] | None, ino: int, holder: str | None) -> bool:
    """Whether a sidecar's version is still on disk: a file with its inode and its mtime, where
    the scan saw that inode or at the data name the record gives (a rename may have just put it
    there). An inode reused by a later file does not count: its mtime differs."""
    if record is None:
        return holder is not None  # unreadable: judged by the inode alone
    name = record.get("name")
    names = [holder] if holder else []
    if isinstance(name, str) and name and "/" not in name:
        names.append(name)
    for n in names:
        with contextlib.suppress(OSError):
            st = os.stat(n, dir_fd=d, follow_symlinks=False)
            if st.st_ino == ino and st.st_mtime_ns == record.get("mt"):
                return True
    return False


def sweep_tree(fs: Beneath, stale_after: float, own: str = "") -> int:
    """Remove stale temp files and sidecars under ``fs``'s base (bottom-up), and the
    directories left empty by that; returns how many files were removed. Temp files whose
    names start with ``own`` (this process's) are left alone."""
    d = fs.open_dir("")
    try:
        return _sweep_subtree(d, "", time.time() - stale_after, own)[0]
    finally:
        os.close(d)


def _sweep_subtree(d: int, rel: str, stale_before: float, own: str) -> tuple[int, bool]:
    """Sweep directory ``rel`` (open as ``d``) after its subdirectories; returns (files removed,
    whether it should now be removed: this sweep emptied it)."""
    total = 0
    emptied = 0
    for e in _scan(d) or []:
        if not e.is_dir(follow_symlinks=False):
            continue
        try:
            sub = os.open(e.name, _DIR_FLAGS, dir_fd=d)
        except OSError:
            continue  # gone, or a link put in its place
        try:
            removed, removable = _sweep_subtree(sub, f"{rel}/{e.name}" if rel else e.name, stale_before, own)
        finally:
            os.close(sub)
        total += removed
        if removable:
            with contextlib.suppress(OSError):
                os.rmdir(e.name, dir_fd=d)
                emptied += 1
    removed, left = _sweep_dir(d, stale_before, own)
    return total + removed, bool(removed or emptied) and not left and rel not in _KEEP


def clear_dir(parent: int, name: str) -> bool:
    """Remove the directory ``name`` (in the directory open as ``parent``) if it holds no
    object, only leftovers (temp files of dead writers, sidecars, empty directories);
    ``False`` if anything else is there. Nothing is removed unless a first look finds only
    leftovers."""
    try:
        d = os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError:
        return False
    try:
        if not (_only_leftovers(d) and _clear(d)):
            return False
    finally:
        os.close(d)
    try:
        os.rmdir(name, dir_fd=parent)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _is_temp(e: os.DirEntry[str]) -> bool:
    return e.name.startswith(TMP_PREFIX) and not e.name.endswith(LEGACY_SUFFIX)


def _held(d: int, name: str) -> bool:
    """Whether a live writer holds the lock of the temp file ``name`` (in ``d``)."""
    try:
        fd = os.open(name, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK, dir_fd=d)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _in_subdir(d: int, name: str, check: Callable[[int], bool]) -> bool:
    """``check`` on subdirectory ``name`` of ``d`` (opened without following a link)."""
    try:
        sub = os.open(name, _DIR_FLAGS, dir_fd=d)
    except OSError:
        return False
    try:
        return check(sub)
    finally:
        os.close(sub)


def _only_leftovers(d: int) -> bool:
    entries = _scan(d)
    if entries is None:
        return False
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if not _in_subdir(d, e.name, _only_leftovers):
                return False
        elif not e.name.startswith(RESERVED_PREFIX) or e.is_symlink() or (_is_temp(e) and _held(d, e.name)):
            return False
    return True


def _clear(d: int) -> bool:
    """Empty the directory open as ``d`` of leftovers (the caller removes it)."""
    entries = _scan(d)
    if entries is None:
        return False
    files = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if not _in_subdir(d, e.name, _clear):
                return False
            try:
                os.rmdir(e.name, dir_fd=d)
            except FileNotFoundError:
                pass
            except OSError:
                return False
        elif not e.name.startswith(RESERVED_PREFIX) or e.is_symlink():
            return False  # an object arrived meanwhile
        elif _is_temp(e):
            if not _unlink_if_dead(d, e.name):
                return False
        else:
            files.append(e.name)
    for f in files:  # sidecars, only once no live writer's temp file is here
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f, dir_fd=d)
    return True
