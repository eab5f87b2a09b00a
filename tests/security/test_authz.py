"""Authorization: tokens never outlive, out-scope or out-act their parent; key rotation; /metrics; rate-limit identity.

Everything goes through a real service over HTTP (memory backend) unless it is a
property of :class:`TokenAuthority` alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from unistore import ConfigurationError, MemoryBackend, PermissionDeniedError
from unistore.layers import Observe
from unistore.service import ServiceSettings, TokenAuthority, UnauthorizedError, create_app
from unistore.testing import free_port, running_server

SECRET = b"authz-secret-0123456789abcdef"
OLD_SECRET = b"authz-old-secret-0123456789abc"
WEEK = 7 * 24 * 3600


@dataclass
class Svc:
    url: str
    authority: TokenAuthority

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"} if token else {})


@pytest.fixture(scope="module")
def svc() -> Iterator[Svc]:
    with running_server(create_app(MemoryBackend(), settings=ServiceSettings(secret=SECRET))) as url:
        yield Svc(url, TokenAuthority(SECRET))


@pytest.fixture
def pfx() -> str:
    return f"authz-{uuid.uuid4().hex[:8]}/"


# --- item 3: minted tokens stay within their parent -------------------------------------------------


def test_admin_token_with_30s_left_cannot_mint_a_7_day_token(svc: Svc) -> None:
    parent = svc.authority.issue(["admin"], expires_in=30, subject="root")
    parent_expires = svc.authority.verify(parent).expires
    with svc.client(parent) as c:
        r = c.post("/v1/tokens", json={"actions": ["admin"], "expires_in": WEEK - 1, "subject": "anyone"})
    assert r.status_code == 201, r.text
    child = svc.authority.verify(r.json()["token"])
    assert child.expires <= parent_expires and r.json()["expires"] <= parent_expires
    assert r.json()["expires_in"] <= 30
    with svc.client(r.json()["token"]) as c:  # and a grandchild cannot stretch it either
        grandchild = c.post("/v1/tokens", json={"actions": ["read"], "expires_in": WEEK - 1}).json()
    assert svc.authority.verify(grandchild["token"]).expires <= parent_expires


def test_child_subject_is_derived_from_the_parent(svc: Svc, pfx: str) -> None:
    tenant = svc.authority.issue(["admin"], prefix=pfx, subject="tenant-a")
    with svc.client(tenant) as c:
        same = c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx}).json()
        named = c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx, "subject": "root"}).json()
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx, "subject": "../x"}).status_code == 400
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx, "subject": "a b"}).status_code == 400
    assert same["subject"] == "tenant-a" and svc.authority.verify(same["token"]).subject == "tenant-a"
    # a tenant cannot take another identity ("root"): it can only name a sub-identity of its own
    assert named["subject"] == "tenant-a/root" and svc.authority.verify(named["token"]).subject == "tenant-a/root"


@pytest.mark.parametrize("prefix", ["../", "a/../", "a//b/", "/abs/", ".unistore/service/", "a/%2e%2e/", "x\x01/"])
def test_token_prefix_obeys_the_key_rules_at_issuance(svc: Svc, prefix: str) -> None:
    root = svc.authority.issue(["admin"], subject="root")
    with svc.client(root) as c:
        r = c.post("/v1/tokens", json={"actions": ["read"], "prefix": prefix})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidKeyError", r.text


def test_child_never_out_scopes_or_out_acts_its_parent(svc: Svc, pfx: str) -> None:
    tenant = svc.authority.issue(["admin"], prefix=pfx, subject="tenant-a")
    with svc.client(tenant) as c:
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": ""}).status_code == 403
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx[:-1]}).status_code == 403
        assert c.post("/v1/tokens", json={"actions": ["metrics"], "prefix": pfx}).status_code == 201
    writer = svc.authority.issue(["read", "write"], prefix=pfx)
    with svc.client(writer) as c:  # only admin tokens mint
        assert c.post("/v1/tokens", json={"actions": ["read"], "prefix": pfx}).status_code == 403
    parent = svc.authority.verify(writer)
    with pytest.raises(PermissionDeniedError):
        svc.authority.issue(["read"], prefix=pfx, parent=parent)
    admin = svc.authority.verify(tenant)
    child = svc.authority.verify(svc.authority.issue(["read", "write"], prefix=pfx + "sub/", parent=admin))
    assert child.actions == {"read", "write"} and child.prefix == pfx + "sub/"


def test_server_wide_maximum_lifetime_applies_to_issued_and_presented_tokens() -> None:
    env = {"UNISTORE_SECRET": SECRET.decode(), "UNISTORE_MAX_TOKEN_LIFETIME": "600"}
    settings = ServiceSettings.from_env(env)
    assert settings.max_token_lifetime == 600
    long_lived = TokenAuthority(SECRET).issue(["admin"], expires_in=WEEK, subject="root")  # e.g. minted by the CLI
    auth = {"authorization": f"Bearer {long_lived}"}
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        c.headers.update(auth)
        assert c.post("/v1/tokens", json={"actions": ["read"], "expires_in": 601}).status_code == 400
        r = c.post("/v1/tokens", json={"actions": ["read"], "expires_in": 600})
        assert r.status_code == 201 and r.json()["expires"] <= time.time() + 600
        # the long-lived token itself counts only for 600 s after it was issued
        assert c.put("/v1/objects/x", content=b"x").status_code == 201
        url_answer = c.get("/v1/urls/x", params={"expires_in": 3600}).json()
        assert url_answer["expires_in"] <= 600
    bounded = TokenAuthority(SECRET, max_lifetime=600)
    issued_earlier = TokenAuthority(SECRET).issue(["read"], expires_in=WEEK, now=time.time() - 700)
    with pytest.raises(UnauthorizedError, match="expired"):
        bounded.verify(issued_earlier)  # not yet past its own expiry, but past the server's maximum


def test_tokens_carry_a_key_id_and_rotation_has_an_overlap_window() -> None:
    old = TokenAuthority(OLD_SECRET).issue(["read"], subject="old")
    overlap = ServiceSettings.from_env(
        {"UNISTORE_SECRET": SECRET.decode(), "UNISTORE_ACCEPTED_SECRETS": OLD_SECRET.decode()}
    )
    with running_server(create_app(MemoryBackend(), settings=overlap)) as url:
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {old}"}) as c:
            assert c.get("/v1/objects").status_code == 200  # old tokens verify during the overlap
        admin = TokenAuthority(SECRET).issue(["admin"])
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {admin}"}) as c:
            minted = c.post("/v1/tokens", json={"actions": ["read"]}).json()["token"]
    new_kid, old_kid = TokenAuthority(SECRET).key_id, TokenAuthority(OLD_SECRET).key_id
    assert minted.split(".")[1] == new_kid != old_kid == old.split(".")[1]  # minted with the new key
    after = ServiceSettings(secret=SECRET)  # the old secret retired: its tokens are revoked
    with running_server(create_app(MemoryBackend(), settings=after)) as url:
        r = httpx.get(url + "/v1/objects", headers={"authorization": f"Bearer {old}"})
    assert r.status_code == 401 and "retired" in r.json()["error"]["message"]
    with pytest.raises(ConfigurationError):
        ServiceSettings(secret=SECRET, accepted_secrets=(b"short",))


def test_token_claims_are_checked_strictly() -> None:
    authority = TokenAuthority(SECRET)
    token = authority.issue(["read"])
    assert authority.verify(token).token_id == authority.verify(token).token_id != ""
    version, kid, payload, sig = token.split(".")
    for bad in (f"ust1.{payload}.{sig}", f"{version}.{kid}.{payload}", f"{version}.other.{payload}.{sig}"):
        with pytest.raises(UnauthorizedError):
            authority.verify(bad)
    future = authority.issue(["read"], now=time.time() + 3600)
    with pytest.raises(UnauthorizedError, match="malformed"):
        authority.verify(future)  # issued in the future: not a token this server would have minted


# --- item 4: /metrics is protected and exports no key names ----------------------------------------


def test_metrics_need_a_token_with_the_metrics_action(svc: Svc, pfx: str) -> None:
    admin = svc.authority.issue(["admin"], subject="root")
    with svc.client(admin) as c:
        assert c.get(f"/v1/objects/{pfx}tenant-b/secret-report.pdf").status_code == 404
    with svc.client() as c:
        r = c.get("/metrics")
        assert r.status_code == 401 and "unistore" not in r.text
    for token in (svc.authority.issue(["read", "write", "delete"]), svc.authority.issue(["admin"], prefix=pfx)):
        with svc.client(token) as c:
            assert c.get("/metrics").status_code == 403
    for token in (admin, svc.authority.issue(["metrics"], subject="prometheus")):
        with svc.client(token) as c:
            r = c.get("/metrics")
            assert r.status_code == 200 and "unistore_hot_key_requests" in r.text
            assert "secret-report" not in r.text and pfx not in r.text  # no key names as label values
            assert 'key="sha256:' in r.text


def test_metrics_open_off_or_on_a_separate_listener() -> None:
    with running_server(create_app(MemoryBackend(), settings=ServiceSettings(auth=False, metrics="open"))) as url:
        assert httpx.get(url + "/metrics").status_code == 200
    with running_server(create_app(MemoryBackend(), settings=ServiceSettings(secret=SECRET, metrics="off"))) as url:
        admin = TokenAuthority(SECRET).issue(["admin"])
        assert httpx.get(url + "/metrics", headers={"authorization": f"Bearer {admin}"}).status_code == 404
    port = free_port()
    settings = ServiceSettings.from_env({"UNISTORE_SECRET": SECRET.decode(), "UNISTORE_METRICS": f"127.0.0.1:{port}"})
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        assert httpx.get(url + "/metrics").status_code == 404
        r = httpx.get(f"http://127.0.0.1:{port}/metrics")
        assert r.status_code == 200 and "unistore_http_requests_total" in r.text
    with pytest.raises(ConfigurationError):
        ServiceSettings(secret=SECRET, metrics="everyone")
    with pytest.raises(ConfigurationError):
        ServiceSettings(secret=SECRET, metrics_key_labels="keys")


def test_http_metrics_have_bounded_method_labels(svc: Svc) -> None:
    """A client picks the request method: made-up methods must not each become a new time series."""
    with svc.client() as c:
        for i in range(30):  # made up (httptools' parser refuses these with a 400 before the app; h11 passes them)
            c.request(f"X{uuid.uuid4().hex[:6].upper()}{i}", "/v1/objects")
        for method in ("PROPFIND", "MKCOL", "LOCK", "UNLOCK", "SEARCH", "PURGE", "REPORT"):  # every parser passes these
            c.request(method, "/v1/objects")
    with svc.client(svc.authority.issue(["admin"])) as c:
        text = c.get("/metrics").text
    methods = {
        line.split('method="')[1].split('"')[0]
        for line in text.splitlines()
        if line.startswith("unistore_http_requests_total{")
    }
    assert methods <= {"GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "OTHER"} and "OTHER" in methods


@pytest.mark.parametrize(
    ("labels", "expected"),
    [("hash", None), ("prefix", "tenant-b/"), ("raw", "tenant-b/report.pdf")],
)
async def test_hot_key_labels_are_bounded_by_default(labels: str, expected: str | None) -> None:
    registry = CollectorRegistry()
    store = Observe(MemoryBackend(), metrics=registry, hot_keys=5, hot_key_labels=labels)
    await store.put_object("tenant-b/report.pdf", b"x")
    await store.put_object("tenant-b/other.pdf", b"x")
    for _ in range(3):
        assert await store.exists("tenant-b/report.pdf")
    text = generate_latest(registry).decode()
    hot = [line for line in text.splitlines() if line.startswith("unistore_hot_key_requests{")]
    if expected is None:
        assert hot and all('key="sha256:' in line for line in hot) and "tenant-b" not in text
    else:
        assert any(f'key="{expected}"' in line for line in hot)
    if labels == "prefix":  # counts are summed per label
        assert any(line.endswith(" 5.0") for line in hot)
    with pytest.raises(ConfigurationError):
        Observe(MemoryBackend(), metrics=False, hot_key_labels="keys")


# --- item 14: rate limits are keyed on the verified token, not the header's spelling ---------------


def test_rate_limit_is_per_verified_token_whatever_the_header_spelling() -> None:
    settings = ServiceSettings(secret=SECRET, token_rate=1, token_burst=2)
    token = TokenAuthority(SECRET).issue(["read"])
    spellings = ["Bearer", "bearer", "BEARER", "bEaReR", "BeArEr"]
    variants = [f"{scheme}{' ' * gap}{token}" for scheme in spellings for gap in (1, 2, 3, 4)]
    assert len(set(variants)) == 20
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        started = time.monotonic()
        codes = [c.get("/v1/objects", headers={"authorization": v}).status_code for v in variants]
        refilled = time.monotonic() - started  # at 1 token a second
    assert codes[:2] == [200, 200] and codes.count(200) <= 2 + refilled, codes
    assert set(codes) == {200, 429}


def test_requests_without_a_valid_token_spend_their_address_budget_not_the_service_budget() -> None:
    settings = ServiceSettings(secret=SECRET, token_rate=0.1, token_burst=2, global_rate=0.1, global_burst=1)
    good = TokenAuthority(SECRET).issue(["read"])
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        codes = [c.get("/v1/objects", headers={"authorization": f"Bearer forged{i}"}).status_code for i in range(6)]
        assert codes[:2] == [401, 401] and set(codes[2:]) == {429}  # guessing tokens is throttled per address
        assert c.get("/v1/objects", headers={"authorization": f"Bearer {good}"}).status_code == 200
