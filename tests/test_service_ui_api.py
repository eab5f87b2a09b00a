"""The routes the web UI codes against: ``/v1/whoami``, ``/v1/copy``, folder markers, ``unistore ui-link``,
and browser-style upload sessions (per-part SHA-256, resume, direct parts completed without ETags)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from unistore import LocalBackend, MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server

SECRET = b"ui-api-secret-0123456789abcdef"


@dataclass
class Svc:
    url: str
    authority: TokenAuthority

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"} if token else {})

    def token(self, actions: list[str], prefix: str = "", expires_in: int = 3600) -> str:
        return self.authority.issue(actions, prefix=prefix, expires_in=expires_in, subject="ui")


@pytest.fixture(scope="module")
def svc() -> Iterator[Svc]:
    with running_server(create_app(MemoryBackend(), settings=ServiceSettings(secret=SECRET))) as url:
        yield Svc(url, TokenAuthority(SECRET))


@pytest.fixture
def pfx() -> str:
    return f"ui-{uuid.uuid4().hex[:8]}/"


# --- whoami --------------------------------------------------------------------------------------


def test_whoami_describes_the_token(svc: Svc, pfx: str) -> None:
    token = svc.token(["read", "write"], prefix=pfx, expires_in=600)
    with svc.client(token) as c:
        r = c.get("/v1/whoami")
    assert r.status_code == 200, r.text
    body = r.json()
    expires = svc.authority.verify(token).expires
    assert body == {
        "auth": True,
        "subject": "ui",
        "actions": ["read", "write"],
        "prefix": pfx,
        "expires": expires,
        "expires_in": body["expires_in"],
        "backend": "MemoryBackend",
        "direct_uploads": False,
    }
    assert 590 <= body["expires_in"] <= 600


def test_whoami_expands_admin_and_refuses_bad_tokens(svc: Svc) -> None:
    with svc.client(svc.token(["admin"])) as c:
        assert c.get("/v1/whoami").json()["actions"] == ["admin", "delete", "metrics", "read", "write"]
    for bad in (None, "ust2.nope.nope.nope", svc.token(["read"]) + "x"):
        with svc.client(bad) as c:
            r = c.get("/v1/whoami")
        assert r.status_code == 401 and r.json()["error"]["type"] == "UnauthorizedError"
    expired = svc.authority.issue(["read"], expires_in=1, now=time.time() - 10)
    with svc.client(expired) as c:
        assert c.get("/v1/whoami").status_code == 401


def test_whoami_with_auth_off_is_full_access_without_expiry(tmp_path: Path) -> None:
    app = create_app(LocalBackend(base_path=str(tmp_path), fsync=False), settings=ServiceSettings(auth=False))
    with running_server(app) as url, httpx.Client(base_url=url) as c:
        body = c.get("/v1/whoami").json()
    assert body == {
        "auth": False,
        "subject": "anonymous",
        "actions": ["admin", "delete", "metrics", "read", "write"],
        "prefix": "",
        "expires": None,
        "expires_in": None,
        "backend": "LocalBackend",
        "direct_uploads": False,
    }


# --- copy and move -------------------------------------------------------------------------------


def _put(c: httpx.Client, key: str, data: bytes, **headers: str) -> dict[str, Any]:
    r = c.put(f"/v1/objects/{key}", content=data, headers={"content-type": "text/plain", **headers})
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_copy_answers_the_destination_like_put(svc: Svc, pfx: str) -> None:
    with svc.client(svc.token(["read", "write", "delete"], prefix=pfx)) as c:
        src = _put(c, f"{pfx}a.txt", b"hello", **{"x-meta-owner": "alice"})
        r = c.post("/v1/copy", json={"source": f"{pfx}a.txt", "dest": f"{pfx}b/a.txt"})
        assert r.status_code == 201, r.text
        got = r.json()
        assert set(got) == {"key", "size", "etag", "content_type", "last_modified", "metadata"}
        assert (got["key"], got["size"], got["content_type"], got["metadata"]) == (
            f"{pfx}b/a.txt",
            5,
            "text/plain",
            {"owner": "alice"},
        )
        assert r.headers["etag"] == f'"{got["etag"]}"'
        assert c.get(f"/v1/objects/{pfx}b/a.txt").content == b"hello"
        assert c.head(f"/v1/objects/{pfx}a.txt").status_code == 200  # a copy keeps the source
        stale = c.post("/v1/copy", json={"source": f"{pfx}a.txt", "dest": f"{pfx}c.txt", "if_match": "nope"})
        assert stale.status_code == 412 and c.head(f"/v1/objects/{pfx}c.txt").status_code == 404
        fresh = c.post("/v1/copy", json={"source": f"{pfx}a.txt", "dest": f"{pfx}c.txt", "if_match": src["etag"]})
        assert fresh.status_code == 201
        clobber = c.post("/v1/copy", json={"source": f"{pfx}a.txt", "dest": f"{pfx}c.txt", "mode": "create"})
        assert clobber.status_code == 412, clobber.text
        missing = c.post("/v1/copy", json={"source": f"{pfx}none", "dest": f"{pfx}d.txt"})
        assert missing.status_code == 404


def test_move_deletes_the_source_it_copied(svc: Svc, pfx: str) -> None:
    with svc.client(svc.token(["read", "write", "delete"], prefix=pfx)) as c:
        _put(c, f"{pfx}m.txt", b"move me")
        r = c.post("/v1/copy", json={"source": f"{pfx}m.txt", "dest": f"{pfx}n.txt", "delete_source": True})
        assert r.status_code == 201, r.text
        assert c.head(f"/v1/objects/{pfx}m.txt").status_code == 404
        assert c.get(f"/v1/objects/{pfx}n.txt").content == b"move me"
        onto = c.post("/v1/copy", json={"source": f"{pfx}n.txt", "dest": f"{pfx}n.txt", "delete_source": True})
        assert onto.status_code == 412 and c.get(f"/v1/objects/{pfx}n.txt").content == b"move me"


@pytest.mark.parametrize(
    ("source", "dest"),
    [
        ("../etc/passwd", "x.txt"),
        ("a.txt", "../x.txt"),
        ("a.txt", "%2e%2e/x"),
        ("a.txt", "/abs"),
        ("a.txt", ".unistore/service/x"),
        ("a.txt", "b//c"),
        ("a\\b", "c"),
    ],
)
def test_copy_refuses_bad_keys_before_touching_anything(svc: Svc, source: str, dest: str) -> None:
    with svc.client(svc.token(["admin"])) as c:
        r = c.post("/v1/copy", json={"source": source, "dest": dest})
    assert r.status_code == 400 and r.json()["error"]["type"] == "InvalidKeyError", r.text


def test_copy_needs_read_write_and_for_a_move_delete(svc: Svc, pfx: str) -> None:
    with svc.client(svc.token(["admin"])) as c:
        _put(c, f"{pfx}s.txt", b"s")
        _put(c, "outside.txt", b"o")
    body = {"source": f"{pfx}s.txt", "dest": f"{pfx}t.txt"}
    with svc.client(svc.token(["read"], prefix=pfx)) as c:
        assert c.post("/v1/copy", json=body).status_code == 403
    with svc.client(svc.token(["write"], prefix=pfx)) as c:
        assert c.post("/v1/copy", json=body).status_code == 403
    with svc.client(svc.token(["read", "write"], prefix=pfx)) as c:
        assert c.post("/v1/copy", json={**body, "delete_source": True}).status_code == 403
        assert c.post("/v1/copy", json={**body, "dest": "elsewhere/t.txt"}).status_code == 403
        assert c.post("/v1/copy", json={"source": "outside.txt", "dest": f"{pfx}o.txt"}).status_code == 403
        assert c.post("/v1/copy", json=body).status_code == 201
    with svc.client() as c:
        assert c.post("/v1/copy", json=body).status_code == 401
    with svc.client(svc.token(["admin"])) as c:
        assert c.head(f"/v1/objects/{pfx}s.txt").status_code == 200  # every refused move kept its source
        assert c.head("/v1/objects/elsewhere/t.txt").status_code == 404
        assert c.head(f"/v1/objects/{pfx}o.txt").status_code == 404


class _RacyMemory(MemoryBackend):
    """Overwrites ``victim`` once, just before it is removed (between a move's copy and its delete)."""

    victim: str | None = None

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        if key == self.victim:
            self.victim = None
            await self.put(key, b"written meanwhile")
        return await super().remove(key, if_match=if_match)


class _RacyCopyMemory(MemoryBackend):
    """Overwrites ``victim`` once, right after a native copy of it."""

    victim: str | None = None

    async def copy(self, src: str, dst: str, *, mode: Any = "overwrite") -> Any:
        info = await super().copy(src, dst, mode=mode)
        if src == self.victim:
            self.victim = None
            await self.put(src, b"written meanwhile")
        return info


class _RacyLocal(LocalBackend):
    """Overwrites ``victim`` once, right after the (streamed) copy of it is written."""

    victim: str | None = None

    async def put_object(self, key: str, body: Any, **options: Any) -> Any:
        info = await super().put_object(key, body, **options)
        if self.victim is not None and key != self.victim and not key.startswith(".unistore"):
            victim, self.victim = self.victim, None
            await super().put_object(victim, b"written meanwhile")
        return info


@pytest.mark.parametrize("kind", ["delete", "native-copy", "streamed-copy"])
def test_a_source_overwritten_during_a_move_survives(kind: str, tmp_path: Path) -> None:
    backend: Any = (
        _RacyMemory()
        if kind == "delete"
        else _RacyCopyMemory()
        if kind == "native-copy"
        else _RacyLocal(base_path=str(tmp_path), fsync=False)
    )
    with (
        running_server(create_app(backend, settings=ServiceSettings(auth=False))) as url,
        httpx.Client(base_url=url) as c,
    ):
        _put(c, "src.txt", b"original")
        backend.victim = "src.txt"
        r = c.post("/v1/copy", json={"source": "src.txt", "dest": "dst.txt", "delete_source": True})
        assert r.status_code == 412, r.text
        assert "kept" in r.json()["error"]["message"]
        assert c.get("/v1/objects/src.txt").content == b"written meanwhile"  # the concurrent write is not lost
        assert backend.victim is None  # the race did happen
