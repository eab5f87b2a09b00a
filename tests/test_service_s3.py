"""Direct upload sessions (presigned part URLs to SeaweedFS) and completion webhooks.

The two-replica behaviour (two service processes over one bucket) is in test_service_scaleout.py.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from unistore import InvalidArgumentError, MemoryBackend
from unistore.service import ServiceSettings, Webhook, create_app, verify_signature
from unistore.service._hooks import sign_payload
from unistore.testing import S3Server, running_server

MiB = 1024 * 1024
OPEN = ServiceSettings(auth=False)


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _open_uploads(seaweed: S3Server, prefix: str) -> list[str]:
    listing = seaweed.client().list_multipart_uploads(Bucket="unistore-tests", Prefix=prefix)
    return [u["UploadId"] for u in listing.get("Uploads", [])]


@pytest.fixture
def prefix() -> str:
    return f"direct-{uuid.uuid4().hex[:8]}/"


def test_direct_sessions_need_an_s3_store_without_sse_c(seaweed: S3Server, prefix: str) -> None:
    with running_server(create_app(MemoryBackend(), settings=OPEN)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/uploads", json={"key": "a.bin", "direct": True, "part_size": 5 * MiB})
        assert r.status_code == 400 and "S3-compatible" in r.json()["error"]["message"]
        sid = c.post("/v1/uploads", json={"key": "a.bin"}).json()["upload_id"]
        r = c.post(f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1}]})
        assert r.status_code == 400 and "direct" in r.json()["error"]["message"]
    sse_c = seaweed.backend(prefix=prefix, sse_customer_key=_b64(os.urandom(32)))
    with running_server(create_app(sse_c, settings=OPEN)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/uploads", json={"key": "a.bin", "direct": True, "part_size": 5 * MiB})
        assert r.status_code == 400 and "SSE-C" in r.json()["error"]["message"]
    plain = seaweed.backend(prefix=prefix)
    with running_server(create_app(plain, settings=OPEN)) as url, httpx.Client(base_url=url) as c:
        r = c.post("/v1/uploads", json={"key": "a.bin", "direct": True, "part_size": MiB})
        assert r.status_code == 400 and "5 MiB" in r.json()["error"]["message"]
    assert _open_uploads(seaweed, prefix) == []  # a refused session opened nothing at the store


def test_direct_sha256_session_pins_every_part_to_its_digest(seaweed: S3Server, prefix: str) -> None:
    backend = seaweed.backend(prefix=prefix, checksum="sha256")
    parts = [os.urandom(5 * MiB), os.urandom(777)]
    shas = [_b64(hashlib.sha256(p).digest()) for p in parts]
    app = create_app(backend, settings=OPEN)
    with running_server(app) as url, httpx.Client(base_url=url) as c, httpx.Client(timeout=60) as store:
        r = c.post("/v1/uploads", json={"key": "s.bin", "direct": True, "part_size": 5 * MiB})
        assert r.json()["checksum"] == "sha256"
        sid = r.json()["upload_id"]
        unpinned = c.post(f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1}]})
        assert unpinned.status_code == 400 and "SHA-256" in unpinned.json()["error"]["message"]
        assert (
            c.post(
                f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1, "checksum": "bm90LWEtZGlnZXN0"}]}
            ).status_code
            == 400
        )  # not a 32-byte digest
        answer = c.post(
            f"/v1/uploads/{sid}/part-urls",
            json={"parts": [{"number": i + 1, "checksum": d} for i, d in enumerate(shas)], "expires_in": 60},
        ).json()
        for spec, body in zip(answer["parts"], parts, strict=True):
            assert spec["headers"] == {"x-amz-checksum-sha256": shas[spec["number"] - 1]}
            assert store.put(spec["url"], content=body[::-1], headers=spec["headers"]).status_code == 400
            assert store.put(spec["url"], content=body, headers=spec["headers"]).status_code == 200
        # the checksum is signed: the same URL with another digest header is refused
        forged = {"x-amz-checksum-sha256": _b64(hashlib.sha256(b"x").digest())}
        assert store.put(answer["parts"][1]["url"], content=b"x", headers=forged).status_code == 403
        manifest = [{"number": i + 1, "sha256": d} for i, d in enumerate(shas)]
        assert c.post(f"/v1/uploads/{sid}/complete", json={"parts": manifest}).status_code == 201
        got = c.get("/v1/objects/s.bin").content
        assert hashlib.sha256(got).digest() == hashlib.sha256(b"".join(parts)).digest()
    assert _open_uploads(seaweed, prefix) == []


def test_direct_part_over_part_size_is_refused_and_abort_clears_the_store(seaweed: S3Server, prefix: str) -> None:
    app = create_app(seaweed.backend(prefix=prefix), settings=OPEN)
    with running_server(app) as url, httpx.Client(base_url=url) as c, httpx.Client(timeout=60) as store:
        sid = c.post("/v1/uploads", json={"key": "o.bin", "direct": True, "part_size": 5 * MiB}).json()["upload_id"]
        assert len(_open_uploads(seaweed, prefix)) == 1
        specs = c.post(f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1}, {"number": 2}]}).json()
        big, tail = os.urandom(5 * MiB + 1), b"tail"
        for spec, body in zip(specs["parts"], (big, tail), strict=True):
            assert store.put(spec["url"], content=body).status_code == 200
        manifest = [
            {"number": 1, "md5": _b64(hashlib.md5(big).digest())},
            {"number": 2, "md5": _b64(hashlib.md5(tail).digest())},
        ]
        refused = c.post(f"/v1/uploads/{sid}/complete", json={"parts": manifest})
        assert refused.status_code == 400 and "part_size" in refused.json()["error"]["message"]
        assert c.head("/v1/objects/o.bin").status_code == 404
        assert len(c.get(f"/v1/uploads/{sid}/parts").json()["parts"]) == 2  # the session stays open
        assert c.delete(f"/v1/uploads/{sid}").json() == {"aborted": True}
        assert c.get(f"/v1/uploads/{sid}/parts").status_code == 404
    assert _open_uploads(seaweed, prefix) == []


def test_the_timer_sweeps_an_expired_direct_session_and_its_store_side_upload(seaweed: S3Server, prefix: str) -> None:
    # expires 3-4 s from now: time for the first checks on a loaded machine, then only the timer acts
    settings = ServiceSettings(auth=False, upload_ttl=4, upload_sweep_interval=0.3)
    app = create_app(seaweed.backend(prefix=prefix), settings=settings)
    records = prefix + ".unistore/service/uploads/sessions/"
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        sid = c.post("/v1/uploads", json={"key": "e.bin", "direct": True, "part_size": 5 * MiB}).json()["upload_id"]
        assert len(_open_uploads(seaweed, prefix)) == 1
        assert seaweed.client().list_objects_v2(Bucket="unistore-tests", Prefix=records)["KeyCount"] == 1
        deadline = time.monotonic() + 15
        while _open_uploads(seaweed, prefix) and time.monotonic() < deadline:
            time.sleep(0.1)  # no request comes: only the timer can sweep
        assert _open_uploads(seaweed, prefix) == []
        assert seaweed.client().list_objects_v2(Bucket="unistore-tests", Prefix=records)["KeyCount"] == 0
        assert c.post(f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1}]}).status_code == 404


class _Flaky:
    """A receiver that answers ``statuses`` in turn (then 204), recording every delivery."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.lock = threading.Lock()

    async def handle(self, request: Request) -> Response:
        body = await request.body()
        with self.lock:
            self.got.append((dict(request.headers), body))
            status = self.statuses.pop(0) if self.statuses else 204
        return Response(status_code=status)


