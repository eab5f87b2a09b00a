#!/usr/bin/env python3
"""unistore side-by-side benchmark: every client in the same run, each measurement
in a fresh worker process, repetitions interleaved; prints markdown tables of
medians and per-repetition ratios, and PASS/MISS for the targets of issue 2.

    make bench                                   # full run
    make bench BENCH_ARGS=--quick                # smoke test: tiny sizes, 1 repetition
    .venv/bin/python bench/run.py --reps 5 --markdown bench/RESULTS.md
    .venv/bin/python bench/run.py --adapters unistore-local,base --workloads small \\
        --profile-dir /tmp/prof                  # cProfile of the measured loops
"""

from __future__ import annotations

import argparse
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
sys.path.insert(0, str(HERE))

import adapters  # noqa: E402
import report  # noqa: E402
from _common import Harness, log, rotate  # noqa: E402

MiB = 1 << 20
PKGS = ["unistore", "obstore", "svc-infra", "aiofiles"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repetition, no quiet wait")
    ap.add_argument("--reps", type=int, default=3, help="repetitions of the small and list workloads")
    ap.add_argument(
        "--large-reps",
        type=int,
        default=5,
        help="repetitions of the large object (page-cache throughput is noisy on a VM)",
    )
    ap.add_argument("--workloads", default="small,large,list")
    ap.add_argument("--adapters", default="", help="comma list of clients to run (default: all)")
    ap.add_argument("--skip-adapters", default="")
    ap.add_argument("--concurrency", default="1,32")
    ap.add_argument("--small-n", type=int, default=10_000)
    ap.add_argument("--small-size", type=int, default=4096)
    ap.add_argument("--large-mib", type=int, default=1024)
    ap.add_argument("--list-n", type=int, default=10_000)
    ap.add_argument("--workdir", default=None, help="scratch directory (default: a new temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="measure the live src/ tree instead of a copy taken at the start",
    )
    ap.add_argument(
        "--old-src",
        default=None,
        help="a src/ directory of another tree (e.g. /work/main/src): every selected unistore-local* "
        "client also runs on it, as NAME@old, interleaved with this tree's, and a this-vs-old table is added",
    )
    ap.add_argument("--json", default=None, help="write the raw results here too")
    ap.add_argument("--markdown", default=None, help="write the tables to this file too")
    ap.add_argument(
        "--profile-dir",
        default=None,
        help="run cProfile around every measured region, stats in this directory",
    )
    ap.add_argument(
        "--inline",
        action="store_true",
        help="with --profile-dir: run asyncio.to_thread work inline so cProfile sees it",
    )
    ap.add_argument("--worker-timeout", type=int, default=1200)
    ap.add_argument(
        "--quiet-threshold",
        type=float,
        default=None,
        help="before each measurement wait until other processes use less than this "
        "many cores (default 0.25; 0 with --quick; 0 = never wait)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=60, help="max wait per measurement (s)")
    ap.add_argument("--quiet-budget", type=float, default=900, help="max wait in the whole run (s)")
    a = ap.parse_args(argv)
    if a.quick:
        a.reps = a.large_reps = 1
        a.small_n, a.large_mib, a.list_n = 300, 16, 1200
    if a.quiet_threshold is None:
        a.quiet_threshold = 0.0 if a.quick else 0.25
    return a


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
        self.registry = dict(adapters.REGISTRY)
        if a.old_src:
            for n in [n for n in self.names if n.startswith("unistore-local")]:
                self.registry[f"{n}@old"] = adapters.REGISTRY[n]
                self.names.insert(self.names.index(n) + 1, f"{n}@old")
        self.own_work = a.workdir is None
        self.work = Path(a.workdir or tempfile.mkdtemp(prefix="unistore-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.logdir = self.work / "logs"
        self.logdir.mkdir(exist_ok=True)
        if a.profile_dir:
            Path(a.profile_dir).mkdir(parents=True, exist_ok=True)
        self.R: dict[str, Any] = {
            "meta": {},
            "failures": [],
            "labels": {n: self.registry[n].label + (" [old tree]" if n.endswith("@old") else "") for n in self.names},
            "groups": {n: self.registry[n].group for n in self.names},
            "transfer": {n: self.registry[n].transfer for n in self.names},
            "params": {
                "small_n": a.small_n,
                "small_size": a.small_size,
                "large_mib": a.large_mib,
                "large_reps": a.large_reps,
                "list_n": a.list_n,
            },
        }
        self.run_no = 0
        self.waited = 0.0
        self.env = dict(os.environ)
        if not a.no_snapshot:
            self.take_snapshot()
        self.old_env = dict(self.env)
        if a.old_src:
            old = self.work / "snapshot-old"
            shutil.rmtree(old, ignore_errors=True)
            skip = shutil.ignore_patterns("__pycache__")
            shutil.copytree(Path(a.old_src) / "unistore", old / "unistore", ignore=skip)
            rest = [p for p in self.env.get("PYTHONPATH", "").split(os.pathsep) if p and "snapshot" not in p]
            self.old_env["PYTHONPATH"] = os.pathsep.join([str(old), *rest])

    def worker(
        self, name: str, workload: str, cfg: dict[str, Any], params: dict[str, Any], tag: str = ""
    ) -> dict[str, Any]:
        self.run_no += 1
        pre = self.wait_quiet()
        prof = None
        if self.a.profile_dir:
            prof = str(Path(self.a.profile_dir) / f"{self.run_no:04d}-{name}-{workload}{tag}")
        spec = {
            "adapter": name.removesuffix("@old"),
            "workload": workload,
            "cfg": cfg,
            "params": params,
            "profile": prof,
            "inline": self.a.inline,
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
            res: dict[str, Any] = (
                json.loads(line[7:])
                if line
                else {
                    "ok": False,
                    "error": f"no result (exit {p.returncode}): {p.stderr.strip()[-500:]}",
                }
            )
        except subprocess.TimeoutExpired:
            res = {"ok": False, "error": f"timed out after {self.a.worker_timeout}s"}
        res["pre_busy_cores"] = pre
        if not res.get("ok"):
            msg = f"{name} {workload}{tag}: {res.get('error')}"
            self.R["failures"].append(msg)
            log("FAILED " + msg)
        return res

    def fresh_dir(self, tag: str) -> Path:
        d = self.work / "stores" / tag
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def meta(self) -> None:
        code = (
            "import json,importlib.metadata as m\nout={}\n"
            f"for p in {PKGS!r}:\n"
            "    try: out[p]=m.version(p)\n    except Exception: pass\nprint(json.dumps(out))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=self.env)
        git = "?"
        try:
            repo = HERE.parent
            head = subprocess.run(
                ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(repo), "status", "--porcelain", "--", "src"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            git = head + (" + uncommitted changes in src/" if dirty else "")
        except (OSError, subprocess.CalledProcessError):
            pass
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
                    d = self.fresh_dir(f"small-{name}-c{conc}-r{rep}")
                    r = self.worker(
                        name,
                        "small",
                        {"root": str(d)},
                        {
                            "n": self.a.small_n,
                            "size": self.a.small_size,
                            "conc": conc,
                            "prefix": f"small/c{conc}/r{rep}",
                        },
                        f"-c{conc}",
                    )
                    shutil.rmtree(d, ignore_errors=True)
                    S.setdefault(name, {}).setdefault(str(conc), []).append(r)
                    if r.get("ok"):
                        pu, ge = r["put"], r["get"]
                        log(
                            f"  rep {rep + 1} c={conc} {name}: PUT {pu['ops_per_s']:,.0f} ops/s "
                            f"({pu['cpu_us_per_op']:.0f} us CPU/op), GET "
                            f"{ge['ops_per_s']:,.0f} ops/s ({ge['cpu_us_per_op']:.0f} us)"
                            f", others {max(pu['other_cores'], ge['other_cores']):.2f}"
                        )
                self.save()

    def make_file(self, path: Path, mib: int) -> None:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(os.urandom(MiB))
        os.sync()

    def large(self) -> None:
        names = self.for_workload("large")
        if not names:
            return
        log(f"{self.a.large_mib} MiB object: {names}")
        src = self.work / "source.bin"
        dst = self.work / "download.bin"
        self.make_file(src, self.a.large_mib)
        # Untimed warm-up: the source is in the page cache and the guest has touched the
        # memory for a further copy of it once.
        for _ in range(2):
            shutil.copyfile(src, dst)
            dst.unlink()
        L = self.R.setdefault("large", {})
        size = self.a.large_mib * MiB
        for rep in range(self.a.large_reps):
            for name in rotate(names, rep):
                d = self.fresh_dir(f"large-{name}-r{rep}")
                p = {"key": "large/object.bin", "src": str(src), "dst": str(dst), "size": size}
                for mode in ("put", "get"):
                    os.sync()  # write-back of the previous case must not land in this one
                    time.sleep(0.5)
                    r = self.worker(name, "large", {"root": str(d)}, {**p, "mode": mode}, f"-{mode}")
                    L.setdefault(name, {}).setdefault(mode, []).append(r)
                    if r.get("ok"):
                        log(
                            f"  rep {rep + 1} {name} {mode}: {r['mib_per_s']:,.0f} MiB/s, peak RSS "
                            f"{r['peak_rss_mib']:.0f} MiB (+{r['peak_delta_mib']:.0f}), "
                            f"others {r['other_cores']:.2f}"
                        )
                dst.unlink(missing_ok=True)
                shutil.rmtree(d, ignore_errors=True)
                self.save()
        src.unlink(missing_ok=True)

    def listing(self) -> None:
        names = self.for_workload("list")
        if not names:
            return
        n = self.a.list_n
        log(f"list {n} keys: {names}")
        roots: dict[str, str] = {}
        for name in names:
            if self.registry[name].backend != "fs":
                continue
            d = self.fresh_dir(f"list-{name}")
            r = self.worker(name, "populate", {"root": str(d)}, {"n": n, "prefix": "list/"})
            if not r.get("ok"):
                continue
            roots[name] = str(d)
        os.sync()
        Ls = self.R.setdefault("list", {})
        for rep in range(self.a.reps):
            for name in rotate(names, rep):
                if self.registry[name].backend == "fs" and name not in roots:
                    continue
                cfg = {"root": roots.get(name, "")}
                r = self.worker(name, "list", cfg, {"n": n, "prefix": "list/"})
                Ls.setdefault(name, []).append(r)
                if r.get("ok"):
                    log(f"  rep {rep + 1} {name}: {r['wall_s'] * 1000:.1f} ms, {r['keys']} keys")
            self.save()

    def run(self) -> str:
        t0 = time.time()
        self.meta()
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
            shutil.rmtree(self.work / "stores", ignore_errors=True)
            shutil.rmtree(self.work / "snapshot", ignore_errors=True)
            shutil.rmtree(self.work / "snapshot-old", ignore_errors=True)
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
