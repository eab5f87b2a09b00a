"""A real ClamAV daemon for tests: Debian ``clamd`` as a child process with a tiny generated database.

>>> with clamd_server() as clamd:
...     result = await scan_bytes(data, url=clamd.unix_url)

The official signatures come from ``freshclam`` over the internet, so the
fixture writes its own database directory instead: an ``.hdb`` line (MD5 and
size of the EICAR test file), an ``.ndb`` hex signature for the EICAR string
anywhere in a file, and one for :data:`TEST_MARKER`, a second "malware" sample
the tests embed in otherwise clean data. clamd listens on a Unix socket and
on a free loopback TCP port, is polled with ``PING`` until it answers
``PONG``, and is stopped by its process id when the block exits.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
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

__all__ = [
    "ClamdServer",
    "EICAR",
    "EICAR_HASH_SIGNATURE",
    "EICAR_STRING_SIGNATURE",
    "MARKER_SIGNATURE",
    "TEST_MARKER",
    "clamd_server",
]

# The EICAR anti-virus test file (68 bytes), assembled so this source is not itself a match.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
TEST_MARKER = b"unistore-test-malware-sample:9f1c2e7a"
"""A second "malware" sample: any file holding these bytes is reported as :data:`MARKER_SIGNATURE`."""

EICAR_HASH_SIGNATURE = "Unistore.Test.EICAR-Hash"
EICAR_STRING_SIGNATURE = "Unistore.Test.EICAR-String"
MARKER_SIGNATURE = "Unistore.Test.Marker"

STREAM_MAX_LENGTH = 64 * 1024 * 1024
"""clamd's ``StreamMaxLength`` in the fixture (larger streams are refused by clamd)."""


@dataclass(frozen=True)
class ClamdServer:
    """A running ``clamd``: its socket path, TCP port, URLs and process id."""

    socket_path: str
    port: int
    pid: int
    stream_max_length: int = STREAM_MAX_LENGTH

    @property
    def unix_url(self) -> str:
        """``unix:///…`` URL of its local socket."""
        return f"unix://{self.socket_path}"

    @property
    def tcp_url(self) -> str:
        """``tcp://127.0.0.1:PORT`` URL of its TCP socket."""
        return f"tcp://127.0.0.1:{self.port}"

    def ping(self, timeout: float = 1.0) -> bool:
        """Whether the daemon answers ``zPING`` with ``PONG`` on its Unix socket."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(self.socket_path)
                sock.sendall(b"zPING\0")
                return sock.recv(64).startswith(b"PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Stop the daemon at once (SIGKILL), as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)


def _database(directory: Path) -> None:
    md5 = hashlib.md5(EICAR).hexdigest()  # the .hdb format is MD5 and size
    (directory / "unistore-test.hdb").write_text(f"{md5}:{len(EICAR)}:{EICAR_HASH_SIGNATURE}\n")
    (directory / "unistore-test.ndb").write_text(
        f"{EICAR_STRING_SIGNATURE}:0:*:{EICAR.hex()}\n{MARKER_SIGNATURE}:0:*:{TEST_MARKER.hex()}\n"
    )


def _config(work: Path, port: int, stream_max_length: int) -> Path:
    conf = work / "clamd.conf"
    conf.write_text(
        "\n".join(
            [
                "Foreground yes",
                f"DatabaseDirectory {work / 'db'}",
                f"LocalSocket {work / 'clamd.sock'}",
                "LocalSocketMode 600",
                f"TCPSocket {port}",
                "TCPAddr 127.0.0.1",
                f"LogFile {work / 'clamd.log'}",
                f"TemporaryDirectory {work / 'tmp'}",
                f"StreamMaxLength {stream_max_length}",
                "MaxThreads 4",
                "SelfCheck 3600",
                "ReadTimeout 30",
                "CommandReadTimeout 10",
                "Bytecode no",
                "",
            ]
        )
    )
    return conf


@contextlib.contextmanager
def clamd_server(*, timeout: float = 60.0, stream_max_length: int = STREAM_MAX_LENGTH) -> Iterator[ClamdServer]:
    """Run ``clamd`` with the generated test database until the block exits.

    Raises :class:`RuntimeError` (never skips) when clamd is not installed:
    Debian ``apt-get install clamav-daemon``, as ``make test-tools`` does.
    """
    binary = shutil.which("clamd") or next((p for p in ("/usr/sbin/clamd",) if Path(p).exists()), None)
    if binary is None:
        raise RuntimeError("clamd is not installed (Debian: apt-get install clamav-daemon; make test-tools)")
    with tempfile.TemporaryDirectory(prefix="unistore-clamd-") as name:
        work = Path(name)
        (work / "db").mkdir()
        (work / "tmp").mkdir()
        _database(work / "db")
        port = free_port()
        conf = _config(work, port, stream_max_length)
        log = work / "clamd.log"
        proc = subprocess.Popen(
            [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
        )
        server = ClamdServer(str(work / "clamd.sock"), port, proc.pid, stream_max_length)
        try:
            deadline = time.monotonic() + timeout
            while not server.ping(0.5):
                if proc.poll() is not None:
                    text = log.read_text()[-2000:] if log.exists() else ""
                    raise RuntimeError(f"clamd exited with {proc.returncode}: {text}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"clamd not ready after {timeout}s")
                time.sleep(0.1)
            yield server
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