@pytest.fixture
def flaky() -> Iterator[tuple[_Flaky, str]]:
    handler = _Flaky()
    with running_server(Starlette(routes=[Route("/hook", handler.handle, methods=["POST"])])) as url:
        yield handler, url + "/hook"


def _deliver(hook: Webhook, event: dict[str, Any]) -> None:
    async def run() -> None:
        hook(event)
        await hook.drain()
        await hook.aclose()

    asyncio.run(run())


def test_webhook_retries_a_failing_receiver_with_one_delivery_id(flaky: tuple[_Flaky, str]) -> None:
    handler, url = flaky
    handler.statuses = [503, 500]
    hook = Webhook(url, secret=b"k" * 20, base_delay=0.01)
    _deliver(hook, {"event": "upload.completed", "upload_id": "u1"})
    assert (hook.delivered, hook.failed, len(handler.got)) == (1, 0, 3)
    assert len({h["x-unistore-delivery"] for h, _ in handler.got}) == 1
    for headers, body in handler.got:
        assert verify_signature(b"k" * 20, body, headers["x-unistore-signature"])
        assert not verify_signature(b"other-secret", body, headers["x-unistore-signature"])
        assert not verify_signature(b"k" * 20, body + b" ", headers["x-unistore-signature"])


def test_webhook_does_not_retry_a_refusal_and_gives_up_after_its_attempts(flaky: tuple[_Flaky, str]) -> None:
    handler, url = flaky
    handler.statuses = [400]
    hook = Webhook(url, base_delay=0.01)
    _deliver(hook, {"event": "upload.completed"})
    assert (hook.delivered, hook.failed, len(handler.got)) == (0, 1, 1)
    assert "x-unistore-signature" not in handler.got[0][0]  # no secret, no signature
    handler.statuses, handler.got = [503] * 5, []
    hook = Webhook(url, attempts=3, base_delay=0.01)
    _deliver(hook, {"event": "upload.completed"})
    assert (hook.delivered, hook.failed, len(handler.got)) == (0, 1, 3)


