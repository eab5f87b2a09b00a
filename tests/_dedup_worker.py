"""A worker for test_dedup_matrix: random puts, deletes, copies and sweeps through Dedup on a
local directory shared with other workers, until killed or until the file STOP exists.

Usage: python _dedup_worker.py ROOT SEED STOP
"""

from __future__ import annotations

import asyncio
import os
import random
import sys

from unistore import LocalBackend, StorageError
from unistore.layers import Dedup

KEYS = ["k0", "k1", "dir/k2"]
CONTENTS = [b"alpha " * 50, b"beta " * 70, b""]


async def main(root: str, seed: int, stop: str) -> None:
    rng = random.Random(seed)
    local = LocalBackend(base_path=root, fsync=False)
    dedup = Dedup(local, grace=3600, lease=0.5, metrics=False)
    while not await asyncio.to_thread(os.path.exists, stop):
        kind = rng.choice(["put", "put", "put", "delete", "copy", "sweep"])
        try:
            if kind == "put":
                await dedup.put_object(rng.choice(KEYS), rng.choice(CONTENTS))
            elif kind == "delete":
                await dedup.delete(rng.choice(KEYS))
            elif kind == "copy":
                await dedup.copy(rng.choice(KEYS), rng.choice(KEYS))
            else:
                await dedup.sweep(body_grace=0)
        except StorageError:
            pass
    await local.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
