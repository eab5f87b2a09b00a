"""The service over SeaweedFS-backed S3: objects, state in the bucket (idempotency, upload sessions), two replicas."""

from __future__ import annotations

import base64
import hashlib
import uuid

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
