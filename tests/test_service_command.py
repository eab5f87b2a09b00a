"""`python -m unistore.service` as people start it: URLs point at the bound port; a taken port is one line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from unistore.testing import free_port


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_"))}
    env.update(STORAGE_BACKEND="local", STORAGE_BASE_PATH=str(tmp_path / "files"), UNISTORE_AUTH="off")
    return env


def test_signed_urls_point_at_the_port_the_service_binds(tmp_path: Path) -> None:
    port = free_port()
    cmd = [sys.executable, "-m", "unistore.service", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{base}/_ops/health").status_code == 200:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert httpx.put(f"{base}/v1/objects/a.txt", content=b"hi").status_code == 201
        url = httpx.get(f"{base}/v1/urls/a.txt").json()["url"]
        assert url.startswith(f"{base}/files/")
        assert httpx.get(url).content == b"hi"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_taken_port_is_one_line_and_exit_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "unistore.service", "--port", str(port)],
            env=_env(tmp_path), capture_output=True, text=True, timeout=30,
        )
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 is taken" in done.stderr and "Traceback" not in done.stderr
