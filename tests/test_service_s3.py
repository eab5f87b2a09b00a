"""The service over SeaweedFS-backed S3: objects, state in the bucket (idempotency, upload sessions), two replicas."""

from __future__ import annotations

import base64
import hashlib
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import S3Server, running_server

SECRET = b"s3-service-secret-0123456789"


def test_two_replicas_over_one_bucket_act_as_one_service(seaweed: S3Server) -> None:
    settings = ServiceSettings(secret=SECRET)
    prefix = f"svc-{uuid.uuid4().hex[:8]}/"
    auth = {"authorization": "Bearer " + TokenAuthority(SECRET).issue(["admin"])}
    one = create_app(seaweed.backend(prefix=prefix), settings=settings)
    two = create_app(seaweed.backend(prefix=prefix), settings=settings)
    with running_server(one) as a_url, running_server(two) as b_url:
        a, b = httpx.Client(base_url=a_url, headers=auth), httpx.Client(base_url=b_url, headers=auth)
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
            assert replay.json() == first.json()
            # an upload session started on one replica, parts sent to both, completed on the other
            sid = a.post("/v1/uploads", json={"key": "big.bin", "part_size": 1024}).json()["upload_id"]
            parts = [b"a" * 1024, b"b" * 100]
            assert a.put(f"/v1/uploads/{sid}/parts/1", content=parts[0]).status_code == 200
            assert b.put(f"/v1/uploads/{sid}/parts/2", content=parts[1]).status_code == 200
            manifest = [
                {"number": i + 1, "sha256": base64.b64encode(hashlib.sha256(p).digest()).decode()}
                for i, p in enumerate(parts)
            ]
            assert b.post(f"/v1/uploads/{sid}/complete", json={"parts": manifest}).status_code == 201
            assert a.get("/v1/objects/big.bin").content == b"".join(parts)
            keys = [o["key"] for o in a.get("/v1/objects").json()["objects"]]
            assert keys == ["big.bin", "doc.txt", "once"]  # internal state stays hidden


def test_concurrent_if_match_increments_through_two_replicas_lose_no_update(seaweed: S3Server) -> None:
    """8 clients x 10 increments, each a GET then a PUT with If-Match, alternating replicas, retrying on 412."""
    settings = ServiceSettings(secret=SECRET)
    prefix = f"svc-{uuid.uuid4().hex[:8]}/"
    auth = {"authorization": "Bearer " + TokenAuthority(SECRET).issue(["admin"])}
    clients, increments = 8, 10
    one = create_app(seaweed.backend(prefix=prefix), settings=settings)
    two = create_app(seaweed.backend(prefix=prefix), settings=settings)
    with running_server(one) as a_url, running_server(two) as b_url:
        urls = (a_url, b_url)
        with httpx.Client(base_url=a_url, headers=auth) as setup:
            assert setup.put("/v1/objects/counter", content=b"0").status_code == 201

        def work(worker: int) -> tuple[int, int]:
            done = conflicts = 0
            step = worker  # each client starts on a different replica, then alternates on every request
            with httpx.Client(headers=auth, timeout=30) as c:
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
        with httpx.Client(base_url=b_url, headers=auth) as check:
            final = int(check.get("/v1/objects/counter").content)
    successes = sum(done for done, _ in results)
    assert successes == clients * increments
    assert final == successes  # every acknowledged increment is in the counter: no lost update
    assert sum(conflicts for _, conflicts in results) > 0  # the clients really did race
