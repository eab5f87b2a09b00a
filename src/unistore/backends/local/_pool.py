"""The worker threads :class:`~unistore.LocalBackend` runs its file-system calls in.

A small write is a handful of system calls, so the hop to a thread and back costs
more than the work. ``loop.run_in_executor`` spends most of that hop in Python:
a ``concurrent.futures.Future``, its lock and condition, a chained asyncio future,
two callbacks and the executor's thread-count bookkeeping. Here a job is one tuple
on a ``SimpleQueue``, and a worker hands the result back with one
``call_soon_threadsafe``; results that finish while the loop is still busy with
earlier ones share that one wake-up. Threads start on demand (at most ``limit``,
the same bound as the default executor's) and wait for work forever; a forked
child starts its own.

Whole writes that ``fsync`` (:func:`run_write`) have threads of their own, up to
``WRITE_LIMIT``: such a write spends milliseconds waiting for the disk, not holding the
GIL, and the more of them wait at once the more one journal commit makes durable
(group commit). Everything else, short and partly Python, keeps the smaller pool, where
more threads would only take turns on the GIL.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections import deque
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any

__all__ = ["WRITE_LIMIT", "run_in_thread", "run_write"]

_LIMIT = min(32, (os.cpu_count() or 1) + 4)
WRITE_LIMIT = 32
"""Most threads running fsyncing writes at once (as many as a default executor's largest pool)."""


class _Inbox:
    """Results waiting for one event loop, delivered by a single scheduled callback."""

    __slots__ = ("done", "loop", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.done: deque[tuple[asyncio.Future[Any], bool, Any]] = deque()
        self.scheduled = False

    def post(self, fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
        """Queue a result (from a worker thread) and wake the loop unless a wake-up is pending."""
        self.done.append((fut, ok, value))
        if not self.scheduled:
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.deliver)
            except RuntimeError:  # the loop was closed: nobody waits for these any more
                self.done.clear()

    def deliver(self) -> None:
        """Resolve every queued future (on the loop). The flag drops first, so a result
        queued while this runs either is seen here or schedules the next call."""
        self.scheduled = False
        done = self.done
        while done:
            fut, ok, value = done.popleft()
            if fut.cancelled():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)


class _Pool:
    __slots__ = ("idle", "inboxes", "jobs", "limit", "lock", "threads")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.jobs: SimpleQueue[tuple[_Inbox, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]]] = SimpleQueue()
        self.inboxes: dict[asyncio.AbstractEventLoop, _Inbox] = {}
        self.lock = threading.Lock()
        self.idle = 0
        self.threads = 0

    def submit(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        inbox = self.inboxes.get(loop)
        if inbox is None or inbox.loop.is_closed():
            inbox = self._inbox(loop)
        fut = loop.create_future()
        self.jobs.put((inbox, fut, fn, args))
        with self.lock:  # as ThreadPoolExecutor: use a thread that finished a job, else start one
            if self.idle:
                self.idle -= 1
                return fut
            if self.threads >= self.limit:
                return fut
            self.threads += 1
        threading.Thread(target=self._work, name="unistore-local", daemon=True).start()
        return fut

    def _inbox(self, loop: asyncio.AbstractEventLoop) -> _Inbox:
        with self.lock:
            # Forget closed loops: each keeps its (empty) inbox until another loop asks.
            for old in [lp for lp in self.inboxes if lp.is_closed()]:
                del self.inboxes[old]
            inbox = self.inboxes[loop] = _Inbox(loop)
        return inbox

    def _work(self) -> None:
        jobs, lock = self.jobs, self.lock
        while True:
            job = jobs.get()
            _run(*job)
            del job  # no reference to the last job's arguments or result while waiting
            with lock:
                self.idle += 1


def _run(inbox: _Inbox, fut: asyncio.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    if fut.cancelled():  # cancelled before it started: skipped, as an executor would
        return
    try:
        result = fn(*args)
    except BaseException as exc:
        inbox.post(fut, False, exc)
    else:
        inbox.post(fut, True, result)


_POOL = _Pool(_LIMIT)
_WRITES = _Pool(WRITE_LIMIT)


def _forked() -> None:
    global _POOL, _WRITES
    _POOL = _Pool(_LIMIT)  # the parent's threads do not exist in a forked child
    _WRITES = _Pool(WRITE_LIMIT)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def run_in_thread(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``fn(*args)`` in a worker thread; await the result (or its exception)."""
    return _POOL.submit(fn, args)


def run_write(fn: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
    """Run ``fn(*args)``, a whole write that waits for the disk (``fsync``), in a writer thread."""
    return _WRITES.submit(fn, args)
