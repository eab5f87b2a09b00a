"""The conformance suite every backend and layer stack must pass.

Subclass :class:`BackendConformance` in a test module and provide one pytest
fixture, ``backend``, yielding the store under test. Every test writes under a
fresh random prefix, so one session-scoped store can serve the whole suite.
Tests that need a capability the backend does not declare instead check that
it raises :class:`UnsupportedError`. Signed-URL tests fetch the URL over real
HTTP: a store that signs its own URLs (local, memory) must be served by a live
``add_storage(app, backend, serve_files=True)`` at its ``base_url``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import pytest

from .._base import StorageBackend
from .._errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidMetadataError,
    InvalidRangeError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionFailedError,
    StorageError,
    UnsupportedError,
)
from .._types import ByteRange, CommonPrefix, IfMatch, ObjectInfo, SuffixRange

__all__ = ["BackendConformance", "INVALID_KEYS", "TRICKY_KEYS"]

TRICKY_KEYS = [
    "a..b.txt",
    "with space.txt",
    "ünïcödé/файл/文件.bin",
    "emoji 🎉.png",
    "!@#$%^&()_+-=;',.txt",
    "a/b/c/d/e/f/g/deep.txt",
    "...dots",
    "trailing.",
    "x.meta.json",
    "y.tmp",
    "100%",
    "plus+and=eq",
    "q?uestion#hash",
    "~tilde",
]

INVALID_KEYS = [
    "",
    "/abs",
    "a//b",
    "a/",
    "../etc/passwd",
    "a/../../b",
    "./a",
    "a/./b",
    "..",
    ".",
    "a\\b",
    "nul\x00byte",
    "ctrl\x07char",
    "C:/windows",
    "c:evil",
    "%2e%2e/etc/passwd",
    "a/%2E%2E/b",
    "%252e%252e/x",
    "a%2F..%2Fb",
    "x" * 1025,
    "é" * 513,
    ".unistore/secret",
    "a/.unistore.b.meta",
]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
        await asyncio.sleep(0)


class _Boom(Exception):
    pass


async def _failing_body(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise _Boom("body source failed")


class BackendConformance:
    """The shared contract. Needs a ``backend`` fixture."""

    big_size: int = 5 * 1024 * 1024 + 123
    list_count: int = 2500
    race_writers: int = 20
    """Concurrent writers in the if-match counter race (each round costs about 2 x writers requests)."""
    race_increments: int = 20
    """Successful increments per writer in that race."""

    @pytest.fixture
    def prefix(self) -> str:
        return f"conf-{uuid.uuid4().hex[:12]}/"

    # --- round trips ------------------------------------------------------------------

    async def test_put_get_round_trip(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "hello.txt"
        url = await backend.put(key, b"hello world", "text/plain")
        assert isinstance(url, str) and url
        assert await backend.get(key) == b"hello world"
        assert await backend.exists(key)

    async def test_empty_object(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "empty"
        await backend.put(key, b"", "application/octet-stream")
        assert await backend.get(key) == b""
        info = await backend.head(key)
        assert info.size == 0
        async with await backend.open(key) as dl:
            assert [c async for c in dl] == [] or b"".join([c async for c in dl]) == b""

    async def test_streamed_multi_mib_round_trip(self, backend: StorageBackend, prefix: str) -> None:
        data = os.urandom(self.big_size)
        key = prefix + "big.bin"
        info = await backend.put_object(key, _chunks(data, 256 * 1024 + 7))
        assert info.size == len(data)
        got = bytearray()
        async with await backend.open(key) as dl:
            assert dl.info.size == len(data)
            async for chunk in dl:
                got += chunk
        assert bytes(got) == data

    async def test_body_types(self, backend: StorageBackend, prefix: str) -> None:
        data = os.urandom(70_000)
        await backend.put_object(prefix + "bytearray", bytearray(data))
        await backend.put_object(prefix + "memoryview", memoryview(data))
        await backend.put_object(prefix + "file", io.BytesIO(data))
        with tempfile.TemporaryDirectory() as d:
            p = Path(d) / "src.bin"
            p.write_bytes(data)
            await backend.put_object(prefix + "path", p)
        for name in ("bytearray", "memoryview", "file", "path"):
            assert await backend.get(prefix + name) == data, name
        with pytest.raises(TypeError):
            await backend.put_object(prefix + "str", "text")  # type: ignore[arg-type]

    async def test_failed_body_leaves_old_object(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "keep"
        await backend.put(key, b"original", "text/plain")
        with pytest.raises(_Boom):
            await backend.put_object(key, _failing_body(b"partial data"))
        assert await backend.get(key) == b"original"
        with pytest.raises(_Boom):
            await backend.put_object(prefix + "never", _failing_body(b"partial"))
        assert not await backend.exists(prefix + "never")
        assert await backend.list_keys(prefix) == [key]

    async def test_metadata_and_content_type(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "doc.pdf"
        meta = {"user_id": "42", "Original_Filename": "Résumé final.pdf", "size": 3, "flag": True}
        await backend.put(key, b"%PDF", "application/pdf", meta)
        md = await backend.get_metadata(key)
        assert md["user_id"] == "42"
        assert md["original_filename"] == "Résumé final.pdf"
        assert md["flag"] == "true"
        assert md["size"] == 4  # the system field wins over custom "size"
        assert md["content_type"] == "application/pdf"
        assert md["key"] == key
        assert isinstance(md["etag"], str) and md["etag"]
        info = await backend.head(key)
        assert info.metadata == {"user_id": "42", "original_filename": "Résumé final.pdf", "size": "3", "flag": "true"}
        assert info.content_type == "application/pdf"

    async def test_metadata_is_the_same_on_every_read_path(self, backend: StorageBackend, prefix: str) -> None:
        """head, open (whole, ranged, large) and get_metadata return the metadata exactly as written:
        percent signs, ``+``, unicode and mixed-case names (lower-cased once, at write time)."""
        meta = {
            "note": "50%25 off",
            "pct": "100% sure",
            "plus": "a+b c=d&e",
            "uni": "Résumé 中文 ✓",
            "CamelKey": "Mixed Case %41",
            "padded": " two  spaces ",
        }
        expected = {name.lower(): value for name, value in meta.items()}
        for key, data in ((prefix + "small.txt", b"0123456789"), (prefix + "large.bin", os.urandom(300_000))):
            await backend.put_object(key, data, content_type="text/plain", metadata=meta)
            assert dict((await backend.head(key)).metadata) == expected
            md = await backend.get_metadata(key)
            assert {name: md[name] for name in expected} == expected
            for rng in (None, ByteRange(2, 5)):
                download = await backend.open(key, range=rng)
                try:
                    assert dict(download.info.metadata) == expected, rng
                finally:
                    await download.aclose()

    async def test_content_type_guessed(self, backend: StorageBackend, prefix: str) -> None:
        await backend.put_object(prefix + "pic.png", b"\x89PNG")
        assert (await backend.head(prefix + "pic.png")).content_type == "image/png"
        await backend.put_object(prefix + "blob", b"x")
        assert (await backend.head(prefix + "blob")).content_type == "application/octet-stream"

    async def test_invalid_metadata_writes_nothing(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "m"
        await backend.put(key, b"v1", "text/plain", {"a": "1"})
        for bad in ({"nested": {"x": 1}}, {"none": None}, {"bad name": "x"}, {"x": "y" * 3000}, {"A": "1", "a": "2"}):
            with pytest.raises(InvalidMetadataError) as exc:
                await backend.put(key, b"v2", "text/plain", bad)
            assert isinstance(exc.value, ValueError)
        assert await backend.get(key) == b"v1"
        assert (await backend.head(key)).metadata == {"a": "1"}

    async def test_header_values_validated_before_writing(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "h"
        await backend.put(key, b"v1", "text/plain")
        bad: list[dict[str, Any]] = [
            {"content_type": "text/plain\r\nSet-Cookie: x=1"},
            {"content_type": "tëxt/plain"},
            {"content_type": "text/html\n"},
            {"content_type": "text/plain, text/html"},  # a browser reads a list's last type: text/html
            {"content_type": "text/plain;,text/html"},
            {"content_type": "text/html, */*"},
            {"content_type": "*/*"},
            {"content_type": "not a type"},
            {"cache_control": "public\nX: 1"},
            {"cache_control": "no-cache\n"},
            {"content_disposition": "inline\r\n"},
            {"content_disposition": "inline\n"},
        ]
        for kwargs in bad:
            with pytest.raises(InvalidArgumentError):
                await backend.put_object(key, b"v2", **kwargs)
        assert await backend.get(key) == b"v1"
        assert (await backend.head(key)).content_type == "text/plain"

    async def test_cache_control_and_disposition_read_back_as_stored(
        self, backend: StorageBackend, prefix: str
    ) -> None:
        plain = await backend.put_object(prefix + "plain.html", b"<p>", content_type="text/html")
        for info in (plain, await backend.head(prefix + "plain.html")):
            assert (info.cache_control, info.content_disposition) == (None, None)
        async with await backend.open(prefix + "plain.html") as dl:
            assert (dl.info.cache_control, dl.info.content_disposition) == (None, None)
        await backend.put_object(
            prefix + "set.html",
            b"<p>",
            content_type="text/html",
            cache_control="public, max-age=60",
            content_disposition='inline; filename="set.html"',
        )
        info = await backend.head(prefix + "set.html")
        assert (info.cache_control, info.content_disposition) == ("public, max-age=60", 'inline; filename="set.html"')
        async with await backend.open(prefix + "set.html") as dl:
            stored = (dl.info.cache_control, dl.info.content_disposition)
        assert stored == (info.cache_control, info.content_disposition)

    async def test_overwrite_replaces_metadata(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "o"
        await backend.put(key, b"1", "text/plain", {"a": "1"})
        await backend.put(key, b"22", "application/json", {"b": "2"})
        info = await backend.head(key)
        assert (info.size, info.content_type, dict(info.metadata)) == (2, "application/json", {"b": "2"})

    # --- missing objects and errors -----------------------------------------------------

    async def test_not_found(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "missing"
        calls: list[Awaitable[object]] = [
            backend.get(key),
            backend.head(key),
            backend.get_metadata(key),
            backend.get_url(key),
            backend.open(key),
        ]
        for call in calls:
            with pytest.raises(NotFoundError) as exc:
                await call
            assert isinstance(exc.value, FileNotFoundError)
            assert isinstance(exc.value, StorageError)
        assert await backend.exists(key) is False

    async def test_delete_is_idempotent(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "d"
        await backend.put(key, b"x", "text/plain")
        assert await backend.delete(key) is True
        assert await backend.delete(key) is False
        assert not await backend.exists(key)
        results = await asyncio.gather(*(backend.delete(prefix + "never") for _ in range(10)))
        assert results == [False] * 10

    async def test_concurrent_deletes_never_raise(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "cd"
        await backend.put(key, b"x", "text/plain")
        results = await asyncio.gather(*(backend.delete(key) for _ in range(20)))
        assert results.count(True) <= 1 and not await backend.exists(key)

    # --- ranges -----------------------------------------------------------------------

    async def test_ranges(self, backend: StorageBackend, prefix: str) -> None:
        if not backend.capabilities.ranges:
            with pytest.raises(UnsupportedError):
                await backend.open(prefix + "r", range=ByteRange(0, 1))
            return
        data = bytes(range(256)) * 40  # 10,240 bytes
        key = prefix + "r"
        await backend.put(key, data, "application/octet-stream")

        async def read(rng: Any) -> tuple[bytes, int, int]:
            async with await backend.open(key, range=rng) as dl:
                body = b"".join([c async for c in dl])
                assert len(body) == dl.content_length
                return body, dl.start, dl.end

        assert await read(ByteRange(10, 20)) == (data[10:20], 10, 20)
        assert await read(ByteRange(10_000)) == (data[10_000:], 10_000, len(data))
        assert await read(SuffixRange(100)) == (data[-100:], len(data) - 100, len(data))
        assert await read(SuffixRange(99_999)) == (data, 0, len(data))
        assert await read(ByteRange(10_200, 99_999)) == (data[10_200:], 10_200, len(data))
        assert await read(ByteRange(0, 1)) == (data[:1], 0, 1)
        for bad in (ByteRange(len(data)), ByteRange(len(data) + 5, len(data) + 10)):
            with pytest.raises(InvalidRangeError) as exc:
                await backend.open(key, range=bad)
            assert isinstance(exc.value, ValueError)
        with pytest.raises(InvalidRangeError):
            ByteRange(5, 5)
        with pytest.raises(InvalidRangeError):
            ByteRange(-1)

    # --- conditional writes -----------------------------------------------------------

    async def test_create_only(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "c"
        if not backend.capabilities.conditional_put:
            with pytest.raises(UnsupportedError):
                await backend.put_object(key, b"x", mode="create")
            return
        await backend.put_object(key, b"first", mode="create")
        with pytest.raises(AlreadyExistsError) as exc:
            await backend.put_object(key, b"second", mode="create")
        assert isinstance(exc.value, FileExistsError) and isinstance(exc.value, PreconditionFailedError)
        assert await backend.get(key) == b"first"

    async def test_create_only_race_has_one_winner(self, backend: StorageBackend, prefix: str) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_create_only")
        key = prefix + "race"

        async def create(i: int) -> int | None:
            try:
                await backend.put_object(key, f"writer-{i}".encode(), mode="create")
                return i
            except AlreadyExistsError:
                return None

        winners = [w for w in await asyncio.gather(*(create(i) for i in range(20))) if w is not None]
        assert len(winners) == 1
        assert await backend.get(key) == f"writer-{winners[0]}".encode()

    async def test_if_match_write(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "m"
        if not backend.capabilities.conditional_put:
            with pytest.raises(UnsupportedError):
                await backend.put_object(key, b"x", mode=IfMatch("x"))
            return
        info = await backend.put_object(key, b"v1")
        new = await backend.put_object(key, b"v2", mode=IfMatch(info.etag))
        with pytest.raises(PreconditionFailedError):
            await backend.put_object(key, b"v3", mode=IfMatch(info.etag))
        assert await backend.get(key) == b"v2"
        with pytest.raises(PreconditionFailedError):
            await backend.put_object(prefix + "absent", b"x", mode=IfMatch(new.etag))
        assert not await backend.exists(prefix + "absent")

    async def test_if_match_counter_race(self, backend: StorageBackend, prefix: str) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_if_match_write")
        key = prefix + "counter"
        await backend.put_object(key, b"0")

        async def increment() -> None:
            done = 0
            while done < self.race_increments:
                async with await backend.open(key) as dl:
                    value = int(await dl.read())
                    etag = dl.info.etag
                try:
                    await backend.put_object(key, str(value + 1).encode(), mode=IfMatch(etag))
                    done += 1
                except PreconditionFailedError:
                    await asyncio.sleep(0)

        await asyncio.gather(*(increment() for _ in range(self.race_writers)))
        assert await backend.get(key) == str(self.race_writers * self.race_increments).encode()

    async def test_etag_changes_on_write(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "e"
        a = await backend.put_object(key, b"one")
        b = await backend.put_object(key, b"two")
        assert a.etag != b.etag
        assert (await backend.head(key)).etag == b.etag

    async def test_conditional_reads(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "cr"
        info = await backend.put_object(key, b"data")
        if not backend.capabilities.conditional_get:
            with pytest.raises(UnsupportedError):
                await backend.open(key, if_match=info.etag)
            return
        assert await (await backend.open(key, if_match=info.etag)).read() == b"data"
        with pytest.raises(PreconditionFailedError):
            await backend.open(key, if_match="not-the-etag")
        with pytest.raises(NotModifiedError):
            await backend.open(key, if_none_match=info.etag)
        with pytest.raises(NotModifiedError):
            await backend.open(key, if_none_match=f'"{info.etag}"')
        assert await (await backend.open(key, if_none_match="other")).read() == b"data"

    async def test_preconditions_before_range(self, backend: StorageBackend, prefix: str) -> None:
        """RFC 9110 §13.2.2: If-Match / If-None-Match are evaluated before Range, so a range
        past the end of a shorter new version is a 412 / 304 for the old / new etag, not a 416."""
        if not (backend.capabilities.conditional_get and backend.capabilities.ranges):
            pytest.skip("needs conditional_get and ranges")
        key = prefix + "shrunk"
        old = await backend.put_object(key, os.urandom(200_000))
        new = await backend.put_object(key, os.urandom(100_000))
        with pytest.raises(PreconditionFailedError):
            await backend.open(key, range=ByteRange(180_000, 200_000), if_match=old.etag)
        with pytest.raises(NotModifiedError):
            await backend.open(key, range=ByteRange(180_000, 200_000), if_none_match=new.etag)
        with pytest.raises(InvalidRangeError):
            await backend.open(key, range=ByteRange(180_000, 200_000), if_match=new.etag)

    async def test_concurrent_overwrites_never_mix(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "mix"
        bodies = [bytes([i]) * 300_000 for i in range(8)]
        metas = [{"writer": str(i)} for i in range(8)]
        await asyncio.gather(
            *(backend.put_object(key, _chunks(b, 65_536), metadata=m) for b, m in zip(bodies, metas, strict=True))
        )
        data = await backend.get(key)
        assert data in bodies
        info = await backend.head(key)
        assert info.metadata["writer"] == str(data[0])

    # --- listing ----------------------------------------------------------------------

    async def test_list_order_and_prefix_boundaries(self, backend: StorageBackend, prefix: str) -> None:
        keys = ["a/b", "a/b/c", "a/bc", "a/b-c", "a/b0", "a-b", "a0", "b"]
        created = []
        for k in keys:
            try:
                await backend.put(prefix + k, b"x", "text/plain")
                created.append(prefix + k)
            except InvalidKeyError:
                # a file-system store cannot hold both "a/b" and "a/b/c"
                assert k == "a/b/c"
        assert await backend.list_keys(prefix) == sorted(created)
        under_dir = await backend.list_keys(prefix + "a/b/")
        assert under_dir == [k for k in created if k.startswith(prefix + "a/b/")]
        assert await backend.list_keys(prefix + "a/b") == sorted(k for k in created if k.startswith(prefix + "a/b"))
        assert await backend.list_keys(prefix + "a/bc") == [prefix + "a/bc"]
        assert await backend.list_keys(prefix + "zzz") == []
        assert await backend.list_keys(prefix, limit=2) == sorted(created)[:2]
        assert await backend.list_keys(prefix, limit=0) == []
        infos = [i async for i in backend.iter_objects(prefix)]
        assert [i.key for i in infos] == sorted(created) and all(i.size == 1 for i in infos)

    async def test_list_start_after(self, backend: StorageBackend, prefix: str) -> None:
        keys = sorted(prefix + k for k in ["x/1", "x/2", "y", "z/9", "z/a/b"])
        for k in keys:
            await backend.put_object(k, b"x")
        for i, after in enumerate(keys):
            got = [k async for k in backend.iter_keys(prefix, start_after=after)]
            assert got == keys[i + 1 :], after
        assert [k async for k in backend.iter_keys(prefix, start_after=prefix + "x")] == keys
        assert [k async for k in backend.iter_keys(prefix, start_after=prefix + "x/2a")] == keys[2:]
        assert [k async for k in backend.iter_keys(prefix, start_after="")] == keys

    async def test_list_pagination_many_keys(self, backend: StorageBackend, prefix: str) -> None:
        n = self.list_count
        keys = [f"{prefix}many/{i:05d}" for i in range(n)]
        sem = asyncio.Semaphore(32)

        async def put(k: str) -> None:
            async with sem:
                await backend.put_object(k, b"")

        await asyncio.gather(*(put(k) for k in keys))
        assert await backend.list_keys(prefix + "many/", limit=n + 10) == keys
        assert await backend.list_keys(prefix + "many/") == keys[:1000]
        # resume page by page with start_after, as a paginating client does
        seen: list[str] = []
        after: str | None = None
        while True:
            page = []
            async for k in backend.iter_keys(prefix + "many/", start_after=after):
                page.append(k)
                if len(page) == 700:
                    break
            if not page:
                break
            seen += page
            after = page[-1]
        assert seen == keys

    async def test_delimited_listing_is_one_level_with_cursors(self, backend: StorageBackend, prefix: str) -> None:
        keys = ["a/1", "a/2/x", "a/2/y/z", "a-b", "a0/q", "b", "c/d/e", "d"]
        for k in keys:
            await backend.put_object(prefix + k, b"xy")

        def names(entries: list[ObjectInfo | CommonPrefix]) -> list[str]:
            return [e.prefix[len(prefix) :] if isinstance(e, CommonPrefix) else e.key[len(prefix) :] for e in entries]

        top = [e async for e in backend.iter_entries(prefix)]
        assert names(top) == ["a-b", "a/", "a0/", "b", "c/", "d"]
        assert all(e.size == 2 for e in top if isinstance(e, ObjectInfo))
        assert names([e async for e in backend.iter_entries(prefix + "a/")]) == ["a/1", "a/2/"]
        assert names([e async for e in backend.iter_entries(prefix + "a/2/")]) == ["a/2/x", "a/2/y/"]
        assert names([e async for e in backend.iter_entries(prefix + "a")]) == ["a-b", "a/", "a0/"]
        assert [e async for e in backend.iter_entries(prefix + "zz/")] == []
        # every entry's name is a cursor: resuming after it yields exactly the rest
        for i, entry in enumerate(top):
            cursor = entry.prefix if isinstance(entry, CommonPrefix) else entry.key
            rest = [e async for e in backend.iter_entries(prefix, start_after=cursor)]
            assert names(rest) == names(top[i + 1 :]), cursor
        inside = [e async for e in backend.iter_entries(prefix, start_after=prefix + "a/2/x")]
        assert names(inside) == ["a0/", "b", "c/", "d"]  # a cursor inside a folder skips the folder
        # a folder stands for the keys below it: once the last one is gone, so is the folder
        assert await backend.remove(prefix + "c/d/e")
        assert names([e async for e in backend.iter_entries(prefix)]) == ["a-b", "a/", "a0/", "b", "d"]
        with pytest.raises(InvalidKeyError):
            [e async for e in backend.iter_entries("../")]

    async def test_delimited_listing_pages_across_folders_and_objects(
        self, backend: StorageBackend, prefix: str
    ) -> None:
        sem = asyncio.Semaphore(16)

        async def put(k: str) -> None:
            async with sem:
                await backend.put_object(prefix + k, b"")

        keys = [f"lvl/d{i:02d}/x" for i in range(0, 60, 2)] + [f"lvl/e{i:02d}" for i in range(1, 60, 2)]
        keys += ["lvl/d10/deeper/y", "other/z"]
        await asyncio.gather(*(put(k) for k in keys))
        level = prefix + "lvl/"
        full = [e async for e in backend.iter_entries(level)]
        names = [e.prefix if isinstance(e, CommonPrefix) else e.key for e in full]
        expected = sorted(
            [f"{level}d{i:02d}/" for i in range(0, 60, 2)] + [f"{level}e{i:02d}" for i in range(1, 60, 2)]
        )
        assert names == expected
        # a client paging 7 entries at a time, each page resumed after the last name it saw
        seen: list[str] = []
        after: str | None = None
        while True:
            page: list[str] = []
            async for e in backend.iter_entries(level, start_after=after):
                page.append(e.prefix if isinstance(e, CommonPrefix) else e.key)
                if len(page) == 7:
                    break
            if not page:
                break
            seen += page
            after = page[-1]
        assert seen == expected

    async def test_listings_never_invent_a_content_type(self, backend: StorageBackend, prefix: str) -> None:
        await backend.put_object(prefix + "t/a.json", b"{}", content_type="text/x-stored")
        listed = [i async for i in backend.iter_objects(prefix + "t/")]
        entries = [e async for e in backend.iter_entries(prefix + "t/")]
        for info in (*listed, *entries):
            assert isinstance(info, ObjectInfo)
            assert info.content_type in ("text/x-stored", None), info  # the stored type, or unknown
        assert (await backend.head(prefix + "t/a.json")).content_type == "text/x-stored"

    async def test_list_prefix_is_validated(self, backend: StorageBackend) -> None:
        for bad in ("../", "/etc", "a//", "..\\"):
            with pytest.raises(InvalidKeyError):
                await backend.list_keys(prefix=bad)

    # --- keys ------------------------------------------------------------------------

    async def test_tricky_keys_round_trip(self, backend: StorageBackend, prefix: str) -> None:
        keys = [prefix + k for k in TRICKY_KEYS]
        for k in keys:
            await backend.put(k, k.encode(), "text/plain", {"k": "v"})
        for k in keys:
            assert await backend.get(k) == k.encode(), k
        assert await backend.list_keys(prefix) == sorted(keys)

    @pytest.mark.parametrize("bad", INVALID_KEYS, ids=repr)
    async def test_invalid_keys_rejected(self, backend: StorageBackend, bad: str) -> None:
        calls = (
            lambda: backend.put(bad, b"x", "text/plain"),
            lambda: backend.get(bad),
            lambda: backend.delete(bad),
            lambda: backend.exists(bad),
            lambda: backend.get_url(bad),
            lambda: backend.get_metadata(bad),
        )
        for call in calls:
            with pytest.raises(InvalidKeyError) as exc:
                await call()
            assert isinstance(exc.value, ValueError) and isinstance(exc.value, StorageError)

    # --- copy ------------------------------------------------------------------------

    async def test_copy(self, backend: StorageBackend, prefix: str) -> None:
        await backend.put(prefix + "src.txt", b"copy me", "text/plain", {"a": "1"})
        info = await backend.copy(prefix + "src.txt", prefix + "dst.txt")
        assert info.size == 7
        assert await backend.get(prefix + "dst.txt") == b"copy me"
        got = await backend.head(prefix + "dst.txt")
        assert (got.content_type, dict(got.metadata)) == ("text/plain", {"a": "1"})
        with pytest.raises(NotFoundError):
            await backend.copy(prefix + "nope", prefix + "dst2")

    # --- metadata-only updates ------------------------------------------------------------

    async def test_replace_metadata(self, backend: StorageBackend, prefix: str) -> None:
        key = prefix + "meta.txt"
        body = os.urandom(70_000)
        old = await backend.put_object(
            key, body, content_type="text/plain", metadata={"a": "1", "b": "2"}, cache_control="max-age=60"
        )
        if not backend.capabilities.conditional_put:
            with pytest.raises(UnsupportedError):
                await backend.replace_metadata(key, {"a": "9"}, if_match=old.etag)
            return
        new = await backend.replace_metadata(key, {"a": "9", "b": "2", "c": "new"}, if_match=old.etag)
        assert dict(new.metadata) == {"a": "9", "b": "2", "c": "new"}
        got = await backend.head(key)
        assert dict(got.metadata) == {"a": "9", "b": "2", "c": "new"}
        assert (got.content_type, got.cache_control, got.size) == ("text/plain", "max-age=60", len(body))
        assert got.etag == new.etag
        assert await backend.get(key) == body
        with pytest.raises(InvalidMetadataError):
            await backend.replace_metadata(key, {"bad name": "x"})
        assert dict((await backend.head(key)).metadata) == {"a": "9", "b": "2", "c": "new"}
        with pytest.raises(NotFoundError):
            await backend.replace_metadata(prefix + "absent", {"a": "1"})
        assert not await backend.exists(prefix + "absent")

    async def test_replace_metadata_removes_names(self, backend: StorageBackend, prefix: str) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_replace_metadata")
        key = prefix + "fewer"
        await backend.put_object(key, b"body", metadata={"a": "1", "b": "2"})
        await backend.replace_metadata(key, {"a": "1"})
        assert dict((await backend.head(key)).metadata) == {"a": "1"}
        await backend.replace_metadata(key, {})
        assert dict((await backend.head(key)).metadata) == {}
        assert await backend.get(key) == b"body"

    async def test_replace_metadata_if_match_never_overwrites_a_newer_version(
        self, backend: StorageBackend, prefix: str
    ) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_replace_metadata")
        key = prefix + "m"
        old = await backend.put_object(key, b"old body", metadata={"v": "1"})
        await backend.put_object(key, b"new body", metadata={"v": "2"})
        with pytest.raises(PreconditionFailedError):
            await backend.replace_metadata(key, {"v": "rewritten"}, if_match=old.etag)
        got = await backend.head(key)
        assert dict(got.metadata) == {"v": "2"} and await backend.get(key) == b"new body"

    async def test_replace_metadata_if_match_takes_star_and_http_quoted_etags(
        self, backend: StorageBackend, prefix: str
    ) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_replace_metadata")
        key = prefix + "quoted"
        await backend.put_object(key, b"body", metadata={"v": "1"})
        star = await backend.replace_metadata(key, {"v": "2"}, if_match="*")
        quoted = await backend.replace_metadata(key, {"v": "3"}, if_match=f'"{star.etag}"')
        assert dict((await backend.head(key)).metadata) == {"v": "3"} == dict(quoted.metadata)
        with pytest.raises(NotFoundError):
            await backend.replace_metadata(prefix + "absent-quoted", {"v": "1"}, if_match="*")
        assert await backend.get(key) == b"body"

    async def test_replace_metadata_races_writers_without_losing_a_write(
        self, backend: StorageBackend, prefix: str
    ) -> None:
        if not backend.capabilities.conditional_put:
            pytest.skip("no conditional_put: covered by test_replace_metadata")
        key = prefix + "race"
        await backend.put_object(key, b"v0")
        for n in range(1, 16):
            etag = (await backend.head(key)).etag
            body = f"v{n}".encode()

            async def update(etag: str = etag) -> None:
                with contextlib.suppress(PreconditionFailedError):
                    await backend.replace_metadata(key, {"touched": "yes"}, if_match=etag)

            await asyncio.gather(update(), backend.put_object(key, body))
            assert await backend.get(key) == body  # the metadata update never restored an older body

    # --- signed URLs over HTTP ---------------------------------------------------------

    async def test_signed_url_round_trip(self, backend: StorageBackend, prefix: str) -> None:
        import httpx

        if not backend.capabilities.signed_urls:
            with pytest.raises(UnsupportedError):
                await backend.sign_url(prefix + "x")
            return
        key = prefix + "signed report.pdf"
        await backend.put(key, b"%PDF-1.7 content", "application/pdf")
        async with httpx.AsyncClient() as client:
            url = await backend.get_url(key, expires_in=300)
            r = await client.get(url)
            assert r.status_code == 200 and r.content == b"%PDF-1.7 content"
            assert "attachment" not in r.headers.get("content-disposition", "")
            r = await client.get(await backend.get_url(key, expires_in=300, download=True))
            assert r.status_code == 200 and r.content == b"%PDF-1.7 content"
            assert r.headers["content-disposition"].startswith("attachment")
            tampered = re.sub(r"((?i:signature)=)(.)", lambda m: m[1] + ("B" if m[2] == "A" else "A"), url, count=1)
            assert tampered != url
            assert (await client.get(tampered)).status_code == 403
            other = url.replace("signed%20report", "signed%20other")
            assert other != url and (await client.get(other)).status_code in (403, 404)
            expired = await backend.sign_url(key, expires_in=1)
            await asyncio.sleep(2.1)
            assert (await client.get(expired)).status_code == 403

    async def test_error_types_are_builtins_too(self, backend: StorageBackend, prefix: str) -> None:
        pairs: list[tuple[Any, type[BaseException]]] = [
            (backend.get(prefix + "nope"), FileNotFoundError),
            (backend.get("../x"), ValueError),
        ]
        if backend.capabilities.conditional_put:
            await backend.put_object(prefix + "exists", b"x")
            pairs.append((backend.put_object(prefix + "exists", b"y", mode="create"), FileExistsError))
        for call, builtin in pairs:
            with pytest.raises(StorageError) as exc:
                await call
            assert isinstance(exc.value, builtin)
        assert issubclass(PermissionDeniedError, PermissionError)
