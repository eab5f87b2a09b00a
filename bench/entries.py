"""One folder level of 100 entries in a store of 100,000 keys: the computed ``iter_entries``
(``BaseBackend``'s, a new ``iter_objects`` past each folder) vs each backend's native one.

    PYTHONPATH=src .venv/bin/python bench/entries.py [--keys 100000] [--reps 5]

Layout under ``big/``: 50 objects and 50 folders, each folder holding its share of the keys
two levels deeper. Memory is filled with ``put_object``; the local store is written as plain
files (a valid store: no metadata). Prints medians and the old/new ratio per backend.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from unistore import BaseBackend, LocalBackend, MemoryBackend
from unistore._types import CommonPrefix, ObjectInfo


def layout(total: int) -> list[str]:
    keys = [f"big/f{i:02d}.bin" for i in range(50)]
    per = (total - 50) // 50
    keys += [f"big/d{i:02d}/s{j % 10}/k{j:05d}" for i in range(50) for j in range(per)]
    return keys


async def drain(it: AsyncIterator[ObjectInfo | CommonPrefix]) -> int:
    return len([e async for e in it])


async def measure(store: BaseBackend, reps: int) -> dict[str, float]:
    runs: dict[str, list[float]] = {"computed": [], "native": []}
    for _ in range(reps):
        for name in runs:
            t = time.perf_counter()
            it = BaseBackend.iter_entries(store, "big/") if name == "computed" else store.iter_entries("big/")
            n = await drain(it)
            runs[name].append(time.perf_counter() - t)
            assert n == 100, n
    return {k: statistics.median(v) for k, v in runs.items()}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    keys = layout(args.keys)
    results = {}
    mem = MemoryBackend()
    for k in keys:
        await mem.put_object(k, b"x")
    await drain(mem.iter_entries(""))  # build the sorted index outside the measurement
    results["memory"] = await measure(mem, args.reps)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for k in keys:
            p = root / k
            if not p.parent.is_dir():
                os.makedirs(p.parent)
            p.write_bytes(b"x")
        async with LocalBackend(base_path=tmp, fsync=False) as local:
            results["local"] = await measure(local, args.reps)
    print(f"one level of 100 entries, {len(keys):,} keys, median of {args.reps}\n")
    print("| backend | computed (old) | native (new) | old/new |")
    print("|---|---|---|---|")
    for name, r in results.items():
        old, new = r["computed"], r["native"]
        print(f"| {name} | {old * 1e3:.2f} ms | {new * 1e3:.2f} ms | {old / new:.1f}x |")


if __name__ == "__main__":
    asyncio.run(main())
