"""unistore.migrate: copies with everything, verified, create-only, resumable, between real stores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from unistore import LocalBackend, MemoryBackend, ObjectInfo, StorageBackend, migrate
from unistore._keys import reserved_keys
from unistore._migrate import CHECKPOINT_PREFIX, checkpoint_key
from unistore.layers import Layer
from unistore.testing._s3servers import S3Server

KEYS = ["a.txt", "dir/b.json", "dir/sub/ünï cödé.bin", "empty", "z/last.png"]


async def _fill(store: StorageBackend, prefix: str = "") -> dict[str, bytes]:
    out = {}
    for i, k in enumerate(KEYS):
        data = b"" if k == "empty" else f"{k}:{i}".encode() * (i + 1)
        await store.put_object(prefix + k, data, metadata={"n": str(i)}, cache_control="max-age=600" if i % 2 else None)
        out[prefix + k] = data
    return out


async def _same(src: StorageBackend, dst: StorageBackend, keys: dict[str, bytes]) -> None:
    for k, data in keys.items():
        a, b = await src.head(k), await dst.head(k)
        assert await dst.get(k) == data
        assert (b.content_type, b.cache_control, dict(b.metadata)) == (
            a.content_type,
            a.cache_control,
            dict(a.metadata),
        )


class _CountWrites(Layer):
    """Counts the writes that succeeded, checkpoint objects apart."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.writes: list[str] = []

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:  # type: ignore[override]
        info = await super().put_object(key, body, **kw)
        if not key.startswith(CHECKPOINT_PREFIX):
            self.writes.append(key)
        return info


async def test_memory_to_local(tmp_path: Path) -> None:
    src, dst = MemoryBackend(), LocalBackend(base_path=str(tmp_path), fsync=False)
    keys = await _fill(src)
    report = await migrate(src, dst)
    assert (report.copied, report.skipped, report.ok) == (5, 0, True)
    assert report.bytes_copied == sum(len(v) for v in keys.values())
    await _same(src, dst, keys)
    with reserved_keys():
        assert [k async for k in dst.iter_keys(CHECKPOINT_PREFIX)] == []  # a clean run leaves no checkpoint
    again = await migrate(src, dst)
    assert (again.copied, again.skipped) == (0, 5)


@pytest.fixture
async def s3(seaweed: S3Server) -> AsyncIterator[StorageBackend]:
    store = seaweed.backend(prefix=f"mig-{uuid.uuid4().hex[:8]}/")
    yield store
    await store.aclose()


async def test_local_to_s3_and_s3_to_memory(local: LocalBackend, s3: StorageBackend) -> None:
    keys = await _fill(local, "p/")
    await local.put_object("other/x", b"not under the prefix")
    report = await migrate(local, s3, "p/")
    assert (report.copied, report.ok) == (5, True)
    await _same(local, s3, keys)
    assert not await s3.exists("other/x")
    mem = MemoryBackend()
    back = await migrate(s3, mem, "p/")
    assert (back.copied, back.ok) == (5, True)
    await _same(local, mem, keys)


async def test_never_overwrites_a_newer_destination_object() -> None:
    src, dst = MemoryBackend(), MemoryBackend()
    keys = await _fill(src)
    await dst.put_object("a.txt", b"newer, written by the application")
    report = await migrate(src, dst)
    assert report.copied == 4
    assert [d.key for d in report.differing] == ["a.txt"]
    assert "content differs" in report.differing[0].reason
    assert await dst.get("a.txt") == b"newer, written by the application"
    assert not report.ok
    assert set(keys) - {"a.txt"} <= {k async for k in dst.iter_keys()}


async def test_verify_only_finds_missing_and_different_and_writes_nothing() -> None:
    src, dst = MemoryBackend(), _CountWrites(MemoryBackend())
    await _fill(src)
    await migrate(src, dst)
    dst.writes.clear()
    await dst.inner.put_object("dir/b.json", b"planted", metadata={"n": "1"}, cache_control="max-age=600")
    await dst.inner.remove("empty")
    await dst.inner.replace_metadata("z/last.png", {"n": "other"})
    report = await migrate(src, dst, verify_only=True)
    assert report.missing == ["empty"]
    assert {d.key: d.reason for d in report.differing} == {
        "dir/b.json": "content differs (SHA-256)",
        "z/last.png": "metadata differs",
    }
    assert (report.skipped, report.copied) == (2, 0)
    assert dst.writes == [] and not await dst.exists("empty")
    assert "missing: empty" in report.text()
    assert report.as_dict()["missing"] == ["empty"]


async def test_dry_run_writes_nothing() -> None:
    src, dst = MemoryBackend(), _CountWrites(MemoryBackend())
    await _fill(src)
    report = await migrate(src, dst, dry_run=True)
    assert (report.copied, report.dry_run) == (5, True)
    assert dst.writes == [] and [k async for k in dst.inner.iter_keys()] == []
    assert report.text().startswith("would copy 5")


async def test_schema_upgrade_runs_once_per_object() -> None:
    src, dst = MemoryBackend(), MemoryBackend()
    await src.put_object("v1-a", b"old format a")
    await src.put_object("v1-b", b"old format b", metadata={"schema_version": "1"})
    await src.put_object("v2-c", b"NEW FORMAT C", metadata={"schema_version": "2"})
    calls: list[tuple[str, int]] = []

    def upgrade(data: bytes, info: ObjectInfo, version: int) -> bytes:
        calls.append((info.key, version))
        return data.upper()

    report = await migrate(src, dst, schema_version=2, upgrade=upgrade)
    assert (report.copied, report.upgraded) == (3, 2)
    assert sorted(calls) == [("v1-a", 1), ("v1-b", 1)]
    assert await dst.get("v1-a") == b"OLD FORMAT A"
    assert {k: (await dst.head(k)).metadata["schema_version"] for k in ("v1-a", "v1-b", "v2-c")} == dict.fromkeys(
        ("v1-a", "v1-b", "v2-c"), "2"
    )
    calls.clear()
    again = await migrate(src, dst, schema_version=2, upgrade=upgrade)
    assert (again.copied, again.skipped, again.ok) == (0, 3, True)


