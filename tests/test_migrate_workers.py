"""unistore.migrate_worker: many workers share a migration through leases in the destination store."""

from __future__ import annotations

import asyncio
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

from unistore import LocalBackend, MemoryBackend, ObjectInfo, StorageBackend, migrate_worker
from unistore._keys import reserved_keys
from unistore._migrate import CHECKPOINT_PREFIX
from unistore._migrate_workers import job_prefix
from unistore.layers import Layer
from unistore.testing._s3servers import S3Server


class _CountWrites(Layer):
    """Records every successful write of a migrated object (not the migration's own state)."""

    def __init__(self, inner: StorageBackend, writes: list[str]) -> None:
        super().__init__(inner)
        self.writes = writes

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:  # type: ignore[override]
        info = await super().put_object(key, body, **kw)
        if not key.startswith(CHECKPOINT_PREFIX):
            self.writes.append(key)
        return info


async def _source(count: int) -> MemoryBackend:
    src = MemoryBackend()
    for i in range(count):
        await src.put_object(f"k/{i:04}", f"body {i}".encode(), metadata={"i": str(i)})
    return src


async def test_three_workers_share_the_ranges_and_copy_each_object_once() -> None:
    src, dst, writes = await _source(250), MemoryBackend(), []
    reports = await asyncio.gather(
        *(
            migrate_worker(src, _CountWrites(dst, writes), "k/", worker=f"w{n}", range_size=20, lease_seconds=5)
            for n in range(3)
        )
    )
    assert sorted(writes) == [f"k/{i:04}" for i in range(250)]  # each exactly once
    ranges = sorted(r for rep in reports for r in rep.ranges)
    assert ranges == list(range(13))  # 250 keys by 20: 12 boundaries, 13 ranges, each done by one worker
    assert sum(rep.copied for rep in reports) == 250 and all(rep.ok for rep in reports)
    assert await dst.get("k/0123") == b"body 123" and (await dst.head("k/0123")).metadata == {"i": "123"}
    with reserved_keys():
        plan = json.loads(await dst.get(f"{job_prefix('k/', 'default')}plan.json"))
    assert (plan["keys"], len(plan["boundaries"])) == (250, 12)
    again = await migrate_worker(src, dst, "k/", range_size=20)  # the job is finished: nothing left to take
    assert (again.copied, again.skipped, again.ranges) == (0, 0, [])


async def test_an_expired_lease_is_taken_over_from_the_range_checkpoint() -> None:
    src, dst, writes = await _source(40), MemoryBackend(), []
    base = job_prefix("", "default")
    with reserved_keys():  # a worker died holding range 1 after copying k/0020..k/0024 and checkpointing k/0022
        doc = {"worker": "dead", "expires": time.time() + 1.0, "state": "held", "failed": 0}
        await dst.put_object(f"{base}range-000001.lease", json.dumps(doc).encode(), mode="create")
        await dst.put_object(f"{base}range-000001.checkpoint.json", json.dumps({"after": "k/0022"}).encode())
    for i in range(20, 25):
        await dst.put_object(f"k/{i:04}", f"body {i}".encode(), metadata={"i": str(i)})
    started = time.monotonic()
    report = await migrate_worker(src, _CountWrites(dst, writes), worker="alive", range_size=20, lease_seconds=0.4)
    assert time.monotonic() - started >= 0.5  # it waited for the dead worker's lease to run out
    assert sorted(report.ranges) == [0, 1, 2]  # the last range is open-ended (empty here)
    assert (report.copied, report.skipped, report.resumed) == (35, 2, True)  # 23, 24 found there; 20-22 not looked at
    assert sorted(writes) == sorted({f"k/{i:04}" for i in range(40)} - {f"k/{i:04}" for i in range(20, 25)})
    with reserved_keys():
        lease = json.loads(await dst.get(f"{base}range-000001.lease"))
    assert (lease["worker"], lease["state"]) == ("alive", "done")


async def test_a_lost_lease_stops_the_worker_on_that_range() -> None:
    src, dst = await _source(30), MemoryBackend()
    base = job_prefix("", "default")

    class Slow(Layer):
        async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:  # type: ignore[override]
            if not key.startswith(CHECKPOINT_PREFIX):
                await asyncio.sleep(0.05)
            return await super().put_object(key, body, **kw)

    async def thief() -> None:  # another worker overwrites the lease (as if it had expired)
        key = f"{base}range-000000.lease"
        while True:
            await asyncio.sleep(0.05)
            with reserved_keys():
                if await dst.exists(key):
                    doc = {"worker": "thief", "expires": time.time() + 60, "state": "held", "failed": 0}
                    await dst.put_object(key, json.dumps(doc).encode())
                    return

    steal = asyncio.create_task(thief())
    report = await migrate_worker(src, Slow(dst), worker="slow", range_size=100, lease_seconds=0.3, concurrency=1)
    await steal
    assert report.ranges_lost == [0] and report.ranges == []
    assert 0 < report.copied < 30  # it stopped copying once the renewal found the lease taken
    assert "lost to other workers: 1" in report.text()


