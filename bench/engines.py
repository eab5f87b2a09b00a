#!/usr/bin/env python3
"""Which engine for the S3 data path? Client CPU per 4 KiB PUT/GET of the candidate engines.

Candidates: aiobotocore (the spec's dependency; default config, and tuned: no parameter
validation, checksums only when required), obstore 0.12.1 (Rust object_store), and a
plain aiohttp session with a hand-written SigV4 signer (what S3Backend is built on).
Each (engine, concurrency) runs in a fresh process against one SeaweedFS server in its
own process; client CPU is getrusage of the worker. Prints medians over --reps.

    .venv/bin/python bench/engines.py --reps 3 --n 600
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ENGINES = ["aiobotocore", "aiobotocore-tuned", "obstore", "aiohttp-sigv4"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help="1 repetition of 100 ops")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.n = 1, 100
    from unistore.testing._s3servers import seaweedfs

    worker = str(Path(__file__).with_name("engines_worker.py"))
    rows: dict[tuple[str, int], dict[str, list[float]]] = {}
    with seaweedfs() as s:
        s.create_bucket("engines")
        for _ in range(args.reps):
            for conc in (1, 32):
                for e in ENGINES:
                    cmd = [
                        sys.executable,
                        worker,
                        e,
                        s.endpoint,
                        s.access_key,
                        s.secret_key,
                        "engines",
                        str(conc),
                        str(args.n),
                    ]
                    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                    r = json.loads(out.stdout)
                    cell = rows.setdefault((e, conc), {"put": [], "get": [], "put_ops": [], "get_ops": []})
                    for op in ("put", "get"):
                        cell[op].append(r[op][0])
                        cell[op + "_ops"].append(r[op][1])
    print("| engine | conc | PUT CPU µs/op | GET CPU µs/op | PUT ops/s | GET ops/s |")
    print("|---|--:|--:|--:|--:|--:|")
    for (e, conc), c in rows.items():
        med = {k: statistics.median(v) for k, v in c.items()}
        print(f"| {e} | {conc} | {med['put']:.0f} | {med['get']:.0f} | {med['put_ops']:.0f} | {med['get_ops']:.0f} |")


if __name__ == "__main__":
    main()
