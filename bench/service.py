#!/usr/bin/env python3
"""The storage service over HTTP, side by side with nginx, Starlette and rclone.

Servers, each one process with one worker, pinned to CPU 0 (the load generator runs on CPU 1):

* ``nginx``: Debian nginx serving the files from disk (``sendfile on``, ``worker_processes 1``,
  access log off; PUT through the DAV module, which writes the body to a temp file and renames
  it, with ``client_body_buffer_size 1m`` rather than the default 16k), the physical-limit anchor;
* ``starlette``: ``StaticFiles`` for GET and a hand-written PUT route streaming
  ``request.stream()`` into the file, under uvicorn;
* ``unistore``: ``python -m unistore.service`` over a local directory, auth off (``--no-auth``),
  ``STORAGE_FSYNC=false`` (nginx and Starlette do not fsync either);
* ``unistore-auth``: the same with bearer tokens (auth on), to show what auth costs;
* ``unistore-fsync``: PUT only, the default ``STORAGE_FSYNC=true`` (durable writes);
* ``rclone-http`` / ``rclone-webdav``: ``rclone serve http`` (GET) and ``rclone serve webdav`` (GET
  and PUT) of the directory, what a user picks for HTTP access to files on a disk (rclone 1.60 has
  no ``serve s3``), with ``GOMAXPROCS=1`` so the Go code runs on one thread: req/s per core;
* ``unistore-2w``: 4 KiB GET only, ``unistore serve --workers 2 --cpu-affinity auto``, auth off,
  in a second phase of every round: each worker pinned to one core by the service itself, the
  client (wrk) not pinned, so it shares the two cores with the workers; ``unistore-2w-free``: the
  same without ``--cpu-affinity`` (the scheduler places the workers), and ``unistore-1w``: one
  worker, unpinned, both in that phase too (for information: the target compares with the
  pinned ``unistore``).

All serve the same files (written once through ``LocalBackend``); uvicorn runs with the same
settings for Starlette and unistore (``access_log=False``, loop and HTTP parser ``auto``: uvloop
and httptools when installed, as they are with the ``bench`` extra).

Workloads: 4 KiB GET and PUT with ``wrk -t1 -c64 --latency`` (a Lua script cycling through
1,000 keys), req/s and p99 latency; 1 GiB GET and PUT (one streaming client: a raw socket
with a 64 KiB ``recv_into`` buffer for GET, ``socket.sendfile`` for PUT, so the client is not
the bottleneck), MiB/s. GETs are served from the page cache (the file is read once right
before each transfer). Around every measurement the servers' RSS is sampled
(``/proc/PID/status``, peak via ``VmHWM`` after resetting it).
Rounds are interleaved (a new seeded server order for every pass); cells are medians, ratios medians of
per-round ratios.

    make bench BENCH_SUITES=service                      # full: 3 rounds, 10 s wrk runs, 1 GiB x 2 (~14 min)
    make bench BENCH_SUITES=service BENCH_ARGS=--quick   # 1 round, 3 s, 256 MiB
    .venv/bin/python bench/service.py --markdown bench/SERVICE_RESULTS.md --json bench/service-results.json

``--workers N`` runs each unistore service with N worker processes (``unistore serve --workers``);
nothing is pinned then, as the workers need every core. ``--baseline REV`` adds the service from an
older tree, auth off and (with ``unistore-auth``) auth on, as before/after rows.

Targets: large GET >= 0.5x nginx (and stays >= 0.7x); small GET >= 1.0x Starlette StaticFiles;
4 KiB GET and PUT req/s per core >= 0.5x rclone (serve http, serve webdav); server CPU with auth on,
one worker, <= 170 µs per 4 KiB GET and <= 350 µs per 4 KiB PUT; 4 KiB GET with 2 workers >= 1.7x
one worker; the service's memory flat under load (peak RSS growth < 64 MiB in every workload, 1 GiB
objects included).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _common import busy_ticks, log, reset_peak_rss, self_cpu, status_kib, verify_copy, wait_quiet  # noqa: E402

MiB = 1 << 20
SMALL_KEYS = 1000
SMALL_SIZE = 4096
CONNECTIONS = 64
SERVER_CPU, CLIENT_CPU = "0", "1"
MEMORY_FLAT_MIB = 64
DASH = "\u2013"
WORKLOADS = ("small-get", "small-put", "large-get", "large-put")
LABELS = {
    "nginx": "nginx (Debian, sendfile, DAV PUT)",
    "starlette": "Starlette StaticFiles / streaming PUT route",
    "unistore": "unistore service, auth off",
    "unistore-auth": "unistore service, auth on (bearer token)",
    "unistore-fsync": "unistore service, auth off, fsync on (the default)",
    "rclone-http": "rclone serve http (GOMAXPROCS=1)",
    "rclone-webdav": "rclone serve webdav (GOMAXPROCS=1)",
    "unistore-1w": "unistore service, auth off, 1 worker, unpinned (the 2-worker phase)",
    "unistore-2w": "unistore service, auth off, 2 workers (`--workers 2 --cpu-affinity auto`), client unpinned",
    "unistore-2w-free": "unistore service, auth off, 2 workers (`--workers 2`, no affinity), unpinned",
}
OUR_SERVERS = (
    "unistore",
    "unistore-auth",
    "unistore-fsync",
    "unistore-base",
    "unistore-auth-base",
    "unistore-1w",
    "unistore-2w",
    "unistore-2w-free",
)
RCLONE_REF = {"small-get": "rclone-http", "small-put": "rclone-webdav"}  # the peer of "x rclone"
RCLONE_OPS = {"http": ("small-get", "large-get"), "webdav": WORKLOADS}
SCALE_WORKERS = 2
# Per-request CPU targets of the service with auth on, one worker (server CPU µs per 4 KiB request).
CPU_TARGETS_US = {"small-get": 170.0, "small-put": 350.0}


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


PINNING = [True]  # off with --workers N > 1: the workers need every core


def pin(cpu: str, pinned: bool = True) -> list[str]:
    """``taskset -c CPU`` when the machine has two cores or more and taskset exists (and one worker each)."""
    if pinned and PINNING[0] and (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", cpu]
    return []


def on_tmpfs(path: Path) -> bool:
    best, fstype = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            inside = str(path).startswith(mnt.rstrip("/") + "/") or str(path) == mnt
            if inside and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    return fstype == "tmpfs"


def scratch_parent() -> Path:
    """The default temp dir unless it is tmpfs (1 GiB files would live in memory): then the repo."""
    tmp = Path(tempfile.gettempdir())
    return REPO / ".bench-tmp" if on_tmpfs(tmp.resolve()) else tmp


def proc_cpu(pids: list[int]) -> float:
    """User+system CPU seconds of processes (clock ticks from ``/proc/PID/stat``)."""
    hz = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / hz


def warm(path: Path) -> None:
    """Read a file once so its pages are in the page cache."""
    buf = bytearray(MiB)
    with open(path, "rb", buffering=0) as f:
        while f.readinto(buf):
            pass


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            out += [int(c) for c in (task / "children").read_text().split()]
    return out


def http_ok(url: str, headers: dict[str, str]) -> bool:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=2) as r:
            return 200 <= r.status < 300
    except OSError:
        return False


class MemWatch:
    """RSS of some processes while a workload runs: before, peak (VmHWM reset before, plus
    20 ms samples of VmRSS in case the reset is not allowed) and right after (KiB)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.before = self.peak = self.after = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._hwm = False

    def rss(self, field: str = "VmRSS") -> int:
        return sum(status_kib(field, pid) for pid in self.pids)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, self.rss())

    def __enter__(self) -> MemWatch:
        self._hwm = all(reset_peak_rss(pid) for pid in self.pids)
        self.before = self.peak = self.rss()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._hwm:
            self.peak = max(self.peak, self.rss("VmHWM"))
        self.after = self.rss()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    base: str  # URL to which an object path is appended
    proc: subprocess.Popen[bytes]
    ops: tuple[str, ...]
    headers: dict[str, str] = field(default_factory=dict)
    pinned: bool = True  # False: server and client run on any core (the 2-worker phase)

    def pids(self) -> list[int]:
        """The serving processes (nginx: master and its worker)."""
        return [self.proc.pid, *children(self.proc.pid)]

    def mem_pids(self) -> list[int]:
        """Processes whose memory counts: nginx's worker, else the server process itself."""
        kids = children(self.proc.pid)
        if self.name == "nginx" and kids:
            return kids
        return [self.proc.pid, *kids] if self.name.startswith("unistore-2w") else [self.proc.pid]

    def url(self, path: str) -> str:
        return self.base + path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.name != "nginx" else signal.SIGQUIT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