_WORKER = """
import asyncio, json, sys
from unistore import LocalBackend, migrate_worker
from unistore.backends.s3 import S3Backend
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
    dst = Log(S3Backend(**json.loads(sys.argv[2])))
    report = await migrate_worker(
        src, dst, worker=sys.argv[4], lease_seconds=2.0, range_size=int(sys.argv[5]), concurrency=8, checkpoint_every=10
    )
    print(json.dumps(report.as_dict()))
    await dst.aclose()

asyncio.run(main())
"""

COUNT = 2000


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("src")

    async def fill() -> None:
        src = LocalBackend(base_path=str(root), fsync=False)
        for i in range(COUNT):
            await src.put_object(f"obj/{i:05}", f"body {i} ".encode() * 20, metadata={"i": str(i)})

    asyncio.run(fill())
    return root


def _target(server: S3Server) -> dict[str, Any]:
    return {
        "bucket": "unistore-tests",
        "endpoint": server.endpoint,
        "region": server.region,
        "access_key": server.access_key,
        "secret_key": server.secret_key,
        "prefix": f"workers-{uuid.uuid4().hex[:8]}/",
    }


def _start(
    tmp_path: Path, source: Path, target: dict[str, Any], n: int, range_size: int
) -> list[subprocess.Popen[str]]:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    return [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                str(source),
                json.dumps(target),
                str(tmp_path / f"w{w}.log"),
                f"w{w}",
                str(range_size),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(n)
    ]


def _writes(tmp_path: Path) -> list[str]:
    return [k for log in sorted(tmp_path.glob("w*.log")) for k in log.read_text().splitlines()]


def _check_destination(target: dict[str, Any], source: Path) -> None:
    from unistore.backends.s3 import S3Backend

    async def go() -> None:
        dst, src = S3Backend(**target), LocalBackend(base_path=str(source), fsync=False)
        assert [k async for k in dst.iter_keys("obj/")] == [f"obj/{i:05}" for i in range(COUNT)]
        for i in (0, 777, COUNT - 1):
            assert await dst.get(f"obj/{i:05}") == await src.get(f"obj/{i:05}")
        await dst.aclose()

    asyncio.run(go())


def _run(tmp_path: Path, source: Path, target: dict[str, Any], n: int) -> tuple[float, list[dict[str, Any]]]:
    started = time.monotonic()
    procs = _start(tmp_path, source, target, n, 100)
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return time.monotonic() - started, [json.loads(o[0]) for o in outs]


@pytest.mark.xdist_group("migrate-workers")
def test_four_workers_two_killed_copy_every_object_exactly_once(
    tmp_path: Path, source: Path, seaweed: S3Server
) -> None:
    target = _target(seaweed)
    started = time.monotonic()
    procs = _start(tmp_path, source, target, 4, 100)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_writes(tmp_path)) < COUNT // 4:
        time.sleep(0.02)
    for victim in procs[:2]:
        victim.send_signal(signal.SIGKILL)
    killed = [len(_writes(tmp_path))]
    outs = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - started
    assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGKILL, 0, 0], [o[1][-2000:] for o in outs[2:]]
    reports = [json.loads(o[0]) for o in outs[2:]]
    writes = _writes(tmp_path)
    assert len(writes) == len(set(writes))  # no object written twice
    # a kill between a write and its log line hides at most the writes in flight (8 per killed worker)
    assert len(writes) >= COUNT - 16
    assert killed[0] < COUNT  # the kills did land mid-run
    survivors = [r for rep in reports for r in rep["ranges"]]
    assert len(survivors) == len(set(survivors)) and set(survivors) <= set(range(COUNT // 100 + 1))
    assert all(rep["ok"] for rep in reports)
    _check_destination(target, source)
    print(f"\n4 workers, 2 killed: {elapsed:.2f} s")


@pytest.mark.xdist_group("migrate-workers")
def test_four_workers_against_one(tmp_path: Path, source: Path, seaweed: S3Server) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "four").mkdir()
    one, _ = _run(tmp_path / "one", source, _target(seaweed), 1)
    target = _target(seaweed)
    four, reports = _run(tmp_path / "four", source, target, 4)
    writes = _writes(tmp_path / "four")
    assert sorted(writes) == [f"obj/{i:05}" for i in range(COUNT)]  # each exactly once
    assert sum(rep["copied"] for rep in reports) == COUNT
    assert all(len(rep["ranges"]) > 0 for rep in reports)  # every worker took part
    _check_destination(target, source)
    print(f"\n{COUNT} objects: 1 worker {one:.2f} s, 4 workers {four:.2f} s, ratio {four / one:.2f}")
