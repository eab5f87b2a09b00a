"""Malware scanning: our clamd client beside ``aioclamd`` (the maintained async peer), and the cost of the
``Scan`` layer on a local store, side by side in one run against one clamd (the test database).

Run: ``.venv/bin/python bench/scan.py [--mib 16] [--reps 5] [--markdown FILE]`` (needs Debian
``clamav-daemon``: ``make test-tools``).
The order of the contenders rotates between repetitions; medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from unistore import LocalBackend
from unistore.layers import Scan
from unistore.scanners import ClamdClient
from unistore.testing._clamd import clamd_server

CHUNK = 64 * 1024


def chunks(data: bytes) -> AsyncIterator[bytes]:
    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(data), CHUNK):
            yield data[i : i + CHUNK]

    return gen()


async def run(mib: int, reps: int) -> list[str]:
    data = os.urandom(mib * 1024 * 1024)
    out: list[str] = []
    with clamd_server(stream_max_length=max(64, 2 * mib) * 1024 * 1024) as clamd, tempfile.TemporaryDirectory() as d:
        contenders: dict[str, Callable[[], Awaitable[object]]] = {
            "unistore, Unix socket": lambda: ClamdClient(clamd.unix_url).scan_stream(chunks(data)),
            "unistore, TCP": lambda: ClamdClient(clamd.tcp_url).scan_stream(chunks(data)),
        }
        try:
            import aioclamd

            contenders["aioclamd 1.1, TCP"] = lambda: aioclamd.ClamdAsyncClient("127.0.0.1", clamd.port).instream(
                io.BytesIO(data)
            )
        except ImportError:
            print("aioclamd is not installed (pip install '.[bench]'): peer skipped", file=sys.stderr)
        store = LocalBackend(base_path=d, fsync=False)
        layers = {
            "local, no scan": store,
            "local + Scan(reject)": Scan(store, scanner=clamd.unix_url),
            "local + Scan(quarantine)": Scan(store, scanner=clamd.unix_url, mode="quarantine"),
        }
        for name, layered in layers.items():
            contenders[name] = lambda s=layered: s.put_object("bench.bin", chunks(data))  # type: ignore[misc]
        times: dict[str, list[float]] = {name: [] for name in contenders}
        names = list(contenders)
        for rep in range(reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for name in order:
                start = time.perf_counter()
                await contenders[name]()
                times[name].append(time.perf_counter() - start)
        await store.aclose()
    out.append(f"{mib} MiB clean body, clamd with the test database, median of {reps}")
    out.append("")
    out.append("| contender | median | MiB/s | ratio |")
    out.append("|---|---|---|---|")
    groups = [[n for n in names if not n.startswith("local")], [n for n in names if n.startswith("local")]]
    for group in groups:
        base = statistics.median(times[group[-1] if group[0].startswith("unistore") else group[0]])
        for name in group:
            med = statistics.median(times[name])
            out.append(f"| {name} | {med * 1000:.0f} ms | {mib / med:.0f} | {med / base:.2f} |")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=16)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="4 MiB, 3 repetitions")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    mib, reps = (4, 3) if args.quick else (args.mib, args.reps)
    lines = asyncio.run(run(mib, reps))
    text = "\n".join(lines) + "\n"
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
