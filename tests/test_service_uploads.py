"""Multipart upload sessions over real HTTP (local store, auth on) and their expiry."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from unistore import LocalBackend, MemoryBackend, NotFoundError
from unistore.service import ServiceSettings, TokenAuthority, UploadSessions, create_app
from unistore.service._state import StateStore
from unistore.testing import running_server

SECRET = b"uploads-secret-0123456789abcdef"
PART = 64 * 1024


@dataclass
class Up:
    url: str
    root: Path
    admin: dict[str, str]
    authority: TokenAuthority
    events: list[dict[str, Any]]


@pytest.fixture(scope="session")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("uploads")
    events: list[dict[str, Any]] = []

    async def hook(event: dict[str, Any]) -> None:
        events.append(event)

    settings = ServiceSettings(secret=SECRET, max_body_size=4 * PART)
    app = create_app(LocalBackend(base_path=str(root), fsync=False), settings=settings, hooks=[hook])
    with running_server(app) as url:
        authority = TokenAuthority(SECRET)
        yield Up(url, root, {"authorization": "Bearer " + authority.issue(["admin"])}, authority, events)


def _sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_parallel_parts_resume_listing_and_verified_completion(up: Up) -> None:
    key = f"big/{uuid.uuid4().hex[:8]}.bin"
    parts = [os.urandom(PART), os.urandom(PART), os.urandom(PART // 3)]
    with httpx.Client(base_url=up.url, headers=up.admin) as c:
        body = {"key": key, "content_type": "application/x-test", "metadata": {"owner": "me"}, "part_size": PART}
        r = c.post("/v1/uploads", json=body)
        assert r.status_code == 201
        sid = r.json()["upload_id"]

        def send(n: int) -> dict[str, Any]:
            data = parts[n - 1]
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
            with httpx.Client(base_url=up.url, headers=up.admin) as pc:
                resp = pc.put(f"/v1/uploads/{sid}/parts/{n}", content=data, headers={"content-md5": md5})
            assert resp.status_code == 200, resp.text
            return dict(resp.json())

        with ThreadPoolExecutor(3) as pool:
            sent = list(pool.map(send, [3, 1, 2]))
        assert [p["sha256"] for p in sent] == [_sha(parts[2]), _sha(parts[0]), _sha(parts[1])]
        listed = c.get(f"/v1/uploads/{sid}/parts").json()
        assert [(p["number"], p["size"]) for p in listed["parts"]] == [(1, PART), (2, PART), (3, PART // 3)]
        assert c.get(f"/v1/objects/{key}").status_code == 404  # invisible until completed
        manifest = {"parts": [{"number": i + 1, "sha256": _sha(p)} for i, p in enumerate(parts)]}
        r = c.post(f"/v1/uploads/{sid}/complete", json=manifest)
        assert r.status_code == 201, r.text
        assert r.json()["metadata"] == {"owner": "me", "schema_version": "1"}
        got = c.get(f"/v1/objects/{key}")
        assert got.content == b"".join(parts) and got.headers["content-type"] == "application/x-test"
        assert got.headers["x-meta-schema_version"] == "1"
        assert {"event": "upload.completed", "key": key, "upload_id": sid}.items() <= up.events[-1].items()
        assert c.get(f"/v1/uploads/{sid}/parts").status_code == 404  # the session is gone
    assert not list((up.root / ".unistore" / "service" / "uploads" / "parts").glob(f"{sid}/*"))


def test_bad_manifests_oversized_parts_and_abort(up: Up) -> None:
    key = f"bad/{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=up.url, headers=up.admin) as c:
        sid = c.post("/v1/uploads", json={"key": key, "part_size": 1024}).json()["upload_id"]
        assert c.put(f"/v1/uploads/{sid}/parts/1", content=b"a" * 1025).status_code == 413
        assert c.put(f"/v1/uploads/{sid}/parts/1", content=b"a" * 10).status_code == 200
        assert c.put(f"/v1/uploads/{sid}/parts/0", content=b"a").status_code == 400
        r = c.post(f"/v1/uploads/{sid}/complete", json={"parts": [{"number": 1, "sha256": _sha(b"b" * 10)}]})
        assert r.status_code == 400 and r.json()["error"]["type"] == "IntegrityError"
        r = c.post(f"/v1/uploads/{sid}/complete", json={"parts": [{"number": 2, "sha256": _sha(b"a")}]})
        assert r.status_code == 400
        assert c.post(f"/v1/uploads/{sid}/complete", json={"parts": []}).status_code == 400
        assert c.get(f"/v1/objects/{key}").status_code == 404
        assert c.delete(f"/v1/uploads/{sid}").json() == {"aborted": True}
        assert c.put(f"/v1/uploads/{sid}/parts/1", content=b"a").status_code == 404
        assert c.post("/v1/uploads", json={"key": "../x"}).status_code == 400
        assert c.get("/v1/uploads/not-an-id/parts").status_code == 404


def test_sessions_are_scoped_to_their_key(up: Up) -> None:
    mine = {"authorization": "Bearer " + up.authority.issue(["write"], prefix="tenants/a/")}
    with httpx.Client(base_url=up.url, headers=up.admin) as admin:
        other = admin.post("/v1/uploads", json={"key": "tenants/b/f"}).json()["upload_id"]
    with httpx.Client(base_url=up.url, headers=mine) as c:
        assert c.post("/v1/uploads", json={"key": "tenants/b/g"}).status_code == 403
        assert c.put(f"/v1/uploads/{other}/parts/1", content=b"x").status_code == 403
        assert c.delete(f"/v1/uploads/{other}").status_code == 403
        assert c.post("/v1/uploads", json={"key": "tenants/a/g"}).status_code == 201
    with httpx.Client(base_url=up.url) as anonymous:
        assert anonymous.get(f"/v1/uploads/{other}/parts").status_code == 401


async def test_a_part_arriving_during_an_abort_leaves_nothing_behind() -> None:
    store = MemoryBackend()
    sessions = UploadSessions(store, StateStore(store), ttl=60, max_part_size=100)
    session = await sessions.create("k", part_size=10)
    streaming, release = asyncio.Event(), asyncio.Event()

    async def body() -> Any:
        yield b"01234"
        streaming.set()
        await release.wait()  # the session is aborted while the part's body is still arriving
        yield b"56789"

    task = asyncio.create_task(sessions.upload_part(session, 1, body(), expected={}))
    await streaming.wait()
    await sessions.abort(session)
    release.set()
    with pytest.raises(NotFoundError, match="ended"):
        await task
    assert [k async for k in StateStore(store).iter_keys("uploads/")] == []


async def test_expired_sessions_are_refused_and_swept() -> None:
    now = [1000.0]
    store = MemoryBackend()
    sessions = UploadSessions(store, StateStore(store), ttl=60, max_part_size=100, clock=lambda: now[0])
    session = await sessions.create("k", part_size=10)

    async def body() -> Any:
        yield b"0123456789"

    await sessions.upload_part(session, 1, body(), expected={})
    now[0] += 61
    with pytest.raises(NotFoundError):
        await sessions.get(session.id)
    assert await sessions.sweep() == 1
    assert await sessions.sweep() == 0
    assert [k async for k in StateStore(store).iter_keys("uploads/")] == []
