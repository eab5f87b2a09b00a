"""The file service behind `make serve`, over real HTTP, on memory and local."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from unistore import LocalBackend, MemoryBackend, StorageBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import free_port, running_server


@pytest.fixture(params=["memory", "local"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, StorageBackend]]:
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/files"
    backend: StorageBackend
    if request.param == "memory":
        backend = MemoryBackend(base_url=base_url)
    else:
        backend = LocalBackend(base_path=str(tmp_path), base_url=base_url, fsync=False)
    with running_server(create_app(backend, settings=ServiceSettings(auth=False)), port) as url:
        yield url, backend


def test_put_get_list_url_delete(service: tuple[str, StorageBackend]) -> None:
    base, _ = service
    with httpx.Client(base_url=base) as c:
        headers = {"content-type": "text/plain", "x-meta-owner": "me"}
        r = c.put("/v1/objects/docs/a b.txt", content=b"hello there", headers=headers)
        assert r.status_code == 201
        etag = r.json()["etag"]
        assert r.headers["etag"] == f'"{etag}"' and r.json()["metadata"] == {"owner": "me"}
        r = c.get("/v1/objects/docs/a b.txt")
        assert r.content == b"hello there" and r.headers["content-type"].startswith("text/plain")
        r = c.get("/v1/objects/docs/a b.txt", headers={"range": "bytes=6-"})
        assert (r.status_code, r.content, r.headers["content-range"]) == (206, b"there", "bytes 6-10/11")
        assert c.get("/v1/objects/docs/a b.txt", headers={"if-none-match": f'"{etag}"'}).status_code == 304
        listing = c.get("/v1/objects", params={"prefix": "docs/"}).json()
        assert [o["key"] for o in listing["objects"]] == ["docs/a b.txt"] and listing["next_cursor"] is None
        url = c.get("/v1/urls/docs/a b.txt", params={"download": "true"}).json()["url"]
        r = httpx.get(url)
        assert r.content == b"hello there" and r.headers["content-disposition"].startswith("attachment")
        assert c.get("/_ops/health").json()["status"] == "healthy"
        op = {"idempotency-key": "upload-1"}
        first = c.put("/v1/objects/docs/once", content=b"1", headers=op).json()
        assert c.put("/v1/objects/docs/once", content=b"1", headers=op).json() == first  # state in the store
        assert c.delete("/v1/objects/docs/a b.txt").json() == {"deleted": True}
        assert c.delete("/v1/objects/docs/a b.txt").json() == {"deleted": False}
        assert c.get("/v1/objects/docs/a b.txt").status_code == 404
        assert c.get("/v1/urls/docs/a b.txt").status_code == 404


def test_conditional_writes_and_bad_input(service: tuple[str, StorageBackend]) -> None:
    base, _ = service
    with httpx.Client(base_url=base) as c:
        assert c.put("/v1/objects/c", content=b"1", headers={"if-none-match": "*"}).status_code == 201
        r = c.put("/v1/objects/c", content=b"2", headers={"if-none-match": "*"})
        assert r.status_code == 412 and r.json()["error"]["type"] == "AlreadyExistsError"
        etag = c.get("/v1/objects/c").headers["etag"]
        assert c.put("/v1/objects/c", content=b"3", headers={"if-match": etag}).status_code == 201
        assert c.put("/v1/objects/c", content=b"4", headers={"if-match": etag}).status_code == 412
        assert c.get("/v1/objects/c").content == b"3"
        assert c.put("/v1/objects/%2e%2e/escape", content=b"x").status_code == 400
        assert c.put("/v1/objects/a%5Cb", content=b"x").status_code == 400
        assert c.get("/v1/objects/c", headers={"range": "bytes=5-"}).status_code == 416
        assert c.get("/v1/objects", params={"prefix": "../"}).status_code == 400
        assert c.get("/v1/objects/c").content == b"3"


def test_paging_and_form_upload(service: tuple[str, StorageBackend]) -> None:
    base, _ = service
    with httpx.Client(base_url=base) as c:
        for i in range(5):
            assert c.put(f"/v1/objects/p/{i}", content=b"x").status_code == 201
        page = c.get("/v1/objects", params={"prefix": "p/", "limit": 2}).json()
        assert [o["key"] for o in page["objects"]] == ["p/0", "p/1"] and page["next_cursor"]
        page = c.get("/v1/objects", params={"prefix": "p/", "limit": 2, "cursor": page["next_cursor"]}).json()
        assert [o["key"] for o in page["objects"]] == ["p/2", "p/3"]
        page = c.get("/v1/objects", params={"prefix": "p/", "limit": 2, "cursor": page["next_cursor"]}).json()
        assert [o["key"] for o in page["objects"]] == ["p/4"] and page["next_cursor"] is None
        r = c.post("/v1/upload", files={"file": ("photo.png", b"\x89PNG data", "image/png")}, data={"key": "up/p.png"})
        assert r.status_code == 201 and httpx.get(r.json()["url"]).content == b"\x89PNG data"


def test_max_list_limit_from_environment() -> None:
    """``UNISTORE_MAX_LIST_LIMIT`` caps a listing page like every other setting read from the environment."""
    settings = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_MAX_LIST_LIMIT": "2"})
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files")
    with running_server(create_app(backend, settings=settings), port) as url, httpx.Client(base_url=url) as c:
        for i in range(3):
            assert c.put(f"/v1/objects/m/{i}", content=b"x").status_code == 201
        page = c.get("/v1/objects", params={"prefix": "m/", "limit": 1000}).json()
        assert [o["key"] for o in page["objects"]] == ["m/0", "m/1"] and page["next_cursor"]
