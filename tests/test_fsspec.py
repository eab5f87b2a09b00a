"""UnistoreFileSystem behaviour: ranges, files, errors, sync and async use, protocols, and
pandas round trips over S3 (SeaweedFS) and an Encrypt+Cache stack."""

from __future__ import annotations

import os
import random
import tomllib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import fsspec
import httpx
import pytest
from fsspec.asyn import sync
from fsspec.callbacks import Callback

from unistore import Download, LocalBackend, MemoryBackend
from unistore.encryption import Encrypt, LocalKeyring
from unistore.fsspec import PROTOCOLS, UnistoreFileSystem, register_store, unregister_store
from unistore.layers import Cache
from unistore.testing._s3servers import S3Server

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fs() -> UnistoreFileSystem:
    return UnistoreFileSystem(MemoryBackend())


@pytest.fixture
def s3fs(seaweed: S3Server) -> Iterator[UnistoreFileSystem]:
    fs = UnistoreFileSystem(seaweed.backend(part_size=5 * MiB))
    yield fs
    sync(fs.loop, fs.backend.aclose)


@pytest.fixture
def pfx() -> str:
    return f"fsspec-{uuid.uuid4().hex[:8]}/"


def test_ranges(fs: UnistoreFileSystem) -> None:
    fs.pipe_file("r.bin", bytes(range(100)))
    fs.pipe_file("empty", b"")
    assert fs.cat_file("r.bin", 10, 13) == bytes([10, 11, 12])
    assert fs.cat_file("r.bin", 95) == bytes(range(95, 100))
    assert fs.cat_file("r.bin", -3) == bytes([97, 98, 99])
    assert fs.cat_file("r.bin", 2, -95) == bytes([2, 3, 4])
    assert fs.cat_file("r.bin", 90, 1000) == bytes(range(90, 100))
    assert fs.cat_file("r.bin", 100) == b""  # past the end reads nothing, like a local file
    assert fs.cat_file("r.bin", 5, 5) == b""
    assert fs.cat_file("empty") == b""
    with pytest.raises(FileNotFoundError):
        fs.cat_file("missing", 5, 5)


def test_cat_ranges_concurrent(s3fs: UnistoreFileSystem, pfx: str) -> None:
    data = os.urandom(MiB)
    s3fs.pipe_file(pfx + "big", data)
    starts = [i * 4096 for i in range(0, 200, 7)]
    got = s3fs.cat_ranges([pfx + "big"] * len(starts), starts, [s + 100 for s in starts])
    assert got == [data[s : s + 100] for s in starts]
    out = s3fs.cat_ranges([pfx + "big", pfx + "nope"], [0, 0], [4, 4], on_error="return")
    assert out[0] == data[:4] and isinstance(out[1], FileNotFoundError)


def test_open_write_streams_multipart_and_reads_with_readahead(s3fs: UnistoreFileSystem, pfx: str) -> None:
    block = os.urandom(MiB)
    with s3fs.open(pfx + "large.bin", "wb", block_size=5 * MiB) as f:
        for _ in range(13):
            f.write(block)
        assert not s3fs.exists(pfx + "large.bin")  # nothing visible before close
    assert s3fs.size(pfx + "large.bin") == 13 * MiB
    assert "-" in s3fs.info(pfx + "large.bin")["etag"]  # a multipart upload
    with s3fs.open(pfx + "large.bin", "rb", block_size=MiB) as f:
        f.seek(7 * MiB + 5)
        assert f.read(10) == block[5:15]
        assert f.read(MiB) == block[15:] + block[:15]


