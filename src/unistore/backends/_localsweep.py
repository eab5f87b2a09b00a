"""Removal of what killed writers leave behind in a :class:`LocalBackend` tree.

A writer holds an exclusive ``flock`` on its temp file from creation until its
commit, so a temp file is stale only when nobody holds that lock *and* it has
not been written for ``stale_after`` seconds (the age covers the instant
between creating a file and locking it, and other processes' pid namespaces
make pids useless). A versioned sidecar is stale when it is that old and no
file in its directory (data or temp) is the inode it names. Directories that
the sweep empties are removed; directories it found empty are left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat as stat_mod
import time
from typing import Any

from .._keys import RESERVED_PREFIX
from ._localmeta import LEGACY_SUFFIX, SIDECAR_SUFFIX, read_sidecar

__all__ = ["clear_dir", "sweep_tree"]

TMP_PREFIX = RESERVED_PREFIX + ".tmp."
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _unlink_if_dead(path: str) -> bool:
    """Remove the temp file ``path`` unless a live writer holds its lock."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # held: a live writer
    try:
        os.unlink(path)  # still holding the lock, so no writer can be using it now
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def _sweep_dir(d: str, stale_before: float, own: str) -> tuple[int, bool]:
    """Sweep one directory; returns (files removed, whether any entry is left)."""
    removed = 0
    left = False
    holders: dict[int, str] = {}  # inode -> a file (object or temp) that has it
    sidecars: list[tuple[str, int, float]] = []
    try:
        it = os.scandir(d)
    except OSError:
        return 0, True
    with it:
        entries = list(it)
    for e in entries:
        name = e.name
        if not name.startswith(RESERVED_PREFIX) or e.is_dir(follow_symlinks=False):
            holders[e.inode()] = e.path  # from the directory entry itself: no stat per object
            left = True  # subdirectories are handled (and removed) by the walk itself
            continue
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        if name.endswith(SIDECAR_SUFFIX):
            ino_hex = name[len(RESERVED_PREFIX) + 1 :].partition(".")[0]
            with contextlib.suppress(ValueError):
                sidecars.append((e.path, int(ino_hex, 16), st.st_mtime))
                continue
        temp = name.startswith(TMP_PREFIX) and not name.endswith(LEGACY_SUFFIX) and stat_mod.S_ISREG(st.st_mode)
        # never our own: where flock is emulated with per-process locks (NFS) ours would not block us
        temp = temp and not (own and name.startswith(own))
        if temp and st.st_mtime < stale_before and _unlink_if_dead(e.path):
            removed += 1
            continue
        holders[st.st_ino] = e.path
        left = True
    for path, ino, mtime in sidecars:
        if mtime >= stale_before or _describes_a_file(d, read_sidecar(path), ino, holders.get(ino)):
            left = True
            continue
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            left = True
    return removed, left


def _describes_a_file(d: str, record: dict[str, Any] | None, ino: int, holder: str | None) -> bool:
    """Whether a sidecar's version is still on disk: a file with its inode and its mtime, where
    the scan saw that inode or at the data name the record gives (a rename may have just put it
    there). An inode reused by a later file does not count: its mtime differs."""
    if record is None:
        return holder is not None  # unreadable: judged by the inode alone
    name = record.get("name")
    paths = [holder] if holder else []
    if isinstance(name, str) and name and "/" not in name:
        paths.append(os.path.join(d, name))
    for p in paths:
        with contextlib.suppress(OSError):
            st = os.lstat(p)
            if st.st_ino == ino and st.st_mtime_ns == record.get("mt"):
                return True
    return False


def sweep_tree(root: str, stale_after: float, own: str = "") -> int:
    """Remove stale temp files and sidecars under ``root`` (bottom-up), and the directories
    left empty by that; returns how many files were removed. Temp files whose names start
    with ``own`` (this process's) are left alone."""
    stale_before = time.time() - stale_after
    keep = {root, os.path.join(root, RESERVED_PREFIX), os.path.join(root, RESERVED_PREFIX, "locks")}
    total = 0
    emptied: dict[str, int] = {}  # directory -> subdirectories this sweep removed from it
    for d, _dirs, _files in os.walk(root, topdown=False, followlinks=False):
        removed, left = _sweep_dir(d, stale_before, own)
        total += removed
        if (removed or emptied.get(d)) and not left and d not in keep:
            with contextlib.suppress(OSError):
                os.rmdir(d)
                parent = os.path.dirname(d)
                emptied[parent] = emptied.get(parent, 0) + 1
    return total


def clear_dir(path: str) -> bool:
    """Remove the directory ``path`` if it holds no object, only leftovers (temp files of dead
    writers, sidecars, empty directories); ``False`` if anything else is there. Nothing is
    removed unless a first look finds only leftovers."""
    return _only_leftovers(path) and _clear(path)


def _scan(path: str) -> list[os.DirEntry[str]] | None:
    try:
        with os.scandir(path) as it:
            return list(it)
    except OSError:
        return None


def _is_temp(e: os.DirEntry[str]) -> bool:
    return e.name.startswith(TMP_PREFIX) and not e.name.endswith(LEGACY_SUFFIX)


def _held(path: str) -> bool:
    """Whether a live writer holds the lock of the temp file ``path``."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)  # closing releases a lock we took
    return False


def _only_leftovers(path: str) -> bool:
    entries = _scan(path)
    if entries is None:
        return False
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if not _only_leftovers(e.path):
                return False
        elif not e.name.startswith(RESERVED_PREFIX) or e.is_symlink() or (_is_temp(e) and _held(e.path)):
            return False
    return True


def _clear(path: str) -> bool:
    entries = _scan(path)
    if entries is None:
        return False
    files = []
    for e in entries:
        if e.is_dir(follow_symlinks=False):
            if not _clear(e.path):
                return False
        elif not e.name.startswith(RESERVED_PREFIX) or e.is_symlink():
            return False  # an object arrived meanwhile
        elif _is_temp(e):
            if not _unlink_if_dead(e.path):
                return False
        else:
            files.append(e.path)
    for f in files:  # sidecars, only once no live writer's temp file is here
        with contextlib.suppress(FileNotFoundError):
            os.unlink(f)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True
