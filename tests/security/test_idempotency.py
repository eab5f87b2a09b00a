"""Idempotency records: leases that a killed writer cannot pin, per-token scopes, sweeping, replays.

Red-team findings (issue 11, item 6): a service killed mid-write pinned its key for 24 h;
every token shared the default subject's keys (a collision and an existence oracle);
records were never swept; a replay after a delete answered 201 for an object that was gone.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from unistore import LocalBackend, MemoryBackend, ObjectInfo
from unistore.backends.http import HttpBackend
from unistore.layers import Idempotency, IdempotencyInProgressError, idempotency_key
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import free_port, running_server

SECRET = b"idempotency-test-secret-0123456789"
RECORDS = Path(".unistore/service/idempotency")

# A service over a local directory; with "stall", its writes never finish (each stays
# alive, holding its lease, until the process is killed).
_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    import uvicorn
    from unistore import LocalBackend
    from unistore.layers import Layer
    from unistore.service import ServiceSettings, create_app

    class Stalls(Layer):
        async def put_object(self, key, body, **kw):
            if not key.startswith(".unistore/"):  # the service's own records go through
                await asyncio.Event().wait()
            return await self.inner.put_object(key, body, **kw)

    root, port, lease = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    settings = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_IDEMPOTENCY_LEASE": lease})
    backend = LocalBackend(base_path=root, fsync=False)
    app = create_app(Stalls(backend) if sys.argv[4] == "stall" else backend, settings=settings)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _start(script: Path, root: Path, lease: float, log: Path, mode: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with log.open("ab") as err:
        args = [sys.executable, str(script), str(root), str(port), str(lease), mode]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=err)
    return proc, f"http://127.0.0.1:{port}"


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 20
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            if httpx.get(url + "/_ops/health").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)


def _files(folder: Path) -> list[Path]:
    """The files in ``folder`` (none if it is gone), temp and sidecar files excluded."""
    return sorted(p for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _records(root: Path) -> list[Path]:
    return _files(root / RECORDS)


def test_a_killed_writer_frees_its_key_when_its_lease_lapses(tmp_path: Path) -> None:
    """(a) Two service processes over one directory. A write on the first outlives its lease's
    length (the heartbeat renews it): the second answers 409. kill -9 the first, and the
    second takes the key over once the lease lapses, instead of 409 for 24 h."""
    lease = 1.5
    script, root = tmp_path / "child.py", tmp_path / "data"
    script.write_text(_CHILD)
    root.mkdir()
    log = tmp_path / "child.log"
    op = {"idempotency-key": "order-1001"}
    writer, url_a = _start(script, root, lease, log, "stall")
    replica, url_b = _start(script, root, lease, log, "normal")
    hung: list[Any] = []

    def stalled_put() -> None:
        try:
            hung.append(httpx.put(url_a + "/v1/objects/doc", content=b"v", headers=op, timeout=60).status_code)
        except httpx.TransportError as exc:
            hung.append(exc)

    try:
        _wait_ready(writer, url_a, log)
        _wait_ready(replica, url_b, log)
        client = threading.Thread(target=stalled_put, daemon=True)
        client.start()
        deadline = time.monotonic() + 10
        while not _records(root):
            assert time.monotonic() < deadline, "no pending record"
            time.sleep(0.02)
        record = _records(root)[0]
        taken = json.loads(record.read_text())
        assert taken["state"] == "pending" and taken["expires"] - time.time() <= lease + 0.5
        time.sleep(1.5 * lease)  # the write outlives its lease's length: the heartbeat renews it
        renewed = json.loads(record.read_text())
        assert renewed["state"] == "pending" and renewed["expires"] > time.time()
        busy = httpx.put(url_b + "/v1/objects/doc", content=b"v", headers=op)
        assert busy.status_code == 409 and float(busy.headers["retry-after"]) <= lease + 1
        writer.kill()  # SIGKILL: no cleanup runs, the record stays pending
        writer.wait(10)
        killed_at = time.monotonic()
        client.join(10)
        assert hung and isinstance(hung[0], httpx.TransportError)
        statuses = []
        while True:
            r = httpx.put(url_b + "/v1/objects/doc", content=b"v", headers=op)
            statuses.append(r.status_code)
            if r.status_code != 409:
                break
            assert time.monotonic() - killed_at < lease + 4, f"key still pinned: {statuses}"
            time.sleep(0.1)
        assert r.status_code == 201, r.text
        assert time.monotonic() - killed_at <= lease + 2
        assert httpx.get(url_b + "/v1/objects/doc").content == b"v"
        replay = httpx.put(url_b + "/v1/objects/doc", content=b"v", headers=op)
        assert (replay.status_code, replay.json()) == (201, r.json())
    finally:
        for proc in (writer, replica):
            proc.kill()
            proc.wait(10)


class CountingMemory(MemoryBackend):
    """A real memory store counting the writes that reach it."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        self.puts += 1
        return await super().put_object(key, body, **kw)