def test_write_memory_stays_bounded(tmp_path: Path) -> None:
    import tracemalloc

    fs = UnistoreFileSystem(LocalBackend(base_path=str(tmp_path)))
    block = os.urandom(MiB)
    tracemalloc.start()
    try:
        with fs.open("bounded.bin", "wb", block_size=2 * MiB) as f:
            for _ in range(32):
                f.write(block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fs.size("bounded.bin") == 32 * MiB
    assert peak < 12 * MiB, peak


def test_an_exception_in_the_with_block_stores_nothing(fs: UnistoreFileSystem) -> None:
    fs.pipe_file("keep", b"old")

    def write_then_fail(size: int) -> None:
        with fs.open("keep", "wb", block_size=5 * MiB) as f:
            f.write(b"x" * size)
            raise RuntimeError("boom")

    for size in (10, 12 * MiB):  # a single put and a streamed upload
        with pytest.raises(RuntimeError):
            write_then_fail(size)
        assert fs.cat_file("keep") == b"old"


def test_errors_map_to_builtins(fs: UnistoreFileSystem) -> None:
    fs.pipe_file("d/f", b"1")
    with pytest.raises(FileNotFoundError):
        fs.cat_file("nope")
    with pytest.raises(FileNotFoundError):
        fs.info("nope")
    with pytest.raises(FileNotFoundError):
        fs.ls("nope")
    with pytest.raises(FileNotFoundError):
        fs.open("nope")
    with pytest.raises(FileExistsError):
        fs.open("d/f", "xb")
    with pytest.raises(FileExistsError):
        fs.pipe_file("d/f", b"2", mode="create")
    with pytest.raises(FileExistsError):
        fs.mkdir("d/f")
    with pytest.raises(FileExistsError):
        fs.makedirs("d")
    fs.makedirs("d", exist_ok=True)
    with pytest.raises(IsADirectoryError):
        fs.modified("d")
    with pytest.raises(NotImplementedError):
        fs.open("d/f", "ab")
    with pytest.raises(IsADirectoryError):
        fs.open("d")
    assert fs.cat_file("d/f") == b"1"


def test_folders_are_implicit(fs: UnistoreFileSystem) -> None:
    fs.mkdir("empty")
    assert not fs.exists("empty")
    fs.pipe({"a/b/c": b"1", "a/d": b"22", "a.txt": b"3"})
    assert fs.ls("a", detail=False) == ["a/b", "a/d"]
    assert sorted(fs.ls("", detail=False)) == ["a", "a.txt"]
    assert fs.ls("a/d", detail=False) == ["a/d"]
    assert fs.info("a") == {"name": "a", "size": 0, "type": "directory"}
    assert fs.find("a") == ["a/b/c", "a/d"]
    assert sorted(fs.glob("a/*")) == ["a/b", "a/d"]
    assert [w[0] for w in fs.walk("")] == ["", "a", "a/b"]
    fs.rm("a", recursive=True)
    assert fs.find("") == ["a.txt"]


def test_put_and_get_stream_with_progress(tmp_path: Path, s3fs: UnistoreFileSystem, pfx: str) -> None:
    src, dst = tmp_path / "src.bin", tmp_path / "dst.bin"
    src.write_bytes(os.urandom(3 * MiB + 7))

    class Progress(Callback):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.updates = 0

        def call(self, *args: Any, **kwargs: Any) -> None:
            self.updates += 1

    up, down = Progress(), Progress()
    s3fs.put_file(str(src), pfx + "p.bin", callback=up)
    s3fs.get_file(pfx + "p.bin", str(dst), callback=down)
    assert dst.read_bytes() == src.read_bytes()
    assert up.size == down.size == 3 * MiB + 7 and up.value == down.value == up.size
    assert up.updates >= 4


def test_server_side_copy_checksum_ukey_modified(s3fs: UnistoreFileSystem, pfx: str) -> None:
    s3fs.pipe_file(pfx + "a", b"one")
    s3fs.cp_file(pfx + "a", pfx + "b")
    assert s3fs.cat_file(pfx + "b") == b"one"
    assert s3fs.ukey(pfx + "a") == s3fs.ukey(pfx + "b") == s3fs.info(pfx + "a")["etag"]
    before = s3fs.checksum(pfx + "a")
    s3fs.pipe_file(pfx + "a", b"two")
    assert s3fs.checksum(pfx + "a") != before
    assert s3fs.modified(pfx + "a") == s3fs.info(pfx + "a")["LastModified"]


def test_refused_credentials_are_a_permission_error(seaweed: S3Server, pfx: str) -> None:
    from unistore.backends.s3 import S3Backend

    backend = S3Backend(
        bucket="unistore-tests",
        endpoint=seaweed.endpoint,
        access_key=seaweed.access_key,
        secret_key="wrong-secret-0000",
    )
    fs = UnistoreFileSystem(backend)
    try:
        with pytest.raises(PermissionError):
            fs.pipe_file(pfx + "denied", b"x")
        with pytest.raises(PermissionError):
            fs.cat_file(pfx + "denied")
    finally:
        sync(fs.loop, backend.aclose)


def test_sign_gives_a_working_url(s3fs: UnistoreFileSystem, pfx: str) -> None:
    s3fs.pipe_file(pfx + "s.txt", b"signed")
    url = s3fs.sign(pfx + "s.txt", expiration=60)
    assert httpx.get(url).content == b"signed"


async def test_async_use() -> None:
    fs = UnistoreFileSystem(MemoryBackend(), asynchronous=True)
    await fs._pipe_file("x/y", b"hello")
    assert await fs._cat_file("x/y", 1, 3) == b"el"
    assert await fs._ls("x", detail=False) == ["x/y"]
    assert await fs._exists("x") and not await fs._exists("z")
    assert await fs._cat_ranges(["x/y", "x/y"], [0, 3], [1, 5]) == [b"h", b"lo"]


def test_constructors_and_protocols(tmp_path: Path) -> None:
    local = UnistoreFileSystem(f"file://{tmp_path}")
    local.pipe_file("k", b"v")
    assert (tmp_path / "k").read_bytes() == b"v"
    for name in PROTOCOLS:
        fsspec.register_implementation(name, UnistoreFileSystem, clobber=True)
    mem = MemoryBackend()
    register_store("mystack", mem)
    try:
        with fsspec.open("unistore://mystack/dir/file.txt", "wb") as f:
            f.write(b"via url")
        fs, path = fsspec.core.url_to_fs("unistore://mystack/dir/file.txt")
        assert fs.backend is mem and path == "dir/file.txt"
        assert fs.unstrip_protocol(path) == "unistore://mystack/dir/file.txt"
        with fsspec.open("unistore://mystack/dir/file.txt") as r:
            assert r.read() == b"via url"
    finally:
        unregister_store("mystack")
    fs, path = fsspec.core.url_to_fs("unistore+s3://bucket/a/b.csv", endpoint="http://127.0.0.1:1")
    assert path == "a/b.csv" and fs.unstrip_protocol(path) == "unistore+s3://bucket/a/b.csv"


def test_instances_are_shared_per_url_never_per_backend_object(tmp_path: Path) -> None:
    assert UnistoreFileSystem(f"file://{tmp_path}") is UnistoreFileSystem(f"file://{tmp_path}")
    one, two = MemoryBackend(), MemoryBackend()  # equal reprs, different stores
    assert UnistoreFileSystem(one).backend is one and UnistoreFileSystem(two).backend is two
    register_store("swap", one)
    try:
        assert fsspec.core.url_to_fs("unistore://swap/k")[0].backend is one
        register_store("swap", two)  # a re-registered name reaches the new store
        assert fsspec.core.url_to_fs("unistore://swap/k")[0].backend is two
    finally:
        unregister_store("swap")


def test_named_store_from_the_stores_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "stores.toml"
    conf.write_text(f'[stores.docs]\nurl = "file://{tmp_path / "docs"}"\n')
    monkeypatch.setenv("UNISTORE_CONFIG", str(conf))
    fs = UnistoreFileSystem(store="docs")
    fs.pipe_file("a.txt", b"named")
    assert (tmp_path / "docs" / "a.txt").read_bytes() == b"named"


def test_entry_points_declare_every_protocol() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = meta["project"]["entry-points"]["fsspec.specs"]
    assert specs == dict.fromkeys(PROTOCOLS, "unistore.fsspec:UnistoreFileSystem")
    assert "fsspec" in meta["project"]["optional-dependencies"]


# --- pandas ------------------------------------------------------------------------------


def _frame() -> Any:
    pd = pytest.importorskip("pandas")
    return pd.DataFrame({"id": range(1000), "name": [f"n{i}" for i in range(1000)], "x": [i / 3 for i in range(1000)]})


def test_pandas_csv_and_parquet_over_s3_urls(seaweed: S3Server, pfx: str) -> None:
    import pandas as pd

    fsspec.register_implementation("unistore+s3", UnistoreFileSystem, clobber=True)
    opts = {"endpoint": seaweed.endpoint, "access_key": seaweed.access_key, "secret_key": seaweed.secret_key}
    df = _frame()
    base = f"unistore+s3://unistore-tests/{pfx}"
    df.to_csv(base + "t.csv", index=False, storage_options=opts)
    pd.testing.assert_frame_equal(pd.read_csv(base + "t.csv", storage_options=opts), df)
    df.to_parquet(base + "t.parquet", engine="pyarrow", storage_options=opts)
    back = pd.read_parquet(base + "t.parquet", engine="pyarrow", storage_options=opts, columns=["id", "x"])
    pd.testing.assert_frame_equal(back, df[["id", "x"]])


def test_pandas_through_an_encrypt_and_cache_stack(seaweed: S3Server, pfx: str) -> None:
    import pandas as pd

    raw = seaweed.backend(prefix=pfx)
    stack = Encrypt(Cache(raw), LocalKeyring({"k1": os.urandom(32)}))
    fsspec.register_implementation("unistore", UnistoreFileSystem, clobber=True)
    register_store("secure", stack)
    try:
        df = _frame()
        df.to_csv("unistore://secure/t.csv", index=False)
        df.to_parquet("unistore://secure/t.parquet", engine="pyarrow")
        pd.testing.assert_frame_equal(pd.read_csv("unistore://secure/t.csv"), df)
        pd.testing.assert_frame_equal(pd.read_parquet("unistore://secure/t.parquet", engine="pyarrow"), df)
        plain = UnistoreFileSystem(raw)
        assert b"PAR1" not in plain.cat_file("t.parquet")[:64]  # stored encrypted
    finally:
        unregister_store("secure")
        sync(UnistoreFileSystem(raw).loop, raw.aclose)


async def test_open_async_reads_ranges_and_streams_writes(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB)
    fs = UnistoreFileSystem(backend, asynchronous=True)
    block = os.urandom(MiB)
    try:
        async with await fs.open_async(pfx + "a.bin", "wb", block_size=5 * MiB) as f:
            for _ in range(11):
                await f.write(block)
        assert (await fs._info(pfx + "a.bin"))["size"] == 11 * MiB
        async with await fs.open_async(pfx + "a.bin") as f:
            f.seek(6 * MiB + 3)
            assert await f.read(5) == block[3:8]

        async def write_then_fail() -> None:
            async with await fs.open_async(pfx + "a.bin", "wb", block_size=5 * MiB) as f:
                await f.write(b"x" * (6 * MiB))
                raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            await write_then_fail()
        assert (await fs._info(pfx + "a.bin"))["size"] == 11 * MiB
        with pytest.raises(FileNotFoundError):
            await fs.open_async(pfx + "missing")
    finally:
        await backend.aclose()


@pytest.mark.parametrize("cache", ["simplecache", "blockcache"])
def test_fsspec_caches_chain_over_unistore_urls(cache: str, tmp_path: Path) -> None:
    register_store("chained", MemoryBackend())
    try:
        with fsspec.open("unistore://chained/d/k.bin", "wb") as w:
            w.write(b"0123456789" * 1000)
        opts = {cache: {"cache_storage": str(tmp_path / "cache")}}
        with fsspec.open(f"{cache}::unistore://chained/d/k.bin", "rb", **opts) as f:
            f.seek(5000)
            assert f.read(10) == b"0123456789"
        assert any((tmp_path / "cache").iterdir())  # the chained cache kept a copy
    finally:
        unregister_store("chained")


def test_partitioned_pyarrow_dataset_written_and_read_back(seaweed: S3Server, pfx: str) -> None:
    import pyarrow as pa
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    backend = seaweed.backend(prefix=pfx)
    fs = UnistoreFileSystem(backend)
    try:
        table = pa.table({"year": [2024, 2024, 2025, 2026] * 50, "v": list(range(200))})
        pafs = PyFileSystem(FSSpecHandler(fs))
        ds.write_dataset(table, "sales", format="parquet", filesystem=pafs, partitioning=["year"])
        assert sorted(fs.ls("sales", detail=False)) == ["sales/2024", "sales/2025", "sales/2026"]
        back = ds.dataset(
            "sales", format="parquet", filesystem=pafs, partitioning=ds.partitioning(pa.schema([("year", pa.int64())]))
        )
        got = back.to_table(filter=ds.field("year") == 2024).sort_by("v")
        assert got.column("v").to_pylist() == [v for v in range(200) if v % 4 in (0, 1)]
    finally:
        sync(fs.loop, backend.aclose)


def test_find_from_one_flat_listing_matches_fsspecs_walk(fs: UnistoreFileSystem) -> None:
    from fsspec.asyn import AsyncFileSystem

    fs.pipe({"t/a/b/c.txt": b"1", "t/a/d.txt": b"2", "t/e.txt": b"3", "t.txt": b"4", "u/f": b"5"})
    for path in ("", "t", "t/a", "t/e.txt"):
        for withdirs in (False, True):
            walked = sync(fs.loop, AsyncFileSystem._find, fs, path, withdirs=withdirs)
            assert fs.find(path, withdirs=withdirs) == walked, (path, withdirs)
    assert fs.find("t", detail=True)["t/a/d.txt"]["size"] == 1
    assert fs.find("missing") == []


class _CountingMemory(MemoryBackend):
    """A memory store that records the span of every read."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[tuple[str, Any]] = []

    async def open(self, key: str, **kwargs: Any) -> Any:
        self.reads.append((key, kwargs.get("range")))
        return await super().open(key, **kwargs)


def test_cat_ranges_shares_requests_between_near_ranges() -> None:
    store = _CountingMemory()
    fs = UnistoreFileSystem(store)
    data = os.urandom(16 * MiB)
    fs.pipe_file("a", data)
    fs.pipe_file("b", b"0123456789")
    starts = [0, 100, 50, 2 * MiB, 15 * MiB, 15 * MiB + 10]
    ends = [10, 200, 150, 2 * MiB + 5, 15 * MiB + 20, 16 * MiB + 99]  # overlapping, out of order, past the end
    store.reads.clear()
    got = fs.cat_ranges(["a"] * 6 + ["b", "b"], [*starts, 2, 8], [*ends, 4, 20])
    assert got == [data[s:e] for s, e in zip(starts, ends, strict=True)] + [b"23", b"89"]
    assert len(store.reads) == 4  # a: the three ranges below 200, 2 MiB alone, the two at 15 MiB; b: one
    store.reads.clear()
    assert fs.cat_ranges(["a", "a"], [0, 8 * MiB], [10, 8 * MiB + 10], max_gap=0) == [
        data[:10],
        data[8 * MiB : 8 * MiB + 10],
    ]
    assert len(store.reads) == 2
    assert fs.cat_ranges(["a", "a", "a"], [-5, None, 3], [None, 4, -16 * MiB + 6]) == [data[-5:], data[:4], data[3:6]]
    out = fs.cat_ranges(["a", "nope", "nope"], [0, 0, 5], [4, 4, 9])
    assert out[0] == data[:4] and isinstance(out[1], FileNotFoundError) and isinstance(out[2], FileNotFoundError)
    with pytest.raises(FileNotFoundError):
        fs.cat_ranges(["a", "nope"], [0, 0], [4, 4], on_error="raise")


class _ChunkedMemory(_CountingMemory):
    """A memory store whose downloads stream in small chunks of uneven size."""

    async def open(self, key: str, **kwargs: Any) -> Any:
        whole = await super().open(key, **kwargs)
        data = await whole.read()

        async def chunks() -> AsyncIterator[bytes]:
            at, sizes = 0, [1, 4095, 40_000, 65_536, 7]
            while at < len(data):
                size = sizes[at % len(sizes)]
                yield data[at : at + size]
                at += size

        return Download(whole.info, chunks(), start=whole.start, end=whole.end, range_requested=True)


def test_cat_ranges_cuts_merged_ranges_from_the_stream() -> None:
    store = _ChunkedMemory()
    fs = UnistoreFileSystem(store)
    data = os.urandom(3 * MiB)
    fs.pipe_file("a", data)
    rng = random.Random(5)
    starts = [rng.randrange(0, len(data)) for _ in range(300)] + [0, 10, 10, 3 * MiB - 5, 3 * MiB + 7, 500]
    ends = [s + rng.randrange(0, 70_000) for s in starts[:300]] + [3 * MiB, 20, 10, 3 * MiB + 9, 3 * MiB + 9, 400]
    store.reads.clear()
    got = fs.cat_ranges(["a"] * len(starts), starts, ends)  # overlapping, empty, reversed, past the end
    assert got == [data[s:e] for s, e in zip(starts, ends, strict=True)]
    assert len(store.reads) == 1  # all within 1 MiB of each other, 8 MiB at most: one request


def test_cat_ranges_splits_a_long_extent_into_one_request_per_read() -> None:
    store = _CountingMemory()
    fs = UnistoreFileSystem(store)
    data = os.urandom(64 * MiB)
    fs.pipe_file("a", data)
    starts = list(range(0, 64 * MiB - 1000, 256 * 1024))
    store.reads.clear()
    got = fs.cat_ranges(["a"] * len(starts), starts, [s + 1000 for s in starts])
    assert got == [data[s : s + 1000] for s in starts]
    assert len(store.reads) == 4  # 16 MiB each, read side by side (not eight of 8 MiB)


def test_open_reads_ahead_only_when_reading_on() -> None:
    store = _CountingMemory()
    fs = UnistoreFileSystem(store)
    data = os.urandom(8 * MiB)
    fs.pipe_file("f", data)
    with fs.open("f", block_size=MiB) as f:
        store.reads.clear()
        chunks = [f.read(64 * 1024) for _ in range(32)]  # 2 MiB from the start: a few block reads
        assert b"".join(chunks) == data[: 2 * MiB] and len(store.reads) <= 3
        store.reads.clear()
        f.seek(6 * MiB)
        assert f.read(100_000) == data[6 * MiB : 6 * MiB + 100_000]  # a jump: just the span asked for
        f.seek(3 * MiB)
        assert f.read(3 * MiB) == data[3 * MiB : 6 * MiB]  # a block or more: as asked
        spans = [r for _, r in store.reads]
        assert [(r.start, r.end) for r in spans] == [(6 * MiB, 6 * MiB + 100_000), (3 * MiB, 6 * MiB)]
    with fs.open("f", cache_type="readahead", block_size=MiB) as f:  # fsspec's own on request
        f.seek(5 * MiB)
        assert f.read(10) == data[5 * MiB : 5 * MiB + 10] and f.cache.name == "readahead"


def test_a_large_read_is_fetched_as_pieces_side_by_side() -> None:
    store = _CountingMemory()
    fs = UnistoreFileSystem(store)
    data = os.urandom(40 * MiB)
    fs.pipe_file("a", data)
    store.reads.clear()
    assert fs.cat_file("a", 1, 35 * MiB) == data[1 : 35 * MiB]
    bounds = [(1 + i * 8 * MiB, min(1 + (i + 1) * 8 * MiB, 35 * MiB)) for i in range(5)]
    assert sorted((r.start, r.end) for _, r in store.reads) == bounds
    assert fs.cat_file("a", 30 * MiB, 70 * MiB) == data[30 * MiB :]  # past the end: what there is
    assert fs.cat_file("a", 50 * MiB, 90 * MiB) == b""
    with fs.open("a", block_size=MiB) as f:  # an open file's large read (pyarrow's coalesced reads)
        store.reads.clear()
        f.seek(MiB)
        assert f.read(20 * MiB) == data[MiB : 21 * MiB] and len(store.reads) == 3


class _ReplacedMidway(_CountingMemory):
    """A memory store whose object is replaced just before its second 8 MiB piece is read."""

    new = b""

    async def open(self, key: str, **kwargs: Any) -> Any:
        span = kwargs.get("range")
        if self.new and span is not None and span.start == 8 * MiB:
            new, self.new = self.new, b""
            await self.put_object(key, new)
        return await super().open(key, **kwargs)


def test_pieces_of_two_versions_are_read_again_as_one() -> None:
    store = _ReplacedMidway()
    fs = UnistoreFileSystem(store)
    fs.pipe_file("a", os.urandom(24 * MiB))
    store.new = os.urandom(24 * MiB)
    new = store.new
    assert fs.cat_file("a", 0, 24 * MiB) == new  # never a mix of the two
    assert store.reads[-1][1].end - store.reads[-1][1].start == 24 * MiB


def test_get_file_reads_in_pieces(tmp_path: Path, s3fs: UnistoreFileSystem, pfx: str) -> None:
    from unistore.fsspec import _filesystem

    data = os.urandom(2 * _filesystem._GET_PIECE + 12345)
    s3fs.pipe_file(pfx + "big", data)
    s3fs.pipe_file(pfx + "empty", b"")
    seen: list[int] = []

    class Progress(Callback):  # type: ignore[misc]
        def call(self, *args: Any, **kwargs: Any) -> None:
            seen.append(self.value)

    s3fs.get_file(pfx + "big", str(tmp_path / "big"), callback=Progress())
    assert (tmp_path / "big").read_bytes() == data
    assert seen[-1] == len(data) and len(seen) >= 3
    s3fs.get_file(pfx + "empty", str(tmp_path / "empty"))
    assert (tmp_path / "empty").read_bytes() == b""
    with pytest.raises(FileNotFoundError):
        s3fs.get_file(pfx + "missing", str(tmp_path / "missing"))


def test_put_file_without_progress_uploads_parts_from_the_file(
    tmp_path: Path, s3fs: UnistoreFileSystem, pfx: str
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(12 * MiB + 3))
    s3fs.put_file(str(src), pfx + "up.bin")
    assert "-" in s3fs.info(pfx + "up.bin")["etag"]  # a multipart upload
    assert s3fs.cat_file(pfx + "up.bin") == src.read_bytes()
    with pytest.raises(FileExistsError):
        s3fs.put_file(str(src), pfx + "up.bin", mode="create")
    with pytest.raises(FileNotFoundError):
        s3fs.put_file(str(tmp_path / "missing"), pfx + "never.bin")
    assert not s3fs.exists(pfx + "never.bin")


def test_pieces_and_merged_ranges_through_an_encrypt_and_cache_stack(tmp_path: Path) -> None:
    fs = UnistoreFileSystem(Encrypt(Cache(MemoryBackend()), LocalKeyring({"k1": os.urandom(32)})))
    data = os.urandom(20 * MiB + 5)
    fs.pipe_file("x", data)
    fs.get_file("x", str(tmp_path / "x"))
    assert (tmp_path / "x").read_bytes() == data
    starts = [0, 100, 5 * MiB, 20 * MiB]
    ends = [10, 300, 5 * MiB + 100, 20 * MiB + 99]
    assert fs.cat_ranges(["x"] * 4, starts, ends) == [data[s:e] for s, e in zip(starts, ends, strict=True)]