NGINX_CONF = """\
{user}worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    default_type application/octet-stream;
    client_body_buffer_size 1m;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location /files/ {{
            alias {root}/;
{dav}        }}
    }}
}}
"""


def nginx_has_dav(nginx: str) -> bool:
    out = subprocess.run([nginx, "-V"], capture_output=True, text=True, check=False)
    return "http_dav_module" in out.stdout + out.stderr


class Fleet:
    """Starts, tracks and stops the servers."""

    def __init__(self, work: Path, root: Path, logs: Path, workers: int = 1) -> None:
        self.work, self.root, self.logs, self.workers = work, root, logs, workers
        self.servers: dict[str, Server] = {}
        self.notes: list[str] = []

    def wait_ready(self, name: str, proc: subprocess.Popen[bytes], url: str, headers: dict[str, str]) -> None:
        deadline = time.time() + 30
        while time.time() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs}/{name}.log")
            if http_ok(url, headers):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not answer {url} in 30 s; see {self.logs}/{name}.log")

    def spawn(
        self, name: str, cmd: list[str], env: dict[str, str] | None = None, pinned: bool = True
    ) -> subprocess.Popen[bytes]:
        logf = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(pin(SERVER_CPU, pinned) + cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)

    def start_nginx(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.path.exists(nginx):
            raise SystemExit("nginx is not installed: run `make bench` (it installs nginx and wrk)")
        tmp = self.work / "nginx"
        tmp.mkdir()
        dav = nginx_has_dav(nginx)
        dav_block = (
            "            dav_methods PUT;\n            create_full_put_path on;\n"
            "            client_max_body_size 0;\n            dav_access user:rw group:r all:r;\n"
        )
        if not dav:
            self.notes.append("this nginx has no DAV module: PUT on nginx is n/a")
        port = free_port()
        conf = NGINX_CONF.format(
            user="user root;\n" if os.geteuid() == 0 else "",  # workers must write the files we own
            tmp=tmp,
            port=port,
            root=self.root,
            dav=dav_block if dav else "",
        )
        (tmp / "nginx.conf").write_text(conf)
        cmd = [nginx, "-p", str(tmp), "-e", str(tmp / "error.log"), "-c", str(tmp / "nginx.conf"), "-g", "daemon off;"]
        proc = self.spawn("nginx", cmd)
        base = f"http://127.0.0.1:{port}/files/"
        ops = WORKLOADS if dav else ("small-get", "large-get")
        self.wait_ready("nginx", proc, base + "small/k0", {})
        self.servers["nginx"] = Server("nginx", base, proc, ops)

    def start_starlette(self) -> None:
        port = free_port()
        cmd = [sys.executable, str(Path(__file__).resolve()), "_starlette", str(self.root), str(port)]
        proc = self.spawn("starlette", cmd)
        base = f"http://127.0.0.1:{port}/files/"
        self.wait_ready("starlette", proc, base + "small/k0", {})
        self.servers["starlette"] = Server("starlette", base, proc, WORKLOADS)

    def start_rclone(self, protocol: str) -> None:
        """``rclone serve http|webdav`` over the data directory (a local path, no config file), one Go
        thread running Go code (``GOMAXPROCS=1``), pinned like the others."""
        rclone = shutil.which("rclone")
        if not rclone:
            raise SystemExit("rclone is not installed: run `make bench` (it installs nginx, wrk and rclone)")
        name = f"rclone-{protocol}"
        (self.root / "put" / name).mkdir(parents=True, exist_ok=True)  # rclone's PUT makes no directories
        port = free_port()
        env = {**os.environ, "GOMAXPROCS": "1"}
        cmd = [rclone, "serve", protocol, str(self.root), "--addr", f"127.0.0.1:{port}", "--config", os.devnull]
        proc = self.spawn(name, cmd, env)
        base = f"http://127.0.0.1:{port}/"
        self.wait_ready(name, proc, base + "small/k0", {})
        self.servers[name] = Server(name, base, proc, RCLONE_OPS[protocol])

    def start_unistore(
        self,
        name: str,
        *,
        auth: bool,
        fsync: bool,
        ops: tuple[str, ...],
        src: Path = REPO / "src",
        workers: int | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(x for x in (str(src), env.get("PYTHONPATH", "")) if x)
        env.update(
            STORAGE_BACKEND="local",
            STORAGE_BASE_PATH=str(self.root),
            STORAGE_BASE_URL=f"http://127.0.0.1:{port}/files",
            STORAGE_FSYNC="true" if fsync else "false",
            UNISTORE_AUTH="on" if auth else "off",
        )
        headers: dict[str, str] = {}
        if auth:
            from unistore.service._auth import TokenAuthority

            secret = os.urandom(24).hex()
            env["UNISTORE_SECRET"] = secret
            token = TokenAuthority(secret.encode()).issue(["read", "write"], expires_in=24 * 3600, subject="bench")
            headers["Authorization"] = f"Bearer {token}"
        cmd = [sys.executable, "-m", "unistore.service", "--host", "127.0.0.1", "--port", str(port)]
        count = workers or self.workers
        if count > 1:
            cmd += ["--workers", str(count)]
        pinned = workers is None  # a server with its own worker count runs in the unpinned phase
        proc = self.spawn(name, cmd + list(extra) + ([] if auth else ["--no-auth"]), env, pinned)
        base = f"http://127.0.0.1:{port}/v1/objects/"
        self.wait_ready(name, proc, base + "small/k0", headers)
        self.servers[name] = Server(name, base, proc, ops, headers, pinned)

    def stop(self) -> None:
        for s in self.servers.values():
            with contextlib.suppress(Exception):
                s.stop()


# --------------------------------------------------------------------------- load


LUA = """\
local paths = {{}}
for i = 0, {n} - 1 do paths[i + 1] = "{path}" .. "{prefix}k" .. i end
local headers = {{{headers}}}
local body = {body}
local i = 0
request = function()
    i = i % {n} + 1
    return wrk.format("{method}", paths[i], headers, body)
end
"""

_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_wrk(out: str) -> dict[str, Any]:
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError("unexpected wrk output:\n" + out)
    lat = {}
    for pct, value, unit in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M):
        lat[pct] = float(value) * _WRK_UNITS[unit]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {
        "rps": float(rps.group(1)),
        "requests": int(total.group(1)) if total else 0,
        "p50_ms": lat.get("50"),
        "p99_ms": lat.get("99"),
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
    }


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        parent = Path(a.workdir) if a.workdir else scratch_parent()
        parent.mkdir(parents=True, exist_ok=True)
        self.work = Path(tempfile.mkdtemp(prefix="unistore-svc-bench-", dir=parent))
        self.root = self.work / "data"
        self.logs = self.work / "logs"
        self.logs.mkdir()
        self.fleet = Fleet(self.work, self.root, self.logs, a.workers)
        self.large = a.large_mib * MiB
        self.cells: dict[str, dict[str, list[dict[str, Any]]]] = {w: {} for w in WORKLOADS}
        self.waited = 0.0
        self.wrk = shutil.which("wrk") or ""
        self.rss_run: dict[str, dict[str, int]] = {}
        self.failures: list[str] = []

    # ------------------------------------------------------------ setup
    def make_data(self) -> None:
        import asyncio

        from unistore.backends.local import LocalBackend

        log(f"writing {SMALL_KEYS} x {SMALL_SIZE} B and one {self.a.large_mib} MiB object under {self.root}")
        self.src = self.work / "large.bin"
        with open(self.src, "wb") as f:
            block = bytearray(os.urandom(MiB))
            for i in range(self.a.large_mib):
                block[:8] = i.to_bytes(8, "big")  # every MiB differs, so a misplaced block shows
                f.write(block)

        async def fill() -> None:
            store = LocalBackend(base_path=str(self.root), fsync=False)
            try:
                for i in range(SMALL_KEYS):
                    await store.put_object(f"small/k{i}", os.urandom(SMALL_SIZE))
                await store.put_object("large/obj", self.src)
            finally:
                await store.aclose()

        asyncio.run(fill())
        os.sync()

    def baseline_src(self, rev: str) -> Path:
        """``src/unistore`` as of git revision ``rev``, exported into the scratch directory."""
        dst = self.work / "baseline-src"
        dst.mkdir()
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", rev, "src/unistore"], capture_output=True, check=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(dst), "--strip-components=1"], input=archive, check=True)
        return dst

    def start(self) -> None:
        f = self.fleet
        want = set(self.a.servers.split(",")) if self.a.servers else None

        def wanted(name: str) -> bool:
            return want is None or name in want

        if wanted("nginx"):
            f.start_nginx()
        if wanted("starlette"):
            f.start_starlette()
        for protocol in RCLONE_OPS:
            if wanted(f"rclone-{protocol}"):
                f.start_rclone(protocol)
        if wanted("unistore"):
            f.start_unistore("unistore", auth=False, fsync=False, ops=WORKLOADS)
        if self.a.baseline:
            LABELS["unistore-base"] = f"unistore service, auth off, at {self.a.baseline} (baseline)"
            src = self.baseline_src(self.a.baseline)
            if wanted("unistore"):
                f.start_unistore("unistore-base", auth=False, fsync=False, ops=WORKLOADS, src=src)
        if wanted("unistore-auth"):
            f.start_unistore("unistore-auth", auth=True, fsync=False, ops=WORKLOADS)
        if self.a.baseline and wanted("unistore-auth"):
            LABELS["unistore-auth-base"] = f"unistore service, auth on, at {self.a.baseline} (baseline)"
            f.start_unistore("unistore-auth-base", auth=True, fsync=False, ops=WORKLOADS, src=src)
        if wanted("unistore-fsync"):
            f.start_unistore("unistore-fsync", auth=False, fsync=True, ops=("small-put", "large-put"))
        if self.a.workers == 1:  # the unpinned phase: one and two workers, the client on any core
            if wanted("unistore-1w"):
                f.start_unistore("unistore-1w", auth=False, fsync=False, ops=("small-get",), workers=1)
            if wanted("unistore-2w"):
                f.start_unistore(
                    "unistore-2w",
                    auth=False,
                    fsync=False,
                    ops=("small-get",),
                    workers=SCALE_WORKERS,
                    extra=("--cpu-affinity", "auto"),
                )
            if wanted("unistore-2w-free"):
                f.start_unistore("unistore-2w-free", auth=False, fsync=False, ops=("small-get",), workers=SCALE_WORKERS)
        log("servers: " + ", ".join(f"{n} pid {s.proc.pid} at {s.base}" for n, s in f.servers.items()))

    # ------------------------------------------------------------ one measurement
    def measured(self, server: Server, fn: Callable[[], dict[str, Any]], quiet: bool = True) -> dict[str, Any]:
        if quiet:
            limit = min(self.a.quiet_timeout, max(0.0, self.a.quiet_budget - self.waited))
            load, waited = wait_quiet(self.a.quiet_threshold, limit)
            self.waited += waited
        else:
            load = 0.0
        pids = server.pids()
        cpu0, me0 = proc_cpu(pids), self_cpu()[0]
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        b0, t0 = busy_ticks(interrupts=False)
        start = time.perf_counter()
        with MemWatch(server.mem_pids()) as mem:
            r = fn()
        wall = time.perf_counter() - start
        b1, t1 = busy_ticks(interrupts=False)
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        server_cpu = proc_cpu(pids) - cpu0
        client_cpu = (kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)
        busy = (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)  # cores, averaged over the wall time
        ours = (server_cpu + client_cpu + self_cpu()[0] - me0) / wall
        r.update(
            wall_s=wall,
            server_cpu_s=server_cpu,
            client_cpu_s=client_cpu,
            other_cores=max(0.0, busy - ours),
            load_before=load,
            rss_before_kib=mem.before,
            rss_peak_kib=mem.peak,
            rss_after_kib=mem.after,
        )
        return r

    def wrk_run(self, server: Server, op: str, seconds: float) -> dict[str, Any]:
        prefix = "small/" if op == "GET" else f"put/{server.name}/"
        path = urlsplit(server.base).path
        body = f'string.rep("x", {SMALL_SIZE})' if op == "PUT" else "nil"
        hdrs = ", ".join(f'["{k}"] = "{v}"' for k, v in server.headers.items())
        script = self.work / f"wrk-{server.name}-{op}.lua"
        script.write_text(LUA.format(n=SMALL_KEYS, path=path, prefix=prefix, headers=hdrs, body=body, method=op))
        cmd = [
            *pin(CLIENT_CPU, server.pinned),
            self.wrk,
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{max(1, round(seconds))}s",  # wrk takes whole seconds
            "--latency",
            "-s",
            str(script),
            server.base,
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60)
        r = parse_wrk(out.stdout)
        if r["non2xx"] or r["socket_errors"]:
            log(f"  {server.name} {op}: {r['non2xx']} non-2xx, {r['socket_errors']} socket errors")
        return r

    def transfer(self, server: Server, op: str) -> dict[str, Any]:
        key = "large/obj" if op == "GET" else f"put/{server.name}/large"
        cmd = [
            *pin(CLIENT_CPU, server.pinned),
            sys.executable,
            str(Path(__file__).resolve()),
            "_client",
            op,
            server.url(key),
            str(self.src),
            json.dumps(server.headers),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=900)
        if out.returncode != 0:
            raise RuntimeError(f"{server.name} {op} client failed: {out.stderr.strip()}")
        r: dict[str, Any] = json.loads(out.stdout)
        if not 200 <= r["status"] < 300 or r["bytes"] != self.large:
            raise RuntimeError(f"{server.name} {op}: status {r['status']}, {r['bytes']} bytes")
        if op == "PUT":
            verify_copy(str(self.src), str(self.root / key), self.large)
        r["mib_s"] = self.large / MiB / r["seconds"]
        return r

    def run_workload(self, workload: str, server: Server, quiet: bool = True) -> dict[str, Any]:
        op = "GET" if workload.endswith("get") else "PUT"
        if workload.startswith("small"):
            if op == "GET":
                for f in (self.root / "small").iterdir():  # see warm() below
                    warm(f)
            return self.measured(server, lambda: self.wrk_run(server, op, self.a.seconds), quiet)
        if op == "PUT":
            with contextlib.suppress(FileNotFoundError):  # every server writes a new file
                os.unlink(self.root / "put" / server.name / "large")
            os.sync()  # the previous writer's dirty pages are not this server's cost
            time.sleep(0.5)
        # Read the file being sent into the page cache first: the VM reclaims cold pages
        # (DAMON), and a GET that half comes from disk measures the disk, not the server.
        warm(self.src if op == "PUT" else self.root / "large" / "obj")
        return self.measured(server, lambda: self.transfer(server, op), quiet)

    # ------------------------------------------------------------ the run
    def warm_up(self) -> None:
        log("warm-up (not measured)")
        for s in self.fleet.servers.values():
            for op in ("GET", "PUT"):
                if f"small-{op.lower()}" in s.ops:
                    self.wrk_run(s, op, self.a.warmup)
            if "large-get" in s.ops:
                self.transfer(s, "GET")
        for name, s in self.fleet.servers.items():
            self.rss_run[name] = {"after_warmup_kib": MemWatch(s.mem_pids()).rss()}

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.make_data()
        try:
            self.start()
            self.warm_up()
            # Two phases per round: the pinned servers (one core each, the client on the other),
            # then the unpinned ones (the 2-worker service, which needs both cores with the client).
            phases = [
                [n for n, s in self.fleet.servers.items() if s.pinned],
                [n for n, s in self.fleet.servers.items() if not s.pinned],
            ]
            for rnd in range(self.a.rounds):
                log(f"round {rnd + 1}/{self.a.rounds}")
                for phase, names in enumerate(phases):
                    if names and phase:
                        log("  unpinned phase")
                    for w in self.a.workloads:
                        for rep in range(1 if w.startswith("small") else self.a.large_reps):
                            # A new order every time (seeded): which server runs right after which
                            # changes too (a rotation keeps the neighbours; after a 1 GiB write the
                            # next writer paid for it).
                            order = random.Random(f"{rnd}/{w}/{rep}").sample(names, len(names))
                            for name in order:
                                self.cell(rnd, w, self.fleet.servers[name])
            for name, s in self.fleet.servers.items():
                self.rss_run[name]["end_kib"] = MemWatch(s.mem_pids()).rss()
        finally:
            self.fleet.stop()
            if not self.a.keep:
                shutil.rmtree(self.work, ignore_errors=True)
            else:
                log(f"kept {self.work}")
        return {
            "meta": self.meta(started),
            "cells": self.cells,
            "rss_run": self.rss_run,
            "notes": self.fleet.notes,
            "failures": self.failures,
        }

    def cell(self, rnd: int, w: str, s: Server) -> None:
        """Measure workload ``w`` on server ``s`` once (if it serves it); a failure is recorded, not raised."""
        if w not in s.ops:
            return
        try:
            r = self.run_workload(w, s)
        except Exception as exc:  # one failed cell must not lose the run
            self.failures.append(f"round {rnd + 1} {w} {s.name}: {exc}")
            log("FAILED " + self.failures[-1])
            return
        self.cells[w].setdefault(s.name, []).append(r)
        log(f"  {w:9s} {s.name:14s} {summary(w, r)}")

    def meta(self, started: float) -> dict[str, Any]:
        def version(cmd: list[str]) -> str:
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            except OSError:
                return "?"
            text = (out.stdout + out.stderr).strip().splitlines()
            return text[0] if text else "?"

        import starlette
        import uvicorn

        def have(mod: str) -> bool:
            return importlib.util.find_spec(mod) is not None

        head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "src"], capture_output=True, text=True)
        return {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(started)),
            "minutes": (time.time() - started) / 60,
            "waited_s": self.waited,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "nginx": version([shutil.which("nginx") or "/usr/sbin/nginx", "-v"]),
            "wrk": version([self.wrk, "-v"]),
            "rclone": version([shutil.which("rclone") or "rclone", "version"]),
            "uvicorn": uvicorn.__version__,
            "starlette": starlette.__version__,
            "loop": "uvloop" if have("uvloop") else "asyncio",
            "http": "httptools" if have("httptools") else "h11",
            "pinned": bool(pin(SERVER_CPU)),
            "workers": self.a.workers,
            "tree": head.stdout.strip() + (" (+ uncommitted changes in src)" if dirty.stdout.strip() else ""),
            "rounds": self.a.rounds,
            "seconds": self.a.seconds,
            "large_mib": self.a.large_mib,
            "large_reps": self.a.large_reps,
            "connections": CONNECTIONS,
            "small_keys": SMALL_KEYS,
            "labels": {n: LABELS.get(n, n) for n in self.fleet.servers},
        }


