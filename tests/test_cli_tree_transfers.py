"""How tree transfers move bytes: large downloads as parallel ranged reads written in place
(reassembled exactly, resumed by recorded spans after a kill), small files in one piece, large
uploads streamed part by part from the file. Real stores and CLI processes."""

from __future__ import annotations

import asyncio
import errno
import itertools
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import unistore
from unistore import LocalBackend
from unistore._types import Download
from unistore.cli import _transfer, _tree, app
from unistore.testing import S3Server

KiB, MiB = 1024, 1024 * 1024
SRC = str(Path(unistore.__file__).parents[1])
runner = CliRunner()

# a CLI whose local store serves slowly (so the test can kill it mid-download), with small
# ranges and a low large-file threshold so a few MiB take the ranged path
SLOW_RANGED_CLI = """
import asyncio
from unistore._types import Download
from unistore.backends.local import LocalBackend
from unistore.cli import _transfer, _tree, main

_transfer.CHUNK = 256 * 1024
_transfer.RECORD_EVERY = 0.05
_tree.RESUME_AT = 1024 * 1024
_tree.DOWNLOAD_STREAMS = 2
opened = LocalBackend.open

async def slow_open(self, key, **options):
    dl = await opened(self, key, **options)

    async def slow():
        async for chunk in dl:
            await asyncio.sleep(0.03)
            yield chunk

    return Download(dl.info, slow(), start=dl.start, end=dl.end, range_requested=dl.range_requested, close=dl.aclose)

LocalBackend.open = slow_open
main()
"""


def put(root: Path, key: str, data: bytes) -> str:
    async def go() -> str:
        return (await LocalBackend(base_path=str(root), fsync=False).put_object(key, data)).etag

    return asyncio.run(go())


def record_of(part_json: Path) -> dict[str, Any] | None:
    try:
        return json.loads(part_json.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def test_span_arithmetic() -> None:
    assert _transfer._missing(10, [], 4) == [(0, 4), (4, 8), (8, 10)]
    assert _transfer._missing(10, [(0, 3), (5, 6)], 4) == [(3, 5), (6, 10)]
    assert _transfer._missing(10, [(0, 10)], 4) == []
    assert _transfer._missing(9, [(2, 4)], 100) == [(0, 2), (4, 9)]
    assert _transfer._merge([], (4, 8)) == [(4, 8)]
    assert _transfer._merge([(0, 4), (8, 12)], (4, 8)) == [(0, 12)]  # touching spans join
    assert _transfer._merge([(0, 2), (8, 12)], (4, 6)) == [(0, 2), (4, 6), (8, 12)]


def test_ranged_download_reassembles_exactly_and_reads_each_byte_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    files = {"big.bin": os.urandom(3 * MiB + 12345), "exact.bin": os.urandom(MiB), "s/small.bin": b"abc"}
    for rel, data in files.items():
        put(root, f"t/{rel}", data)
    monkeypatch.setattr(_transfer, "CHUNK", 256 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", 512 * KiB)
    served: list[tuple[str, int, int]] = []
    opened = LocalBackend.open

    async def counted(self: LocalBackend, key: str, **options: Any) -> Download:
        dl = await opened(self, key, **options)
        served.append((key, dl.start, dl.end))
        return dl

    monkeypatch.setattr(LocalBackend, "open", counted)
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(tmp_path / "down"), "-q"])
    assert result.exit_code == 0, result.output
    down = tmp_path / "down"
    for rel, data in files.items():
        assert (down / rel).read_bytes() == data
    assert not [p for p in down.rglob("*") if p.name.endswith((".part", ".part.json", ".part.lock"))]
    big = sorted((a, b) for key, a, b in served if key == "t/big.bin")
    assert len(big) == 13 and big[0] == (0, 256 * KiB)  # 12 whole ranges and the tail
    assert all(b1 == a2 for (_, b1), (a2, _) in itertools.pairwise(big))  # contiguous, no overlap
    assert big[-1][1] == len(files["big.bin"])
    # the object's time, so a sync after it finds nothing to do
    info = asyncio.run(LocalBackend(base_path=str(root)).head("t/big.bin"))
    assert int((down / "big.bin").stat().st_mtime) == int(info.last_modified.timestamp())
    again = runner.invoke(app, ["sync", f"file://{root}#t", str(down)])
    assert again.exit_code == 0 and "copied 0" in again.stderr and "skipped 3 unchanged" in again.stderr


