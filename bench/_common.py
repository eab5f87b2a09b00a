"""Measurement helpers shared by the benchmark harnesses (``bench/run.py``, ``bench/s3/run.py``,
``bench/service.py``) and their workers: logging, order rotation, machine load and waiting for
a quiet machine, process CPU, (peak) RSS of this or another process, copy checks."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

__all__ = [
    "Harness",
    "busy_ticks",
    "log",
    "machine_busy_cores",
    "reset_peak_rss",
    "rotate",
    "self_cpu",
    "status_kib",
    "verify_copy",
    "wait_quiet",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rotate(seq: list[str], k: int) -> list[str]:
    if not seq:
        return seq
    k %= len(seq)
    return seq[k:] + seq[:k]


def busy_ticks(interrupts: bool = True) -> tuple[int, int]:
    """(busy, total) clock ticks of all CPUs since boot (``/proc/stat``; idle and iowait are not
    busy). ``interrupts=False`` counts only time spent in processes (user, nice, system), leaving
    out irq and softirq time, which the kernel charges to no process (loopback TCP is mostly that)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    busy = sum(v) - v[3] - v[4] if interrupts else v[0] + v[1] + v[2]
    return busy, sum(v)


def machine_busy_cores(window: float = 0.5) -> float:
    b0, t0 = busy_ticks()
    time.sleep(window)
    b1, t1 = busy_ticks()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_quiet(threshold: float, limit: float) -> tuple[float, float]:
    """Wait (at most ``limit`` s) until the machine uses at most ``threshold`` cores in two
    readings in a row; ``threshold <= 0`` never waits. Returns (last load, seconds waited)."""
    load = machine_busy_cores(0.3)
    if threshold <= 0:
        return load, 0.0
    start, quiet, said = time.time(), 0, False
    while True:
        quiet = quiet + 1 if load <= threshold else 0
        waited = time.time() - start
        if quiet >= 2 or waited > limit:
            break
        if not said and quiet == 0:
            log(f"  waiting for other processes to calm down ({load:.2f} cores busy)")
            said = True
        load = machine_busy_cores()
    if quiet < 2:
        log(f"  still {load:.2f} cores busy after {waited:.0f}s: measuring anyway")
    return load, waited


def self_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_utime


def status_kib(field: str, pid: int | str = "self") -> int:
    """A ``/proc/PID/status`` field in KiB (``VmRSS``, ``VmHWM``...), 0 if absent."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset VmHWM (peak RSS) of a process (ours by default) to its current RSS (Linux >= 4.0)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def verify_copy(src: str, dst: str, size: int) -> None:
    got = os.path.getsize(dst)
    if got != size:
        raise RuntimeError(f"downloaded {got} bytes, expected {size}")
    step = max(size // 16, 1)
    with open(src, "rb") as fs, open(dst, "rb") as fd:
        for off in [*range(0, size, step), max(size - 4096, 0)]:
            fs.seek(off)
            fd.seek(off)
            if fs.read(4096) != fd.read(4096):
                raise RuntimeError(f"content mismatch at offset {off}")


class Harness:
    """What the core and S3 runners share: the source snapshot, adapter selection, quiet waits, saving.

    A subclass sets ``a`` (its parsed arguments), ``registry`` (its adapters),
    ``workloads``, ``names``, ``work``, ``env``, ``waited`` and ``R`` before using these.
    """

    a: Any
    registry: dict[str, Any]
    workloads: set[str]
    names: list[str]
    work: Path
    env: dict[str, str]
    waited: float
    R: dict[str, Any]
    snapshot_id = "none (the working tree, live)"

    def take_snapshot(self) -> None:
        """Copy src/unistore now, so every worker measures the same code even while the tree
        is being edited (the snapshot comes first on the workers' PYTHONPATH)."""
        src = Path(__file__).resolve().parent.parent / "src" / "unistore"
        if not src.is_dir():
            return
        dst = self.work / "snapshot"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst / "unistore", ignore=shutil.ignore_patterns("__pycache__"))
        h = hashlib.sha256()
        for f in sorted((dst / "unistore").rglob("*.py")):
            h.update(f.relative_to(dst).as_posix().encode() + b"\0" + f.read_bytes())
        self.snapshot_id = f"src/unistore sha256 {h.hexdigest()[:12]}"
        self.env["PYTHONPATH"] = os.pathsep.join(x for x in (str(dst), self.env.get("PYTHONPATH", "")) if x)

    def for_workload(self, w: str) -> list[str]:
        """The selected adapters that run workload ``w`` (none if ``w`` is not selected)."""
        if w not in self.workloads:
            return []
        return [n for n in self.names if w in self.registry[n].workloads]

    def wait_quiet(self) -> float:
        """Wait (bounded by ``--quiet-timeout`` and ``--quiet-budget``) until other processes
        are idle; return the load seen last."""
        limit = min(self.a.quiet_timeout, max(0.0, self.a.quiet_budget - self.waited))
        load, waited = wait_quiet(self.a.quiet_threshold, limit)
        self.waited += waited
        return load

    def save(self) -> None:
        """Write the results so far (to the work dir, and to ``--json`` if given)."""
        (self.work / "results.json").write_text(json.dumps(self.R, indent=1))
        if self.a.json:
            Path(self.a.json).write_text(json.dumps(self.R, indent=1))