async def test_a_lapsed_lease_is_taken_over_by_exactly_one_writer() -> None:
    """Replicas sharing a record store: while a dead writer's lease holds, retries are 409; after
    it lapses, exactly one of ten concurrent retries writes, the others wait or replay its result."""
    clock = Clock()
    data, records = CountingMemory(), MemoryBackend()
    layer = Idempotency(data, store=records, lease=5, clock=clock)
    with idempotency_key("k"):
        await layer.put_object("obj", b"v")
    # Turn the finished record back into the lease of a writer that died mid-write.
    (record_key,) = [k async for k in records.iter_keys()]
    record = json.loads(await records.get(record_key))
    record.update(state="pending", expires=clock.now + 5)
    del record["info"]
    await records.put_object(record_key, json.dumps(record).encode())
    with idempotency_key("k"), pytest.raises(IdempotencyInProgressError) as exc:
        await layer.put_object("obj", b"v")
    assert exc.value.status == 409 and data.puts == 1
    clock.now += 6
    replicas = [Idempotency(data, store=records, lease=5, clock=clock) for _ in range(10)]

    async def retry(replica: Idempotency) -> ObjectInfo | None:
        with idempotency_key("k"):
            try:
                return await replica.put_object("obj", b"v")
            except IdempotencyInProgressError:
                return None

    results = await asyncio.gather(*(retry(r) for r in replicas))
    assert data.puts == 2, "a lapsed lease was taken over by more than one writer"
    current = await data.head("obj")
    assert all(r is None or r.etag == current.etag for r in results) and any(results)