def test_ranged_download_killed_midway_resumes_only_the_missing_spans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    data = os.urandom(4 * MiB + 777)
    put(root, "t/big.bin", data)
    down = tmp_path / "down"
    part, side = down / "big.bin.part", down / "big.bin.part.json"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTORE_", "STORAGE_"))}
    environ["PYTHONPATH"] = SRC
    cmd = [sys.executable, "-c", SLOW_RANGED_CLI, "cp", "-r", f"file://{root}?chunk_size=65536#t", str(down)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environ)
    try:
        deadline = time.monotonic() + 60
        while sum(b - a for a, b in ((record_of(side) or {}).get("done") or [])) < MiB:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the download never got far enough"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    record = record_of(side)
    assert record is not None and record["size"] == len(data) and not (down / "big.bin").exists()
    spans = [tuple(s) for s in record["done"]]
    have = sum(b - a for a, b in spans)
    assert MiB <= have < len(data)
    with open(part, "rb") as f:  # what the record claims is on disk
        for a, b in spans:
            f.seek(a)
            assert f.read(b - a) == data[a:b]

    monkeypatch.setattr(_transfer, "CHUNK", 256 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    read_again = 0
    opened = LocalBackend.open

    async def counted(self: LocalBackend, key: str, **options: Any) -> Download:
        nonlocal read_again
        dl = await opened(self, key, **options)
        read_again += dl.content_length
        return dl

    monkeypatch.setattr(LocalBackend, "open", counted)
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(down)])
    assert result.exit_code == 0, result.output
    assert "resuming t/big.bin at" in result.stderr
    assert read_again == len(data) - have  # only the missing spans were read
    assert (down / "big.bin").read_bytes() == data
    assert not part.exists() and not side.exists()


def test_ranged_download_starts_over_when_the_object_changed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    old, new = os.urandom(2 * MiB), os.urandom(2 * MiB)
    etag = put(root, "t/big.bin", old)
    down = tmp_path / "down"
    down.mkdir()
    # what a killed ranged download of the old version leaves: its second half written
    (down / "big.bin.part").write_bytes(b"\0" * MiB + old[MiB:])
    record = {"key": "t/big.bin", "etag": etag, "size": len(old), "done": [[MiB, 2 * MiB]]}
    (down / "big.bin.part.json").write_text(json.dumps(record))
    put(root, "t/big.bin", new)
    monkeypatch.setattr(_transfer, "CHUNK", 256 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(down)])
    assert result.exit_code == 0, result.output
    assert "t/big.bin changed since the partial download; starting over" in result.stderr
    assert (down / "big.bin").read_bytes() == new  # never the old spans spliced into the new version


def test_get_resumes_from_the_prefix_a_ranged_download_left(tmp_path: Path) -> None:
    """``get`` appends to a prefix; a ranged download's ``.part`` is as long as the object with
    holes, so ``get`` keeps only the recorded spans from the start (here 1 MiB), never the holes."""
    root = tmp_path / "store"
    data = os.urandom(3 * MiB)
    etag = put(root, "big.bin", data)
    dest = tmp_path / "out.bin"
    (tmp_path / "out.bin.part").write_bytes(data[:MiB] + b"\0" * MiB + data[2 * MiB :])
    record = {"key": "big.bin", "etag": etag, "size": len(data), "done": [[0, MiB], [2 * MiB, 3 * MiB]]}
    (tmp_path / "out.bin.part.json").write_text(json.dumps(record))
    result = runner.invoke(app, ["get", "big.bin", str(dest), "-s", f"file://{root}"])
    assert result.exit_code == 0, result.output
    assert "resuming big.bin at 1.0 MiB" in result.stderr
    assert dest.read_bytes() == data


