"""A real Redis for tests: Debian ``redis-server`` as a child process, in memory only.

>>> with redis_server() as redis:
...     settings = ServiceSettings(secret=..., redis_url=redis.url)

It listens on 127.0.0.1 on a free port, persists nothing (``--save ''
--appendonly no``), is polled with ``PING`` until ready and is stopped by its
process id when the block exits.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._server import free_port

__all__ = ["RedisServer", "redis_server"]


@dataclass(frozen=True)
class RedisServer:
    """A running ``redis-server``: its URL, port and process id."""

    url: str
    port: int
    pid: int

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the server answers ``PING`` with ``+PONG`` (plain RESP over a socket, no client library)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


@contextlib.contextmanager
def redis_server(*, timeout: float = 10.0) -> Iterator[RedisServer]:
    """Run ``redis-server`` on a free loopback port until the block exits."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (Debian: apt-get install redis-server)")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="unistore-redis-") as work:
        log = Path(work) / "redis.log"
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", work, "--logfile", str(log)]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        server = RedisServer(f"redis://127.0.0.1:{port}/0", port, proc.pid)
        try:
            deadline = time.monotonic() + timeout
            while not server.ping(0.2):
                if proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {proc.returncode}: {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server not ready after {timeout}s: {log.read_text()[-2000:]}")
                time.sleep(0.05)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
