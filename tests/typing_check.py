"""Typing-only use of the public API: `mypy --strict` checks this file (it is not collected by pytest)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Depends, FastAPI

from unistore import (
    BaseBackend,
    ByteRange,
    Download,
    IfMatch,
    LocalBackend,
    MemoryBackend,
    ObjectInfo,
    StorageBackend,
    SuffixRange,
    add_storage,
    easy_storage,
    get_storage,
)


async def chunks() -> AsyncIterator[bytes]:
    yield b"a"


async def use(storage: StorageBackend = Depends(get_storage)) -> None:
    url: str = await storage.put("k", b"data", "text/plain", {"n": 1})
    data: bytes = await storage.get("k")
    deleted: bool = await storage.delete("k")
    found: bool = await storage.exists("k")
    signed: str = await storage.get_url("k", expires_in=60, download=True)
    keys: list[str] = await storage.list_keys(prefix="a/", limit=10)
    meta: dict[str, object] = await storage.get_metadata("k")
    info: ObjectInfo = await storage.put_object("k", chunks(), mode="create")
    await storage.put_object("k", Path("x"), mode=IfMatch(info.etag))
    dl: Download = await storage.open("k", range=ByteRange(0, 10), if_none_match=info.etag)
    async with dl:
        async for chunk in dl:
            assert isinstance(chunk, bytes)
    await storage.open("k", range=SuffixRange(5))
    async for obj in storage.iter_objects("a/", start_after="a/b"):
        assert obj.size >= 0
    print(url, data, deleted, found, signed, keys, meta)


def build() -> None:
    app = FastAPI()
    storage: StorageBackend = add_storage(app, MemoryBackend(max_size=10), serve_files=True)
    local: BaseBackend = LocalBackend(base_path="/tmp/x", fsync=False)
    other: BaseBackend = easy_storage(backend="memory", max_size=5)
    print(storage, local, other)
