"""Rotation under load: 2,000 objects, live writers and readers, a rewrap job SIGKILLed twice and resumed.

Afterwards every object is readable with the new KEK alone, every object is on the new KEK, no
writer's update was lost, and the job wrote no object twice (it logs each write it made).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import signal
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from unistore import LocalBackend
from unistore._base import StorageBackend
from unistore.encryption import Encrypt, LocalKeyring, key_usage
from unistore.testing._s3servers import S3Server

OBJECTS = 2000
OLD, NEW = os.urandom(32), os.urandom(32)
WORKER = Path(__file__).with_name("_rotation_worker.py")
SRC = Path(__file__).resolve().parents[1] / "src"


def keyring_env() -> dict[str, str]:
    keys = f"old:{base64.b64encode(OLD).decode()},new:{base64.b64encode(NEW).decode()}"
    return {"UNISTORE_KEYRING": keys, "UNISTORE_KEYRING_PRIMARY": "new"}


async def fill(raw: StorageBackend, prefix: str) -> dict[str, bytes]:
    writer = Encrypt(raw, LocalKeyring({"old": OLD}))
    bodies = {f"{prefix}{i:05d}": f"v0 {i} ".encode() * 20 for i in range(OBJECTS)}
    gate = asyncio.Semaphore(32)

    async def put(key: str, body: bytes) -> None:
        async with gate:
            await writer.put_object(key, body)

    await asyncio.gather(*(put(k, b) for k, b in bodies.items()))
    return bodies


def line_count(log: Path) -> int:
    return log.read_bytes().count(b"\n") if log.exists() else 0


async def kill_when(proc: asyncio.subprocess.Process, log: Path, lines: int, deadline: float) -> None:
    """SIGKILL ``proc`` once ``log`` holds ``lines`` lines (the job is mid-run)."""
    while time.monotonic() < deadline:
        if line_count(log) >= lines:
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            return
        if proc.returncode is not None:
            raise AssertionError(f"the job ended before it was killed: {proc.returncode}")
        await asyncio.sleep(0.01)
    raise AssertionError("the job made no progress")


async def rotation_under_load(raw: StorageBackend, spec: dict[str, str], tmp_path: Path, rate: float) -> None:
    prefix = f"load-{uuid.uuid4().hex[:8]}/"
    expected = await fill(raw, prefix)
    keys = sorted(expected)
    log = tmp_path / "writes.log"
    env = {**os.environ, **keyring_env(), "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    new_store = Encrypt(raw, LocalKeyring({"old": OLD, "new": NEW}, primary="new"))
    stop = asyncio.Event()
    written = Counter[str]()

    async def writer(mine: list[str]) -> None:  # owns its keys: per key, the last acknowledged write is final
        rng = random.Random(len(mine))
        n = 0
        while not stop.is_set():
            key = rng.choice(mine)
            n += 1
            body = f"writer {n} {key} ".encode() * 10
            await new_store.put_object(key, body)
            expected[key] = body
            written[key] += 1
            await asyncio.sleep(0.04)

    async def reader() -> None:  # reads keep working throughout, old KEK or new
        rng = random.Random(7)
        while not stop.is_set():
            await new_store.get(rng.choice(keys))
            await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(writer(keys[w::4])) for w in range(4)] + [asyncio.create_task(reader())]
    deadline = time.monotonic() + 25
    try:
        for kill_at in (OBJECTS // 5, OBJECTS // 2, None):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(WORKER), json.dumps(spec), str(log), prefix, str(rate),
                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            if kill_at is not None:
                await kill_when(proc, log, kill_at, deadline)
                assert proc.returncode == -signal.SIGKILL
                continue
            out, err = await asyncio.wait_for(proc.communicate(), max(1.0, deadline - time.monotonic()))
            assert proc.returncode == 0, err.decode()[-2000:]
            assert json.loads(out)["runs"] == 3  # resumed twice from the checkpoint in the store
    finally:
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
    assert not [r for r in results if isinstance(r, BaseException)], results
    assert sum(written.values()) > 20  # the writers were really active

    lines = log.read_text().splitlines()
    assert not [line for line in lines if line.startswith("PUT ")]  # rewrap never rewrote a body
    job_writes = Counter(lines)
    assert max(job_writes.values()) == 1, job_writes.most_common(3)  # no object rewritten twice
    # every object was rewrapped by the job or rewritten by a writer (a kill may cut a log line: 8 in flight)
    assert len(job_writes) + len(written) >= OBJECTS - 2 * 8

    only_new = Encrypt(raw, LocalKeyring({"new": NEW}))
    usage = await key_usage(only_new, prefix)
    assert usage.counts == {"new": OBJECTS}  # every object on the new KEK
    gate = asyncio.Semaphore(32)

    async def check(key: str) -> None:
        async with gate:
            assert await only_new.get(key) == expected[key], key  # readable, and no lost update

    await asyncio.gather(*(check(k) for k in keys))


@pytest.fixture
async def local_raw(tmp_path: Path) -> AsyncIterator[tuple[LocalBackend, dict[str, str]]]:
    root = tmp_path / "store"
    raw = LocalBackend(base_path=str(root), fsync=False)
    yield raw, {"kind": "local", "path": str(root)}
    await raw.aclose()


@pytest.fixture
async def s3_raw(seaweed: S3Server) -> AsyncIterator[tuple[Any, dict[str, str]]]:
    raw = seaweed.backend()
    spec = {
        "kind": "s3",
        "bucket": "unistore-tests",
        "endpoint": seaweed.endpoint,
        "access_key": seaweed.access_key,
        "secret_key": seaweed.secret_key,
    }
    yield raw, spec
    await raw.aclose()


async def test_rotation_under_load_local(local_raw: tuple[LocalBackend, dict[str, str]], tmp_path: Path) -> None:
    raw, spec = local_raw
    await rotation_under_load(raw, spec, tmp_path, rate=500)


async def test_rotation_under_load_s3(s3_raw: tuple[Any, dict[str, str]], tmp_path: Path) -> None:
    raw, spec = s3_raw
    await rotation_under_load(raw, spec, tmp_path, rate=1000)
