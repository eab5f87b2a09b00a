"""unistore.migrate between two S3 stores of one server: objects are copied inside the server."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from unistore import migrate
from unistore._keys import reserved_keys
from unistore._migrate import CHECKPOINT_PREFIX
from unistore.backends.s3 import S3Backend, UploadSession
from unistore.backends.s3 import _multipart as mp
from unistore.testing._s3servers import S3Server

MiB = 1024 * 1024


class _Calls:
    """Counts calls of the server-side copy requests (they still run)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.whole = 0
        self.parts = 0
        whole, part = mp.copy_whole, mp.copy_part

        async def counted_whole(*a: Any, **kw: Any) -> Any:
            self.whole += 1
            return await whole(*a, **kw)

        async def counted_part(*a: Any, **kw: Any) -> Any:
            self.parts += 1
            return await part(*a, **kw)

        monkeypatch.setattr(mp, "copy_whole", counted_whole)
        monkeypatch.setattr(mp, "copy_part", counted_part)


@pytest.fixture
async def buckets(seaweed: S3Server) -> AsyncIterator[tuple[S3Backend, S3Backend]]:
    """A source bucket and a destination bucket (with a prefix) of the same SeaweedFS."""
    tag = uuid.uuid4().hex[:8]
    src = seaweed.backend(seaweed.create_bucket(f"msrc-{tag}"))
    dst = seaweed.backend(seaweed.create_bucket(f"mdst-{tag}"), prefix="copy/", multipart_copy_threshold=12 * MiB)
    yield src, dst
    await src.aclose()
    await dst.aclose()