def test_small_files_are_written_whole_with_their_time_and_leave_no_temp_files(tmp_path: Path) -> None:
    root = tmp_path / "store"
    files = {f"d{i % 3}/f{i}.bin": os.urandom(i * 100) for i in range(30)}  # f0 is empty
    for rel, data in files.items():
        put(root, f"t/{rel}", data)
    down = tmp_path / "down"
    (down / "d1").mkdir(parents=True)
    (down / "d1" / "f1.bin.part").write_bytes(b"stale")  # left by an earlier, larger version
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(down), "-q"])
    assert result.exit_code == 0, result.output
    got = {p.relative_to(down).as_posix(): p.read_bytes() for p in down.rglob("*") if p.is_file()}
    assert got == files  # no .unistore.* temp file, no stale .part
    store = LocalBackend(base_path=str(root))
    info = asyncio.run(store.head("t/d2/f5.bin"))
    assert int((down / "d2" / "f5.bin").stat().st_mtime) == int(info.last_modified.timestamp())


def test_small_s3_reads_stop_at_the_small_limit(seaweed: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file the listing showed small is read in one ranged GET that stops past ``SMALL``: an
    object that grew meanwhile is streamed instead of read whole into memory."""
    from unistore.backends.s3 import S3Backend

    monkeypatch.setattr(_tree, "SMALL", 1000)
    prefix = f"cli-small-{uuid.uuid4().hex[:8]}/"

    async def go() -> tuple[bytes | None, bytes | None, bytes | None]:
        s3 = S3Backend(
            bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        try:
            await s3.put_object(prefix + "small", b"s" * 1000)
            await s3.put_object(prefix + "grown", b"g" * 1001)
            small = await _tree._get_small(s3, prefix + "small")
            grown = await _tree._get_small(s3, prefix + "grown")
            with pytest.raises(FileNotFoundError):
                await _tree._get_small(s3, prefix + "missing")
            await s3.put_object(prefix + "empty", b"")
            empty = await _tree._get_small(s3, prefix + "empty")
            return small, grown, empty
        finally:
            await s3.aclose()

    small, grown, empty = asyncio.run(go())
    assert small == b"s" * 1000 and grown is None and empty in (None, b"")


def test_large_uploads_stream_parts_from_the_file(
    seaweed: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part is never read into memory whole: the part upload gets the file's byte range, which
    goes by ``sendfile`` over plain HTTP, and whose fallback stream (TLS) yields 1 MiB slices."""
    from unistore.backends.s3 import _fast
    from unistore.backends.s3 import _multipart as _s3multipart

    data = os.urandom(8 * MiB + 3 * MiB + 5)  # two parts of the default 8 MiB
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "big.bin").write_bytes(data)
    bodies: list[tuple[str, int, int, list[int]]] = []
    real = _s3multipart._put_part

    async def seen(backend: Any, key: str, upload_id: str, number: int, body: Any, *rest: Any) -> Any:
        assert isinstance(body, _fast.FileRange)
        slices = [len(c) async for c in body.chunks()]
        bodies.append((type(body).__name__, body.offset, body.length, slices))
        return await real(backend, key, upload_id, number, body, *rest)

    monkeypatch.setattr(_s3multipart, "_put_part", seen)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    s3 = f"s3://unistore-tests/cli-stream-{uuid.uuid4().hex[:8]}?endpoint={seaweed.endpoint}"
    state = tmp_path / "state"
    result = runner.invoke(app, ["cp", "-r", str(tmp_path / "src"), s3, "-q", "--state-dir", str(state)], env=env)
    assert result.exit_code == 0, result.output
    assert sorted(bodies) == [
        ("FileRange", 0, 8 * MiB, [MiB] * 8),
        ("FileRange", 8 * MiB, 3 * MiB + 5, [MiB, MiB, MiB, 5]),
    ]
    back = runner.invoke(app, ["cp", "-r", s3, str(tmp_path / "back"), "-q"], env=env)
    assert back.exit_code == 0 and (tmp_path / "back" / "big.bin").read_bytes() == data