def workers(m: dict[str, Any]) -> str:
    n = m.get("workers", 1)
    return "one worker" if n == 1 else f"the unistore services with {n} workers (`--workers {n}`), nothing pinned"


def summary(workload: str, r: dict[str, Any]) -> str:
    mem = (r["rss_peak_kib"] - r["rss_before_kib"]) / 1024
    if workload.startswith("small"):
        text = f"{r['rps']:9,.0f} req/s  p99 {r['p99_ms']:.2f} ms"
    else:
        text = f"{r['mib_s']:8,.0f} MiB/s"
    return f"{text}  rss +{mem:.1f} MiB  other {r['other_cores']:.2f} cores"


# --------------------------------------------------------------------------- report


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: list[float], fmt: str, unit: str = "") -> str:
    if not values:
        return "n/a"
    m = format(med(values), fmt) + unit
    if len(values) == 1:
        return m
    return f"{m} ({format(min(values), fmt)}{DASH}{format(max(values), fmt)})"


def ratios(cells: dict[str, list[dict[str, Any]]], name: str, ref: str, metric: str) -> list[float]:
    """Per-round ratios ``name / ref`` (round i of one against round i of the other)."""
    a, b = cells.get(name, []), cells.get(ref, [])
    return [x[metric] / y[metric] for x, y in zip(a, b, strict=False) if y[metric]]


