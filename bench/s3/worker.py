"""Run ONE measurement in this (fresh) process and print one ``RESULT {json}`` line.

    python bench/s3/worker.py '<json spec>'

spec = {"adapter": name, "workload": "small"|"large"|"list"|"populate",
        "cfg": {...}, "params": {...}, "server_pids": [int], "profile": path|None}

Around the measured region only (imports, client construction and a warm-up are
outside it): wall (perf_counter); client CPU = getrusage(RUSAGE_SELF) user+sys of
this whole process (all threads, so Rust/tokio and executor threads count); server
CPU = utime+stime of the server's processes from /proc/<pid>/stat; machine busy
from /proc/stat; "other processes" = machine busy - client - server, in cores.
With ``profile`` set, cProfile runs around the measured region (event-loop thread).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

sys.path.append(str(HERE.parent))  # bench/: the helpers shared with the core harness

import adapters  # noqa: E402
from _common import reset_peak_rss, self_cpu, status_kib, verify_copy  # noqa: E402

TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / TCK


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


class Meter:
    def __init__(self, server_pids: list[int], profile: str | None = None) -> None:
        self.pids = server_pids
        self.profile = profile

    def __enter__(self) -> Meter:
        self.prof = None
        if self.profile:
            import cProfile

            self.prof = cProfile.Profile()
        self.srv0 = proc_cpu_seconds(self.pids)
        self.m0 = _machine_ticks()
        self.c0, self.u0 = self_cpu()
        self.t0 = time.perf_counter()
        if self.prof:
            self.prof.enable()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.prof:
            self.prof.disable()
        self.wall = time.perf_counter() - self.t0
        c1, u1 = self_cpu()
        self.cpu, self.user = c1 - self.c0, u1 - self.u0
        self.server_cpu = proc_cpu_seconds(self.pids) - self.srv0
        m1 = _machine_ticks()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        self.machine_busy_cores = busy / total * (os.cpu_count() or 1) if total else 0.0
        self.other_cores = max(0.0, busy / TCK - self.cpu - self.server_cpu) / self.wall
        if self.prof and self.profile:
            self.prof.dump_stats(self.profile)

    def as_dict(self, ops: int | None = None, nbytes: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "user_s": self.user,
            "server_cpu_s": self.server_cpu,
            "machine_busy_cores": self.machine_busy_cores,
            "other_cores": self.other_cores,
        }
        if ops:
            d.update(
                ops=ops,
                ops_per_s=ops / self.wall,
                cpu_us_per_op=self.cpu * 1e6 / ops,
                server_cpu_us_per_op=self.server_cpu * 1e6 / ops,
            )
        if nbytes:
            d.update(
                bytes=nbytes,
                mib_per_s=nbytes / (1 << 20) / self.wall,
                cpu_s_per_gib=self.cpu / (nbytes / (1 << 30)),
                server_cpu_s_per_gib=self.server_cpu / (nbytes / (1 << 30)),
            )
        return d


async def run_pool(fn: Callable[[Any], Awaitable[Any]], items: Iterable[Any], conc: int) -> None:
    """``conc`` tasks pulling from one shared iterator (no per-op task creation)."""
    it = iter(items)

    async def worker() -> None:
        for x in it:
            await fn(x)

    await asyncio.gather(*(worker() for _ in range(conc)))


def _prof(spec: dict[str, Any], tag: str) -> str | None:
    p = spec.get("profile")
    return f"{p}-{tag}.prof" if p else None


async def w_small(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    n, size, conc, prefix = p["n"], p["size"], p["conc"], p["prefix"]
    payload = os.urandom(size)
    pids = spec.get("server_pids") or []
    # Warm-up (not timed): opens `conc` connections, touches every code path once.
    warm = [f"{prefix}-warm/{i:04d}" for i in range(max(min(conc, n), 4))]
    await run_pool(lambda k: a.put(k, payload), warm, conc)
    await run_pool(a.get, warm, conc)
    keys = [f"{prefix}/{i:06d}" for i in range(n)]
    bad = 0

    async def do_put(k: str) -> None:
        await a.put(k, payload)

    async def do_get(k: str) -> None:
        nonlocal bad
        if len(await a.get(k)) != size:
            bad += 1

    gc.collect()
    with Meter(pids, _prof(spec, "put")) as mp:
        await run_pool(do_put, keys, conc)
    gc.collect()
    with Meter(pids, _prof(spec, "get")) as mg:
        await run_pool(do_get, keys, conc)
    if bad:
        raise RuntimeError(f"{bad} GETs returned the wrong length")
    return {"put": mp.as_dict(ops=n), "get": mg.as_dict(ops=n)}


async def w_large(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    mode, key, src, size = p["mode"], p["key"], p["src"], p["size"]
    pids = spec.get("server_pids") or []
    # Warm-up (not timed): one small PUT+GET so the connection pool exists.
    await a.put(f"{key}-warm", b"w" * 1024)
    await a.get(f"{key}-warm")
    gc.collect()
    hwm_ok = reset_peak_rss()
    rss0 = status_kib("VmRSS")
    with Meter(pids, _prof(spec, mode)) as m:
        if mode == "put":
            await a.put_file(key, src)
        else:
            await a.get_file(key, p["dst"])
    peak = status_kib("VmHWM") if hwm_ok else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = m.as_dict(nbytes=size)
    out.update(
        rss_before_mib=rss0 / 1024,
        peak_rss_mib=peak / 1024,
        peak_delta_mib=(peak - rss0) / 1024,
        peak_reset=hwm_ok,
    )
    if mode == "get":
        verify_copy(src, p["dst"], size)
    return out


async def w_list(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    n, prefix = p["n"], p["prefix"]
    await a.list("warm-none/")  # opens the connection (not timed)
    gc.collect()
    with Meter(spec.get("server_pids") or [], _prof(spec, "list")) as m:
        keys = await a.list(prefix)
    out = m.as_dict()
    out["keys"] = len(keys)
    out["complete"] = len(keys) == n  # a client that stops after one page is reported, not failed
    if len(keys) > n:
        raise RuntimeError(f"listed {len(keys)} keys, expected {n}")
    return out


async def w_populate(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    n, prefix = p["n"], p["prefix"]
    with Meter(spec.get("server_pids") or []) as m:
        await run_pool(lambda i: a.put(f"{prefix}k{i:05d}", b"x"), range(n), 32)
    return m.as_dict(ops=n)


WORKLOADS = {"small": w_small, "large": w_large, "list": w_list, "populate": w_populate}


async def amain(spec: dict[str, Any]) -> dict[str, Any]:
    a = adapters.REGISTRY[spec["adapter"]](spec["cfg"])
    await a.open()
    try:
        return await WORKLOADS[spec["workload"]](a, spec["params"], spec)
    finally:
        await a.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        res: dict[str, Any] = {"ok": True, **asyncio.run(amain(spec))}
    except Exception as e:  # reported; the orchestrator goes on
        res = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
