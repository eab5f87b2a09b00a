"""The storage service over real HTTP: auth and scopes, digests, size bound, idempotency, ops, back-pressure."""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from unistore import InvalidKeyError, MemoryBackend
from unistore._keys import reserved_keys, validate_key
from unistore.layers import Faults
from unistore.service import RequestIdFilter, ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server

SECRET = b"service-secret-0123456789abcdef"
MAX_BODY = 256 * 1024


@dataclass
class Svc:
    url: str
    authority: TokenAuthority
    admin: str

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.url, headers=headers)

    def token(self, *actions: str, prefix: str = "", expires_in: int = 600) -> str:
        return self.authority.issue(actions, prefix=prefix, expires_in=expires_in)


@pytest.fixture(scope="session")
def svc() -> Iterator[Svc]:
    settings = ServiceSettings(secret=SECRET, max_body_size=MAX_BODY)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        authority = TokenAuthority(SECRET)
        yield Svc(url, authority, authority.issue(["admin"], expires_in=3600, subject="root"))


@pytest.fixture
def pfx() -> str:
    return f"t-{uuid.uuid4().hex[:8]}/"


def test_missing_forged_and_expired_tokens_are_401(svc: Svc, pfx: str) -> None:
    with svc.client() as c:
        r = c.get(f"/v1/objects/{pfx}x")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json()["error"]["type"] == "UnauthorizedError"
    forged = TokenAuthority(b"another-secret-0123456789").issue(["admin"])
    expired = svc.authority.issue(["read"], expires_in=1, now=0)
    for bad in (forged, expired, "garbage", svc.admin[:-2]):
        with svc.client(bad) as c:
            assert c.get(f"/v1/objects/{pfx}x").status_code == 401
    with httpx.Client(base_url=svc.url, headers={"authorization": "Basic abc"}) as c:
        assert c.get("/v1/objects", params={"prefix": pfx}).status_code == 401


def test_scopes_limit_actions_and_prefixes_on_every_route(svc: Svc, pfx: str) -> None:
    tenant = pfx + "tenants/a/"
    writer = svc.token("read", "write", prefix=tenant)
    reader = svc.token("read", prefix=tenant)
    with svc.client(writer) as c:
        assert c.put(f"/v1/objects/{tenant}doc", content=b"mine").status_code == 201
        assert c.put(f"/v1/objects/{pfx}tenants/b/doc", content=b"theirs").status_code == 403
        assert c.get("/v1/objects", params={"prefix": pfx}).status_code == 403
        assert c.get("/v1/objects", params={"prefix": tenant}).json()["objects"][0]["key"] == tenant + "doc"
        assert c.delete(f"/v1/objects/{tenant}doc").status_code == 403  # no delete action
        files = {"file": ("f.txt", b"x", "text/plain")}
        assert c.post("/v1/upload", files=files, data={"key": f"{pfx}elsewhere.txt"}).status_code == 403
        assert c.get(f"/v1/urls/{pfx}tenants/b/doc").status_code == 403
        assert c.post("/v1/tokens", json={"actions": ["read"]}).status_code == 403
    with svc.client(reader) as c:
        r = c.put(f"/v1/objects/{tenant}doc", content=b"overwrite")
        assert r.status_code == 403 and r.json()["error"]["type"] == "PermissionDeniedError"
        assert c.get(f"/v1/objects/{tenant}doc").content == b"mine"


def test_admin_issues_tokens_within_its_own_scope(svc: Svc, pfx: str) -> None:
    with svc.client(svc.admin) as c:
        r = c.post("/v1/tokens", json={"actions": ["admin"], "prefix": pfx, "subject": "tenant-admin"})
        assert r.status_code == 201 and r.json()["prefix"] == pfx
        tenant_admin = r.json()["token"]
        assert c.post("/v1/tokens", json={"actions": ["fly"]}).status_code == 400
        assert c.post("/v1/tokens", json={"actions": ["read"], "expires_in": 10**9}).status_code == 400
    with svc.client(tenant_admin) as c:
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": "other/"}).status_code == 403
        r = c.post("/v1/tokens", json={"actions": ["read", "write"], "prefix": pfx + "sub/"})
        assert r.status_code == 201
        assert c.put(f"/v1/objects/{pfx}any", content=b"admin may").status_code == 201
    with svc.client(r.json()["token"]) as c:
        assert c.put(f"/v1/objects/{pfx}sub/f", content=b"ok").status_code == 201
        assert c.put(f"/v1/objects/{pfx}f", content=b"no").status_code == 403


