"""HttpBackend end to end: the conformance suite through a live service (auth on) over memory, local and S3."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from test_s3_conformance import _SeaweedGaps
from unistore import (
    ConfigurationError,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RateLimitedError,
    StorageBackend,
    backend_from_url,
)
from unistore.backends.http import HttpBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import BackendConformance, S3Server, free_port, running_server

SECRET = b"http-backend-secret-0123456789"


def _serve(backend: StorageBackend, port: int) -> Iterator[str]:
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET)), port) as url:
        yield url


@pytest.fixture(scope="session")
def http_memory_service() -> Iterator[str]:
    port = free_port()
    yield from _serve(MemoryBackend(base_url=f"http://127.0.0.1:{port}/files"), port)


@pytest.fixture(scope="session")
def http_local_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    root = tmp_path_factory.mktemp("http-local")
    yield from _serve(LocalBackend(base_path=str(root), base_url=f"http://127.0.0.1:{port}/files", fsync=False), port)


@pytest.fixture(scope="session")
def http_s3_service(seaweed: S3Server) -> Iterator[str]:
    yield from _serve(seaweed.backend(prefix="http-service/"), free_port())


def _client(url: str, **options: object) -> HttpBackend:
    token = TokenAuthority(SECRET).issue(["admin"], expires_in=3600)
    return HttpBackend(url=url, token=token, list_page_size=100, **options)  # type: ignore[arg-type]


class TestHttpOverMemory(BackendConformance):
    list_count = 250
    race_writers = 6
    race_increments = 5

    @pytest.fixture
    async def backend(self, http_memory_service: str) -> AsyncIterator[HttpBackend]:
        client = _client(http_memory_service)
        yield client
        await client.aclose()


class TestHttpOverLocal(BackendConformance):
    list_count = 250
    race_writers = 6
    race_increments = 5

    @pytest.fixture
    async def backend(self, http_local_service: str) -> AsyncIterator[HttpBackend]:
        client = _client(http_local_service)
        yield client
        await client.aclose()


class TestHttpOverS3(_SeaweedGaps):
    """Through the service to SeaweedFS: the store's listing order shows through (the same strict xfails)."""

    list_count = 250
    race_writers = 6
    race_increments = 5

    @pytest.fixture
    async def backend(self, http_s3_service: str) -> AsyncIterator[HttpBackend]:
        client = _client(http_s3_service)
        yield client
        await client.aclose()


async def test_errors_map_back_and_throttled_requests_are_retried() -> None:
    settings = ServiceSettings(secret=SECRET, token_rate=2, token_burst=1)
    authority = TokenAuthority(SECRET)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        scoped = HttpBackend(url=url, token=authority.issue(["read", "write"], prefix="mine/"), backoff=0.01)
        async with scoped:
            await scoped.put_object("mine/a", b"1")  # uses the one token of the burst
            assert await scoped.get("mine/a") == b"1"  # 429 with Retry-After, retried, then served
            await _sleep_token()
            with pytest.raises(PermissionDeniedError):
                await scoped.put_object("theirs/a", b"1")
            await _sleep_token()
            with pytest.raises(NotFoundError):
                await scoped.head("mine/missing")
        no_retry = HttpBackend(url=url, token=authority.issue(["read"]), retries=0)
        async with no_retry:
            await no_retry.list_keys()
            with pytest.raises(RateLimitedError) as exc:
                await no_retry.list_keys()
            assert exc.value.retry_after is not None and exc.value.retry_after >= 1
        async with HttpBackend(url=url, token="forged") as forged:
            with pytest.raises(PermissionDeniedError):
                await forged.get("mine/a")


async def _sleep_token() -> None:
    await asyncio.sleep(0.5)


def test_built_from_a_url_with_the_token_redacted() -> None:
    backend = backend_from_url("https://files.example.com/api?token=s3cret&timeout=5")
    assert isinstance(backend, HttpBackend)
    assert (backend.settings.url, backend.settings.token, backend.settings.timeout) == (
        "https://files.example.com/api",
        "s3cret",
        5.0,
    )
    assert "s3cret" not in repr(backend) and "s3cret" not in repr(backend.settings)
    with pytest.raises(ConfigurationError):
        HttpBackend(url="ftp://x")


