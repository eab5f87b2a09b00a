"""`unistore serve --workers N`: worker processes sharing one port and one store, drained on SIGTERM."""

from __future__ import annotations

import hashlib
import http.client
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from unistore.service._server import http_protocol
from unistore.testing import free_port

SERVE = [sys.executable, "-c", "from unistore.cli import main; main()"]  # the `unistore` command
pytestmark = pytest.mark.xdist_group("service-workers")  # real processes: not beside each other


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_", "WEB_CONCURRENCY"))}
    env.update(STORAGE_BACKEND="local", STORAGE_BASE_PATH=str(tmp_path / "files"), STORAGE_FSYNC="false", **extra)
    return env


def _start(tmp_path: Path, args: list[str], **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cmd = [*SERVE, "serve", "--no-auth", "--port", str(port), *args]
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, env=_env(tmp_path, **env), stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, (tmp_path / "serve.log").read_text()
        try:
            if httpx.get(f"{base}/_ops/health").status_code == 200:
                return proc, base
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _pids_answering(base: str, want: int, seconds: float = 30) -> set[int]:
    """Worker pids named by /_ops/health, each request on a new connection, until ``want`` differ."""
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < want and time.monotonic() < deadline:
        r = httpx.get(f"{base}/_ops/health", headers={"Connection": "close"})
        seen.add(r.json()["worker"]["pid"])
    return seen


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def test_two_workers_serve_one_store_and_exit_0_on_sigterm(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2"])
    try:
        pids = _pids_answering(base, 2)
        assert len(pids) == 2 and proc.pid not in pids
        # One store: what one worker writes, the other reads (each request on a new connection).
        for i in range(10):
            put = httpx.put(f"{base}/v1/objects/k{i}", content=f"v{i}".encode(), headers={"Connection": "close"})
            assert put.status_code == 201
        for i in range(10):
            assert httpx.get(f"{base}/v1/objects/k{i}", headers={"Connection": "close"}).content == f"v{i}".encode()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        for pid in pids:  # the workers are gone too
            assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    finally:
        _stop(proc)


def test_web_concurrency_sets_the_worker_count(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, [], WEB_CONCURRENCY="2")
    try:
        assert len(_pids_answering(base, 2)) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


def test_sigterm_lets_a_slow_upload_in_flight_finish(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2"])
    chunks = [os.urandom(64 * 1024) for _ in range(12)]
    started = threading.Event()
    result: dict[str, Any] = {}

    def upload() -> None:
        conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=60)
        try:
            conn.putrequest("PUT", "/v1/objects/slow.bin")
            conn.putheader("Content-Length", str(sum(map(len, chunks))))
            conn.endheaders()
            for i, chunk in enumerate(chunks):
                conn.send(chunk)
                if i == 1:
                    started.set()
                time.sleep(0.15)
            resp = conn.getresponse()
            result["status"], result["body"] = resp.status, resp.read()
        except Exception as exc:  # reported by the assertions below
            result["error"] = exc
        finally:
            conn.close()

    sender = threading.Thread(target=upload)
    sender.start()
    try:
        assert started.wait(30)
        proc.send_signal(signal.SIGTERM)  # while about 1.5 s of the body is still to come
        sender.join(60)
        assert result.get("status") == 201, result
        assert proc.wait(30) == 0
        stored = (tmp_path / "files" / "slow.bin").read_bytes()
        assert hashlib.sha256(stored).digest() == hashlib.sha256(b"".join(chunks)).digest()
    finally:
        sender.join(60)
        _stop(proc)


def test_bad_worker_counts_exit_2(tmp_path: Path) -> None:
    for args, env in ((["--workers", "0"], {}), ([], {"WEB_CONCURRENCY": "many"})):
        cmd = [*SERVE, "serve", "--no-auth", "--port", str(free_port()), *args]
        done = subprocess.run(cmd, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr


def test_a_metrics_listener_cannot_be_shared_by_workers(tmp_path: Path) -> None:
    cmd = [*SERVE, "serve", "--no-auth", "--port", str(free_port()), "--workers", "2"]
    env = _env(tmp_path, UNISTORE_METRICS=f"127.0.0.1:{free_port()}")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "UNISTORE_METRICS=token" in done.stderr


def test_the_header_deadline_protocol_survives_pickling_into_a_fresh_process() -> None:
    """uvicorn pickles its configuration for each worker: the protocol class must be found there by name."""
    cls = http_protocol(2.5)
    assert pickle.loads(pickle.dumps(cls)) is cls
    code = "import pickle, sys; cls = pickle.loads(sys.stdin.buffer.read()); print(cls.header_timeout, cls.__name__)"
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(cls), capture_output=True, check=True)
    assert out.stdout.decode().split() == ["2.5", cls.__name__]