async def test_small_objects_are_copied_inside_the_server_with_everything(
    buckets: tuple[S3Backend, S3Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = buckets
    bodies = {f"d/{i}.bin": os.urandom(1000 * i) for i in range(5)}
    for i, (k, data) in enumerate(bodies.items()):
        await src.put_object(
            k,
            data,
            content_type="text/x-test" if i % 2 else None,
            metadata={"n": str(i)},
            cache_control="max-age=60" if i % 2 else None,
            content_disposition="attachment" if i == 3 else None,
        )
    calls = _Calls(monkeypatch)
    report = await migrate(src, dst)
    assert (report.copied, report.ok, calls.whole, calls.parts) == (5, True, 5, 0)
    for k, data in bodies.items():
        a, b = await src.head(k), await dst.head(k)
        assert await dst.get(k) == data
        assert (b.etag, b.content_type, b.cache_control, b.content_disposition, b.metadata) == (
            a.etag,
            a.content_type,
            a.cache_control,
            a.content_disposition,
            a.metadata,
        )
    again = await migrate(src, dst, verify_only=True)
    assert (again.skipped, again.ok) == (5, True)


async def test_schema_stamp_replaces_the_whole_metadata_set(buckets: tuple[S3Backend, S3Backend]) -> None:
    src, dst = buckets
    await src.put_object("a", b"x" * 100, content_type="text/plain", metadata={"keep": "1"}, cache_control="no-cache")
    await src.put_object("b", b"y", metadata={"schema_version": "7"})
    report = await migrate(src, dst, schema_version=3)
    assert (report.copied, report.ok) == (2, True)
    a = await dst.head("a")
    assert (a.metadata, a.content_type, a.cache_control) == (
        {"keep": "1", "schema_version": "3"},
        "text/plain",
        "no-cache",
    )
    assert (await dst.head("b")).metadata == {"schema_version": "7"}


async def test_never_overwrites_an_object_the_destination_has(buckets: tuple[S3Backend, S3Backend]) -> None:
    src, dst = buckets
    await src.put_object("k", b"old")
    await dst.put_object("k", b"newer")
    report = await migrate(src, dst)
    assert [d.key for d in report.differing] == ["k"]
    assert await dst.get("k") == b"newer"


async def test_large_objects_are_copied_part_by_part_inside_the_server(
    buckets: tuple[S3Backend, S3Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = buckets
    big = os.urandom(20 * MiB + 17)  # uploaded in 8 MiB parts: a composite etag
    await src.put_object("big", big, content_type="video/mp4", metadata={"m": "1"}, cache_control="max-age=9")
    calls = _Calls(monkeypatch)
    report = await migrate(src, dst, schema_version=2)
    assert (report.copied, report.bytes_copied, report.ok) == (1, len(big), True)
    assert (calls.whole, calls.parts) == (0, 3)  # the source's own 8 MiB layout
    info = await dst.head("big")
    assert (info.size, info.content_type, info.cache_control, info.metadata) == (
        len(big),
        "video/mp4",
        "max-age=9",
        {"m": "1", "schema_version": "2"},
    )
    assert await dst.get("big") == big
    assert await dst.uploads.list() == []  # no session left behind
    with reserved_keys():
        assert [k async for k in dst.iter_keys(CHECKPOINT_PREFIX)] == []


async def test_a_differing_endpoint_streams_through_the_client(
    seaweed: S3Server, buckets: tuple[S3Backend, S3Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = buckets
    other = S3Backend(
        bucket=seaweed.create_bucket(f"mfar-{uuid.uuid4().hex[:8]}"),
        endpoint=seaweed.endpoint.replace("127.0.0.1", "localhost"),
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    )
    await src.put_object("s", b"small", metadata={"a": "b"})
    await src.put_object("l", os.urandom(9 * MiB))
    calls = _Calls(monkeypatch)
    try:
        report = await migrate(src, other)
        assert (report.copied, report.ok, calls.whole, calls.parts) == (2, True, 0, 0)
        assert await other.get("l") == await src.get("l")
        assert (await other.head("s")).metadata == {"a": "b"}
    finally:
        await other.aclose()


async def test_a_destination_not_trusting_copy_conditions_streams(
    seaweed: S3Server, buckets: tuple[S3Backend, S3Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    src, _ = buckets
    dst = seaweed.backend(seaweed.create_bucket(f"mnoc-{uuid.uuid4().hex[:8]}"), copy_if_match=False)
    await src.put_object("s", b"small")
    calls = _Calls(monkeypatch)
    try:
        report = await migrate(src, dst)
        assert (report.copied, report.ok, calls.whole) == (1, True, 0)
        assert await dst.get("s") == b"small"
    finally:
        await dst.aclose()


_KILLED = """
import asyncio, json, sys
from unistore import migrate
from unistore.backends.s3 import S3Backend

async def main():
    src, dst = S3Backend(**json.loads(sys.argv[1])), S3Backend(**json.loads(sys.argv[2]))
    report = await migrate(src, dst, bytes_per_second=float(sys.argv[3]))
    print(report.ok)

asyncio.run(main())
"""


def test_a_killed_large_server_side_copy_resumes_with_the_parts_it_lacks(
    seaweed: S3Server, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    tag = uuid.uuid4().hex[:8]
    common = {
        "endpoint": seaweed.endpoint,
        "region": seaweed.region,
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
    }
    src_cfg = {**common, "bucket": seaweed.create_bucket(f"ksrc-{tag}"), "part_size": 5 * MiB}
    dst_cfg = {**common, "bucket": seaweed.create_bucket(f"kdst-{tag}"), "multipart_copy_threshold": 8 * MiB}
    big = os.urandom(60 * MiB)  # 12 parts of 5 MiB

    async def fill() -> None:
        src = S3Backend(**src_cfg)
        await src.put_object("big", big, metadata={"z": "1"})
        await src.aclose()

    asyncio.run(fill())
    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    # 10 MiB/s: two parts a second after the first second's burst
    proc = subprocess.Popen(
        [sys.executable, str(script), json.dumps(src_cfg), json.dumps(dst_cfg), str(10 * MiB)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )

    async def stored() -> int:
        dst = S3Backend(**dst_cfg)
        try:
            sessions = await dst.uploads.list()
            if not sessions:
                return 0
            session = UploadSession("big", sessions[0][0].upload_id, "none")
            return len(await dst.uploads.list_parts(session))
        finally:
            await dst.aclose()

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and asyncio.run(stored()) < 5:
        time.sleep(0.1)
    time.sleep(1.2)  # past the once-a-second save of the record
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = asyncio.run(stored())
    assert 5 <= first < 12

    calls = _Calls(monkeypatch)

    async def rerun() -> None:
        src, dst = S3Backend(**src_cfg), S3Backend(**dst_cfg)
        try:
            report = await migrate(src, dst)
            assert (report.copied, report.ok) == (1, True)
            assert 0 < calls.parts <= 12 - first + 3  # the record lags the server by about a second
            assert await dst.get("big") == big
            assert (await dst.head("big")).metadata == {"z": "1"}
            assert await dst.uploads.list() == []
        finally:
            await src.aclose()
            await dst.aclose()

    asyncio.run(rerun())


async def test_a_rerun_judges_copies_with_the_source_etag_without_reading_them(
    buckets: tuple[S3Backend, S3Backend], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unistore import _migrate

    src, dst = buckets
    big = os.urandom(20 * MiB + 5)  # copied part by part: its etag is the server's own, not the source's
    await src.put_object("big", big)
    await src.put_object("mid", os.urandom(9 * MiB), metadata={"m": "1"})  # one CopyObject: the etag goes along
    await src.put_object("page", b"<p>hi</p>", content_type="text/html")
    await dst.put_object("page", b"<p>hi</p>", content_type="text/plain")  # same bytes, same MD5 etag
    report = await migrate(src, dst)
    assert (report.copied, sorted(d.key for d in report.differing)) == (2, ["page"])
    read: list[str] = []
    digest = _migrate._digest

    async def counted(store: Any, key: str) -> Any:
        read.append(key)
        return await digest(store, key)

    monkeypatch.setattr(_migrate, "_digest", counted)
    again = await migrate(src, dst)
    assert (again.copied, again.skipped) == (0, 2)
    assert [(d.key, d.reason) for d in again.differing] == [("page", "content type 'text/plain' != 'text/html'")]
    # only the part-by-part copy (another etag) is read, on both sides
    assert sorted(read) == ["big", "big"]
    # verify-only reads both sides of everything
    read.clear()
    checked = await migrate(src, dst, verify_only=True)
    assert (checked.skipped, len(checked.differing)) == (2, 1)
    assert sorted(read) == ["big", "big", "mid", "mid", "page", "page"]
