"""Compress behaviour: what is compressed and what is not, streams at bounded memory, ranges, corruption."""

from __future__ import annotations

import gzip
import hashlib
import os
import random
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from prometheus_client import CollectorRegistry

from unistore import ByteRange, Download, LocalBackend, MemoryBackend, SuffixRange
from unistore._errors import (
    ConfigurationError,
    IntegrityError,
    InvalidMetadataError,
    InvalidRangeError,
    UnsupportedError,
)
from unistore.encryption import Encrypt, LocalKeyring
from unistore.layers import Compress, CompressedObjectInfo, Layer, looks_compressed
from unistore.layers._compress import META_ENCODING, META_PLAIN_SIZE

WORDS = [f"word{i}" for i in range(500)]


def text(size: int, seed: int = 1) -> bytes:
    """Text-like bytes (compress about 3:1 with gzip)."""
    rng = random.Random(seed)
    out = " ".join(rng.choice(WORDS) for _ in range(size // 5 + 1)).encode()
    return out[:size]


async def chunks(data: bytes, size: int = 65536) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(params=["gzip", "zstd"])
def layer(request: pytest.FixtureRequest) -> Compress:
    return Compress(MemoryBackend(), encoding=request.param, metrics=False)


async def stored_encoding(store: Compress, key: str) -> str | None:
    return (await store.inner.head(key)).metadata.get(META_ENCODING)


async def test_text_is_compressed_and_reads_back(layer: Compress) -> None:
    data = text(200_000)
    info = await layer.put_object("a.txt", data, content_type="text/plain", metadata={"owner": "me"})
    assert isinstance(info, CompressedObjectInfo)
    assert info.size == len(data) and info.stored_size is not None and info.stored_size < len(data) // 2
    assert info.content_encoding == layer.encoding and dict(info.metadata) == {"owner": "me"}
    assert await stored_encoding(layer, "a.txt") == layer.encoding
    assert (await layer.inner.head("a.txt")).metadata[META_PLAIN_SIZE] == str(len(data))
    assert await layer.get("a.txt") == data
    md = await layer.get_metadata("a.txt")
    assert md["size"] == len(data) and md["content_encoding"] == layer.encoding and md["owner"] == "me"
    assert [i.size async for i in layer.iter_objects()] == [len(data)]


@pytest.mark.parametrize("kind", ["image/png", "video/mp4", "audio/mpeg", "application/zip", "font/woff2"])
async def test_skipped_by_content_type(kind: str) -> None:
    store = Compress(MemoryBackend(), metrics=False)
    data = text(100_000)
    await store.put_object("x", data, content_type=kind)
    await store.put_object("s", chunks(data), content_type=kind)
    assert await stored_encoding(store, "x") is None and await stored_encoding(store, "s") is None
    assert await store.get("x") == data and await store.get("s") == data


async def test_skipped_by_content_type_guessed_from_key() -> None:
    store = Compress(MemoryBackend(), metrics=False)
    await store.put_object("photo.jpg", text(100_000))
    assert await stored_encoding(store, "photo.jpg") is None


@pytest.mark.parametrize(
    "magic",
    [PNG, b"\xff\xd8\xff\xe0", b"GIF89a", b"PK\x03\x04", b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd", b"RIFF\0\0\0\0WEBP",
     b"\0\0\0\x18ftypmp42", b"OggS", b"ID3\x04"],
)  # fmt: skip
async def test_skipped_by_magic_bytes(magic: bytes) -> None:
    store = Compress(MemoryBackend(), metrics=False)
    data = magic + text(100_000)  # a compressible body that claims a compressed format
    assert looks_compressed(data)
    await store.put_object("b", data, content_type="application/octet-stream")
    await store.put_object("s", chunks(data, 1000), content_type="application/octet-stream")
    assert await stored_encoding(store, "b") is None and await stored_encoding(store, "s") is None
    assert await store.get("s") == data


async def test_svg_is_compressed_though_an_image() -> None:
    store = Compress(MemoryBackend(), metrics=False)
    await store.put_object("i.svg", b"<svg>" + text(10_000) + b"</svg>", content_type="image/svg+xml")
    assert await stored_encoding(store, "i.svg") == "gzip"


async def test_threshold_and_min_size() -> None:
    store = Compress(MemoryBackend(), min_savings=0.5, min_size=1000, metrics=False)
    await store.put_object("random", os.urandom(100_000))
    await store.put_object("random-stream", chunks(os.urandom(300_000)))
    await store.put_object("small", b"a" * 999)
    await store.put_object("zeros", bytes(100_000))
    for key in ("random", "random-stream", "small"):
        assert await stored_encoding(store, key) is None, key
    assert await stored_encoding(store, "zeros") == "gzip"
    strict = Compress(MemoryBackend(), min_savings=0.9, metrics=False)
    await strict.put_object("t", text(100_000))  # saves about 65 %: less than asked
    assert await stored_encoding(strict, "t") is None


async def test_stream_decided_on_its_first_sample() -> None:
    """A stream that compresses well at first is compressed whole; one that does not is stored as is."""
    store = Compress(MemoryBackend(), metrics=False)
    good_then_random = text(100_000) + os.urandom(200_000)
    await store.put_object("k", chunks(good_then_random))
    assert await stored_encoding(store, "k") == "gzip"
    assert await store.get("k") == good_then_random
    random_then_good = os.urandom(100_000) + text(500_000)
    await store.put_object("r", chunks(random_then_good))
    assert await stored_encoding(store, "r") is None
    assert await store.get("r") == random_then_good


async def test_ranges_read_the_plain_bytes(layer: Compress) -> None:
    data = text(300_000)
    await layer.put_object("r", chunks(data, 7777))
    for rng, want in [
        (ByteRange(0, 1), data[:1]),
        (ByteRange(150_000, 150_010), data[150_000:150_010]),
        (ByteRange(200_000), data[200_000:]),  # past the compressed size: still served
        (ByteRange(299_999, 10**9), data[299_999:]),
        (SuffixRange(5000), data[-5000:]),
    ]:
        async with await layer.open("r", range=rng) as dl:
            got = await dl.read()
        assert got == want == data[dl.start : dl.end]
        assert dl.range_requested and dl.info.size == len(data)
    with pytest.raises(InvalidRangeError) as exc:
        await layer.open("r", range=ByteRange(len(data)))
    assert exc.value.size == len(data)


async def test_open_encoded_hands_out_the_stored_bytes() -> None:
    store = Compress(MemoryBackend(), metrics=False)
    data = text(100_000)
    await store.put_object("e", data)
    dl, encoding = await store.open_encoded("e", accept=("gzip", "br"))
    assert encoding == "gzip" and gzip.decompress(await dl.read()) == data
    dl, encoding = await store.open_encoded("e", accept=())
    assert encoding is None and await dl.read() == data
    zs = Compress(MemoryBackend(), encoding="zstd", metrics=False)
    await zs.put_object("z", data)
    dl, encoding = await zs.open_encoded("z", accept=("zstd",))
    assert encoding == "zstd" and zstandard.ZstdDecompressor().decompress(await dl.read()) == data


@pytest.mark.parametrize("size", [400_000, 4_000])  # streamed inflate; small zstd bodies in one call
@pytest.mark.parametrize("damage", ["flip", "truncate", "append", "wrong-size", "smaller-size"])
async def test_corrupted_body_raises_integrity_error(layer: Compress, damage: str, size: int) -> None:
    data = text(size)
    await layer.put_object("c", data)
    raw = await layer.inner.get("c")
    meta = dict((await layer.inner.head("c")).metadata)
    if damage == "flip":
        raw = raw[:200] + bytes([raw[200] ^ 0xFF]) + raw[201:]
    elif damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "append":
        raw += b"garbage"
    elif damage == "wrong-size":
        meta[META_PLAIN_SIZE] = str(len(data) + 1)
    else:
        meta[META_PLAIN_SIZE] = str(len(data) - 1)
    await layer.inner.put_object("c", raw, metadata=meta)
    with pytest.raises(IntegrityError):
        await layer.get("c")


async def test_small_zstd_bodies_read_whole_and_in_ranges() -> None:
    store = Compress(MemoryBackend(), encoding="zstd", metrics=False)
    data = text(4096)
    await store.put_object("s", data)
    assert (await store.inner.head("s")).size < len(data)  # stored compressed
    assert await store.get("s") == data
    async with await store.open("s", range=ByteRange(100, 200)) as dl:
        assert await dl.read() == data[100:200]
    for _ in range(3):  # the reused context carries nothing from one body to the next
        assert await store.get("s") == data


@pytest.mark.parametrize("threads", [0, 2])
async def test_zstd_streams_on_one_or_more_threads(threads: int) -> None:
    """zstd's own multithreading writes the same format: one frame that any zstd reader inflates."""
    store = Compress(MemoryBackend(), encoding="zstd", threads=threads, metrics=False)
    assert store.threads == threads
    data = text(24 << 20)
    await store.put_object("z", chunks(data, 1 << 20))
    stored = await store.inner.get("z")
    assert len(stored) < len(data) // 2
    assert zstandard.ZstdDecompressor().decompressobj().decompress(stored) == data
    assert await store.get("z") == data


async def test_zstd_threads_must_not_be_negative() -> None:
    with pytest.raises(ConfigurationError):
        Compress(MemoryBackend(), encoding="zstd", threads=-1)


async def test_small_zstd_bodies_share_a_compressor_per_level() -> None:
    """Small bodies are compressed on a reused compressor: each one is still its own whole frame."""
    fast = Compress(MemoryBackend(), encoding="zstd", level=1, metrics=False)
    strong = Compress(MemoryBackend(), encoding="zstd", level=19, metrics=False)
    data = text(8192)
    for store in (fast, strong, fast):
        await store.put_object("s", data)
        body = await store.inner.get("s")
        assert zstandard.ZstdDecompressor().decompress(body) == data
    assert len(await strong.inner.get("s")) <= len(await fast.inner.get("s"))


async def test_streamed_64_mib_at_bounded_memory(tmp_path: Path) -> None:
    store = Compress(LocalBackend(base_path=str(tmp_path), fsync=False), level=1, metrics=False)
    block = text(1 << 20)
    count = 64

    sent, got = hashlib.sha256(), hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for i in range(count):
            chunk = b"%08d" % i + block[8:]
            sent.update(chunk)
            yield chunk

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        info = await store.put_object("big.log", body())
        put_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        seen = 0
        async with await store.open("big.log") as dl:
            async for chunk in dl:
                got.update(chunk)
                seen += len(chunk)
        get_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.size == seen == count << 20 and got.digest() == sent.digest()
    assert isinstance(info, CompressedObjectInfo) and info.stored_size is not None and info.stored_size < seen // 2
    assert put_peak < 12 << 20 and get_peak < 12 << 20, (put_peak, get_peak)


async def test_metadata_updates_keep_the_encoding() -> None:
    store = Compress(MemoryBackend(), metrics=False)
    data = text(50_000)
    await store.put_object("m", data, metadata={"a": "1"})
    info = await store.replace_metadata("m", {"b": "2"})
    assert dict(info.metadata) == {"b": "2"} and info.size == len(data)
    assert await store.get("m") == data
    await store.copy("m", "n")
    assert await store.get("n") == data


async def test_reserved_metadata_and_urls() -> None:
    store = Compress(MemoryBackend(), metrics=False)
    with pytest.raises(InvalidMetadataError):
        await store.put_object("x", b"1", metadata={META_ENCODING: "gzip"})
    assert not await store.exists("x")
    await store.put_object("t", text(10_000))
    with pytest.raises(UnsupportedError):
        await store.sign_url("t")
    assert await store.put("u", text(10_000)) == "u"
    await store.put_object("p", PNG + text(10_000))
    assert await store.sign_url("p") == await store.inner.sign_url("p")  # stored as is: the store's own URL
    with pytest.raises(ConfigurationError):
        Compress(MemoryBackend(), encoding="br")  # type: ignore[arg-type]


async def test_metrics_count_bytes_saved() -> None:
    registry = CollectorRegistry()
    store = Compress(MemoryBackend(), metrics=registry)
    data = text(100_000)
    info = await store.put_object("a", data)
    await store.put_object("b", os.urandom(10_000))
    assert isinstance(info, CompressedObjectInfo) and info.stored_size is not None
    labels = {"backend": store.name, "encoding": "gzip"}
    assert registry.get_sample_value("unistore_compress_saved_bytes_total", labels) == len(data) - info.stored_size
    outcome = {"backend": store.name, "outcome": "not_worth"}
    assert registry.get_sample_value("unistore_compress_objects_total", outcome) == 1


class _OverwriteAfterRangedOpen(Layer):
    """Writes a new version right after the first ranged open: a concurrent writer, on cue."""

    def __init__(self, inner: MemoryBackend, new: bytes) -> None:
        super().__init__(inner)
        self.new: bytes | None = new

    async def open(self, key: str, **options: Any) -> Download:
        dl = await self.inner.open(key, **options)
        if options.get("range") is not None and self.new is not None:
            new, self.new = self.new, None
            await Compress(self.inner, metrics=False).put_object(key, new)
        return dl


async def test_range_read_of_an_object_overwritten_meanwhile_reads_the_new_version() -> None:
    old, new = text(100_000, seed=1), text(120_000, seed=2)
    store = Compress(_OverwriteAfterRangedOpen(MemoryBackend(), new), metrics=False)
    await store.put_object("o", old)
    async with await store.open("o", range=ByteRange(1000, 2000)) as dl:
        assert await dl.read() == new[1000:2000]
    assert dl.info.size == len(new)


async def test_above_encrypt() -> None:
    store = Compress(Encrypt(MemoryBackend(), LocalKeyring({"k": os.urandom(32)})), encoding="zstd", metrics=False)
    data = text(300_000)
    await store.put_object("secret.txt", chunks(data), metadata={"a": "b"})
    info = await store.head("secret.txt")
    assert isinstance(info, CompressedObjectInfo) and info.size == len(data) and dict(info.metadata) == {"a": "b"}
    assert await store.get("secret.txt") == data
    async with await store.open("secret.txt", range=ByteRange(250_000, 250_100)) as dl:
        assert await dl.read() == data[250_000:250_100]


@pytest.mark.parametrize(
    "encoding",
    [
        "gzip",
        "zstd",
    ],
)
async def test_a_decompression_bomb_is_read_in_bounded_pieces(encoding: str) -> None:
    """A body written below the layer that inflates 1000:1 still streams in small pieces."""
    plain = 64 << 20
    bomb = gzip.compress(bytes(plain), 9) if encoding == "gzip" else zstandard.ZstdCompressor().compress(bytes(plain))
    assert len(bomb) < plain // 1000
    store = Compress(MemoryBackend(), metrics=False)
    await store.inner.put_object("bomb", bomb, metadata={META_ENCODING: encoding, META_PLAIN_SIZE: str(plain)})
    largest = total = 0
    tracemalloc.start()
    try:
        async with await store.open("bomb") as dl:
            async for chunk in dl:
                largest, total = max(largest, len(chunk)), total + len(chunk)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == plain and largest <= 1 << 20
    assert peak < 8 << 20, f"reading held {peak / (1 << 20):.0f} MiB at once"
