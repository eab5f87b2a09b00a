"""Dedup on S3 (SeaweedFS): a put of a body the store already has, against a plain put, side by side.

Run: ``.venv/bin/python bench/dedup.py [--quick] [--size MiB] [--reps N] [--markdown FILE]``.

One ``weed mini`` is started here; one 256 MiB file of random bytes is the body. Per repetition,
in a rotating order:

- ``plain``: ``S3Backend.put_object(key, path)`` (multipart, 8 MiB parts);
- ``dedup-existing``: ``Dedup(S3Backend).put_object(new key, path)`` of the same bytes, stored once
  before the first repetition: hash the file, find the body, write the reference and the record;
- ``dedup-new``: the same with the file's first 8 bytes changed, so the body is new: hash, then upload;
- ``sha256``: ``hashlib`` over the file alone, the floor of ``dedup-existing``.

Medians of wall seconds over ``--reps``; ratios per repetition, then their median. Target: plain /
dedup-existing >= 5.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from _common import log, machine_busy_cores, rotate  # noqa: E402

MiB = 1024 * 1024
TARGET = 5.0
VARIANTS = ["plain", "dedup-existing", "dedup-new", "sha256"]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def _head(path: Path) -> bytes:
    with path.open("rb") as f:
        return f.read(8)


async def _run(args: argparse.Namespace, work: Path) -> dict[str, list[float]]:
    from unistore.layers import Dedup
    from unistore.testing._s3servers import seaweedfs

    body = work / "body.bin"
    with body.open("wb") as f:
        for _ in range(args.size):
            f.write(os.urandom(MiB))
    with seaweedfs(work / "weed") as server:
        server.create_bucket("bench")
        s3 = server.backend("bench")
        dedup = Dedup(s3, metrics=False)
        try:
            seed: Any = await dedup.put_object("seed/body.bin", body)  # the body the store already has
            seed_sha = seed.sha256
            header = _head(body)
            times: dict[str, list[float]] = {name: [] for name in VARIANTS}
            for rep in range(args.reps):
                for name in rotate(VARIANTS, rep):
                    if name == "dedup-new":
                        with body.open("r+b") as f:
                            f.write(os.urandom(8))  # a body the store does not have yet
                    started = time.perf_counter()
                    if name == "plain":
                        await s3.put_object(f"plain/{rep}.bin", body)
                    elif name == "sha256":
                        await asyncio.to_thread(_sha256_file, body)
                    else:
                        info: Any = await dedup.put_object(f"{name}/{rep}.bin", body)
                    elapsed = time.perf_counter() - started
                    times[name].append(elapsed)
                    log(f"rep {rep} {name}: {elapsed:.3f} s")
                    if name == "dedup-new":
                        assert info.sha256 != seed_sha
                        with body.open("r+b") as f:
                            f.write(header)  # the stored body again, for the other variants
            report = await dedup.sweep()
            log(f"store: {report.references} references, {report.bodies} bodies")
        finally:
            await s3.aclose()
    return times


def _markdown(args: argparse.Namespace, times: dict[str, list[float]], busy: float) -> str:
    size = args.size
    plain = times["plain"]
    lines = [
        "# Dedup benchmark",
        "",
        f"`bench/dedup.py --size {size} --reps {args.reps}`, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        f"One {size} MiB body of random bytes given as a path; S3 is SeaweedFS `weed mini` on the same",
        "2-core machine, shared with other jobs (other processes kept a median of "
        f"{busy:.1f} cores busy at the start). Medians of {args.reps} repetitions, variants in a rotating order;",
        "ratios are per repetition, then their median.",
        "",
        "| variant | median s | MiB/s | plain / variant | target | result |",
        "|---|--:|--:|--:|--:|---|",
    ]
    for name in VARIANTS:
        med = statistics.median(times[name])
        ratio = statistics.median(p / t for p, t in zip(plain, times[name], strict=True))
        target = f">= {TARGET:g}" if name == "dedup-existing" else ""
        result = ("PASS" if ratio >= TARGET else "MISS") if name == "dedup-existing" else ""
        lines.append(f"| {name} | {med:.3f} | {size / med:,.0f} | {ratio:.2f}x | {target} | {result} |")
    lines += [
        "",
        "- `plain`: `S3Backend.put_object(key, path)`.",
        "- `dedup-existing`: `Dedup(S3Backend).put_object(key, path)` of a body the store already has:",
        "  hash the file, then a reference, a claim check, a body check and the record (no upload).",
        "- `dedup-new`: the same for a body the store does not have: hash, then the upload (the file is",
        "  read twice: to hash it, then to upload it, hashed again on the way).",
        "- `sha256`: `hashlib.sha256` over the file alone (page cache), the floor of `dedup-existing`.",
        "",
        "Per repetition (seconds):",
        "",
        "| variant | " + " | ".join(f"rep {i}" for i in range(args.reps)) + " |",
        "|---|" + "--:|" * args.reps,
    ]
    for name in VARIANTS:
        lines.append(f"| {name} | " + " | ".join(f"{t:.3f}" for t in times[name]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="body size in MiB")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="32 MiB, 2 repetitions")
    parser.add_argument("--markdown", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.size, args.reps = 32, 2
    busy = machine_busy_cores()
    with tempfile.TemporaryDirectory(prefix="unistore-dedup-bench-") as work:
        times = asyncio.run(_run(args, Path(work)))
    text = _markdown(args, times, busy)
    print(text)
    if args.markdown:
        args.markdown.write_text(text)


if __name__ == "__main__":
    main()
