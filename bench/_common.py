"""Measurement helpers shared by the benchmark harnesses (``bench/run.py``, ``bench/s3/run.py``)
and their workers: logging, order rotation, machine load, process CPU, peak RSS, copy checks."""

from __future__ import annotations

import os
import resource
import sys
import time

__all__ = ["log", "machine_busy_cores", "reset_peak_rss", "rotate", "self_cpu", "status_kib", "verify_copy"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rotate(seq: list[str], k: int) -> list[str]:
    if not seq:
        return seq
    k %= len(seq)
    return seq[k:] + seq[:k]


def machine_busy_cores(window: float = 0.5) -> float:
    def ticks() -> tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v) - v[3] - v[4], sum(v)

    b0, t0 = ticks()
    time.sleep(window)
    b1, t1 = ticks()
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def self_cpu() -> tuple[float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime, r.ru_utime


def status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
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
