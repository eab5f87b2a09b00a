"""Serving with uvicorn: a deadline for request headers, which uvicorn itself does not have.

uvicorn's ``timeout_keep_alive`` is cancelled by the first byte of the next
request, and a new connection has no timer at all, so a client that sends half
its headers (or one byte every few seconds: slow loris) holds a connection
forever. :func:`http_protocol` adds one timer per connection: the headers of a
request must be complete within ``header_timeout`` seconds of the connection
opening or of the previous response ending, else the connection is closed.
The same timer bounds how long the rest of a body the app did not read (an
early 401 or 413) is drained after the response. Stalled bodies the app is
reading are :class:`~unistore._request_limits.BodyTimeouts`' job (408).

:func:`run_workers` is uvicorn's worker supervisor with each worker pinned to
one CPU (``serve --workers N --cpu-affinity auto``), as nginx's
``worker_cpu_affinity auto``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _Host
else:
    _Host = asyncio.Protocol

__all__ = ["CPU_AFFINITY", "app_from_env", "http_protocol", "run_workers", "worker_cpus"]

CPU_AFFINITY = ("none", "auto")
"""The values of ``--cpu-affinity`` (``UNISTORE_CPU_AFFINITY``)."""

LOGGER = logging.getLogger("unistore.service")


class _HeaderDeadline(_Host):
    """Mixed into uvicorn's h11 or httptools protocol: one timer for "waiting for the next request"."""

    header_timeout: float = 10.0
    _header_timer: asyncio.TimerHandle | None = None

    def _serving(self) -> bool:
        cycle: Any = self.cycle
        return cycle is not None and not cycle.response_complete

    def _arm(self) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self._serving() or self.transport.is_closing():
            return
        LOGGER.info("%s closed: no complete request headers within %.3g s", self.client, self.header_timeout)
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        super().data_received(data)
        if self.cycle is not before:  # a new request's headers are complete
            self._disarm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self._serving():  # no pipelined request started: wait for the next one's headers
            self._arm()

    def handle_websocket_upgrade(self, *args: Any) -> None:
        self._disarm()  # the connection now belongs to the websocket protocol
        super().handle_websocket_upgrade(*args)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _build(name: str, base_name: str, header_timeout: float) -> type[asyncio.Protocol]:
    base: type[asyncio.Protocol]
    if base_name == "httptools":
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        base = HttpToolsProtocol
    else:
        from uvicorn.protocols.http.h11_impl import H11Protocol

        base = H11Protocol
    cls = type(name, (_HeaderDeadline, base), {"header_timeout": header_timeout, "__module__": __name__})
    globals()[name] = cls
    return cls


def http_protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11, as uvicorn's ``auto``)
    with a ``header_timeout``-second deadline for request headers: pass it as ``http=``.

    The class is found again by its name in a worker process (uvicorn pickles its
    configuration for ``workers=N``): the name carries the parser and the timeout in µs.
    """
    if header_timeout <= 0:
        raise ValueError("header_timeout must be > 0")
    base_name = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
    micros = max(1, round(header_timeout * 1e6))
    name = f"HeaderDeadline_{base_name}_{micros}"
    found = globals().get(name)
    return found if isinstance(found, type) else _build(name, base_name, micros / 1e6)


def __getattr__(name: str) -> Any:
    """The protocol class :func:`http_protocol` made in another process, rebuilt from its name."""
    head, _, rest = name.partition("_")
    base_name, _, micros = rest.partition("_")
    if head == "HeaderDeadline" and base_name in ("httptools", "h11") and micros.isdigit() and int(micros) > 0:
        return _build(name, base_name, int(micros) / 1e6)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def app_from_env() -> Any:
    """The service app built from the environment in a worker process (``uvicorn --factory``):
    the ``serve`` command puts its options in the environment before it starts the workers."""
    from . import ServiceSettings, create_app
    from .__main__ import configure_logging

    configure_logging()
    return create_app(settings=ServiceSettings.from_env())


def worker_cpus(mode: str, workers: int) -> list[int] | None:
    """The CPU of each worker slot for ``--cpu-affinity`` ``mode``, or None to leave the scheduler free.

    ``auto`` deals the CPUs this process may run on (``os.sched_getaffinity``: a ``taskset`` or a
    container's cpuset counts) to the workers in turn; with one worker or one CPU nothing is pinned.
    """
    if mode not in CPU_AFFINITY:
        raise ValueError(f"cpu affinity must be one of {', '.join(CPU_AFFINITY)}, not {mode!r}")
    if mode == "none" or workers < 2 or not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return [cpus[slot % len(cpus)] for slot in range(workers)]


def _pin(pid: int, cpu: int) -> bool:
    """Pin every thread of process ``pid`` to ``cpu`` (threads started later inherit it); False if it is gone."""
    try:
        os.sched_setaffinity(pid, {cpu})  # the main thread first: threads it starts from now on inherit it
    except ProcessLookupError:
        return False
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), {cpu})
    return True


def run_workers(config: Any, cpus: list[int] | None) -> None:
    """Run ``config.workers`` worker processes on one listening socket under uvicorn's supervisor,
    worker slot ``i`` pinned to ``cpus[i]`` (a replacement worker too) unless ``cpus`` is None."""
    from uvicorn.supervisors import Multiprocess

    pinned: dict[int, int] = {}  # slot -> the pid pinned there

    class Supervisor(Multiprocess):
        def pin_new(self) -> None:
            for slot, process in enumerate(self.processes):
                pid = process.pid
                if cpus is None or pid is None or pinned.get(slot) == pid:
                    continue
                if _pin(pid, cpus[slot % len(cpus)]):
                    pinned[slot] = pid
                    LOGGER.info("worker [%d] pinned to CPU %d", pid, cpus[slot % len(cpus)])

        def init_processes(self) -> None:
            super().init_processes()
            self.pin_new()

        def keep_subprocess_alive(self) -> None:  # every 0.5 s: a restarted or added worker is pinned too
            super().keep_subprocess_alive()
            self.pin_new()

    sock = config.bind_socket()
    try:
        Supervisor(config, sockets=[sock]).run()
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