def test_s3_ranges_are_read_on_threads_resumed_and_checked_against_the_version(
    seaweed: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On S3 each range is a presigned GET on a thread; a rerun reads only what the record lacks,
    and a range of a replaced object is refused (If-Match), never spliced."""
    from unistore.backends.s3 import S3Backend

    prefix = f"cli-ranged-{uuid.uuid4().hex[:8]}"
    data, new = os.urandom(3 * MiB + 99), os.urandom(3 * MiB + 99)

    async def put_s3(body: bytes) -> str:
        s3 = S3Backend(
            bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        try:
            return (await s3.put_object(f"{prefix}/big.bin", body)).etag
        finally:
            await s3.aclose()

    etag = asyncio.run(put_s3(data))
    monkeypatch.setattr(_transfer, "CHUNK", 256 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    spans: list[tuple[int, int]] = []
    real = _transfer._get_range

    def counted(url: str, span: tuple[int, int], *rest: Any) -> None:
        spans.append(span)
        real(url, span, *rest)

    monkeypatch.setattr(_transfer, "_get_range", counted)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    s3 = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    down = tmp_path / "down"
    down.mkdir()
    # a killed run's leftovers: the first MiB and the last range written, and recorded
    (down / "big.bin.part").write_bytes(data[:MiB] + b"\0" * (len(data) - MiB - 99) + data[-99:])
    done = [[0, MiB], [len(data) - 99, len(data)]]
    record = {"key": f"{prefix}/big.bin", "etag": etag, "size": len(data), "done": done}
    (down / "big.bin.part.json").write_text(json.dumps(record))
    result = runner.invoke(app, ["cp", "-r", s3, str(down)], env=env)
    assert result.exit_code == 0, result.output
    assert "resuming" in result.stderr and (down / "big.bin").read_bytes() == data
    assert sorted(spans)[0] == (MiB, MiB + 256 * KiB) and sum(b - a for a, b in spans) == len(data) - MiB - 99

    # the object replaced after the first range was read: the other ranges are refused
    spans.clear()
    swapped = False

    def swap_then_read(url: str, span: tuple[int, int], *rest: Any) -> None:
        nonlocal swapped
        if not swapped:
            swapped = True
            asyncio.run(put_s3(new))
        real(url, span, *rest)

    monkeypatch.setattr(_transfer, "_get_range", swap_then_read)
    again = runner.invoke(app, ["cp", "-r", s3, str(tmp_path / "again")], env=env)
    assert again.exit_code != 0 and "changed during the download" in again.stderr
    assert not (tmp_path / "again" / "big.bin").exists()  # nothing spliced was made visible


@pytest.mark.parametrize("mode", ["spliced", "socket-refused", "file-refused", "no-splice"])
def test_s3_range_bodies_go_socket_to_file_by_splice_or_are_read_and_written(
    seaweed: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """Plain-HTTP range bodies are spliced from the socket into the file; where ``splice`` is
    refused (by the socket or by the file system) or absent, the bytes are read and written
    instead, with the same result."""
    from unistore import S3Backend

    prefix = f"cli-splice-{uuid.uuid4().hex[:8]}"
    data = os.urandom(3 * MiB + 4321)

    async def put_s3() -> None:
        s3 = S3Backend(
            bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        try:
            await s3.put_object(f"{prefix}/big.bin", data)
        finally:
            await s3.aclose()

    asyncio.run(put_s3())
    monkeypatch.setattr(_transfer, "CHUNK", 512 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    monkeypatch.setattr(_transfer, "_splice_works", [mode != "no-splice"])
    real = os.splice
    calls = {"socket": 0, "file": 0}

    def splice(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        side = "file" if offset_dst is not None else "socket"
        calls[side] += 1
        if (mode, side) in (("socket-refused", "socket"), ("file-refused", "file")):
            raise OSError(errno.EINVAL, "refused")
        return real(src, dst, count, offset_src=offset_src, offset_dst=offset_dst)

    monkeypatch.setattr(os, "splice", splice)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    down = tmp_path / "down"
    result = runner.invoke(
        app, ["cp", "-r", f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}", str(down)], env=env
    )
    assert result.exit_code == 0, result.output
    assert (down / "big.bin").read_bytes() == data
    assert [p.name for p in down.iterdir()] == ["big.bin"]
    if mode == "spliced":
        assert calls["socket"] >= 6 and calls["file"] >= calls["socket"]  # every whole range went by splice
        assert _transfer._splice_works == [True]
    elif mode == "no-splice":
        assert calls == {"socket": 0, "file": 0}
    else:
        assert calls[mode.partition("-")[0]] >= 1 and _transfer._splice_works == [False]  # refused once, then read


@pytest.mark.parametrize("refused", [False, True])
def test_each_completed_range_is_handed_to_the_disk_and_the_file_still_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    """Every range written is handed to the disk at once (``POSIX_FADV_DONTNEED`` starts its
    writeback), so the ``fsync`` at the end has little left to write; a system that refuses the
    advice changes nothing."""
    root = tmp_path / "store"
    data = os.urandom(2 * MiB + 99)
    put(root, "t/big.bin", data)
    monkeypatch.setattr(_transfer, "CHUNK", 256 * KiB)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    advised: list[tuple[int, int]] = []
    synced: list[int] = []
    real_fsync = os.fsync

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        advised.append((offset, offset + length))
        if refused:
            raise OSError(errno.ESPIPE, "refused")

    monkeypatch.setattr(os, "posix_fadvise", fadvise)
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(tmp_path / "down"), "-q"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "down" / "big.bin").read_bytes() == data
    assert sorted(advised) == _transfer._missing(len(data), [], 256 * KiB)  # each range, once
    assert synced  # the completed file is still made durable before it is renamed


def test_ranges_in_flight_record_their_written_start_so_large_ranges_resume_mid_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A range records its bytes written so far while it is still being read (every
    ``RECORD_EVERY``, not only when it completes): a run killed inside one large range resumes
    from where that range got to."""
    root = tmp_path / "store"
    data = os.urandom(4 * MiB + 777)
    put(root, "t/big.bin", data)
    down = tmp_path / "down"
    side = down / "big.bin.part.json"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTORE_", "STORAGE_"))}
    environ["PYTHONPATH"] = SRC
    one_range = SLOW_RANGED_CLI.replace("_transfer.CHUNK = 256 * 1024", "_transfer.CHUNK = 4 * 1024 * 1024")
    cmd = [sys.executable, "-c", one_range, "cp", "-r", f"file://{root}?chunk_size=65536#t", str(down)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=environ)
    try:
        deadline = time.monotonic() + 60
        while sum(b - a for a, b in ((record_of(side) or {}).get("done") or [])) < MiB:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the download never got far enough"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    record = record_of(side)
    assert record is not None
    spans = [tuple(s) for s in record["done"]]
    assert any(a == 0 and MiB <= b < 4 * MiB for a, b in spans), spans  # inside the first range
    have = sum(b - a for a, b in spans)
    with open(down / "big.bin.part", "rb") as f:
        for a, b in spans:
            f.seek(a)
            assert f.read(b - a) == data[a:b]
    read_again = 0
    opened = LocalBackend.open

    async def counted(self: LocalBackend, key: str, **options: Any) -> Download:
        nonlocal read_again
        dl = await opened(self, key, **options)
        read_again += dl.content_length
        return dl

    monkeypatch.setattr(LocalBackend, "open", counted)
    monkeypatch.setattr(_tree, "RESUME_AT", MiB)
    result = runner.invoke(app, ["cp", "-r", f"file://{root}#t", str(down)])
    assert result.exit_code == 0, result.output
    assert read_again == len(data) - have and (down / "big.bin").read_bytes() == data


def test_big_files_are_read_in_a_few_large_ranges() -> None:
    assert _transfer._range_size(32 * MiB) == _transfer.CHUNK  # under WIDE_AT: 8 MiB ranges
    assert _transfer._range_size(256 * MiB) == 64 * MiB  # 4 ranges
    assert _transfer._range_size(200 * MiB) == 50 * MiB
    assert _transfer._range_size(10 * 1024 * MiB) == _transfer.MAX_RANGE