async def test_stamp_without_upgrade_and_metrics() -> None:
    src, dst = MemoryBackend(), MemoryBackend()
    await _fill(src)
    registry = CollectorRegistry()
    report = await migrate(src, dst, schema_version=1, metrics=registry)
    assert report.ok and (await dst.head("a.txt")).metadata == {"n": "0", "schema_version": "1"}
    assert registry.get_sample_value("unistore_migrate_objects_total", {"outcome": "copied"}) == 5
    assert registry.get_sample_value("unistore_migrate_bytes_total") == report.bytes_copied


async def test_rate_limits_pace_the_run() -> None:
    src, dst = MemoryBackend(), MemoryBackend()
    for i in range(30):
        await src.put_object(f"k{i:02}", b"x" * 100)
    started = time.monotonic()
    await migrate(src, dst, ops_per_second=20)  # a bucket of 20, then 20/s: the last 10 wait ~0.5 s
    assert time.monotonic() - started >= 0.4
    started = time.monotonic()
    await migrate(src, MemoryBackend(), bytes_per_second=1000)  # 3000 bytes at 1000/s after a 1000-byte burst
    assert time.monotonic() - started >= 1.5


_WORKER = """
import asyncio, os, sys
from unistore import LocalBackend, migrate
from unistore.layers import Layer

class Log(Layer):
    async def put_object(self, key, body, **kw):
        info = await super().put_object(key, body, **kw)
        if not key.startswith(".unistore/"):
            with open(sys.argv[3], "a") as f:
                f.write(key + "\\n")
        return info

async def main():
    src = LocalBackend(base_path=sys.argv[1], fsync=False)
    dst = Log(LocalBackend(base_path=sys.argv[2], fsync=False))
    report = await migrate(src, dst, concurrency=4, ops_per_second=float(sys.argv[4]), checkpoint_every=5)
    print(report.resumed_after, report.copied, report.skipped, report.ok)

asyncio.run(main())
"""


def test_sigkill_then_rerun_copies_nothing_twice(tmp_path: Path) -> None:
    import asyncio

    src_dir, dst_dir, log = tmp_path / "src", tmp_path / "dst", tmp_path / "writes.log"
    count = 200

    async def fill() -> None:
        src = LocalBackend(base_path=str(src_dir), fsync=False)
        for i in range(count):
            await src.put_object(f"obj/{i:04}", f"body {i}".encode() * 50, metadata={"i": str(i)})

    asyncio.run(fill())
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    args = [sys.executable, str(script), str(src_dir), str(dst_dir), str(log)]
    proc = subprocess.Popen([*args, "100"], env=env, stdout=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 80):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = log.read_text().splitlines()
    assert 0 < len(first) < count
    done = subprocess.run([*args, "100000"], env=env, capture_output=True, text=True, check=True)
    resumed_after, copied, skipped, ok = done.stdout.split()
    assert resumed_after.startswith("obj/") and ok == "True"
    assert int(copied) + int(skipped) < count  # the rerun started from the checkpoint
    writes = log.read_text().splitlines()
    assert len(writes) == len(set(writes))  # nothing written twice
    assert set(writes) <= {f"obj/{i:04}" for i in range(count)}
    assert len(writes) >= count - 4  # a kill between a write and its log line loses at most one per worker

    async def check() -> None:
        src = LocalBackend(base_path=str(src_dir), fsync=False)
        dst = LocalBackend(base_path=str(dst_dir), fsync=False)
        assert [k async for k in dst.iter_keys("obj/")] == [f"obj/{i:04}" for i in range(count)]
        for i in (0, count // 2, count - 1):
            assert await dst.get(f"obj/{i:04}") == await src.get(f"obj/{i:04}")
        with reserved_keys():
            assert not await dst.exists(checkpoint_key("", "default"))

    asyncio.run(check())


class _Corrupting(Layer):
    """Stores a flipped last byte for the keys in ``bad`` (a disk or proxy corrupting data)."""

    def __init__(self, inner: StorageBackend, bad: set[str]) -> None:
        super().__init__(inner)
        self.bad = bad

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:  # type: ignore[override]
        if key in self.bad:
            data = b"".join([c async for c in body])
            body = data[:-1] + bytes([data[-1] ^ 1])
        return await super().put_object(key, body, **kw)


async def test_a_corrupted_copy_is_removed_reported_and_retried_on_rerun() -> None:
    src, inner = MemoryBackend(), MemoryBackend()
    await _fill(src)
    dst = _Corrupting(inner, {"dir/b.json"})
    report = await migrate(src, dst, checkpoint_every=1)
    assert [(f.key, "SHA-256" in f.reason) for f in report.failed] == [("dir/b.json", True)]
    assert not await inner.exists("dir/b.json")  # the bad copy is not left behind
    with reserved_keys():
        assert await inner.exists(checkpoint_key("", "default"))  # kept, up to the failed key
    dst.bad.clear()
    again = await migrate(src, dst)
    assert again.resumed_after == "a.txt"  # the last key before the failure
    assert (again.copied, again.ok) == (1, True)
    assert await inner.get("dir/b.json") == await src.get("dir/b.json")
