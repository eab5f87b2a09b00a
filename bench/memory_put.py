#!/usr/bin/env python3
"""Peak memory of a streamed put into MemoryBackend: a 1 GiB body in 1 MiB chunks, each size in
its own fresh process, peak RSS growth (VmHWM) over the object's size. Target: <= 1.1x.

    .venv/bin/python bench/memory_put.py [--mib 1024] [--markdown bench/MEMORY_RESULTS.md]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import asyncio, sys, time
sys.path.insert(0, {src!r})
from unistore import MemoryBackend

SIZE = {mib} << 20

def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

async def body():
    for _ in range({mib}):
        yield b"x" * (1 << 20)

async def main():
    store = MemoryBackend()
    before = peak()
    t = time.perf_counter()
    await store.put("big", body())
    print((peak() - before) / SIZE, time.perf_counter() - t)

asyncio.run(main())
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--quick", action="store_true", help="64 MiB instead")
    a = ap.parse_args()
    if a.quick:
        a.mib = 64
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(src=str(REPO / "src"), mib=a.mib)],
        capture_output=True,
        text=True,
        check=True,
    )
    growth, seconds = (float(x) for x in out.stdout.split())
    verdict = "PASS" if growth <= 1.1 else "MISS"
    text = (
        f"# MemoryBackend streamed put\n\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, Python "
        f"{sys.version.split()[0]}, {a.mib} MiB in 1 MiB chunks, one fresh process.\n\n"
        "| object | peak RSS growth / object size | put time | target <= 1.1x |\n|---|---:|---:|---|\n"
        f"| {a.mib} MiB | {growth:.3f}x | {seconds:.2f} s | {verdict} |\n"
    )
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)


if __name__ == "__main__":
    main()
