"""What keeping a second copy costs a writer: 4 KiB ``put`` through a bare local store,
``DualWrite`` and ``Replicate`` (local -> local, outbox in the source), the time ``Replicate``
then needs to drain its outbox, and ``BatchStore`` commits against the same puts made one by one.

Run: ``.venv/bin/python bench/replicate.py [--quick] [--objects N] [--reps N]``. Prints a
markdown table of medians over the repetitions (wall time per object) and ratios to the bare store.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unistore import BatchStore, LocalBackend
from unistore.layers import DualWrite, Replicate

DATA = b"x" * 4096
BATCH = 10


def _local(root: Path, name: str) -> LocalBackend:
    return LocalBackend(base_path=str(root / name), fsync=False)


async def _puts(root: Path, n: int, kind: str) -> dict[str, float]:
    source, second = _local(root, "a"), _local(root, "b")
    store = {
        "bare": source,
        "DualWrite": DualWrite(source, second, metrics=False),
        "Replicate": Replicate(source, second, replay_interval=None, metrics=False),
    }[kind]
    started = time.perf_counter()
    for i in range(n):
        await store.put_object(f"o/{i:06}", DATA)
    out = {"put": (time.perf_counter() - started) / n}
    if isinstance(store, Replicate):
        started = time.perf_counter()
        assert await store.replay(concurrency=16) == 0
        out["drain"] = (time.perf_counter() - started) / n
    return out


async def _batches(root: Path, n: int) -> dict[str, float]:
    batches = BatchStore(_local(root, "a"), "set/")
    started = time.perf_counter()
    for b in range(n // BATCH):
        async with batches.batch() as tx:
            for i in range(BATCH):
                await tx.put(f"{b}/{i}", DATA)
    return {"put": (time.perf_counter() - started) / n}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    n, reps = (100, 1) if args.quick else (args.objects, args.reps)
    runs: dict[str, Callable[[Path], Awaitable[dict[str, float]]]] = {
        "bare local put": lambda r: _puts(r, n, "bare"),
        "DualWrite put": lambda r: _puts(r, n, "DualWrite"),
        "Replicate put": lambda r: _puts(r, n, "Replicate"),
        f"BatchStore, {BATCH} objects a batch": lambda r: _batches(r, n),
    }
    samples: dict[str, list[float]] = {}
    for rep in range(reps):
        names = list(runs)
        names = names[rep % len(names) :] + names[: rep % len(names)]  # rotate the order
        for name in names:
            with tempfile.TemporaryDirectory() as tmp:
                result = await runs[name](Path(tmp))
            samples.setdefault(name, []).append(result["put"])
            if "drain" in result:
                samples.setdefault("Replicate drain (replay, 16 at once)", []).append(result["drain"])
    bare = statistics.median(samples["bare local put"])
    print(f"{n} x 4 KiB, local -> local, fsync off, median of {reps}\n")
    print("| what | µs per object | vs bare put |")
    print("| --- | ---: | ---: |")
    for name, values in samples.items():
        med = statistics.median(values)
        print(f"| {name} | {med * 1e6:.0f} | {med / bare:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
