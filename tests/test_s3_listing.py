"""S3 listings with names XML 1.0 cannot carry, written by another client (botocore), on moto and SeaweedFS.

Regression for issue 11 item 9: without ``encoding-type=url`` a key such as ``ctl\\x01.txt`` made
its prefix unlistable (a raw ``ParseError`` on moto, an altered name and a broken continuation on
SeaweedFS).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI, Request, Response

from unistore import StorageError, UnavailableError, add_storage, get_storage
from unistore.backends.s3 import S3Backend
from unistore.testing import running_server
from unistore.testing._s3servers import S3Server

# valid keys whose names an encoder changes (space, +, %, non-ASCII, ~) and names no key can have
VALID = ["a b+c%41.txt", "p+q", "x%2By", "z%20", "é~.txt", "中/文", "~tilde", "sp ace/x"]
FOREIGN = ["ctl\x01.txt", "ctl\x1f/x", "del\x7f", "dir/"]


@pytest.fixture(params=["moto", "seaweed"])
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


@pytest.fixture
def written(server: S3Server) -> Iterator[tuple[S3Server, str]]:
    """A fresh prefix holding VALID and FOREIGN keys, written with botocore."""
    pfx = f"enc-{os.urandom(4).hex()}/"
    client = server.client()
    try:
        for name in VALID:
            client.put_object(Bucket="unistore-tests", Key=pfx + name, Body=name.encode())
        for name in FOREIGN:
            client.put_object(Bucket="unistore-tests", Key=pfx + name, Body=name.encode())
        yield server, pfx
    finally:
        client.close()


async def test_prefix_with_control_character_keys_lists_exactly(written: tuple[S3Server, str]) -> None:
    server, pfx = written
    # pages of 2: continuations start after names that needed encoding (one with a control character)
    for options in ({}, {"page_size": 2}):
        backend = server.backend(**options)
        try:
            keys = await backend.list_keys(pfx)
            assert keys == sorted(pfx + k for k in VALID)
            infos = [i async for i in backend.iter_objects(pfx)]
            assert [i.key for i in infos] == keys
            for key in keys:  # each listed name exists and holds what botocore wrote under it
                assert await backend.get(key) == key[len(pfx) :].encode()
            after = pfx + "p+q"
            assert [k async for k in backend.iter_keys(pfx, start_after=after)] == [k for k in keys if k > after]
        finally:
            await backend.aclose()


async def test_listing_under_a_backend_prefix_decodes_before_cutting(written: tuple[S3Server, str]) -> None:
    server, pfx = written
    backend = server.backend(prefix=pfx, page_size=3)
    try:
        assert await backend.list_keys() == sorted(VALID)
    finally:
        await backend.aclose()


async def test_upload_sessions_list_their_exact_keys(server: S3Server) -> None:
    pfx = f"enc-{os.urandom(4).hex()}/"
    backend = server.backend()
    names = ["a b%41", "é~"]
    try:
        sessions = [await backend.uploads.start(pfx + n) for n in names]
        try:
            listed = sorted(s.key for s, _ in await backend.uploads.list(pfx))
            assert listed == sorted(pfx + n for n in names)
        finally:
            for s in sessions:
                await backend.uploads.abort(s)
    finally:
        await backend.aclose()


@pytest.mark.xfail(
    strict=True, reason="SeaweedFS echoes encoding-type=url on ListMultipartUploads without encoding the keys"
)
async def test_upload_session_with_plus_lists_its_exact_key_on_seaweedfs(seaweed: S3Server) -> None:
    pfx = f"enc-{os.urandom(4).hex()}/"
    backend = seaweed.backend()
    try:
        session = await backend.uploads.start(pfx + "p+q%41")
        try:
            assert [s.key for s, _ in await backend.uploads.list(pfx)] == [pfx + "p+q%41"]
        finally:
            await backend.uploads.abort(session)
    finally:
        await backend.aclose()


def _garbage_app() -> FastAPI:
    """A server answering every request 200 with a body that is not XML (a proxy's page, a cut answer)."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST"])
    async def reply(request: Request, path: str) -> Response:
        return Response(b"<ListBucketResult><Contents><Key>a\x01", media_type="application/xml")

    return app


async def test_unparsable_xml_is_a_storage_error_and_a_5xx_under_add_storage() -> None:
    with running_server(_garbage_app()) as url:
        backend = S3Backend(bucket="b", endpoint=url, access_key="a", secret_key="s")
        try:
            with pytest.raises(UnavailableError, match="not valid XML"):
                await backend.list_keys("p/")
            with pytest.raises(StorageError):
                await backend.uploads.list()
            with pytest.raises(StorageError):
                await backend.uploads.start("k")

            app = FastAPI()
            add_storage(app, backend)

            @app.get("/ls")
            async def ls(storage: S3Backend = Depends(get_storage)) -> list[str]:
                return await storage.list_keys("p/")

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                r = await client.get("/ls")
            assert r.status_code == 503
        finally:
            await backend.aclose()


async def test_listing_requests_the_next_page_ahead_without_extra_requests(seaweed: S3Server) -> None:
    pfx = f"ahead-{os.urandom(4).hex()}/"
    backend = seaweed.backend(page_size=2)
    lists: list[dict[str, str]] = []
    send = backend._send

    async def counting(method: str, path: str, **kwargs: Any) -> Any:
        if kwargs.get("op") == "list":
            lists.append(dict(kwargs.get("query") or {}))
        return await send(method, path, **kwargs)

    try:
        for i in range(9):
            await backend.put_object(f"{pfx}k{i}", b"x")
        backend._send = counting  # type: ignore[method-assign]
        assert [i.key async for i in backend.iter_objects(pfx)] == [f"{pfx}k{i}" for i in range(9)]
        assert len(lists) == 5  # pages of 2, 2, 2, 2, 1: none requested twice, none past the last
        assert len({q.get("continuation-token", q.get("start-after", "")) for q in lists}) == 5
        lists.clear()
        async for _ in backend.iter_keys(pfx):
            break  # a caller that stops after the first key: no page requested ahead
        assert len(lists) == 1
        entries = [e async for e in backend.iter_entries(pfx)]
        assert len(entries) == 9
    finally:
        await backend.aclose()
