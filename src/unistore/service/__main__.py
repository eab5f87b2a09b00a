"""``python -m unistore.service``: run the storage service with uvicorn and print its address."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from typing import Any

LOG_FORMAT = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"


class LineFormatter(logging.Formatter):
    """:class:`logging.Formatter` writing the same lines with less work per line (there is one per
    request): the default time stamp (``2026-12-06 04:12:32,017``) is made once a second, and a
    line without exception or stack text is ``%``-formatted in one step."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        style = self._style
        if record.exc_info or record.exc_text or record.stack_info or type(style) is not logging.PercentStyle:
            return super().format(record)
        record.message = record.getMessage()
        if self.usesTime():
            record.asctime = self.formatTime(record, self.datefmt)
        try:
            defaults = getattr(style, "_defaults", None)
            values = defaults | record.__dict__ if defaults else record.__dict__
            return self._fmt % values  # type: ignore[operator]
        except KeyError:  # a field the record lacks: the error logging itself reports
            return super().format(record)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None or self.default_msec_format is None:
            return super().formatTime(record, datefmt)
        second, text = self._second
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second, text
        return self.default_msec_format % (text, record.msecs)


GC_THRESHOLD = 10_000
"""Container allocations between two young-generation collections of a serving process (Python's
default is 700: a 4 KiB request allocates about that many, so nearly every request paid for one)."""


def tune_gc() -> None:
    """Set up the garbage collector of a process that is about to serve: what start-up built (the app,
    its routes and models, the imported modules) is moved out of the collector's way (``gc.freeze``),
    so a full collection walks only what serving created, and young collections run every
    :data:`GC_THRESHOLD` allocations. Reference cycles are still collected, a little later."""
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_THRESHOLD, older, oldest)


def configure_logging(level: int = logging.INFO) -> None:
    """Log lines on stderr, each with the id of the request being served."""
    from . import RequestIdFilter

    handler = logging.StreamHandler()
    handler.setFormatter(LineFormatter(LOG_FORMAT))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def serve(
    host: str,
    port: int,
    *,
    no_auth: bool = False,
    overrides: dict[str, str] | None = None,
    workers: int | None = None,
    cpu_affinity: str | None = None,
) -> None:
    """Build the app from the environment (``STORAGE_*``, ``UNISTORE_*``) and serve it until interrupted.

    ``overrides`` are ``UNISTORE_*`` values that win over the environment (the command's options).
    ``workers`` processes (default ``WEB_CONCURRENCY``, else 1) share the port and the store; SIGTERM
    lets every request in flight finish before a worker exits. ``cpu_affinity`` (default
    ``UNISTORE_CPU_AFFINITY``, else ``none``) ``auto`` pins each of several workers to one CPU.
    """
    import uvicorn

    from .._errors import ConfigurationError
    from . import ServiceSettings, create_app
    from ._server import CPU_AFFINITY, http_protocol, run_workers, worker_cpus

    configure_logging()
    try:
        count = workers if workers is not None else int(os.environ.get("WEB_CONCURRENCY") or 1)
    except ValueError:
        count = 0
    if count < 1:
        print("unistore serve: --workers (WEB_CONCURRENCY) must be a whole number >= 1", file=sys.stderr)
        raise SystemExit(2)
    affinity = (cpu_affinity or os.environ.get("UNISTORE_CPU_AFFINITY") or "none").strip().lower()
    if affinity not in CPU_AFFINITY:
        print(
            f"unistore serve: --cpu-affinity (UNISTORE_CPU_AFFINITY) must be {' or '.join(CPU_AFFINITY)},"
            f" not {affinity!r}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    _check_port(host, port)
    if not os.environ.get("STORAGE_BASE_URL"):
        # Signed file URLs point at this server, wherever it was started.
        shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else (f"[{host}]" if ":" in host else host)
        os.environ["STORAGE_BASE_URL"] = f"http://{shown}:{port}/files"
    # Workers are new processes that build the app from the environment: the options go there.
    os.environ.update(overrides or {})
    if no_auth:
        os.environ["UNISTORE_AUTH"] = "off"
    try:
        settings = ServiceSettings.from_env()
        if count > 1 and settings.metrics not in ("token", "open", "off"):
            raise ConfigurationError(
                f"UNISTORE_METRICS={settings.metrics} is one listener, which {count} workers cannot share:"
                " use UNISTORE_METRICS=token (each worker then reports its own counts)"
            )
        app = create_app(settings=settings)
    except ConfigurationError as exc:
        print(f"unistore serve: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    storage = app.state.storage
    where = getattr(storage, "root", None)
    print(f"unistore file service: http://{host}:{port}  (backend {storage.name}", end="")
    print(f", files in {where})" if where else ")")
    if not settings.auth:
        note = "" if host in ("127.0.0.1", "localhost", "::1") else "  -- do not expose it"
        print(f"  auth:    OFF (UNISTORE_AUTH=off){note}")
    cpus = worker_cpus(affinity, count)
    if count > 1:
        pins = f", pinned to CPUs {','.join(map(str, cpus))}" if cpus else ""
        print(f"  workers: {count} processes{pins} (GET /_ops/health names the one that answers)")
    print(f"  health:  http://{host}:{port}/_ops/health")
    print(f"  API:     http://{host}:{port}/docs", flush=True)
    common: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": http_protocol(settings.header_timeout),
        "ws": "none",  # the service has no websocket routes
        "log_level": "info",
        "access_log": False,
        "log_config": None,
    }
    if count == 1:
        tune_gc()
        uvicorn.run(app, **common)
        return
    del app  # each worker builds its own from the same environment
    run_workers(uvicorn.Config("unistore.service._server:app_from_env", factory=True, workers=count, **common), cpus)


def _check_port(host: str, port: int) -> None:
    """Exit 2 with a hint when the port is taken (uvicorn alone would log a traceback)."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            print(
                f"unistore serve: port {port} on {host} is taken: pass --port N (make serve PORT=N)",
                file=sys.stderr,
            )
            raise SystemExit(2) from None


_TIMEOUTS = {
    "header_timeout": "seconds a connection may take to send request headers [10]",
    "body_timeout": "seconds a request body may pause between chunks (then 408) [30]",
    "body_deadline": "seconds a whole request body may take (then 408) [no limit]",
}


def main(argv: list[str] | None = None) -> None:
    """Parse ``--host``/``--port``/``--no-auth``/``--workers``/``--cpu-affinity`` and the timeouts, and serve."""
    parser = argparse.ArgumentParser(prog="unistore serve", description="Run the unistore storage service.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-auth", action="store_true", help="serve without tokens (local development only)")
    parser.add_argument("--workers", type=int, help="worker processes sharing the port [env WEB_CONCURRENCY, else 1]")
    parser.add_argument(
        "--cpu-affinity", help="auto: pin each of several workers to one CPU, or none [env UNISTORE_CPU_AFFINITY]"
    )
    for name, text in _TIMEOUTS.items():
        parser.add_argument("--" + name.replace("_", "-"), type=float, help=f"{text}; env UNISTORE_{name.upper()}")
    args = parser.parse_args(argv)
    overrides = {f"UNISTORE_{n.upper()}": str(getattr(args, n)) for n in _TIMEOUTS if getattr(args, n) is not None}
    serve(
        args.host,
        args.port,
        no_auth=args.no_auth,
        overrides=overrides,
        workers=args.workers,
        cpu_affinity=args.cpu_affinity,
    )


if __name__ == "__main__":
    main()
