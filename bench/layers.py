"""Per-operation overhead of each layer and of the full stack over bare memory.

Run: ``.venv/bin/python bench/layers.py [--quick] [--markdown FILE]``.
Measures 4 KiB ``put_object`` and ``get`` in a tight loop, CPU time
(``time.process_time``) per operation, the median of several repetitions, and
prints a markdown table of the overhead each configuration adds to bare memory.
Targets: the full stack adds < 30 µs/op; Observe alone < 10 µs/op.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from prometheus_client import CollectorRegistry

from unistore import MemoryBackend, StorageBackend
from unistore.layers import Cache, Faults, Idempotency, Observe, RateLimit, Retry, stack

DATA = b"x" * 4096
TARGETS = {"Observe": 10.0, "full stack": 30.0}


def configurations() -> dict[str, Callable[[StorageBackend], StorageBackend]]:
    return {
        "bare memory": lambda b: b,
        "Retry": Retry,
        "RateLimit": partial(RateLimit, max_concurrency=64, rate=1e9, burst=1_000_000),
        "Faults (none)": Faults,
        "Observe": lambda b: Observe(b, metrics=CollectorRegistry()),
        "Cache": Cache,
        "Idempotency": Idempotency,
        "full stack": lambda b: stack(
            b,
            partial(Observe, metrics=CollectorRegistry()),
            Idempotency,
            partial(RateLimit, max_concurrency=64, rate=1e9, burst=1_000_000),
            Cache,
            Retry,
        ),
    }


async def measure(store: StorageBackend, n: int) -> tuple[float, float]:
    """CPU µs per put and per get."""
    keys = [f"bench/{i % 64}" for i in range(n)]
    for k in keys[:64]:
        await store.put_object(k, DATA)
    t0 = time.process_time()
    for k in keys:
        await store.put_object(k, DATA)
    t1 = time.process_time()
    for k in keys:
        await store.get(k)
    t2 = time.process_time()
    return (t1 - t0) / n * 1e6, (t2 - t1) / n * 1e6


async def main(quick: bool) -> list[tuple[str, float, float]]:
    n, reps = (3_000, 3) if quick else (20_000, 7)
    results: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in configurations()}
    for _ in range(reps):  # interleave configurations so drift hits them all alike
        for name, build in configurations().items():
            put, get = await measure(build(MemoryBackend()), n)
            results[name][0].append(put)
            results[name][1].append(get)
    return [(name, statistics.median(p), statistics.median(g)) for name, (p, g) in results.items()]


def table(rows: list[tuple[str, float, float]]) -> str:
    base_put, base_get = rows[0][1], rows[0][2]
    lines = [
        "| configuration | put µs/op | put ops/s | get µs/op | get ops/s"
        " | added put µs | added get µs | target | result |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for name, put, get in rows:
        added_put, added_get = put - base_put, get - base_get
        target = TARGETS.get(name)
        verdict = "" if target is None else ("PASS" if max(added_put, added_get) < target else "MISS")
        lines.append(
            f"| {name} | {put:.1f} | {1e6 / put:,.0f} | {get:.1f} | {1e6 / get:,.0f} | "
            f"{added_put:+.1f} | {added_get:+.1f} | {'' if target is None else f'< {target:.0f}'} | {verdict} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer operations and repetitions")
    parser.add_argument("--markdown", type=Path, help="also write the table to this file")
    args = parser.parse_args()
    out = table(asyncio.run(main(args.quick)))
    print(out)
    if args.markdown:
        args.markdown.write_text(out + "\n")
    sys.exit(1 if "MISS" in out else 0)
