"""The Encrypt layer against the same store unencrypted and against S3 SSE-C, side by side.

Run: ``.venv/bin/python bench/encrypt.py [--quick] [--stores local,s3] [--reps N] [--threads 1,2]
[--skip-small] [--markdown FILE]``.

Per store (a local directory, fsync off; S3 on a SeaweedFS ``weed mini`` started here) and
variant (plain, ``Encrypt`` with a local keyring, and on S3 server-side SSE-C), each in its own
worker process so peak RSS is its own (S3 uploads keep 2 parts of 5 MiB in flight, for all variants;
``--s3-parts 8x4`` for 4 of 8 MiB):

- a streamed put and a streamed get of one ``--size`` object (1 GiB; 1 MiB source chunks,
  nothing held): MiB/s, and the worker's peak RSS (absolute, and over its idle RSS);
- a 64 KiB range read from the middle of that object: median wall time of ``--range-reads``;
- 4 KiB ``put_object`` and ``get``: CPU µs per operation (``time.process_time``), median of 3 runs.

Peak RSS is also reported for the put and the get apart (``put_peak_rss_mib``, ``get_peak_rss_mib``
in ``--json``); ``BENCH_TRACE=1`` prints the put's traced Python peak and its largest owners.
``--variants plain,encrypt`` runs only those. ``--threads 1,2`` runs one Encrypt variant per
cipher thread count (``encrypt t1``, ``encrypt t2``) instead of one with the default (1);
``--skip-small`` skips the 4 KiB runs. The put and the get also report their process CPU time
per GiB (user + system, the store's I/O threads included): ``put_cpu_s_gib``, ``get_cpu_s_gib``.
``--open-in-thread`` has the Encrypt variants (not ``encrypt base``) open a local get's chunks
in a worker thread (off by default). ``--compare-src DIR`` adds a variant ``encrypt base``
whose worker imports ``unistore`` from ``DIR`` (another checkout's ``src``), to compare two
versions of the layer interleaved in one run.
The load average and busy cores are recorded before each large run. Variants alternate in a
rotating order per repetition; medians over ``--reps``.
Targets: Encrypt >= 0.8x the unencrypted throughput, peak RSS < 64 MiB, range read < 2x unencrypted.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import machine_busy_cores, reset_peak_rss, rotate, self_cpu, status_kib  # noqa: E402

MiB = 1024 * 1024
CHUNK = MiB
RANGE = 64 * 1024
SMALL = b"x" * 4096
TARGETS = {"throughput": 0.8, "rss_mib": 64.0, "range": 2.0}
S3_PART_MIB = 5
S3_PARTS_IN_FLIGHT = 2
"""5 MiB parts (S3's smallest), 2 in flight: an S3 upload then holds up to 10 MiB whatever the layer
(the defaults, 8 MiB x 8, hold 64 MiB; ``--s3-parts 8x4`` is what runs before 2026-12-06 used)."""


# --- the worker: one store, one variant ---------------------------------------------------------


def _store(spec: dict[str, Any]) -> Any:
    from unistore import LocalBackend
    from unistore.encryption import Encrypt, LocalKeyring

    if spec["store"] == "local":
        base: Any = LocalBackend(base_path=spec["path"], fsync=False)
    else:
        from unistore.backends.s3 import S3Backend

        options = {"sse_customer_key": spec["sse_c_key"]} if spec["variant"] == "sse-c" else {}
        base = S3Backend(
            bucket=spec["bucket"],
            endpoint=spec["endpoint"],
            access_key=spec["access_key"],
            secret_key=spec["secret_key"],
            region="us-east-1",
            prefix=f"bench-{spec['variant'].replace(' ', '-')}/",
            part_size=spec.get("s3_part_mib", S3_PART_MIB) * MiB,
            max_concurrency=spec.get("s3_parts", S3_PARTS_IN_FLIGHT),
            **options,
        )
    if spec["variant"].startswith("encrypt"):
        enc = Encrypt(base, LocalKeyring({"bench": base64.b64decode(spec["kek"])}), threads=spec.get("threads") or 1)
        if spec.get("open_in_thread"):
            enc._open_in_thread = True  # a local get opens its chunks in a worker thread
        return enc
    return base


async def _source(size: int) -> Any:
    """``size`` bytes in fresh 1 MiB chunks (as a file read would allocate them)."""
    block = os.urandom(CHUNK)
    sent = 0
    while sent < size:
        piece = bytes(memoryview(block)[: min(CHUNK, size - sent)])
        sent += len(piece)
        yield piece


async def _worker(spec: dict[str, Any]) -> dict[str, Any]:
    from unistore import ByteRange

    store = _store(spec)
    out: dict[str, Any] = {}
    try:
        if spec["job"] == "large":
            size = spec["size"]
            await store.put_object("warm", b"w" * 1000)  # connections, imports and keys warmed up
            await store.get("warm")
            idle = status_kib("VmRSS")
            reset_peak_rss()
            if os.environ.get("BENCH_TRACE"):
                import tracemalloc

                tracemalloc.start(8)
                best: list[Any] = [0, None]

                async def watch() -> None:
                    while True:
                        await asyncio.sleep(0.02)
                        cur = tracemalloc.get_traced_memory()[0]
                        if cur > best[0]:
                            best[0], best[1] = cur, tracemalloc.take_snapshot()

                watcher = asyncio.create_task(watch())
            c0, t0 = self_cpu()[0], time.perf_counter()
            info = await store.put_object("large.bin", _source(size))
            c1, t1 = self_cpu()[0], time.perf_counter()
            put_peak = status_kib("VmHWM")
            if os.environ.get("BENCH_TRACE"):
                import tracemalloc

                print("traced peak MiB", tracemalloc.get_traced_memory()[1] / MiB, best[0] / MiB, file=sys.stderr)
                watcher.cancel()
                for stat in best[1].statistics("traceback")[:6]:
                    print(stat.size / MiB, "\n".join(stat.traceback.format()[-8:]), file=sys.stderr)
                tracemalloc.stop()
            reset_peak_rss()
            got = 0
            async with await store.open("large.bin") as dl:
                async for chunk in dl:
                    got += len(chunk)
            c2, t2 = self_cpu()[0], time.perf_counter()
            if info.size != size or got != size:
                raise RuntimeError(f"sizes {info.size}, {got}, expected {size}")
            get_peak = status_kib("VmHWM")
            peak = max(put_peak, get_peak)
            mid = size // 2 + 12_345
            times = []
            for _ in range(spec["range_reads"]):
                r0 = time.perf_counter()
                async with await store.open("large.bin", range=ByteRange(mid, mid + RANGE)) as dl:
                    body = await dl.read()
                times.append(time.perf_counter() - r0)
                if len(body) != RANGE:
                    raise RuntimeError("short range read")
            await store.delete("large.bin")
            gib = size / (1024 * MiB)
            out = {
                "put_mib_s": size / MiB / (t1 - t0),
                "get_mib_s": size / MiB / (t2 - t1),
                "put_cpu_s_gib": (c1 - c0) / gib,
                "get_cpu_s_gib": (c2 - c1) / gib,
                "peak_rss_mib": peak / 1024,
                "rss_growth_mib": (peak - idle) / 1024,
                "put_peak_rss_mib": put_peak / 1024,
                "get_peak_rss_mib": get_peak / 1024,
                "range_ms": statistics.median(times) * 1000,
            }
        else:
            n = spec["ops"]
            keys = [f"small/{i % 64}" for i in range(n)]
            for k in keys[:64]:
                await store.put_object(k, SMALL)
            puts, gets = [], []
            for _ in range(3):
                c0 = time.process_time()
                for k in keys:
                    await store.put_object(k, SMALL)
                c1 = time.process_time()
                for k in keys:
                    await store.get(k)
                c2 = time.process_time()
                puts.append((c1 - c0) / n * 1e6)
                gets.append((c2 - c1) / n * 1e6)
            out = {"put_cpu_us": statistics.median(puts), "get_cpu_us": statistics.median(gets)}
    finally:
        await store.aclose()
    return out


# --- the parent -----------------------------------------------------------------------------------


def _run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, timeout=1800
    )
    if os.environ.get("BENCH_TRACE"):
        print(done.stderr[-6000:])
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1][:200]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _median(rows: list[dict[str, Any]], field: str) -> float | None:
    values = [r[field] for r in rows if field in r]
    return statistics.median(values) if values else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="64 MiB, one repetition, fewer operations")
    ap.add_argument("--stores", default="local,s3")
    ap.add_argument("--size", type=int, default=1024, help="large object size in MiB (1024)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--ops", type=int, default=2000, help="4 KiB operations per run")
    ap.add_argument("--range-reads", type=int, default=30)
    ap.add_argument(
        "--threads",
        default="",
        help="Encrypt cipher thread counts to compare, e.g. 1,2 (default: the layer default, 1)",
    )
    ap.add_argument(
        "--open-in-thread",
        action="store_true",
        help="the 'encrypt' variants (not 'encrypt base') open a local get's chunks in a worker thread",
    )
    ap.add_argument("--s3-parts", default="", help="S3 part size in MiB and parts in flight, e.g. 8x4")
    ap.add_argument("--variants", default="", help="only these variants, e.g. plain,encrypt")
    ap.add_argument("--skip-small", action="store_true", help="skip the 4 KiB CPU runs")
    ap.add_argument("--compare-src", help="add a variant 'encrypt base' importing unistore from this src directory")
    ap.add_argument("--markdown", help="also write the table to this file")
    ap.add_argument("--json", help="write the raw results to this file")
    a = ap.parse_args()
    if a.worker:
        spec = json.loads(a.worker)
        if spec.get("src"):  # another version of unistore: it must be imported before any other
            sys.path.insert(0, spec["src"])
        print(json.dumps(asyncio.run(_worker(spec))))
        return
    if a.quick:
        a.size, a.reps, a.ops, a.range_reads = 64, 1, 300, 10
    stores = [s for s in a.stores.split(",") if s]
    threads = [int(t) for t in a.threads.split(",") if t]
    encrypts: dict[str, int | None] = {f"encrypt t{t}": t for t in threads} or {"encrypt": None}
    if a.compare_src:
        encrypts["encrypt base"] = threads[0] if threads else None
    kek = base64.b64encode(os.urandom(32)).decode()
    sse_c_key = base64.b64encode(os.urandom(32)).decode()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    load: list[float] = []
    with tempfile.TemporaryDirectory(prefix="unistore-encrypt-bench-") as work:
        server_cm: Any = None
        server: Any = None
        if "s3" in stores:
            from unistore.testing._s3servers import seaweedfs

            server_cm = seaweedfs(Path(work) / "weed")
            server = server_cm.__enter__()
            server.create_bucket("bench")
        try:
            for rep in range(a.reps):
                for store in stores:
                    variants = ["plain", *encrypts, *(["sse-c"] if store == "s3" else [])]
                    variants = [v for v in variants if not a.variants or v in a.variants.split(",")]
                    for variant in rotate(variants, rep):
                        base: dict[str, Any] = {"store": store, "variant": variant, "kek": kek, "sse_c_key": sse_c_key}
                        base["threads"] = encrypts.get(variant)
                        base["open_in_thread"] = a.open_in_thread and variant != "encrypt base"
                        if variant == "encrypt base":
                            base["src"] = str(Path(a.compare_src).resolve())
                        if a.s3_parts:
                            part_mib, parts = a.s3_parts.split("x")
                            base |= {"s3_part_mib": int(part_mib), "s3_parts": int(parts)}
                        if store == "local":
                            base["path"] = str(Path(work) / f"local-{variant.replace(' ', '-')}")
                        else:
                            base |= {
                                "endpoint": server.endpoint,
                                "access_key": server.access_key,
                                "secret_key": server.secret_key,
                                "bucket": "bench",
                            }
                        cell = results.setdefault(f"{store} {variant}", {"large": [], "small": []})
                        busy = machine_busy_cores(0.3)
                        load.append(busy)
                        large = base | {"job": "large", "size": a.size * MiB, "range_reads": a.range_reads}
                        cell["large"].append(_run_worker(large) | {"busy_cores": busy, "loadavg": os.getloadavg()[0]})
                        if not a.skip_small:
                            cell["small"].append(_run_worker(base | {"job": "small", "ops": a.ops}))
                        print(f"rep {rep + 1} {store} {variant}: {cell['large'][-1]} {cell['small'][-1:]}", flush=True)
        finally:
            if server_cm is not None:
                server_cm.__exit__(None, None, None)
    table = _table(results, stores, [*encrypts], a, statistics.median(load) if load else 0.0)
    print(table)
    if a.markdown:
        Path(a.markdown).write_text(table)
    if a.json:
        Path(a.json).write_text(json.dumps({"args": vars(a), "results": results}, indent=1))


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None, base: float | None, invert: bool = False) -> str:
    if value is None or not base:
        return "—"
    return f"{(base / value if invert else value / base):.2f}x"


def _table(
    results: dict[str, dict[str, list[dict[str, Any]]]], stores: list[str], encrypts: list[str], a: Any, load: float
) -> str:
    lines = [
        f"Object {a.size} MiB, {a.reps} repetition(s), medians; 4 KiB ops: {a.ops} per run, median of 3 runs; "
        f"range: 64 KiB from the middle, median of {a.range_reads}. Other processes kept a median "
        f"{load:.1f} cores busy (2-core shared machine).",
        "",
        "| store | variant | put MiB/s | get MiB/s | put vs plain | get vs plain | put CPU s/GiB | get CPU s/GiB "
        "| peak RSS MiB (growth) | 64 KiB range ms | range vs plain | 4 KiB put CPU µs | 4 KiB get CPU µs | errors |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for store in stores:
        plain = results.get(f"{store} plain", {"large": [], "small": []})
        for variant in ("plain", *encrypts, "sse-c"):
            cell = results.get(f"{store} {variant}")
            if cell is None:
                continue
            large, small = cell["large"], cell["small"]
            errors = sorted({r["error"] for r in large + small if "error" in r})
            put, get = _median(large, "put_mib_s"), _median(large, "get_mib_s")
            rng = _median(large, "range_ms")
            lines.append(
                f"| {store} | {variant} | {_fmt(put)} | {_fmt(get)} "
                f"| {_ratio(put, _median(plain['large'], 'put_mib_s'))} "
                f"| {_ratio(get, _median(plain['large'], 'get_mib_s'))} "
                f"| {_fmt(_median(large, 'put_cpu_s_gib'), 2)} | {_fmt(_median(large, 'get_cpu_s_gib'), 2)} "
                f"| {_fmt(_median(large, 'peak_rss_mib'))} ({_fmt(_median(large, 'rss_growth_mib'))}) "
                f"| {_fmt(rng, 2)} | {_ratio(rng, _median(plain['large'], 'range_ms'))} "
                f"| {_fmt(_median(small, 'put_cpu_us'), 1)} | {_fmt(_median(small, 'get_cpu_us'), 1)} "
                f"| {'; '.join(errors) or ''} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