def per_request_us(rows: list[dict[str, Any]], metric: str) -> list[float]:
    """CPU µs per request of every round (``metric``: ``server_cpu_s`` or ``client_cpu_s``)."""
    return [r[metric] / max(r["requests"], 1) * 1e6 for r in rows]


def client_cores(rows: list[dict[str, Any]]) -> list[float]:
    """Cores the client (wrk, or the streaming client) used during each round's measurement."""
    return [r["client_cpu_s"] / r["wall_s"] for r in rows]


def growth_mib(rows: list[dict[str, Any]]) -> float:
    return max((r["rss_peak_kib"] - r["rss_before_kib"]) / 1024 for r in rows) if rows else float("nan")


def render(R: dict[str, Any]) -> str:
    m, cells = R["meta"], R["cells"]
    labels = {**LABELS, **m.get("labels", {})}

    def rank(name: str) -> int:  # rows in the order the servers were started
        return list(m.get("labels", LABELS)).index(name) if name in m.get("labels", LABELS) else 99

    size = f"{m['large_mib'] / 1024:g} GiB" if m["large_mib"] >= 1024 else f"{m['large_mib']} MiB"
    out = [
        "### unistore service benchmark",
        "",
        f"Run {m['started']}, {m['minutes']:.1f} min (of which {m['waited_s']:.0f} s waiting for a quiet machine); "
        f"{m['cpus']} CPUs, Python {m['python']}, kernel {m['kernel']}; {m['nginx']}, {m['wrk']}, "
        f"uvicorn {m['uvicorn']} ({m['loop']}, {m['http']}), Starlette {m['starlette']}, "
        f"{m.get('rclone', 'rclone ?')}; unistore tree {m['tree']}.",
        "",
        f"Every server: one process, {workers(m)}{', pinned to CPU 0 (clients on CPU 1)' if m['pinned'] else ''}; "
        "rclone (`serve http` and `serve webdav` of the local directory: this rclone has no `serve s3`) with "
        "`GOMAXPROCS=1`, so its Go code runs on one thread and, pinned like the rest, req/s is per core. "
        f"{m['rounds']} interleaved round(s) ({m['large_reps']} large transfers per server and round; "
        "a new seeded server order for every pass); "
        f"cells are `median (min{DASH}max)`, ratios medians of per-round ratios. "
        f"4 KiB: `wrk -t1 -c{m['connections']} -d{m['seconds']:g}s --latency` cycling through "
        f"{m['small_keys']:,} keys. {size}: one streaming client (raw socket, 64 KiB `recv_into` / "
        "`socket.sendfile`), GET from the page cache (file read just before), PUT verified on disk. "
        "RSS growth = peak RSS during the workload (VmHWM) minus RSS before it, worst round. "
        "'other' = cores busy in processes other than the server and the client during a measurement "
        "(interrupt time left out), the worst round: above ~0.1 that round was disturbed. "
        "x rclone: against `rclone serve http` for GET, `rclone serve webdav` for PUT.",
        "",
    ]
    if any("unistore-2w" in c for c in cells.values()):
        out += [
            f"The 2-worker service (`unistore serve --workers {SCALE_WORKERS} --cpu-affinity auto`, auth off) runs "
            "in a second phase of every round: the service pins each worker to one core (as nginx's "
            "`worker_cpu_affinity auto`; each worker listens on its own SO_REUSEPORT socket, so the kernel deals "
            "the 64 connections to both), the bench pins nothing, and the client (the same `wrk -t1 -c64`) runs "
            "on either core, so its CPU (column 'client CPU') is taken from the workers. Its target ratio is "
            "against the one-worker service pinned to CPU 0 (wrk on CPU 1) of the same round: both pin the "
            "server's processes to cores, the 2-worker run pays for its client. The same service without "
            "`--cpu-affinity` (the scheduler places the workers) and one worker unpinned run in that phase too, "
            "for information.",
            "",
        ]
    base_rows = [labels[n] for n in ("unistore-base", "unistore-auth-base") if any(n in c for c in cells.values())]
    if base_rows:
        out += [
            f"The row(s) {', '.join(repr(b) for b in base_rows)}: the service from an older tree (`--baseline`), "
            "measured in the same rounds: the before/after of the changes since.",
            "",
        ]
    for note in R.get("notes", []):
        out += [f"Note: {note}.", ""]
    for failure in R.get("failures", []):
        out += [f"FAILED: {failure}", ""]
    targets = target_rows(R)
    out += ["#### Targets", "", "| target | measured | needed | result |", "|---|---|---|---|"]
    out += [f"| {t} | {v} | {n} | {res} |" for t, v, n, res in targets]
    out.append("")
    for w, title in (("small-get", "4 KiB GET"), ("small-put", "4 KiB PUT")):
        rows = cells.get(w, {})
        if not rows:
            continue
        out += [
            f"#### {title}, {m['connections']} connections",
            "",
            "| server | req/s | x StaticFiles | x nginx | x rclone | p99 ms | p50 ms | server CPU µs/req "
            "| client CPU µs/req (cores) | RSS growth MiB | errors | other, worst (cores) |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        rclone = RCLONE_REF[w]
        for name, rs in sorted(rows.items(), key=lambda kv: rank(kv[0])):
            errors = sum(r["non2xx"] + r["socket_errors"] for r in rs)
            out.append(
                f"| {labels.get(name, name)} | {span([r['rps'] for r in rs], ',.0f')} "
                f"| {span(ratios(rows, name, 'starlette', 'rps'), '.2f', 'x')} "
                f"| {span(ratios(rows, name, 'nginx', 'rps'), '.2f', 'x')} "
                f"| {span(ratios(rows, name, rclone, 'rps'), '.2f', 'x')} "
                f"| {span([r['p99_ms'] for r in rs], '.2f')} | {span([r['p50_ms'] for r in rs], '.2f')} "
                f"| {med(per_request_us(rs, 'server_cpu_s')):.0f} "
                f"| {med(per_request_us(rs, 'client_cpu_s')):.0f} ({med(client_cores(rs)):.2f}) "
                f"| {growth_mib(rs):.1f} | {errors} | {max(r['other_cores'] for r in rs):.2f} |"
            )
        out.append("")
    for w, title in (("large-get", f"{size} GET"), ("large-put", f"{size} PUT")):
        rows = cells.get(w, {})
        if not rows:
            continue
        out += [
            f"#### {title}",
            "",
            "| server | MiB/s | x nginx | x Starlette | server CPU s/GiB | RSS before MiB | RSS growth MiB "
            "| other, worst (cores) |",
            "|---|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for name, rs in sorted(rows.items(), key=lambda kv: rank(kv[0])):
            cpu_gib = med([r["server_cpu_s"] / (r["bytes"] / (1 << 30)) for r in rs])
            out.append(
                f"| {labels.get(name, name)} | {span([r['mib_s'] for r in rs], ',.0f')} "
                f"| {span(ratios(rows, name, 'nginx', 'mib_s'), '.2f', 'x')} "
                f"| {span(ratios(rows, name, 'starlette', 'mib_s'), '.2f', 'x')} "
                f"| {cpu_gib:.2f} | {med([r['rss_before_kib'] / 1024 for r in rs]):.1f} "
                f"| {growth_mib(rs):.1f} | {max(r['other_cores'] for r in rs):.2f} |"
            )
        out.append("")
    runs = R.get("rss_run", {})
    if runs:
        out += [
            "#### Server RSS over the whole run",
            "",
            "| server | after warm-up MiB | at the end MiB | change MiB |",
            "|---|--:|--:|--:|",
        ]
        for name, v in runs.items():
            a, e = v.get("after_warmup_kib", 0) / 1024, v.get("end_kib", 0) / 1024
            out.append(f"| {labels.get(name, name)} | {a:.1f} | {e:.1f} | {e - a:+.1f} |")
        out.append("")
    return "\n".join(out)


def target_rows(R: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    cells = R["cells"]
    rows = []

    def verdict(values: list[float], need: float) -> tuple[str, str]:
        if not values:
            return "n/a", "n/a"
        return span(values, ".2f", "x"), "PASS" if med(values) >= need else "MISS"

    large_get = ratios(cells.get("large-get", {}), "unistore", "nginx", "mib_s")
    v, res = verdict(large_get, 0.5)
    rows.append(("large GET MiB/s: unistore / nginx", v, ">= 0.5x", res))
    v, res = verdict(large_get, 0.7)
    rows.append(("large GET MiB/s: unistore / nginx, stays at", v, ">= 0.7x", res))
    for w, title in (("small-get", "GET"), ("small-put", "PUT")):
        peer = RCLONE_REF[w]
        v, res = verdict(ratios(cells.get(w, {}), "unistore", peer, "rps"), 0.5)
        rows.append((f"4 KiB {title} req/s per core: unistore / `{peer.replace('-', ' serve ')}`", v, ">= 0.5x", res))
    v, _ = verdict(ratios(cells.get("small-get", {}), "unistore", "rclone-webdav", "rps"), 0.5)
    rows.append(("(for information) 4 KiB GET: unistore / `rclone serve webdav`", v, "", ""))
    for w, title in (("small-get", "GET"), ("small-put", "PUT")):
        rs = cells.get(w, {}).get("unistore-auth", [])
        need = CPU_TARGETS_US[w]
        us = per_request_us(rs, "server_cpu_s")
        rows.append(
            (
                f"server CPU per 4 KiB {title}, auth on, one worker",
                span(us, ".0f", " µs") if us else "n/a",
                f"<= {need:.0f} µs",
                ("PASS" if med(us) <= need else "MISS") if us else "n/a",
            )
        )
    scale = ratios(cells.get("small-get", {}), "unistore-2w", "unistore", "rps")
    v, res = verdict(scale, 1.7)
    rows.append((f"4 KiB GET req/s: {SCALE_WORKERS} workers (one per core) / 1 worker (pinned)", v, ">= 1.7x", res))
    v, _ = verdict(ratios(cells.get("small-get", {}), "unistore-2w-free", "unistore", "rps"), 1.7)
    rows.append(("(for information) the same with no affinity (the scheduler places the workers)", v, "", ""))
    v, _ = verdict(ratios(cells.get("small-get", {}), "unistore-2w", "unistore-1w", "rps"), 1.7)
    rows.append(("(for information) the same against 1 worker unpinned, same phase", v, "", ""))
    two = cells.get("small-get", {}).get("unistore-2w", [])
    if two:
        cores = med(client_cores(two))
        us = med(per_request_us(two, "client_cpu_s"))
        rows.append(
            (
                f"(for information) the client's cost in the {SCALE_WORKERS}-worker phase: wrk CPU",
                f"{cores:.2f} cores ({us:.0f} µs/req)",
                "",
                "",
            )
        )
    v, res = verdict(ratios(cells.get("small-get", {}), "unistore", "starlette", "rps"), 1.0)
    rows.append(("4 KiB GET req/s (64 conns): unistore / Starlette StaticFiles", v, ">= 1.0x", res))
    v, _ = verdict(ratios(cells.get("small-get", {}), "unistore-auth", "starlette", "rps"), 1.0)
    rows.append(("(for information) the same with auth on", v, "", ""))
    for name in ("unistore", "unistore-auth", "unistore-fsync"):
        worst, where = 0.0, ""
        for w in WORKLOADS:
            rs = cells.get(w, {}).get(name, [])
            if rs and growth_mib(rs) >= worst:
                worst, where = growth_mib(rs), w
        if where:
            ok = worst < MEMORY_FLAT_MIB
            rows.append(
                (
                    f"memory flat: {name} peak RSS growth, worst workload",
                    f"{worst:.1f} MiB ({where})",
                    f"< {MEMORY_FLAT_MIB} MiB",
                    "PASS" if ok else "MISS",
                )
            )
    return rows


# --------------------------------------------------------------------------- subprocess roles


def serve_starlette(root: str, port: int) -> None:
    """The Starlette peer: StaticFiles for GET, the natural hand-written streaming PUT."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    base = os.path.realpath(root)

    async def put(request: Request) -> Response:
        path = os.path.realpath(os.path.join(base, request.path_params["path"]))  # noqa: ASYNC240
        if not path.startswith(base + os.sep):
            return Response(status_code=400)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:  # noqa: ASYNC230 - what a hand-written route does
            async for chunk in request.stream():
                f.write(chunk)
        return Response(status_code=201)

    app = Starlette(
        routes=[Route("/files/{path:path}", put, methods=["PUT"]), Mount("/files", StaticFiles(directory=root))]
    )
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


def client(op: str, url: str, src: str, headers_json: str) -> None:
    """One streaming transfer over a raw socket; prints JSON {status, bytes, seconds}."""
    u = urlsplit(url)
    headers = json.loads(headers_json)
    head = f"{op} {u.path} HTTP/1.1\r\nHost: {u.netloc}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    buf = bytearray(64 * 1024)  # cache-resident: a 4 MiB buffer made nginx GETs 20-30% slower than curl
    view = memoryview(buf)
    sock = socket.create_connection((u.hostname, u.port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter()
    if op == "PUT":
        size = os.path.getsize(src)
        sock.sendall(f"{head}Content-Length: {size}\r\n\r\n".encode())
        with open(src, "rb") as f:
            sock.sendfile(f)
    else:
        sock.sendall(f"{head}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit(f"connection closed in the response head: {data[:200]!r}")
        data += chunk
    raw_head, _, rest = data.partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), None)
    if length is None and (status in (204, 304) or op == "PUT"):
        length = 0 if status in (204, 304) else 1 << 62  # nginx's DAV: 204 or a small body till close
    elif length is None:
        raise SystemExit(f"no Content-Length in {lines}")
    got = len(rest)
    while got < length:
        n = sock.recv_into(view)
        if not n:
            break
        got += n
    seconds = time.perf_counter() - t0
    sock.close()
    moved = got if op == "GET" else os.path.getsize(src)
    print(json.dumps({"status": status, "bytes": moved, "seconds": seconds}))


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s wrk runs, 256 MiB")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each wrk run")
    ap.add_argument("--warmup", type=float, default=2.0, help="duration of each warm-up wrk run")
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument(
        "--large-reps",
        type=int,
        default=2,
        help="large transfers per server and round (loopback throughput is noisy on a VM)",
    )
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    ap.add_argument(
        "--servers",
        default="",
        help="comma list of servers to run (default all: nginx,starlette,rclone-http,rclone-webdav,unistore,"
        "unistore-auth,unistore-fsync,unistore-1w,unistore-2w,unistore-2w-free)",
    )
    ap.add_argument(
        "--baseline",
        default=None,
        metavar="REV",
        help="also run the service from src/unistore at git revision REV (auth off, and auth on when"
        " unistore-auth runs): before/after rows",
    )
    ap.add_argument(
        "--workers", type=int, default=1, help="worker processes of each unistore service (> 1: nothing is pinned)"
    )
    ap.add_argument("--workdir", default=None, help="parent of the scratch directory (not tmpfs)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and the server logs")
    ap.add_argument("--json", default=None, help="write the raw results here too")
    ap.add_argument("--markdown", default=None, help="write the tables to this file too")
    ap.add_argument("--render", default=None, metavar="JSON", help="only re-render the tables of a --json file")
    ap.add_argument("--quiet-threshold", type=float, default=None, help="default 0.25 cores (0 with --quick)")
    ap.add_argument("--quiet-timeout", type=float, default=60)
    ap.add_argument("--quiet-budget", type=float, default=90, help="seconds the whole run may wait for a quiet machine")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds, a.seconds, a.warmup, a.large_mib, a.large_reps = 1, 3.0, 1.0, min(a.large_mib, 256), 1
    if a.workers < 1:
        ap.error("--workers must be >= 1")
    PINNING[0] = a.workers == 1
    if a.quiet_threshold is None:
        a.quiet_threshold = 0.0 if a.quick else 0.25
    a.workloads = [w for w in a.workloads.split(",") if w]
    unknown = set(a.workloads) - set(WORKLOADS)
    if unknown:
        ap.error(f"unknown workloads {sorted(unknown)}; known: {', '.join(WORKLOADS)}")
    return a


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_starlette":
        serve_starlette(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client(*sys.argv[2:6])
        return
    a = parse_args()
    if a.render:
        R = json.loads(Path(a.render).read_text())
        text = render(R)
        print(text)
        if a.markdown:
            Path(a.markdown).write_text(text + "\n")
        return
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed: run `make bench` (it installs nginx and wrk)")
    sys.path.insert(0, str(REPO / "src"))
    R = Bench(a).run()
    text = render(R)
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    if a.json:
        Path(a.json).write_text(json.dumps(R, indent=1) + "\n")
    sys.exit(1 if "| MISS |" in text or R["failures"] else 0)


if __name__ == "__main__":
    main()
