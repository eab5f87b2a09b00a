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

:func:`run_workers` runs ``serve --workers N``: N uvicorn worker processes,
each on a ``SO_REUSEPORT`` socket of its own (as nginx's ``reuseport``) and,
with ``--cpu-affinity auto``, pinned to one CPU (nginx's ``worker_cpu_affinity auto``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
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
    from .__main__ import configure_logging, tune_gc

    configure_logging()
    app = create_app(settings=ServiceSettings.from_env())
    tune_gc()
    return app


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


def _listener(host: str, port: int, reuse_port: bool) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``SO_REUSEPORT`` when ``reuse_port``), not yet listening."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _pin_self(cpu: int) -> None:
    """Pin this process, every thread it has and every thread it starts, to ``cpu``."""
    os.sched_setaffinity(0, {cpu})  # this thread first: threads it starts from now on inherit it
    for task in Path(f"/proc/{os.getpid()}/task").glob("*"):
        with contextlib.suppress(OSError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), {cpu})


def _worker(config: Any, sock: socket.socket, cpu: int | None, ready: Any) -> None:
    """One worker process: uvicorn's server on ``sock``, pinned to ``cpu`` unless it is None;
    ``ready`` (a pipe's sending end) is told once it serves."""
    if cpu is not None:
        _pin_self(cpu)
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if not self.should_exit:
                ready.send(True)

    config.configure_logging()
    with contextlib.suppress(KeyboardInterrupt):
        Server(config).run(sockets=[sock])


def run_workers(config: Any, cpus: list[int] | None) -> None:
    """Serve with ``config.workers`` worker processes until SIGTERM or SIGINT, then let each finish
    the requests in flight. A worker that dies is replaced in its slot (its socket, its CPU); SIGHUP
    replaces every worker.

    On Linux each worker listens on a socket of its own (``SO_REUSEPORT``), so the kernel deals the
    new connections evenly; elsewhere the workers share one socket. Worker slot ``i`` is pinned
    to ``cpus[i]`` unless ``cpus`` is None. Exits 3 when a worker cannot start the app.
    """
    from uvicorn.config import STARTUP_FAILURE

    multiprocessing.allow_connection_pickling()  # sockets go to the spawned workers
    spawn = multiprocessing.get_context("spawn")
    count: int = config.workers
    reuse_port = sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")
    socks = [_listener(config.host, config.port, reuse_port) for _ in range(count if reuse_port else 1)]
    stop, hup = threading.Event(), threading.Event()
    handlers = {signal.SIGINT: stop.set, signal.SIGTERM: stop.set, signal.SIGHUP: hup.set}
    previous = {sig: signal.signal(sig, lambda *_, f=f: f()) for sig, f in handlers.items()}
    procs: list[Any] = [None] * count
    retiring: list[Any] = []  # replaced by SIGHUP, finishing their requests
    failed = False

    readies: list[Any] = [None] * count  # slot -> the receiving end of its worker's "serving" pipe

    def start(slot: int) -> Any:
        cpu = cpus[slot % len(cpus)] if cpus else None
        ready, told = spawn.Pipe(duplex=False)
        proc = spawn.Process(target=_worker, args=(config, socks[slot % len(socks)], cpu, told))
        proc.start()
        told.close()  # the worker has its own copy now
        procs[slot], readies[slot] = proc, ready
        LOGGER.info("worker %d: process [%s]%s", slot, proc.pid, f", pinned to CPU {cpu}" if cpu is not None else "")
        return ready

    def retire(proc: Any) -> None:
        if proc is not None and proc.is_alive():
            os.kill(proc.pid, signal.SIGTERM)  # it stops accepting and finishes its requests in flight
            retiring.append(proc)

    try:
        for slot in range(count):
            start(slot)
        while not stop.wait(0.5):
            if hup.is_set():
                hup.clear()
                for slot in range(count):  # the old worker serves until its replacement does
                    old = procs[slot]
                    ready = start(slot)
                    while not (ready.poll(0.5) or stop.is_set() or not procs[slot].is_alive()):
                        pass
                    retire(old)
            retiring[:] = [p for p in retiring if p.is_alive()]
            for slot, proc in enumerate(procs):
                if proc.is_alive():
                    continue
                if proc.exitcode == STARTUP_FAILURE:  # the app cannot start: every replacement would fail too
                    LOGGER.error("worker [%s] could not start the app: stopping", proc.pid)
                    failed = True
                    stop.set()
                    break
                LOGGER.warning("worker [%s] exited (%s): starting another", proc.pid, proc.exitcode)
                start(slot)
        for proc in procs:
            retire(proc)
        for proc in retiring:
            proc.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sock in socks:
            sock.close()
    if failed:
        raise SystemExit(STARTUP_FAILURE)
