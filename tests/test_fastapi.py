"""FastAPI integration over real HTTP: add_storage, get_storage, health, error mapping, the file route.

Every HTTP behaviour is checked through uvicorn and httpx (no TestClient for the file
route). The 1 GiB test runs the server in a subprocess and watches its RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import httpx
import psutil
import pytest
from fastapi import Depends, FastAPI, HTTPException, Response
from starlette.requests import Request

import unistore
import unistore.fastapi as integration
from unistore import (
    BaseBackend,
    ByteRange,
    ConfigurationError,
    IfMatch,
    LocalBackend,
    MemoryBackend,
    StorageBackend,
    UnavailableError,
    add_storage,
    get_storage,
)
from unistore.fastapi import Storage
from unistore.testing import free_port, running_server

SECRET = "test-secret-0123456789abcdef"
BODY = bytes(range(256)) * 4 + b"tail"  # 1028 bytes, every byte value
DETECT_VARS = (
    "STORAGE_BACKEND",
    "STORAGE_BASE_PATH",
    "STORAGE_BASE_URL",
    "STORAGE_URL_SECRET",
    "STORAGE_URL_EXPIRATION",
    "STORAGE_FSYNC",
    "STORAGE_MAX_SIZE",
    "STORAGE_CHUNK_SIZE",
    "STORAGE_S3_BUCKET",
    "RAILWAY_VOLUME_MOUNT_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDINARY_URL",
)


# --- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in DETECT_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(params=["memory", "local"])
def store(request: pytest.FixtureRequest) -> Any:
    """A backend served by ``add_storage(app, backend, serve_files=True)`` over real HTTP."""
    return request.getfixturevalue(f"served_{request.param}")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as c:
        yield c


def with_query(url: str, **changes: str | None) -> str:
    """``url`` with query parameters replaced (``None`` removes one)."""
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, value in changes.items():
        if value is None:
            q.pop(name, None)
        else:
            q[name] = value
    return urlunsplit(parts._replace(query=urlencode(q)))


def with_path(url: str, path: str) -> str:
    """``url`` with its path replaced, sent exactly as given (no re-encoding)."""
    return urlunsplit(urlsplit(url)._replace(path=path))


async def put(backend: Any, key: str, data: bytes = BODY, **kw: Any) -> str:
    """Store ``data`` and return the object's etag."""
    info = await backend.put_object(key, data, **kw)
    return str(info.etag)


def raw_http(base_url: str, target: str) -> tuple[int, bytes]:
    """Send ``GET target`` byte-for-byte (no client-side normalisation); return (status, body)."""
    parts = urlsplit(base_url)
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


_ATTR_CHARS = re.compile(r"^[A-Za-z0-9!#$&+\-.^_`|~%]*$")


def parse_disposition(value: str) -> tuple[str, str | None, str | None]:
    """(kind, filename= value, decoded filename*= value) of a Content-Disposition header."""
    kind = value.split(";", 1)[0].strip()
    m = re.search(r';\s*filename="((?:[^"\\]|\\.)*)"', value)
    plain = m.group(1) if m else None
    m = re.search(r";\s*filename\*=UTF-8''([^;\s]*)", value)
    star = None
    if m:
        assert _ATTR_CHARS.match(m.group(1)), f"filename* has characters outside attr-char: {value!r}"
        star = unquote(m.group(1), encoding="utf-8", errors="strict")
    return kind, plain, star


# --- add_storage, get_storage, Storage, lifecycle -------------------------------------------


