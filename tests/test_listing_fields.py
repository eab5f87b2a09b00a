"""Listings never invent fields: S3's ListObjectsV2 has no content type, so a listed S3 object's
``content_type`` is ``None`` (``-`` in ``unistore ls -l``), while ``head``/``stat`` give the stored one."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

from unistore import CommonPrefix, LocalBackend, ObjectInfo
from unistore.cli import app
from unistore.testing import S3Server

runner = CliRunner()


@pytest.fixture(params=["moto", "seaweed"])
def server(request: pytest.FixtureRequest) -> S3Server:
    return request.getfixturevalue(request.param)  # type: ignore[no-any-return]


async def test_s3_listings_report_an_unknown_content_type(server: S3Server) -> None:
    prefix = f"ct-{uuid.uuid4().hex[:8]}/"
    async with server.backend() as s3:
        await s3.put_object(prefix + "a.bin", b"xy", content_type="text/x-stored")
        listed = [i async for i in s3.iter_objects(prefix)]
        assert [(i.key, i.size, i.content_type) for i in listed] == [(prefix + "a.bin", 2, None)]
        entries = [e async for e in s3.iter_entries(prefix)]
        assert isinstance(entries[0], ObjectInfo) and entries[0].content_type is None
        assert (await s3.head(prefix + "a.bin")).content_type == "text/x-stored"


def test_ls_long_prints_a_dash_and_stat_the_stored_type(seaweed: S3Server, tmp_path: Path) -> None:
    prefix = f"cli-ct-{uuid.uuid4().hex[:8]}"
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    store = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    (tmp_path / "a.json").write_text("{}")
    put = runner.invoke(app, ["put", "d/a.json", str(tmp_path / "a.json"), "-s", store, "--content-type",
                              "application/x-stored", "-m", "k=v", "-q"], env=env)  # fmt: skip
    assert put.exit_code == 0, put.stderr
    ls = runner.invoke(app, ["ls", "-l", "-r", "-s", store], env=env)
    assert ls.exit_code == 0, ls.stderr
    (line,) = ls.stdout.splitlines()
    assert line.split()[-2:] == ["-", "d/a.json"]  # not application/json guessed, nor octet-stream invented
    meta = json.loads(runner.invoke(app, ["stat", "d/a.json", "-s", store], env=env).stdout)
    assert meta["content_type"] == "application/x-stored" and meta["k"] == "v"
    # a tree copy out of S3 keeps the object's own fields, which its listing does not carry
    dst = tmp_path / "store"
    cp = runner.invoke(app, ["cp", "-r", store, f"file://{dst}#copy/", "-q"], env=env)
    assert cp.exit_code == 0, cp.stderr

    async def stored() -> ObjectInfo:
        async with LocalBackend(base_path=str(dst)) as local:
            return await local.head("copy/d/a.json")

    info = asyncio.run(stored())
    assert info.content_type == "application/x-stored" and dict(info.metadata) == {"k": "v"}


def test_the_service_lists_a_folder_through_the_stores_native_listing() -> None:
    """Layers that list objects as their inner store does (the service's Observe, Idempotency and
    Validate) pass its native folder listing through instead of computing one."""
    import httpx

    from unistore import MemoryBackend
    from unistore.service import ServiceSettings, create_app
    from unistore.testing import running_server

    class Counting(MemoryBackend):
        calls: ClassVar[dict[str, int]] = {"entries": 0, "objects": 0}

        def iter_entries(self, *args: Any, **kw: Any) -> AsyncIterator[ObjectInfo | CommonPrefix]:
            self.calls["entries"] += 1
            return super().iter_entries(*args, **kw)

        def iter_objects(self, *args: Any, **kw: Any) -> AsyncIterator[ObjectInfo]:
            self.calls["objects"] += 1
            return super().iter_objects(*args, **kw)

    store = Counting()

    async def fill() -> None:
        for i in range(30):
            await store.put_object(f"d{i % 10}/k{i}", b"x")
        await store.put_object("top.txt", b"x")

    asyncio.run(fill())
    with running_server(create_app(store, settings=ServiceSettings(auth=False))) as url:
        page = httpx.get(f"{url}/v1/objects", params={"prefix": "", "delimiter": "/"}).json()
    assert page["prefixes"] == [f"d{i}/" for i in range(10)]
    assert [o["key"] for o in page["objects"]] == ["top.txt"]
    assert Counting.calls == {"entries": 1, "objects": 0}  # not one iter_objects per folder