def _md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def _sha256(data: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(data).digest()).decode() + ":"


def test_checksums_are_verified_while_streaming(svc: Svc, pfx: str) -> None:
    key = f"/v1/objects/{pfx}sum"
    with svc.client(svc.admin) as c:
        assert c.put(key, content=b"good", headers={"content-md5": _md5(b"good")}).status_code == 201
        r = c.put(key, content=b"evil", headers={"content-md5": _md5(b"good")})
        assert r.status_code == 400 and r.json()["error"]["type"] == "IntegrityError"
        assert c.put(key, content=(b"x" for _ in range(3)), headers={"repr-digest": _sha256(b"yyy")}).status_code == 400
        assert c.get(key).content == b"good"  # nothing stored by the failed writes
        both = {"repr-digest": "md5=:AAAA:, " + _sha256(b"new"), "content-md5": _md5(b"new")}
        assert c.put(key, content=b"new", headers=both).status_code == 201
        assert c.put(f"/v1/objects/{pfx}fresh", content=b"a", headers={"content-md5": _md5(b"b")}).status_code == 400
        assert c.get(f"/v1/objects/{pfx}fresh").status_code == 404
        assert c.put(key, content=b"z", headers={"content-md5": "not base64!"}).status_code == 400
        assert c.put(key, content=b"z", headers={"repr-digest": "sha-256=nocolons"}).status_code == 400
        assert c.get(key).content == b"new"


