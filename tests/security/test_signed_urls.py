"""Signed URLs minted with a token never outlive the token: /v1/urls, the form upload's URL, direct part URLs."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from unistore import MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import S3Server, free_port, running_server

SECRET = b"signed-url-secret-0123456789ab"
URL_SECRET = "url-secret-0123456789abcdef"
MAX_QUERY = 7 * 24 * 3600 - 1


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


@pytest.fixture(scope="module")
def memory_service() -> Iterator[str]:
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret=URL_SECRET)
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET)), port) as url:
        yield url


def test_a_60s_read_token_cannot_mint_a_604799s_url(memory_service: str) -> None:
    authority = TokenAuthority(SECRET)
    key = f"urls-{uuid.uuid4().hex[:8]}/doc.txt"
    admin = {"authorization": "Bearer " + authority.issue(["admin"])}
    assert httpx.put(f"{memory_service}/v1/objects/{key}", content=b"hello", headers=admin).status_code == 201
    reader = {"authorization": "Bearer " + authority.issue(["read"], expires_in=60)}
    token_expires = int(time.time()) + 60
    r = httpx.get(f"{memory_service}/v1/urls/{key}", params={"expires_in": MAX_QUERY}, headers=reader)
    assert r.status_code == 200, r.text
    assert r.json()["expires_in"] <= 60
    assert int(_query(r.json()["url"])["expires"]) <= token_expires
    assert httpx.get(r.json()["url"]).content == b"hello"  # still a working URL, just a short one
    # a longer-lived token gets what it asks for
    day = {"authorization": "Bearer " + authority.issue(["read"], expires_in=86400)}
    asked = httpx.get(f"{memory_service}/v1/urls/{key}", params={"expires_in": 600}, headers=day).json()
    assert asked["expires_in"] == 600


def test_the_form_upload_url_is_capped_by_the_token(memory_service: str) -> None:
    token = TokenAuthority(SECRET).issue(["read", "write"], expires_in=30)
    files = {"file": ("f.txt", b"x", "text/plain")}
    r = httpx.post(
        f"{memory_service}/v1/upload",
        files=files,
        data={"key": f"form-{uuid.uuid4().hex[:8]}.txt"},
        headers={"authorization": f"Bearer {token}"},
    )
    assert r.status_code == 201, r.text
    assert int(_query(r.json()["url"])["expires"]) <= time.time() + 30


def test_presigned_store_urls_are_capped_by_the_token(seaweed: S3Server) -> None:
    """Over S3 the URL is the store's own presigned URL: its X-Amz-Expires is capped too, part URLs included."""
    prefix = f"urls-{uuid.uuid4().hex[:8]}/"
    backend = seaweed.backend(prefix=prefix)
    authority = TokenAuthority(SECRET)
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET))) as url:
        admin = {"authorization": "Bearer " + authority.issue(["admin"])}
        short = {"authorization": "Bearer " + authority.issue(["read", "write"], expires_in=60)}
        with httpx.Client(base_url=url) as c:
            assert c.put("/v1/objects/doc", content=b"hi", headers=admin).status_code == 201
            got = c.get("/v1/urls/doc", params={"expires_in": MAX_QUERY}, headers=short).json()
            assert int(_query(got["url"])["X-Amz-Expires"]) <= 60
            assert httpx.get(got["url"]).content == b"hi"
            session = c.post("/v1/uploads", json={"key": "big.bin", "direct": True}, headers=short)
            assert session.status_code == 201, session.text
            sid = session.json()["upload_id"]
            parts = c.post(
                f"/v1/uploads/{sid}/part-urls", json={"parts": [{"number": 1}], "expires_in": 86400}, headers=short
            )
            assert parts.status_code == 200, parts.text
            assert int(_query(parts.json()["parts"][0]["url"])["X-Amz-Expires"]) <= 60
            assert parts.json()["expires"] <= time.time() + 60
            assert c.delete(f"/v1/uploads/{sid}", headers=admin).status_code == 200
