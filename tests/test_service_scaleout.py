"""Scale-out: two `unistore serve` processes over one SeaweedFS bucket behave as one service.

Each replica is its own OS process (``python -m unistore.service``), configured only
by ``STORAGE_*``/``UNISTORE_*`` variables, as it would be behind a load balancer.
Nothing is shared between them but the bucket.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from unistore.service import SCHEMA_VERSION, TokenAuthority, verify_signature
from unistore.testing import S3Server, free_port, running_server

pytestmark = pytest.mark.xdist_group("scaleout")

SECRET = b"scale-out-secret-0123456789"
HOOK_SECRET = b"webhook-secret-for-receivers"
MiB = 1024 * 1024


@dataclass
class Receiver:
    """A webhook receiver: every POST it got (headers, body), and whether its signature checked out."""

    url: str
    events: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def wait_for(self, upload_id: str, timeout: float = 20.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for event in self.events:
                    if event["body"].get("upload_id") == upload_id:
                        return event
            time.sleep(0.05)
        raise AssertionError(f"no webhook for {upload_id}; got {self.events}")


@dataclass(frozen=True)
class Replicas:
    urls: tuple[str, str]
    auth: dict[str, str]
    receiver: Receiver
    prefix: str


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    box = Receiver("")

    async def hook(request: Request) -> Response:
        raw = await request.body()
        signed = verify_signature(HOOK_SECRET, raw, request.headers.get("x-unistore-signature", ""))
        with box.lock:
            box.events.append({"body": json.loads(raw), "signed": signed, "headers": dict(request.headers)})
        return Response(status_code=204)

    with running_server(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as url:
        box.url = url + "/hook"
        yield box


@pytest.fixture(scope="module")
def replicas(seaweed: S3Server, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    """Two service processes on one bucket and prefix, with the same secret and webhook."""
    logs = [tmp_path_factory.mktemp("replicas") / f"replica-{i}.log" for i in (0, 1)]
    prefix = f"scale-{uuid.uuid4().hex[:8]}/"
    env = {
        **os.environ,
        **seaweed.env(prefix=prefix),
        "UNISTORE_SECRET": SECRET.decode(),
        "UNISTORE_WEBHOOKS": receiver.url,
        "UNISTORE_WEBHOOK_SECRET": HOOK_SECRET.decode(),
    }
    ports = (free_port(), free_port())
    files = [log.open("wb") for log in logs]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unistore.service", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=file,  # a file, not a pipe: an undrained pipe would block the replica's logging
        )
        for port, file in zip(ports, files, strict=True)
    ]
    urls = (f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}")
    try:
        for url, proc, log in zip(urls, procs, logs, strict=True):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, log.read_text()
                try:
                    if httpx.get(url + "/_ops/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, f"replica {url} did not start"
                time.sleep(0.1)
        token = TokenAuthority(SECRET).issue(["admin"])
        yield Replicas(urls, {"authorization": f"Bearer {token}"}, receiver, prefix)
    finally:
        for proc in procs:
            proc.terminate()
        for proc, file in zip(procs, files, strict=True):
            proc.wait(10)
            file.close()


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_objects_and_idempotency_records_are_shared(replicas: Replicas) -> None:
    a = httpx.Client(base_url=replicas.urls[0], headers=replicas.auth)
    b = httpx.Client(base_url=replicas.urls[1], headers=replicas.auth)
    with a, b:
        r = a.put("/v1/objects/doc.txt", content=b"v1", headers={"content-type": "text/plain"})
        assert r.status_code == 201
        etag = r.headers["etag"]
        assert b.get("/v1/objects/doc.txt", headers={"range": "bytes=1-"}).content == b"1"
        assert b.put("/v1/objects/doc.txt", content=b"v2", headers={"if-match": etag}).status_code == 201
        assert a.put("/v1/objects/doc.txt", content=b"v3", headers={"if-match": etag}).status_code == 412
        # an idempotency record written through one replica answers the replay on the other
        first = a.put("/v1/objects/once", content=b"x", headers={"idempotency-key": "k1"})
        replay = b.put("/v1/objects/once", content=b"x", headers={"idempotency-key": "k1"})
        assert replay.status_code == 201 and replay.json() == first.json()
        assert b.put("/v1/objects/once", content=b"y", headers={"idempotency-key": "k1"}).status_code == 422


def test_session_started_on_one_filled_through_both_completed_on_the_other(replicas: Replicas) -> None:
    a = httpx.Client(base_url=replicas.urls[0], headers=replicas.auth)
    b = httpx.Client(base_url=replicas.urls[1], headers=replicas.auth)
    parts = [os.urandom(64 * 1024), os.urandom(64 * 1024), os.urandom(1000)]
    with a, b:
        r = a.post("/v1/uploads", json={"key": "staged.bin", "part_size": 64 * 1024, "metadata": {"owner": "x"}})
        assert r.status_code == 201 and r.json()["direct"] is False
        sid = r.json()["upload_id"]

        def send(i: int) -> None:  # parts in parallel, alternating replicas
            client = (a, b)[i % 2]
            assert client.put(f"/v1/uploads/{sid}/parts/{i + 1}", content=parts[i]).status_code == 200

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(send, range(3)))
        listed = a.get(f"/v1/uploads/{sid}/parts").json()["parts"]
        assert [p["number"] for p in listed] == [1, 2, 3]
        manifest = [{"number": i + 1, "sha256": _b64(hashlib.sha256(p).digest())} for i, p in enumerate(parts)]
        done = b.post(f"/v1/uploads/{sid}/complete", json={"parts": manifest})
        assert done.status_code == 201, done.text
        got = a.get("/v1/objects/staged.bin")
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(b"".join(parts)).digest()
        assert got.headers["x-meta-schema_version"] == SCHEMA_VERSION
        assert got.headers["x-meta-owner"] == "x"
        event = replicas.receiver.wait_for(sid)
        assert event["signed"] and event["body"]["key"] == "staged.bin" and event["body"]["direct"] is False
        assert event["headers"]["x-unistore-event"] == "upload.completed"
        assert a.get(f"/v1/uploads/{sid}/parts").status_code == 404  # the session is gone on both
        keys = [o["key"] for o in b.get("/v1/objects").json()["objects"]]
        assert ".unistore" not in "".join(keys)  # internal state stays hidden


def test_direct_session_parts_go_straight_to_the_store(replicas: Replicas, seaweed: S3Server) -> None:
    """Control plane through the replicas, data plane to SeaweedFS by presigned part URLs."""
    a = httpx.Client(base_url=replicas.urls[0], headers=replicas.auth)
    b = httpx.Client(base_url=replicas.urls[1], headers=replicas.auth)
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(3000)]
    md5s = [_b64(hashlib.md5(p).digest()) for p in parts]
    with a, b, httpx.Client(timeout=60) as store:
        r = a.post(
            "/v1/uploads",
            json={"key": "direct.bin", "part_size": 5 * MiB, "content_type": "video/mp4", "direct": True},
        )
        assert r.status_code == 201, r.text
        assert r.json()["direct"] is True and r.json()["checksum"] == "md5"
        sid = r.json()["upload_id"]
        # URLs from the other replica: part 1 pinned to its MD5, part 2 not pinned
        urls = b.post(
            f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1, "checksum": md5s[0]}, {"number": 2}]}
        )
        assert urls.status_code == 200, urls.text
        one, two = urls.json()["parts"]
        assert one["url"].startswith(seaweed.endpoint) and "authorization" not in one["url"].lower()
        # a body that is not the pinned part is refused by the store itself
        bad = store.put(one["url"], content=parts[1], headers=one["headers"])
        assert bad.status_code == 400 and "BadDigest" in bad.text
        assert store.put(one["url"], content=parts[0], headers=one["headers"]).status_code == 200
        etag2 = store.put(two["url"], content=parts[1], headers=two["headers"]).headers["etag"].strip('"')
        # the last part goes through a replica instead: both paths mix in one session
        sent = a.put(f"/v1/uploads/{sid}/parts/3", content=parts[2], headers={"content-md5": md5s[2]})
        assert sent.status_code == 200 and sent.json()["md5"] == md5s[2]
        listed = b.get(f"/v1/uploads/{sid}/parts").json()["parts"]
        assert [(p["number"], p["size"], p["md5"]) for p in listed] == [
            (i + 1, len(p), md5s[i]) for i, p in enumerate(parts)
        ]
        listing = seaweed.client().list_objects_v2(Bucket="unistore-tests", Prefix=replicas.prefix + "direct.bin")
        assert "Contents" not in listing  # nothing visible before completion
        wrong = [{"number": 1, "md5": md5s[1]}, {"number": 2, "etag": etag2}, {"number": 3, "md5": md5s[2]}]
        refused = a.post(f"/v1/uploads/{sid}/complete", json={"parts": wrong})
        assert refused.status_code == 400 and refused.json()["error"]["type"] == "IntegrityError"
        manifest = [{"number": 1, "md5": md5s[0]}, {"number": 2, "etag": etag2}, {"number": 3, "md5": md5s[2]}]
        done = a.post(f"/v1/uploads/{sid}/complete", json={"parts": manifest})
        assert done.status_code == 201, done.text
        got = b.get("/v1/objects/direct.bin")
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(b"".join(parts)).digest()
        assert got.headers["content-type"] == "video/mp4"
        assert got.headers["x-meta-schema_version"] == SCHEMA_VERSION
        event = replicas.receiver.wait_for(sid)
        assert event["signed"] and event["body"]["direct"] is True
        assert event["body"]["size"] == sum(map(len, parts)) and event["body"]["etag"] == done.json()["etag"]


def test_concurrent_if_match_increments_through_both_replicas_lose_no_update(replicas: Replicas) -> None:
    """8 clients x 10 increments, each a GET then a PUT with If-Match, alternating replicas, retrying on 412."""
    clients, increments = 8, 10
    urls = replicas.urls
    with httpx.Client(base_url=urls[0], headers=replicas.auth) as setup:
        assert setup.put("/v1/objects/counter", content=b"0").status_code == 201

    def work(worker: int) -> tuple[int, int]:
        done = conflicts = 0
        step = worker  # each client starts on a different replica, then alternates on every request
        with httpx.Client(headers=replicas.auth, timeout=30) as c:
            while done < increments:
                got = c.get(urls[step % 2] + "/v1/objects/counter")
                step += 1
                assert got.status_code == 200, got.text
                new = str(int(got.content) + 1).encode()
                put = c.put(
                    urls[step % 2] + "/v1/objects/counter", content=new, headers={"if-match": got.headers["etag"]}
                )
                step += 1
                if put.status_code == 412:
                    conflicts += 1
                    continue
                assert put.status_code == 201, put.text
                done += 1
        return done, conflicts

    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(work, range(clients)))
    with httpx.Client(base_url=urls[1], headers=replicas.auth) as check:
        final = int(check.get("/v1/objects/counter").content)
    successes = sum(done for done, _ in results)
    assert successes == clients * increments
    assert final == successes  # every acknowledged increment is in the counter: no lost update
    assert sum(conflicts for _, conflicts in results) > 0  # the clients really did race
