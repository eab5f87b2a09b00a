"""Commits batches in a loop, for tests/test_batch.py (which SIGKILLs it around the commit point).

Usage: ``python _batch_worker.py ROOT PREFIX KEYS FIRST``. Batch ``n`` (from FIRST on) writes
``n`` into each of the KEYS keys ``k0``... and prints ``commit n``, then waits for a line on
stdin before committing, so the test can time its SIGKILL from the commit's start.
"""

from __future__ import annotations

import asyncio
import sys

from unistore import BatchStore, LocalBackend


async def main(root: str, prefix: str, keys: int, first: int) -> None:
    batches = BatchStore(LocalBackend(base_path=root, fsync=False), prefix)
    n = first
    while True:
        async with batches.batch() as tx:
            for k in range(keys):
                await tx.put(f"k{k}", str(n).encode())
            print(f"commit {n}", flush=True)
            sys.stdin.readline()  # the test's "go": the commit starts now
        n += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
