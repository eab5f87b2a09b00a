"""The Encrypt layer's threaded cipher: the same bytes as one thread, and the same authentication."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from unistore import ByteRange, ConfigurationError, IntegrityError, LocalBackend
from unistore.encryption import Encrypt, LocalKeyring
from unistore.encryption._stream import TAG_SIZE, Layout

SEGMENT = 4096
PLAIN = SEGMENT - TAG_SIZE
DATA = os.urandom(3 * 1024 * 1024 + 777)  # 770 segments of 4 KiB: many per 64 KiB read chunk


@pytest.fixture
def keyring() -> LocalKeyring:
    return LocalKeyring({"key-v1": os.urandom(32)})


def _store(root: Path, keyring: LocalKeyring, threads: int, chunk_size: int = 64 * 1024) -> Encrypt:
    raw = LocalBackend(base_path=str(root), fsync=False, chunk_size=chunk_size)
    return Encrypt(raw, keyring, segment_size=SEGMENT, threads=threads)


async def _pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _read(store: Encrypt, key: str, got: bytearray, rng: ByteRange | None = None) -> None:
    """Append what ``store`` yields for ``key`` to ``got`` until the stream ends or fails."""
    async with await store.open(key, range=rng) as dl:
        async for chunk in dl:
            got += chunk


@pytest.mark.parametrize("chunk_size", [64 * 1024, 5000, 1024 * 1024])
@pytest.mark.parametrize("threads", [2, 4])
async def test_threaded_put_and_get_match_one_thread(
    tmp_path: Path, keyring: LocalKeyring, threads: int, chunk_size: int
) -> None:
    one = _store(tmp_path, keyring, 1, chunk_size)
    many = _store(tmp_path, keyring, threads, chunk_size)
    try:
        await many.put_object("t", _pieces(DATA, 10_000))  # chunks that split segments
        await one.put_object("o", _pieces(DATA, 10_000))
        for reader in (one, many):
            for key in ("t", "o"):
                got = bytearray()
                await _read(reader, key, got)
                assert got == DATA
        mid = ByteRange(1_000_000, 2_500_001)
        got = bytearray()
        await _read(many, "t", got, mid)
        assert got == DATA[1_000_000:2_500_001]
    finally:
        await one.aclose()
        await many.aclose()


async def _tampered(tmp_path: Path, keyring: LocalKeyring, edit: str) -> tuple[Encrypt, int]:
    """A threaded store holding ``DATA`` as "x" with segment 400 (of 770) flipped or cut off."""
    store = _store(tmp_path, keyring, 4)
    await store.put_object("x", DATA)
    bad = 400
    _edit(tmp_path, bad * SEGMENT + 100, edit)
    return store, bad


def _edit(root: Path, at: int, edit: str) -> None:
    """Flip a bit of the stored ciphertext at ``at``, or cut it off there."""
    path = next(p for p in root.rglob("*") if p.is_file() and p.stat().st_size > len(DATA))
    body = bytearray(path.read_bytes())
    if edit == "flip":
        body[at] ^= 1
    else:
        del body[at:]
    path.write_bytes(bytes(body))


@pytest.mark.parametrize("edit", ["flip", "truncate"])
async def test_a_bad_middle_segment_stops_the_threaded_stream_before_it(
    tmp_path: Path, keyring: LocalKeyring, edit: str
) -> None:
    store, bad = await _tampered(tmp_path, keyring, edit)
    try:
        got = bytearray()
        with pytest.raises(IntegrityError):
            await _read(store, "x", got)
        bad_start = Layout(SEGMENT).plain_start(bad)
        assert len(got) <= bad_start  # nothing of the bad segment or after it
        assert got == DATA[: len(got)]  # and what came is the object's prefix, in order
        lo = PLAIN * 100 + 7  # a range read across the bad segment: the same
        got = bytearray()
        with pytest.raises(IntegrityError):
            await _read(store, "x", got, ByteRange(lo, PLAIN * 700))
        assert len(got) <= bad_start - lo
        assert got == DATA[lo : lo + len(got)]
    finally:
        await store.aclose()


async def test_threads_setting(tmp_path: Path, keyring: LocalKeyring) -> None:
    with pytest.raises(ConfigurationError):
        _store(tmp_path, keyring, 0)
    assert Encrypt(LocalBackend(base_path=str(tmp_path)), keyring).threads == 1

    def cipher_threads() -> int:
        return sum(t.name.startswith("unistore-encrypt") for t in threading.enumerate())

    before = cipher_threads()
    one = _store(tmp_path, keyring, 1)
    await one.put_object("a", DATA)
    got = bytearray()
    await _read(one, "a", got)
    assert got == DATA and cipher_threads() == before  # threads=1: all on the event loop's thread
    many = _store(tmp_path, keyring, 2)
    got = bytearray()
    await _read(many, "a", got)
    assert got == DATA and cipher_threads() > before
    await many.aclose()
    await one.aclose()
