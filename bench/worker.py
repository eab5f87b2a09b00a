"""Run ONE measurement in this fresh process and print one ``RESULT {json}`` line.

    python bench/worker.py '<json spec>'

spec = {"adapter": name, "workload": "small"|"large"|"list"|"populate",
        "cfg": {"root": dir}, "params": {...}, "profile": path|None, "inline": bool}

Only the measured loop is timed: imports, client construction and a warm-up are
outside it. Wall is ``perf_counter``; client CPU is ``getrusage(RUSAGE_SELF)``
user+sys of every thread of this process (executor threads and Rust runtimes
count); "other processes" is whole-machine busy time from ``/proc/stat`` minus
ours, in cores. With ``profile`` set, cProfile runs around the measured region
and its stats are dumped there (the timings are then inflated: do not compare).
cProfile only sees the event-loop thread; with ``inline`` set, ``asyncio.to_thread``
runs its function inline on the loop, so the profile covers the library's work in
full (without the thread hand-off it normally pays).
"""

from __future__ import annotations

import asyncio
import cProfile
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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import adapters
from _common import reset_peak_rss, self_cpu, status_kib, verify_copy

MiB = 1 << 20


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
    total = sum(vals[:8])
    return total - idle, total


class Meter:
    """Wall, own CPU (user+sys, and user alone), machine busy and others' CPU over a block."""

    def __init__(self, profile: str | None = None) -> None:
        self.profile = profile
        self.prof: cProfile.Profile | None = None

    def __enter__(self) -> Meter:
        if self.profile:
            self.prof = cProfile.Profile()
            self.prof.enable()
        self.m0 = _machine_ticks()
        self.c0, self.u0 = self_cpu()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        c1, u1 = self_cpu()
        self.cpu, self.user = c1 - self.c0, u1 - self.u0
        m1 = _machine_ticks()
        busy, total = m1[0] - self.m0[0], m1[1] - self.m0[1]
        self.machine_busy = busy / total if total else None
        busy_s = busy / os.sysconf("SC_CLK_TCK")
        self.other_cores = max(0.0, busy_s - self.cpu) / self.wall
        if self.prof is not None:
            self.prof.disable()
            self.prof.dump_stats(self.profile)

    def as_dict(self, ops: int | None = None, nbytes: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "user_s": self.user,
            "machine_busy": self.machine_busy,
            "other_cores": self.other_cores,
        }
        if ops:
            d.update(ops=ops, ops_per_s=ops / self.wall, cpu_us_per_op=self.cpu * 1e6 / ops)
        if nbytes:
            gib = nbytes / (1 << 30)
            d.update(
                bytes=nbytes,
                mib_per_s=nbytes / MiB / self.wall,
                cpu_s_per_gib=self.cpu / gib,
                user_s_per_gib=self.user / gib,
            )
        return d


async def run_pool(fn: Callable[[Any], Awaitable[Any]], items: Iterable[Any], conc: int) -> None:
    """``conc`` tasks pulling from one shared iterator (no task per operation)."""
    it = iter(items)

    async def worker() -> None:
        for x in it:
            await fn(x)

    await asyncio.gather(*(worker() for _ in range(conc)))


def _prof(spec: dict[str, Any], tag: str) -> str | None:
    p = spec.get("profile")
    return f"{p}.{tag}.prof" if p else None


# ------------------------------------------------------------------ workloads


async def w_small(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    n, size, conc, prefix = p["n"], p["size"], p["conc"], p["prefix"]
    payload = os.urandom(size)
    warm = [f"{prefix}-warm/{i:04d}" for i in range(max(conc, 8))]
    await run_pool(lambda k: a.put(k, payload), warm, conc)
    await run_pool(a.get, warm, conc)
    keys = [f"{prefix}/{i:06d}" for i in range(n)]
    bad = 0

    async def do_get(k: str) -> None:
        nonlocal bad
        if len(await a.get(k)) != size:
            bad += 1

    gc.collect()
    with Meter(_prof(spec, "put")) as mp:
        await run_pool(lambda k: a.put(k, payload), keys, conc)
    gc.collect()
    with Meter(_prof(spec, "get")) as mg:
        await run_pool(do_get, keys, conc)
    if bad:
        raise RuntimeError(f"{bad} GETs returned the wrong length")
    return {"put": mp.as_dict(ops=n), "get": mg.as_dict(ops=n)}


async def w_large(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    mode, key, src, size = p["mode"], p["key"], p["src"], p["size"]
    if mode == "get" and a.backend == "mem":
        await a.put_file(key, src)  # in-process store: fill it first (not timed)
    gc.collect()
    hwm_ok = reset_peak_rss()
    rss0 = status_kib("VmRSS")
    with Meter(_prof(spec, mode)) as m:
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


async def _fill(a: adapters.Adapter, n: int, prefix: str) -> None:
    one = b"x"
    await run_pool(lambda i: a.put(f"{prefix}k{i:05d}", one), range(n), 32)


async def w_list(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    n, prefix = p["n"], p["prefix"]
    if a.backend == "mem":
        await _fill(a, n, prefix)  # in-process store: filled first (not timed)
    gc.collect()
    with Meter(_prof(spec, "list")) as m:
        keys = await a.list(prefix)
    out = m.as_dict()
    out["keys"] = len(keys)
    if len(keys) != n:
        raise RuntimeError(f"listed {len(keys)} keys, expected {n}")
    return out


async def w_populate(a: adapters.Adapter, p: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    with Meter() as m:
        await _fill(a, p["n"], p["prefix"])
    return m.as_dict(ops=p["n"])


WORKLOADS = {"small": w_small, "large": w_large, "list": w_list, "populate": w_populate}


async def _inline_to_thread(func: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    return func(*args, **kwargs)


async def amain(spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("inline"):
        asyncio.to_thread = _inline_to_thread  # type: ignore[assignment]
    a = adapters.REGISTRY[spec["adapter"]](spec["cfg"])
    await a.open()
    try:
        return await WORKLOADS[spec["workload"]](a, spec["params"], spec)
    finally:
        await a.close()


def main() -> None:
    spec = json.loads(sys.argv[1])
    try:
        res = {"ok": True, **asyncio.run(amain(spec))}
    except Exception as e:  # reported; the orchestrator goes on
        res = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}"[:2000],
            "traceback": traceback.format_exc()[-4000:],
        }
    mod = sys.modules.get("unistore")
    if mod is not None:
        res["unistore_from"] = getattr(mod, "__file__", None)
    print("RESULT " + json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
