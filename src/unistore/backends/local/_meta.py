"""Where :class:`LocalBackend` keeps a version's metadata record, so it commits with the data.

A record (JSON: etag, content type, metadata, cache-control, content-disposition,
and the size and mtime of the data it describes) lives in the extended attribute
``user.unistore`` of the data file's own inode, set on the temp file before the
one rename that commits: whatever instant a writer dies, the name points at an
inode that carries exactly its own record. Where the file system has no user
extended attributes (probed at start), or one record does not fit (ext4 keeps
about 4 KiB of attributes per inode), the record goes to a sidecar named by the
data file's inode, ``.unistore.<ino>.<name>.vm``, written before the data rename
and never changed afterwards: the committed version's sidecar is removed only
after a newer version (or a delete) has replaced it. ``.unistore.<name>.meta`` (``meta_path``)
is the sidecar of earlier releases, still read for versions written by them.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import stat as stat_mod
from collections.abc import Callable
from typing import Any

from ..._keys import RESERVED_PREFIX

__all__ = [
    "LEGACY_SUFFIX",
    "SIDECAR_SUFFIX",
    "XATTR",
    "encode",
    "matches",
    "probe_xattr",
    "read_sidecar",
    "read_xattr",
    "sidecar_path",
    "try_set_xattr",
    "write_sidecar",
]

XATTR = "user.unistore"
SIDECAR_SUFFIX = ".vm"
LEGACY_SUFFIX = ".meta"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO put in a sidecar's place never blocks
# setxattr errors that mean "not here": no support, or this record does not fit the inode
_NO_ROOM = {errno.E2BIG, errno.ENOSPC, errno.ERANGE, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EDQUOT}


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def _decode(raw: bytes) -> dict[str, Any] | None:
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("etag"), str) else None


def matches(record: dict[str, Any], st: os.stat_result, *, ino: bool) -> bool:
    """Whether ``record`` describes the data file ``st`` (size and mtime; inode too for sidecars)."""
    return (
        record.get("size") == st.st_size
        and record.get("mt") == st.st_mtime_ns
        and (not ino or record.get("ino") == st.st_ino)
    )


def probe_xattr(dir_fd: int, name: str) -> bool:
    """Whether files in the directory open as ``dir_fd`` keep a ``user.*`` attribute (ext4,
    xfs, btrfs; tmpfs since 6.6); ``name`` is a fresh temp-file name for the probe."""
    if not hasattr(os, "setxattr"):
        return False  # pragma: no cover - not Linux
    try:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        os.setxattr(fd, XATTR, b"{}")
        return os.getxattr(fd, XATTR) == b"{}"
    except OSError:
        return False
    finally:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)


def try_set_xattr(fd: int, data: bytes) -> bool:
    """Attach ``data`` to the open file; ``False`` if this file system or inode has no room for it."""
    try:
        os.setxattr(fd, XATTR, data)
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            return False
        raise
    return True


def read_xattr(target: int | str) -> dict[str, Any] | None:
    """The record on an open file (or on a path, not following a final symbolic link)."""
    try:
        if isinstance(target, str):
            raw = os.getxattr(target, XATTR, follow_symlinks=False)
        else:
            raw = os.getxattr(target, XATTR)
    except OSError:
        return None
    return _decode(raw)


def _short(name: str) -> str:
    return "h." + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def sidecar_path(path: str, ino: int) -> str:
    """The sidecar of the version of ``path`` whose data file is inode ``ino``."""
    d, name = os.path.split(path)
    if len(name.encode("utf-8", "surrogatepass")) > 200:
        name = _short(name)
    return os.path.join(d, f"{RESERVED_PREFIX}.{ino:x}.{name}{SIDECAR_SUFFIX}")


def read_sidecar(path: str, opener: Callable[[str, int], int] = os.open) -> dict[str, Any] | None:
    """A sidecar's record, or ``None`` if it is missing, unreadable or not a regular file.
    ``opener(path, flags)`` opens it (the store passes one that never follows a link)."""
    try:
        fd = opener(path, os.O_RDONLY | _O_CLOEXEC | _O_NOFOLLOW | _O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat_mod.S_ISREG(os.fstat(fd).st_mode):
            return None
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return _decode(b"".join(chunks))


def write_sidecar(path: str, data: bytes, fsync: bool, dir_fd: int | None = None) -> None:
    """Write a new sidecar at ``path`` (relative to ``dir_fd`` if given). A file already there
    is a leftover of a version that never committed (its name holds the inode of our live
    temp file): it is replaced."""
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW, 0o644, dir_fd=dir_fd)
            break
        except FileExistsError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path, dir_fd=dir_fd)
    else:
        raise FileExistsError(errno.EEXIST, "sidecar name is taken", path)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
