"""The service over an Encrypt-wrapped store, over real HTTP: /v1 and its own /files URLs serve
plaintext, the store holds ciphertext, and no upload path writes around the layer."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from unistore import MemoryBackend, StorageBackend
from unistore._signing import UrlSigner
from unistore.encryption import META_KEY_ID, Encrypt, LocalKeyring
from unistore.service import ServiceSettings, create_app
from unistore.testing import free_port, running_server
from unistore.testing._s3servers import S3Server

KEYRING = LocalKeyring({"key-v1": os.urandom(32)})


@dataclass
class Served:
    url: str
    raw: StorageBackend


@pytest.fixture(params=["memory", "s3"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    port = free_port()
    raw: StorageBackend
    if request.param == "memory":
        raw = MemoryBackend()
    else:
        server: S3Server = request.getfixturevalue("seaweed")
        raw = server.backend(prefix=f"svc-{os.urandom(4).hex()}/")
    signer = UrlSigner(os.urandom(32), f"http://127.0.0.1:{port}/files")
    app = create_app(Encrypt(raw, KEYRING, signer=signer), settings=ServiceSettings(auth=False))
    with running_server(app, port) as url:
        yield Served(url, raw)


async def test_v1_and_signed_files_urls_serve_plaintext(served: Served) -> None:
    data = os.urandom(200_000)
    async with httpx.AsyncClient(base_url=served.url) as c:
        r = await c.put("/v1/objects/docs/report.pdf", content=data, headers={"x-meta-owner": "me"})
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data) and r.json()["metadata"] == {"owner": "me"}
        r = await c.get("/v1/objects/docs/report.pdf")
        assert r.content == data and r.headers["content-type"] == "application/pdf"
        r = await c.get("/v1/objects/docs/report.pdf", headers={"range": "bytes=100000-100099"})
        assert (r.status_code, r.content) == (206, data[100_000:100_100])
        assert r.headers["content-range"] == f"bytes 100000-100099/{len(data)}"
        url = (await c.get("/v1/urls/docs/report.pdf", params={"download": "true"})).json()["url"]
        assert url.startswith(served.url + "/files/")
        r = await c.get(url)
        assert r.content == data and r.headers["content-disposition"].startswith("attachment")
        assert (await c.get(url.replace("signature=", "signature=x"))).status_code == 403
        listing = (await c.get("/v1/objects", params={"prefix": "docs/"})).json()
        assert [(o["key"], o["size"]) for o in listing["objects"]] == [("docs/report.pdf", len(data))]
    stored = await served.raw.get("docs/report.pdf")
    assert data[:64] not in stored and len(stored) > len(data)
    assert (await served.raw.head("docs/report.pdf")).metadata[META_KEY_ID] == "key-v1"


async def test_resumable_uploads_are_encrypted_too(served: Served) -> None:
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1000)]
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as c:
        r = await c.post("/v1/uploads", json={"key": "big.bin", "direct": True})
        assert r.status_code in (400, 501), r.text  # no presigned parts straight to the store
        r = await c.post("/v1/uploads", json={"key": "big.bin", "part_size": len(parts[0])})
        assert r.status_code == 201, r.text
        sid = r.json()["upload_id"]
        for n, part in enumerate(parts, 1):
            assert (await c.put(f"/v1/uploads/{sid}/parts/{n}", content=part)).status_code == 200
        digests = [base64.b64encode(hashlib.sha256(p).digest()).decode() for p in parts]
        manifest = {"parts": [{"number": n, "sha256": d} for n, d in enumerate(digests, 1)]}
        assert (await c.post(f"/v1/uploads/{sid}/complete", json=manifest)).status_code == 201
        assert (await c.get("/v1/objects/big.bin")).content == b"".join(parts)
    assert (await served.raw.head("big.bin")).metadata[META_KEY_ID] == "key-v1"
    stored = await served.raw.get("big.bin")
    assert parts[1] not in stored