def test_a_stale_signature_is_refused() -> None:
    body = b'{"event":"upload.completed"}'
    old = sign_payload(b"s" * 20, body, int(time.time()) - 3600)
    assert not verify_signature(b"s" * 20, body, old)
    assert verify_signature(b"s" * 20, body, old, tolerance=7200)
    assert not verify_signature(b"s" * 20, body, "garbage")


class _Died(Exception):
    pass


async def test_http_backend_sends_parts_straight_to_the_store_and_resumes(
    seaweed: S3Server, prefix: str, tmp_path: Any
) -> None:
    """The service refuses bodies over 1 MiB, so 5 MiB parts arrive only if they bypass it."""
    from unistore.backends.http import HttpBackend

    settings = ServiceSettings(auth=False, max_body_size=MiB)
    data = os.urandom(12 * MiB + 5)
    source = tmp_path / "big.bin"
    source.write_bytes(data)
    options: dict[str, Any] = {
        "multipart_threshold": MiB,
        "upload_part_size": 5 * MiB,
        "upload_concurrency": 1,
        "upload_state_dir": str(tmp_path / "state"),
    }
    with running_server(create_app(seaweed.backend(prefix=prefix), settings=settings)) as url:
        through = HttpBackend(url=url, **options)
        with pytest.raises(InvalidArgumentError):  # a stored session could not take parts this large
            await through.put_object("via-service.bin", source)
        await through.aclose()

        client = HttpBackend(url=url, direct_uploads=True, **options)
        stored = 0

        def stop_after_first(n: int) -> None:
            nonlocal stored
            stored += n
            if stored >= 5 * MiB:
                raise _Died  # the client "dies" once one part is stored

        with pytest.raises(_Died):
            await client.upload_file("direct/big.bin", source, progress=stop_after_first)
        assert client.parts_sent == 1
        info = await client.upload_file("direct/big.bin", source)  # a rerun sends only the two missing parts
        assert client.parts_sent == 3
        assert info.size == len(data) and info.metadata.get("schema_version") == "1"
        async with await client.open("direct/big.bin") as dl:
            got = b"".join([chunk async for chunk in dl])
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        assert list((tmp_path / "state").iterdir()) == []  # the record is gone once complete
        await client.aclose()
    assert _open_uploads(seaweed, prefix) == []