def test_bodies_over_the_bound_are_413_and_not_stored(svc: Svc, pfx: str) -> None:
    with svc.client(svc.admin) as c:
        r = c.put(f"/v1/objects/{pfx}big", content=b"x" * (MAX_BODY + 1))
        assert r.status_code == 413 and r.json()["error"]["type"] == "QuotaExceededError"
        chunks = (b"y" * 65536 for _ in range(MAX_BODY // 65536 + 1))  # chunked: no Content-Length
        assert c.put(f"/v1/objects/{pfx}big", content=chunks).status_code == 413
        assert c.get(f"/v1/objects/{pfx}big").status_code == 404
        body = bytes(range(256)) * (MAX_BODY // 256)
        assert c.put(f"/v1/objects/{pfx}max", content=iter([body])).status_code == 201
        assert c.get(f"/v1/objects/{pfx}max").content == body


def _answer_without_body(url: str, path: str, headers: dict[str, str]) -> int:
    """The status the service answers to a request whose body is announced but never sent."""
    import socket
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    lines = [f"POST {path} HTTP/1.1", f"Host: {parts.netloc}", *(f"{k}: {v}" for k, v in headers.items())]
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        return int(sock.recv(4096).split(b" ", 2)[1])  # a timeout here means it waited for the body


def test_form_uploads_are_authenticated_and_bounded_before_the_form_is_read(svc: Svc, pfx: str) -> None:
    form = {"content-type": "multipart/form-data; boundary=xyz", "content-length": str(10**10)}
    assert _answer_without_body(svc.url, "/v1/upload", form) == 401
    assert _answer_without_body(svc.url, "/v1/upload", {**form, "authorization": f"Bearer {svc.admin}"}) == 413
    with svc.client(svc.admin) as c:
        files = {"file": ("big.bin", b"x" * (MAX_BODY + 1), "application/octet-stream")}
        r = c.post("/v1/upload", files=files, data={"key": f"{pfx}big"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "QuotaExceededError"
        boundary = b"b0undary"
        head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="c.bin"\r\n\r\n'
        chunked = iter([head, *(b"y" * 65536 for _ in range(MAX_BODY // 65536 + 1)), b"\r\n--b0undary--\r\n"])
        r = c.post(
            "/v1/upload",
            content=chunked,
            headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()},
        )
        assert r.status_code == 413  # no Content-Length: cut off as it streams
        assert c.get(f"/v1/objects/{pfx}big").status_code == 404
        assert c.post("/v1/upload", data={"key": f"{pfx}nofile"}).status_code == 400
        r = c.post("/v1/upload", files={"file": ("s.txt", b"small", "text/plain")}, data={"key": f"{pfx}s.txt"})
        assert r.status_code == 201 and c.get(f"/v1/objects/{pfx}s.txt").content == b"small"


def test_idempotency_key_replays_the_first_response(svc: Svc, pfx: str) -> None:
    key, op = f"/v1/objects/{pfx}idem", {"idempotency-key": "op-1"}
    with svc.client(svc.admin) as c:
        first = c.put(key, content=b"v1", headers=op)
        assert first.status_code == 201
        assert c.put(key, content=b"v2").status_code == 201  # someone else writes meanwhile
        replay = c.put(key, content=b"v1", headers=op)
        assert (replay.status_code, replay.json(), replay.headers["etag"]) == (201, first.json(), first.headers["etag"])
        assert c.get(key).content == b"v2"  # the replay had no second effect
        r = c.put(key, content=b"other body", headers=op)
        assert r.status_code == 422 and r.json()["error"]["type"] == "IdempotencyKeyReusedError"
        listing = c.get("/v1/objects").json()["objects"]
        assert not any(o["key"].startswith(".unistore") for o in listing)  # records stay internal


def test_metadata_headers_round_trip_percent_encoded(svc: Svc, pfx: str) -> None:
    with svc.client(svc.admin) as c:
        headers = {"x-meta-Owner": "J%C3%BCrgen%20%E2%9C%93", "x-meta-plain": "ok", "content-type": "text/plain"}
        r = c.put(f"/v1/objects/{pfx}m.txt", content=b"m", headers=headers)
        assert r.json()["metadata"] == {"owner": "Jürgen ✓", "plain": "ok"}
        for method in ("GET", "HEAD"):
            r = c.request(method, f"/v1/objects/{pfx}m.txt")
            assert r.headers["x-meta-owner"] == "J%C3%BCrgen%20%E2%9C%93" and r.headers["x-meta-plain"] == "ok"
        assert c.put(f"/v1/objects/{pfx}m2", content=b"m", headers={"x-meta-bad": "%FF"}).status_code == 400
        assert c.put(f"/v1/objects/{pfx}m2", content=b"m", headers={"x-meta-a!b": "x"}).status_code == 400


def test_request_ids_errors_and_ops_routes(svc: Svc, pfx: str) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.addFilter(RequestIdFilter())
    handler.emit = records.append  # type: ignore[method-assign]
    service_logger = logging.getLogger("unistore.service")
    service_logger.addHandler(handler)
    service_logger.setLevel(logging.INFO)

    def logged() -> bool:
        return any(getattr(rec, "request_id", None) == "abc-123" and pfx in rec.getMessage() for rec in records)

    try:
        with svc.client(svc.admin) as c:
            r = c.get(f"/v1/objects/{pfx}nope", headers={"x-request-id": "abc-123"})
        deadline = time.monotonic() + 5  # the access line is written after the response is sent
        while not logged() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        service_logger.removeHandler(handler)
    assert r.status_code == 404 and r.headers["x-request-id"] == "abc-123"
    assert logged()
    with svc.client(svc.admin) as c:
        error = r.json()["error"]
        assert (error["type"], error["key"], set(error)) == ("NotFoundError", pfx + "nope", {"type", "message", "key"})
        generated = c.get("/_ops/health", headers={"x-request-id": "bad id with spaces"}).headers["x-request-id"]
        assert len(generated) == 32 and " " not in generated
        assert c.get("/v1/objects", params={"limit": 0}).status_code == 400
        assert c.get("/v1/objects", params={"cursor": "%%%"}).status_code == 400
        r = c.get("/v2/nothing")
        assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError" and "x-request-id" in r.headers
        assert c.get("/_ops/health").json()["status"] == "healthy"
        metrics = c.get("/metrics").text
        assert 'unistore_http_requests_total{method="GET",status="404"}' in metrics
        assert "unistore_requests_total" in metrics
        paths = c.get("/openapi.json").json()["paths"]
        assert {"/v1/objects/{key}", "/v1/objects", "/v1/tokens"} <= set(paths)


def test_rate_limits_are_429_with_retry_after() -> None:
    settings = ServiceSettings(auth=False, token_rate=0.5, token_burst=2)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        assert [c.get("/v1/objects").status_code for _ in range(2)] == [200, 200]
        r = c.get("/v1/objects")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert r.json()["error"]["type"] == "RateLimitedError"
    settings = ServiceSettings(secret=SECRET, global_rate=0.5, global_burst=1, token_rate=100)
    authority = TokenAuthority(SECRET)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        auth = [{"authorization": "Bearer " + authority.issue(["read"])} for _ in "ab"]
        a, b = (httpx.Client(base_url=url, headers=h) for h in auth)
        with a, b:
            assert a.get("/v1/objects").status_code == 200
            assert b.get("/v1/objects").status_code == 429  # the service-wide budget is spent


def test_an_overloaded_backend_is_503_with_retry_after() -> None:
    backend = Faults(MemoryBackend(), error_rate={"open": 1.0, "put": 1.0}, rate_limited_share=0.0)
    settings = ServiceSettings(auth=False)
    with running_server(create_app(backend, settings=settings)) as url, httpx.Client(base_url=url) as c:
        r = c.get("/v1/objects/anything")
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["type"] == "UnavailableError"
        assert c.put("/v1/objects/x", content=b"x").status_code == 503


def test_reserved_keys_are_open_to_internal_state_only() -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(".unistore/service/x")
    with reserved_keys():
        assert validate_key(".unistore/service/x") == ".unistore/service/x"
        with pytest.raises(InvalidKeyError):
            validate_key("../x")
    with pytest.raises(InvalidKeyError):
        validate_key(".unistore/service/x")


def test_folder_listing_pages_across_prefixes_and_objects(svc: Svc, pfx: str) -> None:
    writer = svc.client(svc.token("read", "write"))
    for key in ("a/1", "a/2/x", "b", "c/d", "e", "f/g/h"):
        assert writer.put(f"/v1/objects/{pfx}{key}", content=b"x").status_code == 201
    seen: list[str] = []
    params: dict[str, str | int] = {"prefix": pfx, "delimiter": "/", "limit": 2}
    pages = 0
    while True:
        page = writer.get("/v1/objects", params=params).json()
        assert len(page["objects"]) + len(page["prefixes"]) <= 2
        seen += [o["key"] for o in page["objects"]] + page["prefixes"]
        pages += 1
        if not page["next_cursor"]:
            break
        params = {"prefix": pfx, "delimiter": "/", "limit": 2, "cursor": page["next_cursor"]}
    assert sorted(s[len(pfx) :] for s in seen) == ["a/", "b", "c/", "e", "f/"] and pages == 3
    flat = writer.get("/v1/objects", params={"prefix": pfx}).json()
    assert "prefixes" not in flat and len(flat["objects"]) == 6
    assert writer.get("/v1/objects", params={"prefix": pfx, "delimiter": ""}).status_code == 400
    headers = {"Idempotency-Key": f"folder-{pfx}"}
    assert writer.put(f"/v1/objects/{pfx}idem", content=b"x", headers=headers).status_code == 201
    root = svc.client(svc.token("admin")).get("/v1/objects", params={"delimiter": "/", "limit": 100_000}).json()
    assert f"{pfx.split('/')[0]}/" in root["prefixes"] and ".unistore/" not in root["prefixes"]  # records stay hidden
