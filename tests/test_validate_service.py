"""Upload validation in the service, over real HTTP: 413/415 with the JSON error shape, nothing stored."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from unistore import ConfigurationError, LocalBackend, MemoryBackend, StorageBackend
from unistore.layers import UploadRule
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server

RULES = json.dumps(
    [
        {"prefix": "img/", "max_size": 65536, "content_types": ["image/png", "image/jpeg"], "max_pixels": 1_000_000},
        {"prefix": "docs/", "max_size": 1000},
    ]
)


def png(width: int = 4, height: int = 4) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(params=["memory", "local"])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[httpx.Client, StorageBackend]]:
    backend: StorageBackend
    backend = MemoryBackend() if request.param == "memory" else LocalBackend(base_path=str(tmp_path), fsync=False)
    settings = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_RULES": RULES})
    with running_server(create_app(backend, settings=settings)) as url, httpx.Client(base_url=url) as client:
        yield client, backend


def error(r: httpx.Response, status: int, kind: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"]["type"] == kind and r.json()["error"]["message"]


def test_content_length_over_the_limit_is_413_before_the_body(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    error(c.put("/v1/objects/docs/a.txt", content=b"x" * 1001), 413, "FileTooLargeError")
    assert c.get("/v1/objects/docs/a.txt").status_code == 404
    assert c.put("/v1/objects/docs/a.txt", content=b"x" * 1000).status_code == 201


def test_chunked_body_over_the_limit_is_413_and_nothing_is_stored(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _backend = service

    def body() -> Iterator[bytes]:
        for _ in range(20):
            yield b"y" * 100

    error(c.put("/v1/objects/docs/b.txt", content=body()), 413, "FileTooLargeError")
    assert c.get("/v1/objects/docs/b.txt").status_code == 404
    assert c.get("/v1/objects", params={"prefix": "docs/"}).json()["objects"] == []


def test_lying_content_type_is_415(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    error(c.put("/v1/objects/img/a.png", content=png(), headers={"content-type": "image/jpeg"}), 415,
          "UnsupportedMediaTypeError")  # fmt: skip
    error(c.put("/v1/objects/img/a.png", content=b"<html>hi</html>", headers={"content-type": "image/png"}), 415,
          "UnsupportedMediaTypeError")  # fmt: skip
    error(c.put("/v1/objects/img/a.txt", content=b"words", headers={"content-type": "text/plain"}), 415,
          "UnsupportedMediaTypeError")  # fmt: skip
    assert c.get("/v1/objects/img/a.png").status_code == 404
    r = c.put("/v1/objects/img/a.png", content=png())
    assert r.status_code == 201 and r.json()["content_type"] == "image/png"
    assert c.get("/v1/objects/img/a.png").headers["content-type"] == "image/png"


def test_image_bomb_and_double_extension(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    error(c.put("/v1/objects/img/big.png", content=png(2000, 1000)), 413, "ImageTooLargeError")
    error(c.put("/v1/objects/img/a.png.exe", content=png()), 400, "FilenameRejectedError")
    error(c.put("/v1/objects/elsewhere/x", content=b"x"), 415, "UnsupportedMediaTypeError")


def test_form_upload_is_validated(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    files = {"file": ("evil.png", b"<!DOCTYPE html><script>alert(1)</script>", "image/png")}
    error(c.post("/v1/upload", files=files, data={"key": "img/evil.png"}), 415, "UnsupportedMediaTypeError")
    assert c.get("/v1/objects/img/evil.png").status_code == 404
    files = {"file": ("ok.png", png(), "image/png")}
    assert c.post("/v1/upload", files=files, data={"key": "img/ok.png"}).status_code == 201


def test_upload_session_completion_is_validated(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    data = b"<html><body>not an image</body></html>"
    sid = c.post("/v1/uploads", json={"key": "img/s.png", "part_size": 1024}).json()["upload_id"]
    assert c.put(f"/v1/uploads/{sid}/parts/1", content=data).status_code == 200
    manifest = {"parts": [{"number": 1, "sha256": base64.b64encode(hashlib.sha256(data).digest()).decode()}]}
    error(c.post(f"/v1/uploads/{sid}/complete", json=manifest), 415, "UnsupportedMediaTypeError")
    assert c.get("/v1/objects/img/s.png").status_code == 404


def test_mismatch_correction_is_configurable(tmp_path: Path) -> None:
    env = {
        "UNISTORE_AUTH": "off",
        "UNISTORE_UPLOAD_RULES": '[{"prefix": ""}]',
        "UNISTORE_UPLOAD_TYPE_MISMATCH": "correct",
    }
    settings = ServiceSettings.from_env(env)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        r = c.put("/v1/objects/a/pic", content=png(), headers={"content-type": "text/plain"})
        assert r.status_code == 201 and r.json()["content_type"] == "image/png"


def test_settings_from_env() -> None:
    s = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_RULES": RULES,
                                  "UNISTORE_UPLOAD_FILENAME_CHECKS": "off"})  # fmt: skip
    assert s.upload_rules[0] == UploadRule(
        "img/", max_size=65536, content_types=frozenset({"image/png", "image/jpeg"}), max_pixels=1_000_000
    )
    assert s.upload_policy is not None and not s.upload_policy.check_filenames
    assert ServiceSettings(auth=False).upload_policy is None
    for bad in ("{}", "[1]", '[{"prefix": "a/", "colour": "red"}]', '[{"max_size": -1}]', "not json",
                '[{"content_types": "image/png"}]', '[{"prefix": "../"}]'):  # fmt: skip
        with pytest.raises(ConfigurationError):
            ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_RULES": bad})
    with pytest.raises(ConfigurationError):
        ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_TYPE_MISMATCH": "ignore",
                                  "UNISTORE_UPLOAD_RULES": RULES})  # fmt: skip


def test_upload_session_is_refused_at_creation_when_its_name_or_type_is(
    service: tuple[httpx.Client, StorageBackend],
) -> None:
    c, _ = service
    r = c.post("/v1/uploads", json={"key": "img/s.png", "content_type": "text/html"})
    error(r, 415, "UnsupportedMediaTypeError")
    error(c.post("/v1/uploads", json={"key": "img/s.png.exe"}), 400, "FilenameRejectedError")
    r = c.post("/v1/uploads", json={"key": "img/s.png", "direct": True, "part_size": 8 * 1024 * 1024})
    error(r, 400, "InvalidArgumentError")
    assert "validation" in r.json()["error"]["message"]


async def test_keyed_body_over_the_limit_is_cut_before_idempotency_spools_it() -> None:
    """With an ``Idempotency-Key`` the body is hashed (spooled) before writing: the limit must apply first."""
    settings = ServiceSettings.from_env(
        {"UNISTORE_AUTH": "off", "UNISTORE_UPLOAD_RULES": '[{"prefix": "", "max_size": 262144}]'}
    )
    app = create_app(MemoryBackend(), settings=settings)
    pulled = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(64):  # 4 MiB
            pulled += 65536
            yield b"k" * 65536

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as c:
        r = await c.put("/v1/objects/big.bin", content=body(), headers={"idempotency-key": "op-1"})
        assert r.status_code == 413 and r.json()["error"]["type"] == "FileTooLargeError"
        assert (await c.get("/v1/objects/big.bin")).status_code == 404
    assert pulled <= 262144 + 2 * 65536  # the stream was cut at the limit, not read to its end


def test_upload_part_larger_than_the_object_may_be_is_413(service: tuple[httpx.Client, StorageBackend]) -> None:
    c, _ = service
    sid = c.post("/v1/uploads", json={"key": "docs/big.txt", "part_size": 4096}).json()["upload_id"]
    error(c.put(f"/v1/uploads/{sid}/parts/1", content=b"x" * 1001), 413, "FileTooLargeError")
    assert c.put(f"/v1/uploads/{sid}/parts/1", content=b"x" * 1000).status_code == 200
