#!/usr/bin/env python3
"""The Compress layer side by side with the ``gzip`` and ``zstd`` command-line tools, one run, the
same data, the same levels (gzip 6, zstd 3, both tools' defaults):

- ``stream``: a 256 MiB text-like stream (access-log lines), compressed, then decompressed;
  unistore streams it through ``Compress(MemoryBackend())`` in 1 MiB chunks, the tools read the
  file and write to /dev/null (``-c``), single-threaded as they default to.
- ``objects``: 10,000 JSON documents of 4 KiB; unistore puts each through the layer, the tools get
  all the files in one invocation (``gzip -k -f``, ``zstd -q -f``: one process, one output file
  each) so that no process start is counted against them.

Throughput is plain MiB per second of wall time (median of the repetitions, interleaved); ratio is
compressed / plain bytes. Target: unistore >= 0.8x the tool's throughput at the same level.

    .venv/bin/python bench/compress.py [--quick] [--reps 3] [--markdown bench/COMPRESS_RESULTS.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from _common import log, machine_busy_cores  # noqa: E402

from unistore import MemoryBackend  # noqa: E402
from unistore.layers import Compress  # noqa: E402

MiB = 1 << 20
LEVEL = {"gzip": 6, "zstd": 3}
TARGET = 0.8


def make_stream(path: Path, size: int) -> None:
    """Access-log lines with varying addresses, paths, statuses, sizes and agents."""
    rng = random.Random(7)
    paths = [f"/api/v1/items/{i}" for i in range(500)] + ["/", "/index.html", "/static/app.js", "/login"]
    agents = ["Mozilla/5.0 (X11; Linux x86_64)", "curl/8.5.0", "python-httpx/0.27", "Go-http-client/1.1"]
    with open(path, "wb") as f:
        written, t = 0, 1_764_000_000
        while written < size:
            lines = []
            for _ in range(2000):
                t += rng.randint(0, 3)
                lines.append(
                    f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)} - - [{t}] "
                    f'"GET {rng.choice(paths)} HTTP/1.1" {rng.choice((200, 200, 200, 304, 404, 500))} '
                    f'{rng.randint(0, 99999)} "-" "{rng.choice(agents)}"\n'
                )
            block = "".join(lines).encode()[: size - written]
            f.write(block)
            written += len(block)


def make_objects(root: Path, n: int) -> list[bytes]:
    rng = random.Random(11)
    root.mkdir(parents=True, exist_ok=True)
    bodies = []
    for i in range(n):
        doc: dict[str, Any] = {"id": i, "user": f"user-{rng.randint(0, 9999)}", "items": []}
        while len(json.dumps(doc)) < 4000:
            doc["items"].append(
                {
                    "sku": f"SKU-{rng.randint(0, 99999):05d}",
                    "qty": rng.randint(1, 9),
                    "price": round(rng.random() * 100, 2),
                }
            )
        body = json.dumps(doc).encode()[:4096].ljust(4096)
        (root / f"doc{i:05d}.json").write_bytes(body)
        bodies.append(body)
    return bodies


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    """The file in 1 MiB chunks (read on the loop: page-cache reads, the same the tools do)."""
    with path.open("rb") as f:
        while chunk := f.read(MiB):
            yield chunk


def unistore_stream(enc: str, path: Path) -> tuple[float, float, int]:
    """(compress seconds, decompress seconds, stored bytes)."""

    async def run() -> tuple[float, float, int]:
        store = Compress(MemoryBackend(), encoding=enc, level=LEVEL[enc], metrics=False)  # type: ignore[arg-type]
        t = time.perf_counter()
        await store.put_object("stream.log", _file_chunks(path), content_type="text/plain")
        put = time.perf_counter() - t
        stored = (await store.inner.head("stream.log")).size
        t = time.perf_counter()
        async with await store.open("stream.log") as dl:
            async for _ in dl:
                pass
        return put, time.perf_counter() - t, stored

    return asyncio.run(run())


def unistore_objects(enc: str, bodies: list[bytes]) -> tuple[float, float, int]:
    async def run() -> tuple[float, float, int]:
        store = Compress(MemoryBackend(), encoding=enc, level=LEVEL[enc], metrics=False)  # type: ignore[arg-type]
        t = time.perf_counter()
        for i, body in enumerate(bodies):
            await store.put_object(f"doc{i:05d}.json", body, content_type="application/json")
        put = time.perf_counter() - t
        stored = store.inner.used_bytes  # type: ignore[attr-defined]
        t = time.perf_counter()
        for i in range(len(bodies)):
            await store.get(f"doc{i:05d}.json")
        return put, time.perf_counter() - t, stored

    return asyncio.run(run())


def tool_stream(enc: str, path: Path, work: Path) -> tuple[float, float, int]:
    out = work / f"stream.{enc}"
    cmd = (
        ["gzip", f"-{LEVEL[enc]}", "-c", str(path)]
        if enc == "gzip"
        else ["zstd", f"-{LEVEL[enc]}", "-q", "-c", str(path)]
    )
    t = time.perf_counter()
    with open(out, "wb") as f:
        subprocess.run(cmd, stdout=f, check=True)
    put = time.perf_counter() - t
    dcmd = ["gzip", "-dc", str(out)] if enc == "gzip" else ["zstd", "-dcq", str(out)]
    t = time.perf_counter()
    subprocess.run(dcmd, stdout=subprocess.DEVNULL, check=True)
    get = time.perf_counter() - t
    size = out.stat().st_size
    out.unlink()
    return put, get, size


def tool_objects(enc: str, root: Path, work: Path) -> tuple[float, float, int]:
    copy = work / f"objects-{enc}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    files = sorted(str(p) for p in copy.iterdir())
    suffix = ".gz" if enc == "gzip" else ".zst"
    cmd = (
        ["gzip", f"-{LEVEL[enc]}", "-k", "-f", *files]
        if enc == "gzip"
        else ["zstd", f"-{LEVEL[enc]}", "-q", "-f", *files]
    )
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    put = time.perf_counter() - t
    packed = [f + suffix for f in files]
    size = sum(os.path.getsize(p) for p in packed)
    for f in files:
        os.unlink(f)
    dcmd = ["gzip", "-d", "-f", *packed] if enc == "gzip" else ["zstd", "-d", "-q", "-f", "--rm", *packed]
    t = time.perf_counter()
    subprocess.run(dcmd, check=True)
    get = time.perf_counter() - t
    shutil.rmtree(copy)
    return put, get, size


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="32 MiB and 1,000 objects, one repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--stream-mib", type=int, default=256)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()
    if a.quick:
        a.reps, a.stream_mib, a.objects = 1, 32, 1000
    for tool in ("gzip", "zstd"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed (Debian package {tool})")
    with tempfile.TemporaryDirectory(prefix="unistore-compress-bench-") as tmp:
        work = Path(tmp)
        stream = work / "stream.log"
        log(f"writing {a.stream_mib} MiB of log lines and {a.objects} JSON documents")
        make_stream(stream, a.stream_mib * MiB)
        bodies = make_objects(work / "objects", a.objects)
        runs: dict[tuple[str, str, str], list[tuple[float, float, int]]] = {}
        loads = []
        for rep in range(a.reps):
            for enc in ("gzip", "zstd"):
                order = ["unistore", "tool"] if (rep % 2 == 0) else ["tool", "unistore"]
                for who in order:
                    loads.append(machine_busy_cores(0.3))
                    s = unistore_stream(enc, stream) if who == "unistore" else tool_stream(enc, stream, work)
                    runs.setdefault(("stream", enc, who), []).append(s)
                    o = (
                        unistore_objects(enc, bodies)
                        if who == "unistore"
                        else tool_objects(enc, work / "objects", work)
                    )
                    runs.setdefault(("objects", enc, who), []).append(o)
                    log(f"rep {rep} {enc:4} {who:8} stream {s[0]:.2f}/{s[1]:.2f} s  objects {o[0]:.2f}/{o[1]:.2f} s")
    plain = {"stream": a.stream_mib * MiB, "objects": a.objects * 4096}
    gzip_v = subprocess.run(["gzip", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    zstd_v = subprocess.run(["zstd", "--version"], capture_output=True, text=True).stdout.strip()
    lines = [
        "# Compress layer vs the gzip and zstd tools",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs (shared), Python "
        f"{platform.python_version()}; {gzip_v}; {zstd_v}. "
        f"Stream {a.stream_mib} MiB of access-log lines, objects {a.objects} x 4 KiB JSON; levels gzip 6, zstd 3; "
        f"median of {a.reps}, interleaved. Busy cores before each run: median {statistics.median(loads):.2f}.",
        "",
        "| data | encoding | direction | unistore MiB/s | tool MiB/s | unistore / tool | target >= 0.8x "
        "| ratio unistore | ratio tool |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for data in ("stream", "objects"):
        for enc in ("gzip", "zstd"):
            for i, direction in ((0, "compress"), (1, "decompress")):
                u = statistics.median(r[i] for r in runs[(data, enc, "unistore")])
                t = statistics.median(r[i] for r in runs[(data, enc, "tool")])
                mu, mt = plain[data] / MiB / u, plain[data] / MiB / t
                ratio_u = statistics.median(r[2] for r in runs[(data, enc, "unistore")]) / plain[data]
                ratio_t = statistics.median(r[2] for r in runs[(data, enc, "tool")]) / plain[data]
                verdict = "PASS" if mu >= TARGET * mt else "MISS"
                lines.append(
                    f"| {data} | {enc} | {direction} | {mu:.0f} | {mt:.0f} | {mu / mt:.2f}x | {verdict} | "
                    f"{ratio_u:.3f} | {ratio_t:.3f} |"
                )
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)


if __name__ == "__main__":
    main()