class Stalling(MemoryBackend):
    """A memory store whose writes wait until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started = asyncio.Event()

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        self.started.set()
        await self.release.wait()
        return await super().put_object(key, body, **kw)


async def test_a_writer_that_loses_its_lease_abandons_its_write() -> None:
    """If another process took the lease over (this one stalled past it), the heartbeat notices
    and the write is cancelled before it takes effect, so two writers never both run."""
    data, records = Stalling(), MemoryBackend()
    layer = Idempotency(data, store=records, lease=0.3)
    with idempotency_key("k"):
        write = asyncio.ensure_future(layer.put_object("obj", b"v"))
        await data.started.wait()
        (record_key,) = [k async for k in records.iter_keys()]
        await records.put_object(record_key, b'{"state": "pending", "digest": "x", "expires": 0}')  # taken over
        with pytest.raises(IdempotencyInProgressError, match="lease"):
            await asyncio.wait_for(write, 5)
    data.release.set()
    await asyncio.sleep(0.01)
    assert not await data.exists("obj")


def test_two_tenants_with_the_same_key_never_collide() -> None:
    """(b) Two tokens with the default subject but different prefixes, the same Idempotency-Key:
    both writes happen (no 422, no oracle); within one token the key still deduplicates."""
    authority = TokenAuthority(SECRET)
    a = authority.issue(["read", "write"], prefix="tenant-a/")
    b = authority.issue(["read", "write"], prefix="tenant-b/")
    other_subject = authority.issue(["read", "write"], prefix="tenant-a/", subject="someone-else")
    op = {"idempotency-key": "order-1001"}
    backend = MemoryBackend()
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET))) as url:

        def put(token: str, key: str, body: bytes) -> httpx.Response:
            headers = {**op, "authorization": f"Bearer {token}"}
            return httpx.put(f"{url}/v1/objects/{key}", content=body, headers=headers)

        ra = put(a, "tenant-a/invoice", b"A's invoice")
        rb = put(b, "tenant-b/invoice", b"B's invoice")
        assert (ra.status_code, rb.status_code) == (201, 201), rb.text
        rc = put(other_subject, "tenant-a/other", b"another subject's write")
        assert rc.status_code == 201, rc.text
        assert put(a, "tenant-a/invoice", b"A's invoice").json() == ra.json()  # a replay within the scope
        assert put(a, "tenant-a/invoice", b"changed").status_code == 422  # reuse within the scope
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {b}"}) as c:
            assert c.get("/v1/objects/tenant-b/invoice").content == b"B's invoice"


async def test_records_are_swept_after_expiry(tmp_path: Path) -> None:
    """(c) 200 writes with fresh keys (as HttpBackend sends): once they expire, the next keyed
    write starts a background pass that removes them all, in batches of ``sweep_limit``."""
    clock = Clock()
    root = tmp_path / "records"
    store = LocalBackend(base_path=str(root), fsync=False)
    layer = Idempotency(MemoryBackend(), store=store, ttl=10, sweep_interval=60, sweep_limit=50, clock=clock)
    for i in range(200):
        with idempotency_key(uuid.uuid4().hex):
            await layer.put_object(f"k{i}", b"x")
    assert len(_files(root / "idempotency")) == 200
    clock.now += 61
    with idempotency_key(uuid.uuid4().hex):
        await layer.put_object("last", b"x")
    for _ in range(500):  # at most 5 s
        if len(_files(root / "idempotency")) <= 1:
            break
        await asyncio.sleep(0.01)
    assert len(_files(root / "idempotency")) == 1  # the live record of the last write
    await layer.aclose()


async def test_a_sweep_does_bounded_work_and_moves_on() -> None:
    clock = Clock()
    layer = Idempotency(MemoryBackend(), ttl=10, sweep_interval=None, clock=clock)
    for i in range(30):
        with idempotency_key(f"op-{i}"):
            await layer.put_object(f"k{i}", b"x")
    clock.now += 11
    assert [await layer.sweep(limit=10) for _ in range(4)] == [10, 10, 10, 0]
    assert [k async for k in layer.store.iter_keys()] == []


def test_records_are_swept_by_the_service(tmp_path: Path) -> None:
    """The service's timer sweeps expired records: 200 puts through HttpBackend, then few files."""
    root = tmp_path / "data"
    settings = ServiceSettings(auth=False, idempotency_ttl=0.5, upload_sweep_interval=0.25)
    with running_server(create_app(LocalBackend(base_path=str(root), fsync=False), settings=settings)) as url:

        async def puts() -> None:
            client = HttpBackend(url=url)
            try:
                for i in range(200):
                    await client.put_object(f"p/{i}", b"x")  # a fresh Idempotency-Key each
            finally:
                await client.aclose()

        asyncio.run(puts())
        assert len(_records(root)) > 0  # records were written (HttpBackend sends a key per put)
        deadline = time.monotonic() + 5
        while _records(root) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_records(root)) == 0


def test_a_replay_after_a_delete_is_410_not_a_stale_201(tmp_path: Path) -> None:
    """(d) The write took effect once; after a delete, a replay says so (410) and does not resurrect it."""
    backend = LocalBackend(base_path=str(tmp_path), fsync=False)
    with (
        running_server(create_app(backend, settings=ServiceSettings(auth=False))) as url,
        httpx.Client(base_url=url) as c,
    ):
        op = {"idempotency-key": "op-1"}
        first = c.put("/v1/objects/once", content=b"v", headers=op)
        assert first.status_code == 201
        assert c.put("/v1/objects/once", content=b"v", headers=op).json() == first.json()
        assert c.delete("/v1/objects/once").json() == {"deleted": True}
        replay = c.put("/v1/objects/once", content=b"v", headers=op)
        assert replay.status_code == 410 and replay.json()["error"]["type"] == "IdempotencyReplayGoneError"
        assert c.get("/v1/objects/once").status_code == 404  # never resurrected

        async def through_the_client() -> None:
            from unistore.layers import IdempotencyReplayGoneError

            client = HttpBackend(url=url)
            try:
                with idempotency_key("op-1"), pytest.raises(IdempotencyReplayGoneError):
                    await client.put_object("once", b"v")
            finally:
                await client.aclose()

        asyncio.run(through_the_client())
