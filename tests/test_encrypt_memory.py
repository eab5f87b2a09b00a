"""Encrypt streams at bounded memory: a 64 MiB put and get through it on the local store hold a few
MiB (a segment, and up to three 1 MiB chunks on each side of the cipher)."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

from unistore import ByteRange, LocalBackend
from unistore.encryption import Encrypt, LocalKeyring

SIZE = 64 * 1024 * 1024
CHUNK = 1024 * 1024
LIMIT = 12 * 1024 * 1024


async def _body(seed: bytes) -> AsyncIterator[bytes]:
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    for i in range(SIZE // CHUNK):
        yield i.to_bytes(4, "big") + block[4:]


async def test_a_64_mib_put_and_get_hold_a_few_mib(tmp_path: Path) -> None:
    store = Encrypt(LocalBackend(base_path=str(tmp_path), fsync=False), LocalKeyring({"k": os.urandom(32)}))
    expected = hashlib.sha256()
    async for chunk in _body(b"x"):
        expected.update(chunk)
    tracemalloc.start()
    try:
        info = await store.put_object("big.bin", _body(b"x"))
        _, put_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got, size = hashlib.sha256(), 0
        async with await store.open("big.bin") as dl:
            async for chunk in dl:
                got.update(chunk)
                size += len(chunk)
        _, get_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        async with await store.open("big.bin", range=ByteRange(SIZE // 2, SIZE // 2 + 65536)) as dl:
            middle = await dl.read()
        _, range_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (info.size, size, got.hexdigest()) == (SIZE, SIZE, expected.hexdigest())
    block = hashlib.sha256(b"x").digest() * (CHUNK // 32)
    assert middle == (SIZE // 2 // CHUNK).to_bytes(4, "big") + block[4:65536]
    assert put_peak < LIMIT, put_peak
    assert get_peak < LIMIT, get_peak
    assert range_peak < 2 * 1024 * 1024, range_peak
