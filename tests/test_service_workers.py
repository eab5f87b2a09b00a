"""`unistore serve --workers N`: worker processes sharing one port and one store, drained on SIGTERM."""

from __future__ import annotations

import contextlib
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

from unistore.service._server import http_protocol, worker_cpus
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
    """Worker pids named by /_ops/health, each request on a new connection, until ``want`` differ.

    A connection the kernel deals to the socket of a worker being replaced waits for the replacement.
    """
    seen: set[int] = set()
    deadline = time.monotonic() + seconds
    while len(seen) < want and time.monotonic() < deadline:
        r = httpx.get(f"{base}/_ops/health", headers={"Connection": "close"}, timeout=60)
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


def _affinity(pid: int) -> set[int]:
    return os.sched_getaffinity(pid)


def _threads_affinity(pid: int) -> set[frozenset[int]]:
    """The CPU sets of every thread of process ``pid``."""
    return {frozenset(os.sched_getaffinity(int(t.name))) for t in Path(f"/proc/{pid}/task").iterdir()}


TWO_CPUS = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning needs two CPUs")


@TWO_CPUS
def test_cpu_affinity_auto_pins_each_worker_and_its_threads_to_its_own_cpu(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2", "--cpu-affinity", "auto"])
    try:
        allowed = sorted(os.sched_getaffinity(0))
        pids = _pids_answering(base, 2)
        assert len(pids) == 2
        cpus = [_affinity(pid) for pid in pids]
        assert all(len(c) == 1 for c in cpus), cpus
        assert sorted(c.pop() for c in cpus) == allowed[:2]
        for pid in pids:  # the store's worker threads too (started after the pinning, or pinned with it)
            assert _threads_affinity(pid) == {frozenset(_affinity(pid))}
        assert _affinity(proc.pid) == set(allowed)  # the supervisor itself is left alone
        assert "pinned to CPUs" in (tmp_path / "serve.log").read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


@TWO_CPUS
def test_a_replaced_worker_is_pinned_to_the_cpu_of_the_one_it_replaces(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2"], UNISTORE_CPU_AFFINITY="auto")
    try:
        pids = _pids_answering(base, 2)
        victim = min(pids)
        cpu = _affinity(victim)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:  # the supervisor starts a replacement and pins it within its 0.5 s check
            now = set(_pids_answering(base, 2, seconds=5))
            new = now - pids
            if len(now) == 2 and new and all(len(_affinity(p)) == 1 for p in now):
                break
            assert time.monotonic() < deadline, now
            time.sleep(0.5)
        assert _affinity(new.pop()) == cpu
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


def test_workers_are_not_pinned_by_default(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2"])
    try:
        for pid in _pids_answering(base, 2):
            assert _affinity(pid) == os.sched_getaffinity(0)
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


def test_a_bad_cpu_affinity_exits_2(tmp_path: Path) -> None:
    for args, env in ((["--cpu-affinity", "all"], {}), ([], {"UNISTORE_CPU_AFFINITY": "0,1"})):
        cmd = [*SERVE, "serve", "--no-auth", "--port", str(free_port()), "--workers", "2", *args]
        done = subprocess.run(cmd, env=_env(tmp_path, **env), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "--cpu-affinity" in done.stderr and "Traceback" not in done.stderr


def test_worker_cpus_deals_the_allowed_cpus_to_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3, 1})
    assert worker_cpus("auto", 3) == [1, 3, 1]
    assert worker_cpus("auto", 1) is None  # one worker: nothing to spread
    assert worker_cpus("none", 2) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2})
    assert worker_cpus("auto", 2) is None  # one CPU: nothing to spread
    with pytest.raises(ValueError, match="auto"):
        worker_cpus("yes", 2)


def test_each_worker_listens_on_its_own_socket_and_new_connections_reach_both(tmp_path: Path) -> None:
    """SO_REUSEPORT: the kernel deals connections to the workers' sockets, whichever worker wakes first."""
    proc, base = _start(tmp_path, ["--workers", "2"])
    try:
        pids = _pids_answering(base, 2)
        port = int(base.rsplit(":", 1)[1])
        listening = {pid: _listening_sockets(pid, port) for pid in pids}
        assert all(len(s) == 1 for s in listening.values()), listening
        assert len(set.union(*listening.values())) == 2  # two sockets, not one shared
        # 64 connections opened at once (as a load generator does) land on both workers.
        conns = [http.client.HTTPConnection(base.removeprefix("http://"), timeout=30) for _ in range(64)]
        for c in conns:
            c.connect()
        answered: dict[int, int] = {}
        for c in conns:
            c.request("GET", "/_ops/health")
            pid = httpx.Response(200, content=c.getresponse().read()).json()["worker"]["pid"]
            answered[pid] = answered.get(pid, 0) + 1
            c.close()
        assert set(answered) == pids and min(answered.values()) >= 8, answered
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


def _listening_sockets(pid: int, port: int) -> set[str]:
    """Inodes of the TCP sockets process ``pid`` holds that listen on ``port``."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[9] in inodes and int(f[1].rsplit(":", 1)[1], 16) == port and f[3] == "0A":  # 0A: LISTEN
                found.add(f[9])
    return found


def test_a_second_server_cannot_join_the_port_of_a_running_one(tmp_path: Path) -> None:
    """The workers' SO_REUSEPORT sockets must not let another ``serve`` split their connections."""
    proc, base = _start(tmp_path, ["--workers", "2"])
    try:
        port = base.rsplit(":", 1)[1]
        cmd = [*SERVE, "serve", "--no-auth", "--port", port, "--workers", "2"]
        done = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        assert "is taken" in done.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)


def test_sighup_replaces_every_worker_and_keeps_serving(tmp_path: Path) -> None:
    proc, base = _start(tmp_path, ["--workers", "2", "--cpu-affinity", "auto"])
    try:
        before = _pids_answering(base, 2)
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while True:
            now = _pids_answering(base, 2, seconds=5)
            if len(now) == 2 and not now & before:
                break
            assert time.monotonic() < deadline, (before, now)
            time.sleep(0.5)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        _stop(proc)