def test_the_service_client_reads_what_raw_http_wrote(http_memory_service: str) -> None:
    token = TokenAuthority(SECRET).issue(["admin"])
    headers = {"authorization": f"Bearer {token}", "x-meta-note": "caf%C3%A9"}
    r = httpx.put(f"{http_memory_service}/v1/objects/raw/x.txt", content=b"raw", headers=headers)
    assert r.status_code == 201

    async def read() -> tuple[bytes, dict[str, str]]:
        async with _client(http_memory_service) as client:
            info = await client.head("raw/x.txt")
            return await client.get("raw/x.txt"), dict(info.metadata)

    assert asyncio.run(read()) == (b"raw", {"note": "café"})


async def test_large_reads_are_parallel_ranges_of_one_version(http_memory_service: str) -> None:
    """Above the threshold a read is fetched as ranges in parallel, each pinned to the first etag."""
    small_parts = {"parallel_download_threshold": 1 << 20, "download_part_size": 256 * 1024, "download_concurrency": 3}
    client = _client(http_memory_service, **small_parts)
    key = f"parallel-{free_port()}/big.bin"
    data = os.urandom(3 * (1 << 20) + 17)
    try:
        await client.put_object(key, data)
        async with await client.open(key) as dl:
            assert (dl.start, dl.end, dl.info.size) == (0, len(data), len(data))
            chunks = [chunk async for chunk in dl]
        assert b"".join(chunks) == data
        assert len(chunks) == 13  # 12 full 256 KiB ranges and the 17-byte tail, in order

        # an overwrite during the read fails it: no part of the new version is ever yielded
        await client.put_object(key, data)
        dl = await client.open(key)
        got = bytearray()

        async def read_while_overwriting() -> None:
            async for chunk in dl:
                got.extend(chunk)
                if len(got) == 256 * 1024:
                    await client.put_object(key, os.urandom(len(data)))

        with pytest.raises(PreconditionFailedError):
            await read_while_overwriting()
        assert data.startswith(bytes(got)) and len(got) < len(data)
        await dl.aclose()
        plain = _client(http_memory_service)  # default threshold (64 MiB): one streamed GET
        assert len(await plain.get(key)) == len(data)
        await plain.aclose()
    finally:
        await client.aclose()


_SLOW_UPLOADER = """
import asyncio, sys
from pathlib import Path
from unistore.backends.http import HttpBackend

async def main():
    url, token, state_dir, key, path = sys.argv[1:6]
    client = HttpBackend(url=url, token=token, upload_part_size=1 << 20, upload_concurrency=1,
                         multipart_threshold=1, upload_state_dir=state_dir)
    send = client._send

    async def slow_send(*args, **kwargs):  # a slow link, so the test can kill us mid-upload
        response = await send(*args, **kwargs)
        if kwargs.get("operation") == "upload_part":
            await asyncio.sleep(0.3)
        return response

    client._send = slow_send
    await client.put_object(key, Path(path))

asyncio.run(main())
"""


async def test_killed_upload_resumes_in_a_new_process(http_memory_service: str, tmp_path: Any) -> None:
    data = os.urandom(12 * (1 << 20) + 5)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    state_dir = tmp_path / "state"
    key = f"resume-{free_port()}/big.bin"
    token = TokenAuthority(SECRET).issue(["admin"], expires_in=3600)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SLOW_UPLOADER, http_memory_service, token, str(state_dir), key, str(path)
    )
    recorded: dict[str, Any] = {}
    for _ in range(300):  # until the child has recorded three stored parts
        files = list(state_dir.glob("*.json")) if state_dir.exists() else []
        if files:
            recorded = json.loads(files[0].read_text())
            if len(recorded["parts"]) >= 3:
                break
        await asyncio.sleep(0.05)
    child.kill()
    await child.wait()
    done_before = len(recorded["parts"])
    assert 3 <= done_before < 13

    client = _client(
        http_memory_service,
        upload_part_size=1 << 20,
        multipart_threshold=1,
        upload_state_dir=str(state_dir),
    )
    try:
        info = await client.put_object(key, path)
        assert client.parts_sent == 13 - done_before  # only the missing parts went again
        assert info.size == len(data)
        assert hashlib.sha256(await client.get(key)).digest() == hashlib.sha256(data).digest()
        assert list(state_dir.glob("*.json")) == []  # the record is gone once complete
    finally:
        await client.aclose()
