"""The web UI's routes (``/v1/whoami``, ``/v1/copy``, ``unistore ui-link``) never widen what a token may do.

Everything goes through a real service over HTTP (memory backend).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from test_cli import cli
from unistore import MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server

SECRET = b"ui-authz-secret-0123456789abcdef"
OLD_SECRET = b"ui-authz-old-secret-0123456789ab"


@dataclass
class Svc:
    url: str
    authority: TokenAuthority
    backend: MemoryBackend

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"} if token else {})


@pytest.fixture(scope="module")
def svc() -> Iterator[Svc]:
    backend = MemoryBackend()
    settings = ServiceSettings(secret=SECRET, accepted_secrets=(OLD_SECRET,), max_json_size=4096)
    with running_server(create_app(backend, settings=settings)) as url:
        yield Svc(url, TokenAuthority(SECRET), backend)


@pytest.fixture
def tenants(svc: Svc) -> tuple[str, str]:
    a, b = f"t-{uuid.uuid4().hex[:8]}/", f"t-{uuid.uuid4().hex[:8]}/"
    with svc.client(svc.authority.issue(["admin"])) as c:
        for p in (a, b):
            assert c.put(f"/v1/objects/{p}secret.txt", content=p.encode()).status_code == 201
    return a, b


def test_copy_never_crosses_tenants(svc: Svc, tenants: tuple[str, str]) -> None:
    mine, theirs = tenants
    token = svc.authority.issue(["read", "write", "delete"], prefix=mine)
    with svc.client(token) as c:
        steal = c.post("/v1/copy", json={"source": f"{theirs}secret.txt", "dest": f"{mine}stolen.txt"})
        plant = c.post("/v1/copy", json={"source": f"{mine}secret.txt", "dest": f"{theirs}planted.txt"})
        grab = c.post(
            "/v1/copy", json={"source": f"{theirs}secret.txt", "dest": f"{mine}moved.txt", "delete_source": True}
        )
    assert [r.status_code for r in (steal, plant, grab)] == [403, 403, 403]
    with svc.client(svc.authority.issue(["admin"])) as c:
        for key in (f"{mine}stolen.txt", f"{theirs}planted.txt", f"{mine}moved.txt"):
            assert c.head(f"/v1/objects/{key}").status_code == 404
        assert c.get(f"/v1/objects/{theirs}secret.txt").content == theirs.encode()


def test_a_prefix_is_not_a_name_prefix(svc: Svc, tenants: tuple[str, str]) -> None:
    mine, _ = tenants
    token = svc.authority.issue(["read", "write"], prefix=mine)
    with svc.client(token) as c:  # "t-abc/" does not reach "t-abc-evil/" or "t-abc"
        for dest in (mine.rstrip("/") + "-evil/x", mine.rstrip("/")):
            assert c.post("/v1/copy", json={"source": f"{mine}secret.txt", "dest": dest}).status_code == 403


@pytest.mark.parametrize(
    "key",
    [
        ".unistore/service/uploads/sessions/x",
        "%2eunistore/service/x",
        "a/.unistore/x",
        "a/%2e%2e/%2e%2e/etc",
        "a/%252e%252e/b",
    ],
)
def test_copy_cannot_reach_the_services_own_records(svc: Svc, key: str) -> None:
    admin = svc.authority.issue(["admin"])
    with svc.client(admin) as c:
        assert c.put("/v1/objects/plain.txt", content=b"x").status_code == 201
        for body in ({"source": key, "dest": "leak.txt"}, {"source": "plain.txt", "dest": key}):
            r = c.post("/v1/copy", json=body)
            assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidKeyError", (body, r.text)
        assert c.head("/v1/objects/leak.txt").status_code == 404


def test_the_body_of_an_anonymous_copy_is_never_read(svc: Svc) -> None:
    huge = {"source": "a" * 100, "dest": "b", "pad": "x" * 100_000}
    with svc.client() as c:
        r = c.post("/v1/copy", json=huge)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    with svc.client(svc.authority.issue(["read", "write"])) as c:
        assert c.post("/v1/copy", json=huge).status_code == 413  # a valid token still has the JSON bound


def test_whoami_reports_only_the_tokens_own_claims(svc: Svc) -> None:
    old = TokenAuthority(OLD_SECRET).issue(["read"], prefix="p/", expires_in=60, subject="rotated")
    with svc.client(old) as c:  # a token signed with an accepted older secret is still good
        body = c.get("/v1/whoami").json()
    assert (body["subject"], body["actions"], body["prefix"]) == ("rotated", ["read"], "p/")
    retired = TokenAuthority(b"ui-authz-retired-0123456789abcdef").issue(["admin"])
    with svc.client(retired) as c:
        assert c.get("/v1/whoami").status_code == 401
    forged = svc.authority.issue(["read"]).rsplit(".", 1)[0] + ".AAAA"
    with svc.client(forged) as c:
        assert c.get("/v1/whoami").status_code == 401


def test_ui_link_through_the_service_never_outscopes_its_admin(svc: Svc) -> None:
    admin = svc.authority.issue(["admin"], prefix="team/", expires_in=600)
    env = {"UNISTORE_SECRET": "", "UNISTORE_TOKEN": admin}
    code, _, err = cli("ui-link", "--url", svc.url, "--prefix", "", env=env)  # wider than the admin's prefix
    assert code == 4, err
    code, out, err = cli("ui-link", "--url", svc.url, "--prefix", "team/a/", "--expires", "2d", env=env)
    assert code == 0, err
    grant = svc.authority.verify(out.strip().split("#token=", 1)[1])
    assert grant.prefix == "team/a/" and grant.expires <= svc.authority.verify(admin).expires  # capped at 10 min