class ClosingProbe(MemoryBackend):
    """A memory store that records ``aclose`` calls (a probe, not a mock)."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.closed = 0

    async def aclose(self) -> None:
        self.closed += 1
        await super().aclose()


def test_add_storage_returns_backend_and_sets_state() -> None:
    app = FastAPI()
    backend = MemoryBackend()
    assert add_storage(app, backend) is backend
    assert app.state.storage is backend


def test_add_storage_auto_detects_local_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("RAILWAY_VOLUME_MOUNT_PATH", str(tmp_path / "volume"))
    app = FastAPI()
    backend = add_storage(app)
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "volume"
    assert app.state.storage is backend


def test_add_storage_auto_detects_memory_with_warning(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    app = FastAPI()
    with caplog.at_level("INFO", logger="unistore"):
        backend = add_storage(app)
    assert type(backend) is MemoryBackend
    warnings = [r for r in caplog.records if r.name == "unistore" and r.levelname == "WARNING"]
    assert warnings and "MemoryBackend" in warnings[0].getMessage()


def test_add_storage_never_falls_back_to_memory(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    app = FastAPI()
    with pytest.raises(ConfigurationError, match="S3Backend"):
        add_storage(app)
    assert getattr(app.state, "storage", None) is None


def test_get_storage_without_add_storage_says_not_configured() -> None:
    app = FastAPI()
    request = Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})
    with pytest.raises(ConfigurationError, match="Storage not configured") as info:
        get_storage(request)
    assert "add_storage" in str(info.value)


def test_get_storage_returns_the_attached_backend() -> None:
    app = FastAPI()
    backend = add_storage(app, MemoryBackend())
    request = Request({"type": "http", "app": app, "method": "GET", "path": "/", "headers": []})
    assert get_storage(request) is backend


def test_backend_closed_once_on_shutdown_after_the_apps_own_lifespan() -> None:
    events: list[str] = []
    probe = ClosingProbe()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"startup closed={probe.closed}")
        yield
        # The app's own shutdown code may still use storage (flush, final write).
        await app.state.storage.put("shutdown-marker", b"bye")
        events.append(f"shutdown closed={probe.closed}")

    app = FastAPI(lifespan=lifespan)
    add_storage(app, probe)
    with running_server(app) as url:
        assert httpx.get(url + "/_ops/health").status_code == 200
        assert probe.closed == 0
    assert events == ["startup closed=0", "shutdown closed=0"]
    assert probe.closed == 1


async def test_storage_alias_and_depends_inject_the_backend(client: httpx.AsyncClient) -> None:
    app = FastAPI()
    backend = add_storage(app, MemoryBackend())

    @app.put("/alias/{name}")
    async def via_alias(name: str, request: Request, storage: Storage) -> dict[str, Any]:
        await storage.put(f"uploads/{name}", await request.body(), "text/plain")
        return {"same": storage is backend}

    @app.get("/depends/{name}")
    async def via_depends(name: str, storage: StorageBackend = Depends(get_storage)) -> Response:
        return Response(await storage.get(f"uploads/{name}"), media_type="text/plain")

    with running_server(app) as url:
        r = await client.put(url + "/alias/a.txt", content=b"hello")
        assert r.status_code == 200
        assert r.json() == {"same": True}
        r = await client.get(url + "/depends/a.txt")
        assert (r.status_code, r.content) == (200, b"hello")
    assert await backend.get("uploads/a.txt") == b"hello"


def test_serve_files_needs_a_signing_backend() -> None:
    class NoSigner(MemoryBackend):
        signer = None  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match="serve_files"):
        add_storage(FastAPI(), NoSigner(), serve_files=True)


async def test_file_route_prefix_is_honoured(client: httpx.AsyncClient) -> None:
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/media/v1", url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend, serve_files=True, file_route_prefix="/media/v1/")
    await put(backend, "doc.txt", b"abc")
    with running_server(app, port):
        r = await client.get(await backend.get_url("doc.txt"))
        assert (r.status_code, r.content) == (200, b"abc")


async def test_routes_added_after_add_storage_win_over_the_file_route(client: httpx.AsyncClient) -> None:
    # The spec's order: add_storage(app) first, routers (GET /files/{id}/download-url) later.
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend, serve_files=True)

    @app.get("/files/{file_id}/download-url")
    async def download_url(file_id: str) -> dict[str, str]:
        return {"file_id": file_id}

    await put(backend, "abc/download-url", b"stored object with the same path")
    with running_server(app, port) as base:
        r = await client.get(f"{base}/files/abc/download-url")
        assert (r.status_code, r.json()) == (200, {"file_id": "abc"})
        r = await client.get(await backend.get_url("abc/download-url"))
        assert r.status_code == 200  # the app's route answers; signed objects elsewhere still serve
        await put(backend, "other/doc.txt", b"doc")
        r = await client.get(await backend.get_url("other/doc.txt"))
        assert (r.status_code, r.content) == (200, b"doc")


async def test_file_route_at_the_root(client: httpx.AsyncClient) -> None:
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}", url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend, serve_files=True, file_route_prefix="/")
    await put(backend, "dir/doc.txt", b"abc")
    with running_server(app, port) as url:
        r = await client.get(await backend.get_url("dir/doc.txt"))
        assert (r.status_code, r.content) == (200, b"abc")
        assert (await client.get(url + "/_ops/health")).status_code == 200


def test_mismatched_base_url_and_prefix_warns(caplog: pytest.LogCaptureFixture) -> None:
    backend = MemoryBackend(base_url="http://localhost:8000/files", url_secret=SECRET)
    with caplog.at_level("WARNING", logger="unistore"):
        add_storage(FastAPI(), backend, serve_files=True, file_route_prefix="/media")
    assert any("/media" in r.getMessage() for r in caplog.records if r.name == "unistore")
    caplog.clear()
    with caplog.at_level("WARNING", logger="unistore"):
        add_storage(FastAPI(), backend, serve_files=True)
    assert not [r for r in caplog.records if r.name == "unistore"]


# --- StorageError -> HTTP -------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_app() -> Iterator[tuple[str, MemoryBackend]]:
    backend = MemoryBackend(max_size=64, url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend)

    @app.get("/get/{key:path}")
    async def get(key: str, storage: Storage) -> Response:
        return Response(await storage.get(key))

    @app.get("/spec-download/{filename}")
    async def spec_download(filename: str, storage: Storage) -> Response:
        # The spec's example, verbatim in spirit: catches the builtin FileNotFoundError.
        try:
            content = await storage.get(f"uploads/{filename}")
            return Response(content=content, media_type="application/octet-stream")
        except FileNotFoundError:
            raise HTTPException(status_code=404, detail="File not found") from None

    @app.put("/create/{key:path}")
    async def create(key: str, request: Request, storage: Storage) -> dict[str, str]:
        info = await storage.put_object(key, await request.body(), mode="create")
        return {"etag": info.etag}

    @app.put("/if-match/{key:path}")
    async def if_match(key: str, etag: str, request: Request, storage: Storage) -> dict[str, str]:
        info = await storage.put_object(key, await request.body(), mode=IfMatch(etag))
        return {"etag": info.etag}

    @app.get("/range/{key:path}")
    async def ranged(key: str, start: int, storage: Storage) -> Response:
        async with await storage.open(key, range=ByteRange(start)) as dl:
            return Response(await dl.read())

    @app.get("/not-modified/{key:path}")
    async def not_modified(key: str, etag: str, storage: Storage) -> Response:
        async with await storage.open(key, if_none_match=etag) as dl:
            return Response(await dl.read())

    @app.get("/unavailable")
    async def unavailable() -> None:
        raise UnavailableError("backend down", retry_after=2.4)

    with running_server(app) as url:
        yield url, backend


async def test_not_found_is_404_json(error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient) -> None:
    url, _ = error_app
    r = await client.get(url + "/get/missing.txt")
    assert r.status_code == 404
    assert r.json()["error"] == "NotFoundError"
    assert r.json()["detail"]


async def test_spec_download_example_answers_404(
    error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient
) -> None:
    url, _ = error_app
    r = await client.get(url + "/spec-download/nothing.bin")
    assert (r.status_code, r.json()) == (404, {"detail": "File not found"})


async def test_invalid_key_is_400(error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient) -> None:
    url, _ = error_app
    r = await client.get(url + "/get/a%2F%2Fb")  # "a//b" reaches the route, the store rejects it
    assert r.status_code == 400
    assert r.json()["error"] == "InvalidKeyError"


async def test_precondition_failures_are_412_and_leave_data(
    error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient, key: str
) -> None:
    url, backend = error_app
    r = await client.put(f"{url}/create/{key}", content=b"one")
    assert r.status_code == 200
    etag = r.json()["etag"]
    r = await client.put(f"{url}/create/{key}", content=b"two")
    assert (r.status_code, r.json()["error"]) == (412, "AlreadyExistsError")
    r = await client.put(f"{url}/if-match/{key}", params={"etag": "nope"}, content=b"three")
    assert (r.status_code, r.json()["error"]) == (412, "PreconditionFailedError")
    assert await backend.get(key) == b"one"
    r = await client.put(f"{url}/if-match/{key}", params={"etag": etag}, content=b"four")
    assert r.status_code == 200
    assert await backend.get(key) == b"four"


async def test_quota_is_413_and_leaves_data(
    error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient, key: str
) -> None:
    url, backend = error_app
    r = await client.put(f"{url}/create/{key}", content=b"x" * 100)
    assert (r.status_code, r.json()["error"]) == (413, "QuotaExceededError")
    assert not await backend.exists(key)


async def test_range_and_not_modified_map_to_416_and_304(
    error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient, key: str
) -> None:
    url, backend = error_app
    etag = await put(backend, key, b"12345")
    r = await client.get(f"{url}/range/{key}", params={"start": 9})
    assert r.status_code == 416
    assert r.headers["content-range"] == "bytes */5"
    r = await client.get(f"{url}/not-modified/{key}", params={"etag": etag})
    assert r.status_code == 304
    assert r.headers["etag"] == f'"{etag}"'
    assert r.content == b""


async def test_transient_error_is_503_with_retry_after(
    error_app: tuple[str, MemoryBackend], client: httpx.AsyncClient
) -> None:
    url, _ = error_app
    r = await client.get(url + "/unavailable")
    assert (r.status_code, r.headers["retry-after"]) == (503, "2")
    assert r.json() == {"detail": "backend down", "error": "UnavailableError"}


# --- health ----------------------------------------------------------------------------------


class PingProbe(MemoryBackend):
    """A memory store whose ping does what the test says."""

    def __init__(self, behaviour: str) -> None:
        super().__init__()
        self.behaviour = behaviour

    async def ping(self) -> None:
        if self.behaviour == "unavailable":
            raise UnavailableError("connection refused by backend")
        if self.behaviour == "hang":
            await asyncio.sleep(30)
        if self.behaviour == "crash":
            raise RuntimeError("sdk exploded")


async def test_health_healthy_shape(client: httpx.AsyncClient) -> None:
    app = FastAPI()
    add_storage(app, MemoryBackend())
    with running_server(app) as url:
        r = await client.get(url + "/_ops/health")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "storage": {"backend": "MemoryBackend", "status": "connected"}}


async def test_health_local_backend_named(client: httpx.AsyncClient, tmp_path: Path) -> None:
    app = FastAPI()
    add_storage(app, LocalBackend(base_path=str(tmp_path / "s"), fsync=False))
    with running_server(app) as url:
        r = await client.get(url + "/_ops/health")
    assert r.status_code == 200
    assert r.json() == {"status": "healthy", "storage": {"backend": "LocalBackend", "status": "connected"}}


def _assert_unhealthy(r: httpx.Response, backend: str) -> str:
    assert r.status_code == 503
    body = r.json()
    assert set(body) == {"status", "storage"}
    assert body["status"] == "unhealthy"
    assert set(body["storage"]) == {"backend", "status", "error"}
    assert body["storage"]["backend"] == backend
    assert body["storage"]["status"] == "disconnected"
    reason = body["storage"]["error"]
    assert isinstance(reason, str) and reason
    return reason


async def test_health_503_when_local_directory_is_gone(client: httpx.AsyncClient, tmp_path: Path) -> None:
    root = tmp_path / "gone"
    app = FastAPI()
    add_storage(app, LocalBackend(base_path=str(root), fsync=False))
    with running_server(app) as url:
        assert (await client.get(url + "/_ops/health")).status_code == 200
        shutil.rmtree(root)
        reason = _assert_unhealthy(await client.get(url + "/_ops/health"), "LocalBackend")
        assert "writable" in reason
        assert str(root) not in reason  # no filesystem path in a public response
        root.mkdir()
        assert (await client.get(url + "/_ops/health")).status_code == 200


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("unavailable", "connection refused by backend"), ("hang", "timeout"), ("crash", "RuntimeError")],
)
async def test_health_503_with_reason(
    behaviour: str, expected: str, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(integration, "HEALTH_TIMEOUT", 0.3)
    app = FastAPI()
    add_storage(app, PingProbe(behaviour))
    with running_server(app) as url:
        start = time.monotonic()
        r = await client.get(url + "/_ops/health")
        assert time.monotonic() - start < 5
    reason = _assert_unhealthy(r, "PingProbe")
    assert expected in reason


# --- the file route: bodies, ranges -----------------------------------------------------------


async def test_full_get(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key + ".bin", content_type="application/octet-stream")
    r = await client.get(await store.get_url(key + ".bin"))
    assert r.status_code == 200
    assert r.content == BODY
    h = r.headers
    assert h["content-length"] == str(len(BODY))
    assert h["content-type"] == "application/octet-stream"
    assert h["x-content-type-options"] == "nosniff"
    assert h["etag"] == f'"{etag}"'
    assert h["accept-ranges"] == "bytes"
    assert h["last-modified"].endswith(" GMT")
    # Only allow-listed types are inline: the default type is an attachment in a sandbox.
    assert h["content-disposition"].startswith("attachment;")
    assert h["content-security-policy"] == "sandbox"
    assert "content-range" not in h


async def test_empty_object(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key, b"")
    r = await client.get(await store.get_url(key))
    assert (r.status_code, r.content, r.headers["content-length"]) == (200, b"", "0")


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 1),
        ("bytes=2-5", 2, 6),
        ("bytes=1000-", 1000, 1028),  # open
        ("bytes=-4", 1024, 1028),  # suffix
        ("bytes=-5000", 0, 1028),  # suffix longer than the object
        ("bytes=1020-99999", 1020, 1028),  # end clamped
        ("bytes=1027-1027", 1027, 1028),  # last byte
        ("Bytes = 3 - 4", 3, 5),  # case and whitespace
    ],
)
async def test_range_206(store: Any, client: httpx.AsyncClient, key: str, header: str, start: int, end: int) -> None:
    await put(store, key)
    r = await client.get(await store.get_url(key), headers={"Range": header})
    assert r.status_code == 206
    assert r.content == BODY[start:end]
    assert r.headers["content-range"] == f"bytes {start}-{end - 1}/{len(BODY)}"
    assert r.headers["content-length"] == str(end - start)


@pytest.mark.parametrize("header", ["bytes=1028-", "bytes=5000-6000", "bytes=99999999999999999999-"])
async def test_range_start_past_end_is_416(store: Any, client: httpx.AsyncClient, key: str, header: str) -> None:
    await put(store, key)
    r = await client.get(await store.get_url(key), headers={"Range": header})
    assert r.status_code == 416
    assert r.headers["content-range"] == f"bytes */{len(BODY)}"
    assert await store.get(key) == BODY


async def test_any_range_of_an_empty_object_is_416(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key, b"")
    for header in ("bytes=0-", "bytes=-1"):
        r = await client.get(await store.get_url(key), headers={"Range": header})
        assert r.status_code == 416
        assert r.headers["content-range"] == "bytes */0"


@pytest.mark.parametrize("header", ["bytes=abc", "bytes=5-2", "bytes=-0", "bytes=-", "bytes=1-2-3", "bytes"])
async def test_malformed_range_is_4xx_never_5xx(store: Any, client: httpx.AsyncClient, key: str, header: str) -> None:
    await put(store, key)
    r = await client.get(await store.get_url(key), headers={"Range": header})
    assert 400 <= r.status_code < 500
    assert r.content != BODY
    assert await store.get(key) == BODY


@pytest.mark.parametrize("header", ["bytes=0-1, 4-5", "bytes=0-1,-2", "items=0-5"])
async def test_multi_range_and_other_units_serve_the_whole_object(
    store: Any, client: httpx.AsyncClient, key: str, header: str
) -> None:
    await put(store, key)
    r = await client.get(await store.get_url(key), headers={"Range": header})
    assert (r.status_code, r.content) == (200, BODY)
    assert "content-range" not in r.headers


async def test_large_streamed_object_with_range(store: Any, client: httpx.AsyncClient, key: str) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    await put(store, key, data)
    url = await store.get_url(key)
    r = await client.get(url)
    assert r.content == data
    r = await client.get(url, headers={"Range": "bytes=1048570-2097160"})
    assert r.status_code == 206
    assert r.content == data[1048570:2097161]


# --- conditional requests ---------------------------------------------------------------------


async def test_if_none_match(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key)
    url = await store.get_url(key)
    for value in (f'"{etag}"', f'W/"{etag}"', "*", f'"other", "{etag}"', f'"a",W/"{etag}"'):
        r = await client.get(url, headers={"If-None-Match": value})
        assert r.status_code == 304, value
        assert r.headers["etag"] == f'"{etag}"'
        assert r.content == b""
        assert "cache-control" in r.headers  # RFC 9110 §15.4.5: same caching headers as a 200
    for value in ('"other"', '"a", "b"', f'"{etag}x"'):
        r = await client.get(url, headers={"If-None-Match": value})
        assert (r.status_code, r.content) == (200, BODY), value


async def test_if_none_match_wins_over_range(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key)
    url = await store.get_url(key)
    r = await client.get(url, headers={"If-None-Match": f'"{etag}"', "Range": "bytes=0-1"})
    assert r.status_code == 304
    r = await client.get(url, headers={"If-None-Match": f'"{etag}"', "Range": "bytes=99999-"})
    assert r.status_code == 304


async def test_if_match(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key)
    url = await store.get_url(key)
    for value in ('"nope"', f'"{etag}x"', '"a", "b"', f'W/"{etag}"'):  # If-Match compares strongly
        r = await client.get(url, headers={"If-Match": value})
        assert r.status_code == 412, value
        assert r.json()["error"] == "PreconditionFailedError"
    r = await client.get(url, headers={"If-Match": '"nope"', "Range": "bytes=99999-"})
    assert r.status_code == 412  # preconditions are evaluated before Range (RFC 9110 §13.2.2)
    for value in (f'"{etag}"', "*", f'"zzz", "{etag}"'):
        r = await client.get(url, headers={"If-Match": value})
        assert (r.status_code, r.content) == (200, BODY), value
    assert await store.get(key) == BODY


async def test_if_range(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key)
    url = await store.get_url(key)
    r = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": f'"{etag}"'})
    assert (r.status_code, r.content) == (206, BODY[:4])
    assert r.headers["content-range"] == f"bytes 0-3/{len(BODY)}"
    last_modified = r.headers["last-modified"]
    for validator in ('"stale"', f'W/"{etag}"', last_modified, "garbage"):
        r = await client.get(url, headers={"Range": "bytes=0-3", "If-Range": validator})
        assert (r.status_code, r.content) == (200, BODY), validator
        assert "content-range" not in r.headers
    # A stale validator with an unsatisfiable range: the whole (new) object, not 416.
    r = await client.get(url, headers={"Range": "bytes=99999-", "If-Range": '"stale"'})
    assert (r.status_code, r.content) == (200, BODY)
    r = await client.get(url, headers={"Range": "bytes=99999-", "If-Range": f'"{etag}"'})
    assert r.status_code == 416


async def test_etag_changes_after_overwrite(store: Any, client: httpx.AsyncClient, key: str) -> None:
    old = await put(store, key)
    url = await store.get_url(key)
    new = await put(store, key, b"new body")
    assert new != old
    r = await client.get(url, headers={"If-None-Match": f'"{old}"'})
    assert (r.status_code, r.content, r.headers["etag"]) == (200, b"new body", f'"{new}"')
    r = await client.get(url, headers={"Range": "bytes=0-2", "If-Range": f'"{old}"'})
    assert (r.status_code, r.content) == (200, b"new body")


# --- HEAD ---------------------------------------------------------------------------------------


async def test_head(store: Any, client: httpx.AsyncClient, key: str) -> None:
    etag = await put(store, key + ".txt", content_type="text/plain")
    url = await store.get_url(key + ".txt")
    get = await client.get(url)
    r = await client.head(url)
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-length"] == str(len(BODY))
    assert r.headers["etag"] == f'"{etag}"'
    for name in ("content-type", "x-content-type-options", "last-modified", "accept-ranges", "etag"):
        assert r.headers[name] == get.headers[name]
    r = await client.head(url, headers={"Range": "bytes=10-19"})
    assert (r.status_code, r.content) == (206, b"")
    assert r.headers["content-range"] == f"bytes 10-19/{len(BODY)}"
    assert r.headers["content-length"] == "10"
    r = await client.head(url, headers={"If-None-Match": f'"{etag}"'})
    assert r.status_code == 304


# --- Content-Type, Content-Disposition, active content -----------------------------------------


@pytest.mark.parametrize(
    ("name", "ascii_name"),
    [
        ("plain-report.pdf", "plain-report.pdf"),
        ('say "hi".txt', None),
        ("naïve café ☕.txt", None),
        ("100% done.txt", None),
        ("a;b=c.txt", "a;b=c.txt"),
        ("it's, (fine).txt", "it's, (fine).txt"),
        ('résumé "final"; 50%.pdf', None),
        ("emoji 🎉.png", None),
    ],
)
async def test_content_disposition_escaping(
    store: Any, client: httpx.AsyncClient, name: str, ascii_name: str | None
) -> None:
    key = f"cd-{uuid.uuid4().hex[:8]}/{name}"
    await put(store, key, b"x", content_type="application/octet-stream")
    r = await client.get(await store.get_url(key, download=True))
    assert r.status_code == 200
    value = r.headers["content-disposition"]
    assert "\r" not in value and "\n" not in value
    kind, plain, star = parse_disposition(value)
    assert kind == "attachment"
    assert plain is not None
    assert plain.isascii() and plain.isprintable()
    assert '"' not in plain and "\\" not in plain and "%" not in plain
    if ascii_name is not None:
        assert plain == ascii_name
        assert star in (None, name)
    else:
        assert star == name  # the exact name, UTF-8 percent-encoded (RFC 8187)
    assert "cd-" not in value  # only the last segment names the file


async def test_download_flag_makes_an_attachment(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key + ".png", b"\x89PNG fake", content_type="image/png")
    inline = await client.get(await store.get_url(key + ".png"))
    assert inline.status_code == 200
    assert inline.headers["content-type"] == "image/png"
    assert "content-disposition" not in inline.headers
    assert "content-security-policy" not in inline.headers
    attached = await client.get(await store.get_url(key + ".png", download=True))
    assert attached.status_code == 200
    assert parse_disposition(attached.headers["content-disposition"])[:2] == ("attachment", f"{key}.png")


async def test_stored_content_disposition_is_served(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key, b"x", content_type="text/plain", content_disposition='inline; filename="r.txt"')
    r = await client.get(await store.get_url(key))
    assert r.headers["content-disposition"] == 'inline; filename="r.txt"'
    r = await client.get(await store.get_url(key, download=True))
    assert r.headers["content-disposition"].startswith("attachment")


@pytest.mark.parametrize(
    "ctype",
    [
        "text/html",
        "text/html; charset=utf-8",
        "TEXT/HTML",
        "image/svg+xml",
        "application/xhtml+xml",
        "text/xml",
        "application/xml",
        "application/rss+xml",
        "application/vnd.foo+xml",
        "text/xsl",
        "text/javascript",
    ],
)
async def test_active_content_is_never_inline(store: Any, client: httpx.AsyncClient, key: str, ctype: str) -> None:
    payload = b"<html><script>alert(document.cookie)</script></html>"
    await put(store, key + ".html", payload, content_type=ctype, content_disposition="inline")
    for download in (False, True):
        r = await client.get(await store.get_url(key + ".html", download=download))
        assert r.status_code == 200
        assert r.content == payload
        assert r.headers["content-type"] == ctype
        assert r.headers["content-disposition"].startswith("attachment;")
        assert r.headers["content-security-policy"] == "sandbox"
        assert r.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    ("key_suffix", "expected"),
    [(".txt", "text/plain"), (".json", "application/json"), (".png", "image/png"), (".weird", None)],
)
async def test_content_type_guessed_from_key(
    store: Any, client: httpx.AsyncClient, key: str, key_suffix: str, expected: str | None
) -> None:
    await put(store, key + key_suffix, b"{}")
    r = await client.get(await store.get_url(key + key_suffix))
    ctype = r.headers["content-type"].split(";")[0]
    assert ctype == (expected or "application/octet-stream")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("content_type", "text/plain\r\nSet-Cookie: stolen=1"),
        ("content_type", "text/html\n"),
        ("content_type", "tëxt/plain"),
        ("content_disposition", "inline\r\nSet-Cookie: stolen=1"),
        ("cache_control", "public\nSet-Cookie: stolen=1"),
    ],
)
async def test_stored_values_unfit_for_headers_never_break_or_inject(
    store: Any, client: httpx.AsyncClient, key: str, field: str, value: str
) -> None:
    try:
        await put(store, key, b"data", **{field: value})
    except unistore.StorageError as exc:  # refusing it at write time is fine too
        status = exc.status
    else:
        status = None
    if status is not None:
        assert 400 <= status < 500
        return
    r = await client.get(await store.get_url(key))
    assert (r.status_code, r.content) == (200, b"data")
    assert "set-cookie" not in r.headers
    assert "\n" not in "".join(r.headers.values())
    if field == "content_type":
        assert r.headers["content-type"] == "application/octet-stream"
    if field == "content_disposition":
        assert r.headers["content-disposition"].startswith("attachment;")
    if field == "cache_control":
        assert r.headers["cache-control"] == "private, no-cache"


@pytest.mark.parametrize(
    "name", ["a..b.txt", "with space.txt", "ünï/文件.bin", "100%", "q?uestion#hash", "plus+and=eq"]
)
async def test_tricky_keys_round_trip(store: Any, client: httpx.AsyncClient, name: str) -> None:
    key = f"tricky-{uuid.uuid4().hex[:6]}/{name}"
    await put(store, key)
    for download in (False, True):
        r = await client.get(await store.get_url(key, download=download))
        assert (r.status_code, r.content) == (200, BODY), key


# --- signatures --------------------------------------------------------------------------------


async def test_signature_failures_are_403(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key)
    other = key + "-other"
    await put(store, other, b"other")
    url = await store.get_url(key)
    sig = dict(parse_qsl(urlsplit(url).query))["signature"]
    expires = dict(parse_qsl(urlsplit(url).query))["expires"]
    bad = {
        "no query": url.split("?")[0],
        "no signature": with_query(url, signature=None),
        "no expires": with_query(url, expires=None),
        "empty signature": with_query(url, signature=""),
        "tampered signature": with_query(url, signature=("A" if sig[0] != "A" else "B") + sig[1:]),
        "truncated signature": with_query(url, signature=sig[:-1]),
        "extended expiry": with_query(url, expires=str(int(expires) + 1)),
        "malformed expiry": with_query(url, expires="soon"),
        "non-ascii signature": with_query(url, signature="é" + sig[1:]),
        "disposition added": with_query(url, disposition="attachment"),
        "disposition inline": with_query(url, disposition="inline"),
        "other key's signature": with_query(await store.get_url(other), signature=sig, expires=expires),
    }
    for name, bad_url in bad.items():
        for method in ("GET", "HEAD"):
            r = await client.request(method, bad_url)
            assert r.status_code == 403, (name, method)
            if method == "GET":
                assert r.json()["error"] == "PermissionDeniedError", name
                assert BODY not in r.content


async def test_disposition_removed_is_403(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key)
    url = await store.get_url(key, download=True)
    assert (await client.get(url)).status_code == 200
    assert (await client.get(with_query(url, disposition=None))).status_code == 403
    assert (await client.get(with_query(url, disposition="inline"))).status_code == 403


async def test_expired_url_is_403(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key)
    url = store.signer.sign(key, expires_in=60, now=time.time() - 120)
    r = await client.get(url)
    assert r.status_code == 403
    assert "expired" in r.json()["detail"]
    fresh = store.signer.sign(key, expires_in=60)
    assert (await client.get(fresh)).status_code == 200


async def test_url_signed_by_another_secret_is_403(store: Any, client: httpx.AsyncClient, key: str) -> None:
    await put(store, key)
    stranger = MemoryBackend(base_url=store.signer.base_url, url_secret="another-secret-0123456789")
    r = await client.get(await stranger.sign_url(key))
    assert r.status_code == 403


async def test_missing_object_with_valid_signature_is_404(store: Any, client: httpx.AsyncClient, key: str) -> None:
    url = await store.sign_url(key + "/never-written.txt")
    r = await client.get(url)
    assert r.status_code == 404
    assert r.json()["error"] == "NotFoundError"
    assert (await client.head(url)).status_code == 404


async def test_reencoded_path_still_verifies(store: Any, client: httpx.AsyncClient) -> None:
    key = f"enc-{uuid.uuid4().hex[:6]}/a b+c.txt"
    await put(store, key)
    url = await store.get_url(key)
    parts = urlsplit(url)
    reencoded = parts.path.replace("a%20b", "%61%20%62")
    assert reencoded != parts.path
    r = await client.get(with_path(url, reencoded))
    assert (r.status_code, r.content) == (200, BODY)


@pytest.mark.parametrize(
    "path",
    [
        "/files/%2e%2e/%2e%2e/etc/passwd",
        "/files/%2E%2E/secret",
        "/files/a/%252e%252e/b",
        "/files/a%2F..%2Fb",
        "/files/.unistore/url-secret",
        "/files/a//b",
        "/files/a%5Cb",
        "/files/",
    ],
)
async def test_invalid_key_in_path_is_400(store: Any, client: httpx.AsyncClient, path: str) -> None:
    url = await store.sign_url("placeholder.txt")
    r = await client.get(with_path(url, path))
    assert r.status_code == 400, path
    assert r.json()["error"] == "InvalidKeyError"


async def test_literal_dot_segments_never_reach_the_store(store: Any) -> None:
    base = store.signer.base_url.rsplit("/files", 1)[0]
    for target in ("/files/../../etc/passwd?expires=1&signature=x", "/files/a/../../x"):
        status, body = await asyncio.to_thread(raw_http, base, target)
        assert status == 400, target
        assert b"root:" not in body


async def test_signed_invalid_key_is_400_not_served(store: Any) -> None:
    # Even with a valid signature for "../x" (forged with the store's own signer), the key is refused.
    url = store.signer.sign("../x", expires_in=60)
    base, _, target = url.partition("/files")
    status, _ = await asyncio.to_thread(raw_http, base, "/files" + target)
    assert status == 400


async def test_url_never_reveals_the_filesystem_path(served_local: LocalBackend, key: str) -> None:
    await put(served_local, key + "/f.txt")
    for download in (False, True):
        url = await served_local.get_url(key + "/f.txt", download=download)
        assert str(served_local.root) not in url
        assert served_local.root.name not in url
        assert url.startswith(served_local.settings.base_url + "/" + key + "/f.txt?")
    assert str(served_local.root) not in await served_local.put(key + "/g.txt", b"x")


async def test_get_url_of_a_missing_key_raises(store: Any, key: str) -> None:
    with pytest.raises(FileNotFoundError):
        await store.get_url(key + "-missing")


# --- memory stays flat: 1 GiB through the file route, server in a subprocess ----------------------

_SERVER = textwrap.dedent(
    """
    import os, uvicorn
    from fastapi import FastAPI
    from unistore import LocalBackend, add_storage

    port = int(os.environ["PORT"])
    backend = LocalBackend(
        base_path=os.environ["ROOT"],
        base_url=f"http://127.0.0.1:{port}/files",
        url_secret=os.environ["SECRET"],
        fsync=False,
    )
    app = FastAPI()
    add_storage(app, backend, serve_files=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
    """
)

GIB = 1024 * 1024 * 1024
MIB = 1024 * 1024


def _start_server(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", _SERVER], env=env)


@pytest.mark.slow
async def test_serving_1_gib_keeps_server_memory_flat(tmp_path: Path) -> None:
    root = tmp_path / "big"
    port = free_port()
    backend = LocalBackend(
        base_path=str(root), base_url=f"http://127.0.0.1:{port}/files", url_secret=SECRET, fsync=False
    )
    chunks = [bytes([i]) * MIB for i in range(7)]
    expected = hashlib.sha1(usedforsecurity=False)

    async def body() -> AsyncIterator[bytes]:
        for i in range(GIB // MIB):
            chunk = chunks[i % 7]
            expected.update(chunk)
            yield chunk

    env = dict(os.environ, PORT=str(port), ROOT=str(root), SECRET=SECRET)
    proc = _start_server(env)
    try:
        info = await backend.put_object("big/one-gib.bin", body(), content_type="application/octet-stream")
        assert info.size == GIB
        url = await backend.get_url("big/one-gib.bin")
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient(timeout=30) as client:
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(base + "/_ops/health")).status_code == 200:
                        break
                assert proc.poll() is None, "server process died"
                assert time.monotonic() < deadline, "server did not start"
                await asyncio.sleep(0.05)
            # Warm up the code path (imports, buffers) with a ranged read of a few chunks.
            r = await client.get(url, headers={"Range": f"bytes=0-{4 * MIB - 1}"})
            assert r.status_code == 206

        server = psutil.Process(proc.pid)
        baseline = server.memory_info().rss
        peak = baseline
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, server.memory_info().rss)
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        got = hashlib.sha1(usedforsecurity=False)
        total = 0

        def download() -> None:
            nonlocal total
            with httpx.Client(timeout=60) as c, c.stream("GET", url) as resp:
                assert resp.status_code == 200
                assert resp.headers["content-length"] == str(GIB)
                for part in resp.iter_raw(4 * MIB):
                    total += len(part)
                    got.update(part)

        try:
            await asyncio.to_thread(download)
        finally:
            stop.set()
            sampler.join()
        assert total == GIB
        assert got.digest() == expected.digest()
        growth = peak - baseline
        print(f"server RSS growth serving 1 GiB: {growth / MIB:.1f} MiB")
        assert growth < 64 * MIB, f"server RSS grew by {growth / MIB:.1f} MiB serving 1 GiB"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)


def test_the_public_names_used_here_exist() -> None:
    assert unistore.add_storage is add_storage
    assert issubclass(MemoryBackend, BaseBackend)
