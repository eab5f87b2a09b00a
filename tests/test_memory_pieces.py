"""MemoryBackend keeps a streamed object as its pieces: no joined copy, exact bytes for any range."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from unistore import MemoryBackend
from unistore._types import ByteRange

MiB = 1 << 20


async def _chunks(sizes: list[int]) -> object:
    n = 0
    for size in sizes:
        yield bytes((n + i) % 251 for i in range(size))
        n += size


def _expected(total: int) -> bytes:
    return bytes(i % 251 for i in range(total))


@pytest.mark.parametrize("sizes", [[1], [5, 7, 3], [64 * 1024] * 5, [100_000, 1, 300_000, 50_000], [0, 0, 10]])
async def test_streamed_put_reads_back_exactly_at_every_range(sizes: list[int]) -> None:
    store = MemoryBackend(chunk_size=64 * 1024)
    total = sum(sizes)
    await store.put("k", _chunks(sizes))  # type: ignore[arg-type]
    want = _expected(total)
    assert await store.get("k") == want
    for start, end in [(0, total), (0, 1), (total - 1, total), (total // 3, 2 * total // 3), (1, total)]:
        if start < end:
            got = await store.open("k", range=ByteRange(start, end))
            assert await got.read() == want[start:end]
    await store.copy("k", "c")
    assert await store.get("c") == want


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc/self/status")
def test_streamed_put_peaks_at_the_object_size() -> None:
    """A 256 MiB streamed put grows the process by about the object's size, not twice it."""
    code = textwrap.dedent(
        """
        import asyncio
        from unistore import MemoryBackend

        SIZE = 256 << 20

        def peak():  # this process's own high-water mark (ru_maxrss survives exec: the parent's)
            for line in open("/proc/self/status"):
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024

        async def body():
            for _ in range(SIZE // (1 << 20)):
                yield b"x" * (1 << 20)

        async def main():
            store = MemoryBackend()
            before = peak()
            await store.put("big", body())
            after = peak()
            assert (await store.head("big")).size == SIZE
            print((after - before) / SIZE)

        asyncio.run(main())
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth = float(out.stdout)
    assert 0.9 < growth <= 1.1, f"peak RSS grew by {growth:.2f}x the object size"
