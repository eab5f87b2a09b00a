"""One test per known defect of the reference implementation (issue 2, "Known defects ...
that must not exist here"), plus "Bad input", on every backend the defect applies to."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import os
import time
import tracemalloc
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Response

from unistore import (
    AlreadyExistsError,
    ByteRange,
    IfMatch,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidRangeError,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    PreconditionFailedError,
    QuotaExceededError,
    StorageBackend,
    StorageError,
    add_storage,
    get_storage,
)
from unistore._base import BaseBackend

SECRET = "defects-test-secret-0123456789"
MiB = 1024 * 1024


@pytest.fixture(params=["memory", "local"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseBackend]:
    b: BaseBackend
    if request.param == "memory":
        b = MemoryBackend(url_secret=SECRET, max_size=64 * MiB)
    else:
        b = LocalBackend(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET, max_object_size=64 * MiB)
    yield b
    await b.aclose()


def _outside_files(tmp_path: Path) -> list[str]:
    """Everything in the directory holding the local root, except the root itself."""
    return sorted(p for p in os.listdir(tmp_path) if p != "store")


async def _slow(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)  # let the other writers interleave chunk by chunk


# --- defects ----------------------------------------------------------------------------


async def test_concurrent_writes_to_one_key_never_mix_bodies(backend: BaseBackend) -> None:
    key = "shared/doc.bin"
    bodies = [bytes([65 + i]) * (200_000 + 1000 * i) for i in range(10)]
    await backend.put_object(key, bodies[0], metadata={"w": 0})
    stop = False
    observed: list[int] = []

    async def reader() -> None:
        while not stop:
            async with await backend.open(key) as dl:
                data = await dl.read()
            w = int(dl.info.metadata["w"])
            assert data == bodies[w], "a read saw a mix of bodies"
            observed.append(w)
            await asyncio.sleep(0)

    readers = [asyncio.create_task(reader()) for _ in range(3)]
    try:
        for _ in range(3):
            await asyncio.gather(
                *(backend.put_object(key, _slow(b, 7_777), metadata={"w": i}) for i, b in enumerate(bodies))
            )
    finally:
        stop = True
        await asyncio.gather(*readers)
    data = await backend.get(key)
    assert data in bodies
    assert (await backend.head(key)).metadata["w"] == str(bodies.index(data))
    assert observed


@pytest.mark.parametrize(
    "bad",
    [
        {"obj": object()},
        {"nested": {"x": 1}},
        {"when": datetime.now(UTC)},
        {"raw": b"bytes"},
        {"none": None},
        {"list": [1, 2]},
        {"ok": "fine", "bad": {1, 2}},
        {3: "non-str name"},
    ],
    ids=lambda m: type(list(m.values())[-1]).__name__,
)
async def test_unserializable_metadata_keeps_old_data_and_metadata(backend: BaseBackend, bad: Any) -> None:
    key = "meta/report.pdf"
    await backend.put(key, b"version 1", "application/pdf", {"owner": "alice"})
    before = await backend.head(key)
    started = False

    async def body() -> AsyncIterator[bytes]:
        nonlocal started
        started = True
        yield b"version 2"

    with pytest.raises(InvalidMetadataError):
        await backend.put(key, b"version 2", "text/plain", bad)
    with pytest.raises(InvalidMetadataError):
        await backend.put_object(key, body(), metadata=bad)
    assert not started, "the body was read before the metadata was validated"
    assert await backend.get(key) == b"version 1"
    after = await backend.head(key)
    assert after == before  # same etag, content type and metadata
    assert (await backend.get_metadata(key))["owner"] == "alice"


async def test_crash_leftover_temp_files_are_never_listed(tmp_path: Path) -> None:
    """(local) A writer killed mid-write leaves ``.unistore.tmp.*`` files; see also
    test_local.py::test_killed_writer_leaves_no_visible_trace for a real kill."""
    backend = LocalBackend(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET)
    await backend.put("a/keep.txt", b"keep")
    for rel in (".unistore.tmp.0011223344556677", "a/.unistore.tmp.8899aabbccddeeff", "a/.unistore.lost.meta"):
        (backend.root / rel).write_bytes(b"half a write")
    assert await backend.list_keys() == ["a/keep.txt"]
    for prefix in (".", ".u", "a/.", "a/.unistore"):
        assert await backend.list_keys(prefix) == []
    assert [i.key async for i in backend.iter_objects()] == ["a/keep.txt"]
    assert await backend.get("a/keep.txt") == b"keep"
    await backend.aclose()


@pytest.mark.parametrize("prefix", ["../", "..\\", "../store/", "%2e%2e/", "%252e%252e/", "a/../../", "/", "/etc/"])
async def test_list_prefix_cannot_list_outside_the_root(
    backend: BaseBackend, tmp_path: Path, prefix: str
) -> None:
    (tmp_path / "outside-secret.txt").write_bytes(b"secret")
    await backend.put("inside.txt", b"x")
    with pytest.raises(InvalidKeyError):
        await backend.list_keys(prefix=prefix)
    with pytest.raises(InvalidKeyError):
        [k async for k in backend.iter_objects(prefix)]
    # a partial ".." segment is a legitimate prefix ("..dots" keys): it matches only stored keys
    assert await backend.list_keys("..") == []


@pytest.mark.parametrize("key", [".", "..", "./", "./x", "x/.", "%2e", "%2e%2e", ".%2e", "%252e"])
async def test_put_dot_never_writes_beside_the_root(backend: BaseBackend, tmp_path: Path, key: str) -> None:
    before = _outside_files(tmp_path)
    with pytest.raises(InvalidKeyError):
        await backend.put(key, b"escaped?", "text/plain")
    with pytest.raises(InvalidKeyError):
        await backend.put_object(key, _slow(b"escaped?", 3))
    assert _outside_files(tmp_path) == before
    assert await backend.list_keys() == []
    if isinstance(backend, LocalBackend):
        assert os.listdir(backend.root) == [".unistore"]


async def test_user_key_cannot_overwrite_another_objects_metadata(backend: BaseBackend) -> None:
    await backend.put("docs/report.pdf", b"%PDF", "application/pdf", {"owner": "alice", "pages": 3})
    before = await backend.head("docs/report.pdf")
    lookalikes = [
        "docs/report.pdf.meta",
        "docs/report.pdf.meta.json",
        "docs/.report.pdf.meta",
        "docs/.report.pdf.meta.json",
        "docs/report.pdf.json",
        "docs/report.pdf.tmp",
        "docs/_meta/report.pdf",
        "docs/.meta/report.pdf.json",
        "docs/unistore.report.pdf.meta",
        ".meta/docs/report.pdf",
    ]
    for k in lookalikes:
        await backend.put(k, b'{"owner": "mallory", "ct": "text/html", "meta": {"owner": "mallory"}}', "text/html")
    for reserved in ("docs/.unistore.report.pdf.meta", ".unistore/docs/report.pdf", "docs/.unistore.tmp.x"):
        with pytest.raises(InvalidKeyError):
            await backend.put(reserved, b'{"meta": {"owner": "mallory"}}')
    assert await backend.head("docs/report.pdf") == before
    assert (await backend.get_metadata("docs/report.pdf"))["owner"] == "alice"
    assert await backend.get("docs/report.pdf") == b"%PDF"
    assert await backend.list_keys("docs/report.pdf") == sorted(
        ["docs/report.pdf"] + [k for k in lookalikes if k.startswith("docs/report.pdf")]
    )


async def test_concurrent_deletes_never_raise(backend: BaseBackend) -> None:
    keys = [f"del/{i % 5}/{i}.txt" for i in range(60)]
    for k in keys:
        await backend.put_object(k, b"x")
    # many deleters per key, racing each other, the parent-directory cleanup, and new writes
    # into the same directories
    deletes = [backend.delete(k) for k in keys for _ in range(4)]
    writes = [backend.put_object(f"del/{i}/new.txt", b"new") for i in range(5)]
    results = await asyncio.gather(*deletes, *writes)
    flags = results[: len(deletes)]
    assert all(isinstance(r, bool) for r in flags)
    for j in range(len(keys)):
        assert flags[4 * j : 4 * j + 4].count(True) == 1, keys[j]
    assert await backend.list_keys("del/") == [f"del/{i}/new.txt" for i in range(5)]
    assert await asyncio.gather(*(backend.delete(k) for k in keys)) == [False] * len(keys)


def _sign_in_fresh_process(root: str) -> str:
    backend = LocalBackend(base_path=root, fsync=False, base_url="http://files.example/files")
    return backend.signer.sign("a/b.txt", expires_in=3600, now=1_700_000_000)


async def test_signing_secret_is_not_per_process(tmp_path: Path) -> None:
    """(local) No STORAGE_URL_SECRET: every process on the same base path signs alike."""
    root = str(tmp_path / "store")
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as ex:
        first = ex.submit(_sign_in_fresh_process, root).result(timeout=60)
        urls = [f.result(timeout=60) for f in [ex.submit(_sign_in_fresh_process, root) for _ in range(2)]]
    assert urls == [first, first]
    assert _sign_in_fresh_process(root) == first  # and this process (a restart) too


async def test_serving_streams_instead_of_buffering_whole_files(backend: BaseBackend) -> None:
    size = 48 * MiB
    block = os.urandom(MiB)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(size // MiB):
            yield block

    await backend.put_object("big/video.mp4", source())
    expected = hashlib.sha256(block * (size // MiB)).digest()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        h = hashlib.sha256()
        total = 0
        async with await backend.open("big/video.mp4") as dl:
            async for chunk in dl:
                h.update(chunk)
                total += len(chunk)
        full_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        async with await backend.open("big/video.mp4", range=ByteRange(10 * MiB + 3, 40 * MiB)) as dl:
            ranged = sum([len(c) async for c in dl])
        range_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert total == size and h.digest() == expected
    assert ranged == 30 * MiB - 3
    assert full_peak < 8 * MiB, f"serving peaked at {full_peak / MiB:.1f} MiB"
    assert range_peak < 8 * MiB, f"serving a range peaked at {range_peak / MiB:.1f} MiB"


async def test_spec_download_example_answers_404_not_500(backend: BaseBackend) -> None:
    # the spec's download route, verbatim: it catches the *builtin* FileNotFoundError
    router = APIRouter()

    @router.get("/files/{filename}")
    async def download_file(filename: str, storage: StorageBackend = Depends(get_storage)) -> Response:
        key = f"uploads/{filename}"
        try:
            content = await storage.get(key)
            return Response(content=content, media_type="application/octet-stream")
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail="File not found") from None

    app = FastAPI()
    add_storage(app, backend)
    app.include_router(router)
    await backend.put("uploads/there.txt", b"here")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
        assert (await client.get("/files/missing.txt")).status_code == 404
        r = await client.get("/files/there.txt")
        assert r.status_code == 200 and r.content == b"here"
    for call in (backend.get("uploads/missing.txt"), backend.get_metadata("nope"), backend.get_url("nope")):
        with pytest.raises(FileNotFoundError) as exc:
            await call
        assert isinstance(exc.value, NotFoundError) and isinstance(exc.value, StorageError)


def _touch_all(directory: Path, names: list[str]) -> None:
    directory.mkdir()
    for name in names:
        with open(directory / name, "wb"):
            pass


async def test_list_keys_does_not_block_the_event_loop(backend: BaseBackend) -> None:
    n = 20_000
    if isinstance(backend, LocalBackend):
        _touch_all(backend.root / "many", [f"{i:05d}" for i in range(n)])
    else:
        for i in range(n):
            await backend.put_object(f"many/{i:05d}", b"")
    loop = asyncio.get_running_loop()

    async def list_and_measure() -> float:
        max_gap = 0.0
        done = asyncio.Event()

        async def ticker() -> None:
            nonlocal max_gap
            last = loop.time()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = loop.time()
                max_gap, last = max(max_gap, now - last), now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        try:
            keys = await backend.list_keys("many/", limit=n)
        finally:
            done.set()
            await task
        assert keys == [f"many/{i:05d}" for i in range(n)]
        return max_gap

    # a busy machine may stall one run; a listing that blocks the loop stalls every run
    gaps = [await list_and_measure() for _ in range(3)]
    assert min(gaps) < 0.05, f"the event loop was blocked for {min(gaps) * 1000:.0f} ms or more each time"


async def test_memory_put_does_not_slow_down_as_the_store_grows() -> None:
    empty = MemoryBackend(url_secret=SECRET)
    big = MemoryBackend(url_secret=SECRET)
    for i in range(200_000):
        await big.put_object(f"fill/{i:06d}", b"x")
    await big.list_keys("fill/", limit=10)  # a listing builds the sorted index: puts must stay cheap after it

    async def per_put(backend: MemoryBackend, tag: str) -> float:
        start = time.perf_counter()
        for i in range(400):
            await backend.put(f"{tag}/{i}", b"x", "text/plain")
        return (time.perf_counter() - start) / 400

    # interleaved batches, best of each: robust against a busy machine
    small = large = float("inf")
    for r in range(20):
        small = min(small, await per_put(empty, f"t{r}"))
        large = min(large, await per_put(big, f"t{r}"))
    assert large / small < 2.0, f"put took {large * 1e6:.1f} µs with 200k objects vs {small * 1e6:.1f} µs empty"
    assert len(await big.list_keys("t", limit=20_000)) == 8_000


# --- bad input ------------------------------------------------------------------------


async def test_bad_input_gives_typed_4xx_errors_and_leaves_data_untouched(backend: BaseBackend) -> None:
    key = "keep/data.bin"
    await backend.put(key, b"0123456789", "application/octet-stream", {"v": "1"})
    before = await backend.head(key)
    stale = "0" * 16

    async def too_big() -> AsyncIterator[bytes]:
        for _ in range(80):
            yield b"z" * MiB

    cases: list[tuple[Any, type[StorageError]]] = [
        (backend.put("../data.bin", b"evil"), InvalidKeyError),
        (backend.put_object(key, b"new", mode=IfMatch(stale)), PreconditionFailedError),
        (backend.put_object(key, b"new", mode="create"), AlreadyExistsError),
        (backend.open(key, range=ByteRange(10)), InvalidRangeError),
        (backend.open(key, if_match=stale), PreconditionFailedError),
        (backend.remove(key, if_match=stale), PreconditionFailedError),
        (backend.put_object(key, too_big()), QuotaExceededError),
        (backend.put_object(key, b"q" * (65 * MiB)), QuotaExceededError),
    ]
    for call, err in cases:
        with pytest.raises(err) as exc:
            await call
        assert 400 <= exc.value.status < 500, (err, exc.value.status)
        assert await backend.head(key) == before, err
        assert await backend.get(key) == b"0123456789"
    assert await backend.list_keys() == [key]
    if isinstance(backend, LocalBackend):
        assert not [p for p in backend.root.rglob(".unistore.tmp.*")]
