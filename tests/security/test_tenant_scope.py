"""Tenant isolation: a scoped view, a prefix-restricted service token and the FastAPI tenant dependency never
reach another tenant's objects: reads, writes, listings, copies, signed URLs, traversal (percent-encoded too)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import Depends, FastAPI, Header

from unistore import (
    InvalidKeyError,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    ObjectInfo,
    PermissionDeniedError,
    StorageBackend,
    StorageError,
    scoped,
)
from unistore.fastapi import add_storage, tenant_storage
from unistore.layers import Layer
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import free_port, running_server
from unistore.testing._s3servers import S3Server

SECRET = "tenant-scope-secret-0123456789"
TRAVERSALS = [
    "../b/secret.txt",
    "./../b/secret.txt",
    "x/../../b/secret.txt",
    "%2e%2e/b/secret.txt",
    "%2E%2E%2Fb%2Fsecret.txt",
    "%252e%252e/b/secret.txt",
    "..%2fb%2fsecret.txt",
    "..\\b\\secret.txt",
    "/tenants/b/secret.txt",
    "C:/tenants/b/secret.txt",
    "\x00../b/secret.txt",
    "",
]


@pytest.fixture(params=["memory", "local", "s3"])
async def raw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    store: StorageBackend
    if request.param == "memory":
        store = MemoryBackend(url_secret=SECRET)
    elif request.param == "local":
        store = LocalBackend(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET)
    else:
        server: S3Server = request.getfixturevalue("seaweed")
        store = server.backend(prefix=f"tenant-sec-{uuid.uuid4().hex[:8]}/")
    await store.put_object("tenants/b/secret.txt", b"b's secret")
    await store.put_object("tenants/ab/secret.txt", b"ab's secret")
    await store.put_object("tenants/a.txt", b"a sibling file")
    yield store
    await store.aclose()


async def test_traversal_never_leaves_the_scope(raw: StorageBackend) -> None:
    a = scoped(raw, "tenants/a/")
    for key in TRAVERSALS:
        for call in (
            a.get(key),
            a.head(key),
            a.put_object(key, b"overwrite"),
            a.remove(key),
            a.copy(key, "stolen.txt"),
            a.copy("stolen.txt", key),
            a.sign_url(key),
        ):
            with pytest.raises(InvalidKeyError):
                await call
    for prefix in ("../", "%2e%2e/", "../b/", "/"):
        with pytest.raises(InvalidKeyError):
            await a.list_keys(prefix)
    assert await raw.get("tenants/b/secret.txt") == b"b's secret"
    assert not await raw.exists("tenants/a/stolen.txt")


async def test_lookalike_dots_stay_inside(raw: StorageBackend) -> None:
    a = scoped(raw, "tenants/a/")
    for key in ("\uff0e\uff0e/b/secret.txt", "\u2024\u2024/b/secret.txt", "...", "..a"):
        await a.put_object(key, b"mine")
        assert await raw.get("tenants/a/" + key) == b"mine"
    assert await raw.get("tenants/b/secret.txt") == b"b's secret"


async def test_listings_never_show_other_tenants(raw: StorageBackend) -> None:
    a = scoped(raw, "tenants/a")
    await a.put_object("mine.txt", b"1")
    assert await a.list_keys() == ["mine.txt"]
    assert [e async for e in a.iter_entries()] != [] and all(
        not getattr(e, "key", getattr(e, "prefix", "")).startswith(("b/", "ab/"))
        for e in [e async for e in a.iter_entries()]
    )
    assert [k async for k in a.iter_keys(start_after="")] == ["mine.txt"]
    assert await a.list_keys("b") == [] and await a.list_keys("secret") == []


async def test_cross_tenant_reads_and_copies_are_not_found(raw: StorageBackend) -> None:
    a = scoped(raw, "tenants/a/")
    with pytest.raises(NotFoundError) as err:
        await a.get("secret.txt")  # b's file has the same relative name: a's view cannot see it
    assert err.value.key == "secret.txt"
    with pytest.raises(NotFoundError):
        await a.copy("secret.txt", "mine.txt")
    assert not await raw.exists("tenants/a/mine.txt")


class _Leaky(Layer):
    """A broken store that answers listings with keys outside the prefix asked for."""

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects("", start_after=start_after):
            yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for info in self.iter_objects(prefix, start_after=start_after):
            yield info.key


async def test_a_store_answering_outside_the_scope_fails_instead_of_leaking() -> None:
    store = MemoryBackend()
    await store.put_object("tenants/b/secret.txt", b"x")
    await store.put_object("tenants/a/x", b"y")
    with pytest.raises(StorageError, match="outside the scope"):
        await scoped(_Leaky(store), "tenants/a/").list_keys()


# --- signed URLs over real HTTP -----------------------------------------------------------------


@pytest.fixture
def served() -> Iterator[MemoryBackend]:
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend, serve_files=True)
    with running_server(app, port):
        yield backend


async def test_signed_urls_open_only_their_own_tenants_object(served: MemoryBackend) -> None:
    await served.put_object("tenants/b/secret.txt", b"b's secret")
    a = scoped(served, "tenants/a/")
    await a.put_object("secret.txt", b"a's own")
    url = await a.get_url("secret.txt")
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"a's own"
        for forged in (
            url.replace("tenants/a/", "tenants/b/"),
            url.replace("tenants/a/secret.txt", "tenants/a/../b/secret.txt"),
            url.replace("tenants/a/secret.txt", "tenants/a/%2e%2e/b/secret.txt"),
        ):
            r = await client.get(forged)
            assert r.status_code in (400, 403, 404) and b"b's secret" not in r.content


# --- the service's prefix-restricted tokens -----------------------------------------------------


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[str, LocalBackend, TokenAuthority]]:
    port = free_port()
    store = LocalBackend(base_path=str(tmp_path), base_url=f"http://127.0.0.1:{port}/files", fsync=False)
    app = create_app(store, settings=ServiceSettings(secret=SECRET.encode()))
    with running_server(app, port) as url:
        yield url, store, TokenAuthority(SECRET.encode())


async def test_service_token_for_one_tenant_reaches_nothing_else(
    service: tuple[str, LocalBackend, TokenAuthority],
) -> None:
    url, store, authority = service
    await store.put_object("tenants/b/secret.txt", b"b's secret")
    await store.put_object("tenants/ab/secret.txt", b"ab's secret")
    token = authority.issue(["read", "write", "delete"], prefix="tenants/a/")
    async with httpx.AsyncClient(base_url=url, headers={"authorization": f"Bearer {token}"}) as c:
        assert (await c.put("/v1/objects/tenants/a/mine.txt", content=b"mine")).status_code == 201
        for path in ("tenants/b/secret.txt", "tenants/ab/secret.txt", "tenants/a.txt"):
            assert (await c.get(f"/v1/objects/{path}")).status_code == 403
            assert (await c.put(f"/v1/objects/{path}", content=b"x")).status_code == 403
            assert (await c.delete(f"/v1/objects/{path}")).status_code == 403
            assert (await c.get(f"/v1/urls/{path}")).status_code == 403
        for path in ("tenants/a/../b/secret.txt", "tenants/a/%2e%2e/b/secret.txt", "tenants/a/%252e%252e/b/secret.txt"):
            r = await c.get(f"/v1/objects/{path}")
            assert r.status_code in (400, 403, 404) and b"b's secret" not in r.content
            assert (await c.put(f"/v1/objects/{path}", content=b"x")).status_code in (400, 403, 404)
        for prefix in ("", "tenants/", "tenants/b/", "tenants/a/../b/"):
            assert (await c.get("/v1/objects", params={"prefix": prefix})).status_code in (400, 403)
        listing = (await c.get("/v1/objects", params={"prefix": "tenants/a/"})).json()
        assert [o["key"] for o in listing["objects"]] == ["tenants/a/mine.txt"]
        page = (await c.get("/v1/objects", params={"prefix": "tenants/a/", "start_after": "tenants/"})).json()
        assert [o["key"] for o in page["objects"]] == ["tenants/a/mine.txt"]
        files = {"file": ("x.txt", b"x")}
        assert (await c.post("/v1/upload", files=files, data={"key": "tenants/b/x.txt"})).status_code == 403
        signed = (await c.get("/v1/urls/tenants/a/mine.txt")).json()["url"]
        assert (await c.get(signed.replace("tenants/a/mine.txt", "tenants/b/secret.txt"))).status_code == 403
    assert await store.get("tenants/b/secret.txt") == b"b's secret"
    assert not await store.exists("tenants/b/x.txt")


# --- the FastAPI tenant dependency ----------------------------------------------------------------


def _tenant_header(x_tenant: Annotated[str, Header()]) -> str:
    return x_tenant


TenantFiles = Annotated[StorageBackend, Depends(tenant_storage(_tenant_header))]


async def test_fastapi_tenant_dependency_refuses_ids_that_are_not_one_segment() -> None:
    storage = MemoryBackend()
    await storage.put_object("tenants/b/secret.txt", b"b's secret")
    app = FastAPI()
    add_storage(app, storage)

    @app.get("/files")
    async def files(store: TenantFiles) -> list[str]:
        return await store.list_keys()

    @app.get("/files/{name}")
    async def read(name: str, store: TenantFiles) -> bytes:
        return await store.get(name)

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://app") as c:
        assert (await c.get("/files", headers={"x-tenant": "b"})).json() == ["secret.txt"]
        assert (await c.get("/files", headers={"x-tenant": "a"})).json() == []
        assert (await c.get("/files/secret.txt", headers={"x-tenant": "a"})).status_code == 404
        for bad in ("..", ".", "a/../b", "b/..", "%2e%2e", "a%2Fb", "", ".unistore", "a\\b"):
            r = await c.get("/files", headers={"x-tenant": bad})
            assert r.status_code in (400, 422), bad
            assert b"secret" not in r.content


def test_tenant_storage_template_is_checked() -> None:
    from unistore import ConfigurationError

    def tenant() -> str:
        return "a"

    for template in ("tenants/", "tenants/{tenant_id}", "{tenant_id}/{tenant_id}/"):
        with pytest.raises(ConfigurationError):
            tenant_storage(tenant, template=template)
    assert PermissionDeniedError.status == 403
