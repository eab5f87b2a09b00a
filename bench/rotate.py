"""Key rotation throughput: ``rewrap`` (data keys rewrapped, bodies untouched) vs ``reencrypt`` (new data
keys, full rewrite), objects per second, side by side on memory, a local directory and S3 (SeaweedFS).

Run: ``.venv/bin/python bench/rotate.py [--objects 500] [--size 65536] [--reps 3] [--markdown FILE]``.
Each repetition fills a fresh prefix with ``--objects`` encrypted objects under the old KEK, then times
one job moving them to the new KEK; the order of stores and modes rotates between repetitions.
Prints the median objects/s of each (store, mode) and the median of the per-repetition
rewrap/reencrypt ratios. ``s3-native-copy`` is SeaweedFS with ``copy_if_match=True`` (CopyObject
onto itself): shown for its speed only, it is not safe against live writers on SeaweedFS.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import log, rotate

from unistore import LocalBackend, MemoryBackend
from unistore._base import StorageBackend
from unistore.encryption import Encrypt, LocalKeyring
from unistore.encryption import rotate as rotate_keys

OLD, NEW = os.urandom(32), os.urandom(32)
MODES = ["rewrap", "reencrypt"]


async def fill(raw: StorageBackend, prefix: str, count: int, size: int) -> None:
    writer = Encrypt(raw, LocalKeyring({"old": OLD}))
    body = os.urandom(size)
    gate = asyncio.Semaphore(16)

    async def put(i: int) -> None:
        async with gate:
            await writer.put_object(f"{prefix}{i:06d}", body)

    await asyncio.gather(*(put(i) for i in range(count)))


async def measure(raw: StorageBackend, mode: str, count: int, size: int) -> float:
    prefix = f"bench-{uuid.uuid4().hex[:8]}/"
    await fill(raw, prefix, count, size)
    store = Encrypt(raw, LocalKeyring({"old": OLD, "new": NEW}, primary="new"))
    start = time.perf_counter()
    report = await rotate_keys(store, mode, prefix, metrics=False)  # type: ignore[arg-type]
    seconds = time.perf_counter() - start
    assert report.rotated == count, report.counts
    return count / seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--objects", type=int, default=500)
    ap.add_argument("--size", type=int, default=64 * 1024)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stores", default="memory,local,s3,s3-native-copy")
    ap.add_argument("--markdown", type=Path)
    args = ap.parse_args()
    wanted = args.stores.split(",")

    from contextlib import ExitStack

    with ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="unistore-bench-rotate-"))
        factories: dict[str, Callable[[], Any]] = {
            "memory": MemoryBackend,
            "local": lambda: LocalBackend(base_path=os.path.join(tmp, "local"), fsync=False),
        }
        if any(s.startswith("s3") for s in wanted):
            from unistore.testing import seaweedfs

            server = stack.enter_context(seaweedfs())
            server.create_bucket("bench")
            factories["s3"] = lambda: server.backend("bench")
            factories["s3-native-copy"] = lambda: server.backend("bench", copy_if_match=True)
        stores = [s for s in wanted if s in factories]
        results: dict[tuple[str, str], list[float]] = {}
        ratios: dict[str, list[float]] = {s: [] for s in stores}

        async def run() -> None:
            for rep in range(args.reps):
                for name in rotate(stores, rep):
                    raw = factories[name]()
                    rates = {}
                    for mode in rotate(MODES, rep):
                        rates[mode] = await measure(raw, mode, args.objects, args.size)
                        results.setdefault((name, mode), []).append(rates[mode])
                        log(f"rep {rep + 1} {name:15} {mode:9} {rates[mode]:8.0f} objects/s")
                    ratios[name].append(rates["rewrap"] / rates["reencrypt"])
                    await raw.aclose()

        asyncio.run(run())

    lines = [
        f"Key rotation, {args.objects} objects of {args.size} B, {args.reps} repetitions (medians)",
        "",
        "| store | rewrap objects/s | reencrypt objects/s | rewrap / reencrypt |",
        "|---|---:|---:|---:|",
    ]
    for name in stores:
        rw = statistics.median(results[(name, "rewrap")])
        re_ = statistics.median(results[(name, "reencrypt")])
        lines.append(f"| {name} | {rw:,.0f} | {re_:,.0f} | {statistics.median(ratios[name]):.2f}x |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
