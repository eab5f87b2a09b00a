"""The service with UNISTORE_COMPRESS: the store holds compressed bodies; clients that accept the
encoding get the stored bytes with ``Content-Encoding``, the others plain bytes; ranges, HEAD,
signed ``/files`` URLs, upload sessions and HttpBackend all see the plain object."""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import zstandard

from unistore import HttpBackend, MemoryBackend, StorageBackend
from unistore.backends.http import HttpSettings
from unistore.fastapi import _accepted_encodings
from unistore.layers import Compress
from unistore.layers._compress import META_ENCODING
from unistore.service import ServiceSettings, create_app
from unistore.testing import free_port, running_server
from unistore.testing._s3servers import S3Server

TEXT = b"".join(b"%06d GET /index.html 200 user=%d\n" % (i, i % 97) for i in range(20_000))


@dataclass
class Served:
    url: str
    raw: StorageBackend
    encoding: str


@pytest.fixture(params=["memory-gzip", "memory-zstd", "s3-gzip"])
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    where, encoding = request.param.split("-")
    raw: StorageBackend
    port = free_port()
    if where == "memory":
        raw = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files")
    else:
        server: S3Server = request.getfixturevalue("seaweed")
        raw = server.backend(prefix=f"cmp-{os.urandom(4).hex()}/")
    os.environ["STORAGE_BASE_URL"] = f"http://127.0.0.1:{port}/files"
    try:
        app = create_app(raw, settings=ServiceSettings(auth=False, compress=encoding))  # type: ignore[arg-type]
    finally:
        del os.environ["STORAGE_BASE_URL"]
    with running_server(app, port) as url:
        yield Served(url, raw, encoding)


async def _raw(c: httpx.AsyncClient, url: str, headers: dict[str, str]) -> tuple[httpx.Response, bytes]:
    """The response and its body as sent, not decoded by httpx."""
    async with c.stream("GET", url, headers=headers) as r:
        return r, b"".join([piece async for piece in r.aiter_raw()])


def _decode(encoding: str, data: bytes) -> bytes:
    if encoding == "gzip":
        return gzip.decompress(data)
    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


async def test_encoded_for_clients_that_accept_it_plain_for_the_others(served: Served) -> None:
    enc = served.encoding
    async with httpx.AsyncClient(base_url=served.url) as c:
        r = await c.put("/v1/objects/logs/access.log", content=TEXT, headers={"content-type": "text/plain"})
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(TEXT)
        stored = await served.raw.head("logs/access.log")
        assert stored.metadata[META_ENCODING] == enc and stored.size < len(TEXT) // 4

        r, sent = await _raw(c, "/v1/objects/logs/access.log", {"accept-encoding": f"br, {enc};q=0.8"})
        assert r.headers["content-encoding"] == enc and r.headers["vary"] == "Accept-Encoding"
        assert int(r.headers["content-length"]) == stored.size == len(sent)
        assert _decode(enc, sent) == TEXT
        r = await c.get("/v1/objects/logs/access.log", headers={"accept-encoding": enc})
        assert r.content == TEXT  # a client that decodes (httpx) sees the plain body
        head = await c.head("/v1/objects/logs/access.log", headers={"accept-encoding": enc})
        assert head.headers["content-encoding"] == enc and int(head.headers["content-length"]) == stored.size

        for refuses in ("identity", f"{enc};q=0", "*;q=0, identity"):
            r, sent = await _raw(c, "/v1/objects/logs/access.log", {"accept-encoding": refuses})
            assert "content-encoding" not in r.headers and r.headers["vary"] == "Accept-Encoding"
            assert sent == TEXT and int(r.headers["content-length"]) == len(TEXT)

        r = await c.get("/v1/objects/logs/access.log", headers={"accept-encoding": enc, "range": "bytes=1000-1999"})
        assert (r.status_code, r.content) == (206, TEXT[1000:2000]) and "content-encoding" not in r.headers
        etag = r.headers["etag"]
        r = await c.get("/v1/objects/logs/access.log", headers={"accept-encoding": enc, "if-none-match": etag})
        assert r.status_code == 304

        url = (await c.get("/v1/urls/logs/access.log")).json()["url"]
        assert url.startswith(served.url + "/files/")
        r, sent = await _raw(c, url, {"accept-encoding": enc})
        assert r.headers["content-encoding"] == enc and _decode(enc, sent) == TEXT
        r = await c.get(url, headers={"accept-encoding": "identity"})
        assert r.content == TEXT


async def test_http_backend_reads_plain_bytes_and_sizes(served: Served, tmp_path: Path) -> None:
    big = TEXT * 20  # 12 MiB: an upload session of 2 MiB parts, and parallel ranged reads
    path = tmp_path / "big.log"
    path.write_bytes(big)
    settings = HttpSettings(
        url=served.url, multipart_threshold=4 << 20, upload_part_size=2 << 20, parallel_download_threshold=4 << 20
    )
    async with HttpBackend(settings) as store:
        await store.put("a/b.txt", TEXT)
        assert (await store.head("a/b.txt")).size == len(TEXT)
        assert await store.get("a/b.txt") == TEXT
        await store.put("a/big.log", path)
        assert (await store.head("a/big.log")).size == len(big)
        assert await store.get("a/big.log") == big
    stored = await served.raw.head("a/big.log")
    assert stored.metadata[META_ENCODING] == served.encoding and stored.size < len(big) // 4


async def test_an_incompressible_object_is_served_as_stored_without_vary(served: Served) -> None:
    data = os.urandom(50_000)
    async with httpx.AsyncClient(base_url=served.url) as c:
        await c.put("/v1/objects/blob.bin", content=data)
        r = await c.get("/v1/objects/blob.bin", headers={"accept-encoding": "gzip, zstd"})
        assert r.content == data and "content-encoding" not in r.headers and "vary" not in r.headers


def test_accept_encoding_parsing() -> None:
    assert _accepted_encodings("gzip, deflate, br, zstd") == ("zstd", "gzip")
    assert _accepted_encodings("gzip;q=0.5") == ("gzip",)
    assert _accepted_encodings("GZIP ; Q=0") == ()
    assert _accepted_encodings("*") == ("zstd", "gzip")
    assert _accepted_encodings("*;q=0, gzip") == ("gzip",)
    assert _accepted_encodings("gzip;q=junk") == ()
    assert _accepted_encodings("") == ()


def test_unistore_compress_is_parsed_strictly() -> None:
    assert ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_COMPRESS": "zstd"}).compress == "zstd"
    assert ServiceSettings.from_env({"UNISTORE_AUTH": "off"}).compress == "off"
    from unistore import ConfigurationError

    with pytest.raises(ConfigurationError, match="UNISTORE_COMPRESS"):
        ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_COMPRESS": "brotli"})


async def test_compress_without_a_signer_refuses_urls_of_compressed_objects() -> None:
    from unistore import UnsupportedError

    store = Compress(MemoryBackend(), metrics=False)
    store.inner.signer  # noqa: B018 - memory has one, yet the layer's own is what counts
    await store.put_object("t.txt", TEXT)
    with pytest.raises(UnsupportedError):
        await store.sign_url("t.txt")
