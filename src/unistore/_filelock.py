"""One process at a time per transfer: an advisory lock beside a resumable transfer's record."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from ._errors import UnavailableError

__all__ = ["exclusive"]


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold ``path`` (created if missing) locked for the block; :class:`UnavailableError` if another
    process holds it. The lock goes with the process, so a killed transfer never leaves it held.
    Where ``fcntl`` is missing (Windows) the block runs unlocked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UnavailableError(f"another process is already transferring {what}; try again when it ends") from None
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
