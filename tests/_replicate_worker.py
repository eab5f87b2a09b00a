"""Writes and deletes through Replicate in a loop, for tests/test_replicate.py (which SIGKILLs it).

Usage: ``python _replicate_worker.py SOURCE REPLICA SEED``. Both stores are local directories;
the outbox lives in SOURCE; it prints ``writing`` after its first write, and replays now and then.
"""

from __future__ import annotations

import asyncio
import random
import sys

from unistore import LocalBackend
from unistore.layers import Replicate


async def main(source: str, replica: str, seed: int) -> None:
    rng = random.Random(seed)
    rep = Replicate(
        LocalBackend(base_path=source, fsync=False),
        LocalBackend(base_path=replica, fsync=False),
        replay_interval=None,
        settle=0.2,
        metrics=False,
    )
    n = 0
    while True:
        key = f"k/{rng.randrange(20)}"
        if rng.random() < 0.2:
            await rep.delete(key)
        else:
            await rep.put(key, f"{seed}-{n}".encode())
        if rng.random() < 0.1:
            await rep.replay()
        if n == 0:
            print("writing", flush=True)
        n += 1


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
