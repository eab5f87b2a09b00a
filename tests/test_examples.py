"""The guide's examples (``examples/``) driven over real HTTP, on the memory and local backends.

Each example runs as its own app under uvicorn (one per example and backend, for
the test module). The backend's ``base_url`` points at that server's ``/files``
route, so the signed URLs the examples return download over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import io
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest
from PIL import Image

from unistore import LocalBackend, MemoryBackend, StorageBackend
from unistore.backends.s3 import S3Backend
from unistore.testing import S3Server, free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `pytest` (unlike `python -m pytest`) does not add the project root
    sys.path.insert(0, str(ROOT))

SECRET = "examples-secret-0123456789abcdef"
BACKENDS = ["memory", "local", "s3"]
EXAMPLES = [
    "basic_routes",
    "profile_picture",
    "documents",
    "tenant_files",
    "signed_urls",
    "large_files",
]


def example(name: str) -> ModuleType:
    return importlib.import_module(f"examples.{name}")


@dataclass
class Served:
    """One example app running on a real port, and the backend it stores into."""

    url: str
    backend: StorageBackend
    kind: str


@contextlib.contextmanager
def serve_example(
    name: str, kind: str, tmp: pytest.TempPathFactory, s3: S3Server | None = None
) -> Iterator[Served]:
    port = free_port()
    files_url = f"http://127.0.0.1:{port}/files"
    backend: StorageBackend
    if kind == "memory":
        backend = MemoryBackend(base_url=files_url, url_secret=SECRET)
    elif kind == "s3":  # presigned URLs point at SeaweedFS itself
        backend = s3.backend(prefix=f"examples-{name}-{uuid.uuid4().hex[:8]}/")
    else:
        root = tmp.mktemp(f"{name}-store")
        backend = LocalBackend(base_path=str(root), base_url=files_url, fsync=False)
    app = example(name).create_app(backend)
    with running_server(app, port) as url:
        yield Served(url, backend, kind)
    if isinstance(backend, S3Backend):
        asyncio.run(backend.aclose())


def url_path(served: Served, key: str) -> str:
    """The path of a URL the store hands out for ``key``: the app's file route, or the S3 object."""
    if isinstance(served.backend, S3Backend):
        return f"/{served.backend.bucket}/{served.backend.settings.prefix}{key}"
    return f"/files/{key}"


def _s3(request: pytest.FixtureRequest) -> S3Server | None:
    return request.getfixturevalue("seaweed") if request.param == "s3" else None


@pytest.fixture(scope="module", params=BACKENDS)
def basic(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("basic_routes", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture(scope="module", params=BACKENDS)
def avatar(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("profile_picture", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture(scope="module", params=BACKENDS)
def documents(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("documents", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture(scope="module", params=BACKENDS)
def tenants(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("tenant_files", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture(scope="module", params=BACKENDS)
def signed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("signed_urls", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture(scope="module", params=BACKENDS)
def large(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_example("large_files", request.param, tmp_path_factory, _s3(request)) as served:
        yield served


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as c:
        yield c


def uid() -> str:
    return uuid.uuid4().hex[:12]


def image_bytes(fmt: str, size: tuple[int, int]) -> bytes:
    img = Image.new("RGB", size, (200, 30, 90))
    img.paste((10, 200, 40), (0, 0, size[0] // 2, size[1] // 2))  # not a flat colour
    out = io.BytesIO()
    img.save(out, format=fmt)
    return out.getvalue()


# --- every example: an app, health, lazy module-level `app` -------------------------------------


async def assert_healthy(served: Served, client: httpx.AsyncClient) -> None:
    r = await client.get(f"{served.url}/_ops/health")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "healthy"
    assert body["storage"]["backend"] == type(served.backend).__name__


async def test_health_basic(basic: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(basic, client)


async def test_health_avatar(avatar: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(avatar, client)


async def test_health_documents(documents: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(documents, client)


async def test_health_tenants(tenants: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(tenants, client)


async def test_health_signed(signed: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(signed, client)


async def test_health_large(large: Served, client: httpx.AsyncClient) -> None:
    await assert_healthy(large, client)


@pytest.mark.parametrize("name", EXAMPLES)
def test_module_app_is_built_lazily_from_the_environment(
    name: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    module = example(name)
    module.__dict__.pop("app", None)
    monkeypatch.setenv("STORAGE_BACKEND", "local")
    monkeypatch.setenv("STORAGE_BASE_PATH", str(tmp_path / "env-store"))
    monkeypatch.setenv("STORAGE_URL_SECRET", SECRET)
    try:
        app = module.app  # what `uvicorn examples.<name>:app` asks for
        assert module.app is app  # built once
        assert isinstance(app.state.storage, LocalBackend)
        paths = {getattr(route, "path", None) for route in app.routes}
        assert {"/_ops/health", "/files/{key:path}"} <= paths
        asyncio.run(app.state.storage.aclose())
    finally:
        module.__dict__.pop("app", None)
    with pytest.raises(AttributeError):
        _ = module.no_such_attribute


def test_readme_command_serves_an_example(tmp_path: Path) -> None:
    """`uvicorn examples.documents:app`, as examples/README.md says, serves the example."""
    port = free_port()
    env = {
        **os.environ,
        "STORAGE_BACKEND": "local",
        "STORAGE_BASE_PATH": str(tmp_path / "store"),
        "STORAGE_BASE_URL": f"http://127.0.0.1:{port}/files",
        "STORAGE_URL_SECRET": SECRET,
    }
    cmd = [sys.executable, "-m", "uvicorn", "examples.documents:app", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                r = httpx.post(
                    f"http://127.0.0.1:{port}/documents/upload",
                    params={"category": "cli"},
                    headers={"X-User-Id": "cli"},
                    files={"file": ("a.txt", b"from the CLI", "text/plain")},
                )
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.1)
        assert r.status_code == 200, r.text
        assert httpx.get(r.json()["url"]).content == b"from the CLI"
    finally:
        proc.terminate()
        proc.wait(10)
    assert list((tmp_path / "store" / "documents" / "cli" / "cli").iterdir())


# --- basic routes: upload / download / delete ------------------------------------------------


async def test_basic_upload_download_delete_round_trip(basic: Served, client: httpx.AsyncClient) -> None:
    name = f"{uid()}.txt"
    body = b"hello unistore " + os.urandom(64)
    r = await client.post(f"{basic.url}/upload", files={"file": (name, body, "text/plain")})
    assert r.status_code == 200, r.text
    assert r.json()["filename"] == name
    url = r.json()["url"]
    assert urlsplit(url).path == url_path(basic, f"uploads/{name}")

    meta = await basic.backend.get_metadata(f"uploads/{name}")
    assert meta["uploader"] == "user_123"
    assert meta["timestamp"] == "2025-11-18"
    assert meta["content_type"] == "text/plain"
    assert meta["size"] == len(body)

    r = await client.get(f"{basic.url}/download/{name}")
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["content-type"] == "application/octet-stream"

    r = await client.get(url)  # the signed URL `put` returned
    assert r.status_code == 200
    assert r.content == body
    assert r.headers["content-type"].startswith("text/plain")

    r = await client.delete(f"{basic.url}/files/{name}")
    assert r.status_code == 200
    assert r.json() == {"status": "deleted"}
    assert not await basic.backend.exists(f"uploads/{name}")

    r = await client.get(f"{basic.url}/download/{name}")
    assert r.status_code == 404
    assert (await client.get(url)).status_code == 404


async def test_basic_download_of_missing_file_is_404_from_the_examples_handler(
    basic: Served, client: httpx.AsyncClient
) -> None:
    # The reference answered 500: its NotFound error was not a builtin FileNotFoundError,
    # so the example's `except FileNotFoundError` never ran. Here the example's own
    # handler answers (its detail, not the library's).
    r = await client.get(f"{basic.url}/download/never-{uid()}.txt")
    assert r.status_code == 404
    assert r.json() == {"detail": "File not found"}


async def test_basic_upload_replaces_and_delete_of_missing_is_harmless(
    basic: Served, client: httpx.AsyncClient
) -> None:
    name = f"{uid()}.bin"
    for body in (b"first", b"second version"):
        r = await client.post(f"{basic.url}/upload", files={"file": (name, body, "application/x-test")})
        assert r.status_code == 200
    assert (await client.get(f"{basic.url}/download/{name}")).content == b"second version"
    assert (await client.delete(f"{basic.url}/files/{name}")).status_code == 200
    r = await client.delete(f"{basic.url}/files/{name}")  # already gone: the guide still says deleted
    assert r.status_code == 200
    assert r.json() == {"status": "deleted"}


@pytest.mark.parametrize(
    "stem", ["100%", "résumé", "a#b", "what?", "a;b=c", "a+b c", "名前", "x.meta", ".hidden"]
)
async def test_basic_round_trip_of_awkward_filenames(
    basic: Served, client: httpx.AsyncClient, stem: str
) -> None:
    name = f"{stem}-{uid()}.txt"
    body = name.encode() * 3
    r = await client.post(f"{basic.url}/upload", files={"file": (name, body, "text/plain")})
    assert r.status_code == 200, r.text
    assert (await client.get(r.json()["url"])).content == body
    download = f"{basic.url}/download/{quote(name, safe='')}"
    assert (await client.get(download)).content == body
    assert (await client.delete(f"{basic.url}/files/{quote(name, safe='')}")).status_code == 200
    assert (await client.get(download)).status_code == 404


async def test_basic_upload_with_a_traversal_filename_is_refused(
    basic: Served, client: httpx.AsyncClient
) -> None:
    before = await basic.backend.list_keys("", limit=10_000)
    r = await client.post(f"{basic.url}/upload", files={"file": ("..", b"escape", "text/plain")})
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "InvalidKeyError"
    assert await basic.backend.list_keys("", limit=10_000) == before


# --- profile picture ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "ctype", "size", "expected"),
    [
        ("PNG", "image/png", (800, 600), (200, 150)),
        ("JPEG", "image/jpeg", (300, 1000), (60, 200)),
        ("GIF", "image/gif", (400, 400), (200, 200)),
        ("WEBP", "image/webp", (1000, 500), (200, 100)),
        ("PNG", "image/png", (120, 80), (120, 80)),  # already small: never enlarged
    ],
)
async def test_avatar_is_resized_to_fit_200x200(
    avatar: Served,
    client: httpx.AsyncClient,
    fmt: str,
    ctype: str,
    size: tuple[int, int],
    expected: tuple[int, int],
) -> None:
    user = uid()
    ext = fmt.lower()
    original = image_bytes(fmt, size)
    r = await client.post(
        f"{avatar.url}/users/me/avatar",
        headers={"X-User-Id": user},
        files={"file": (f"me.{ext}", original, ctype)},
    )
    assert r.status_code == 200, r.text
    url = r.json()["avatar_url"]
    key = f"avatars/{user}/profile.{ext}"
    assert urlsplit(url).path == url_path(avatar, key)

    served = await client.get(url)
    assert served.status_code == 200
    assert served.headers["content-type"] == ctype
    stored = Image.open(io.BytesIO(served.content))
    assert stored.format == fmt  # saved in the format it came in
    assert stored.size == expected
    assert max(stored.size) <= 200
    assert served.content == await avatar.backend.get(key)

    meta = await avatar.backend.get_metadata(key)
    assert meta["user_id"] == user
    assert meta["original_filename"] == f"me.{ext}"
    assert datetime.fromisoformat(meta["uploaded_at"])


async def test_avatar_upload_replaces_the_previous_one(avatar: Served, client: httpx.AsyncClient) -> None:
    user = uid()
    for width in (900, 500):
        r = await client.post(
            f"{avatar.url}/users/me/avatar",
            headers={"X-User-Id": user},
            files={"file": ("me.png", image_bytes("PNG", (width, 100)), "image/png")},
        )
        assert r.status_code == 200
    assert await avatar.backend.list_keys(f"avatars/{user}/") == [f"avatars/{user}/profile.png"]
    stored = Image.open(io.BytesIO(await avatar.backend.get(f"avatars/{user}/profile.png")))
    assert stored.size == (200, 40)  # the second upload (500x100)


@pytest.mark.parametrize(
    ("filename", "content", "ctype", "status"),
    [
        ("notes.txt", b"just text", "text/plain", 415),
        ("me.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>", "image/svg+xml", 415),
        ("big.png", b"\x89PNG" + b"\0" * (2 * 1024 * 1024), "image/png", 413),
        ("fake.png", b"this is not a png at all", "image/png", 400),
        ("truncated.jpg", image_bytes("JPEG", (50, 50))[:40], "image/jpeg", 400),
    ],
)
async def test_avatar_rejects_bad_uploads_and_stores_nothing(
    avatar: Served,
    client: httpx.AsyncClient,
    filename: str,
    content: bytes,
    ctype: str,
    status: int,
) -> None:
    user = uid()
    r = await client.post(
        f"{avatar.url}/users/me/avatar",
        headers={"X-User-Id": user},
        files={"file": (filename, content, ctype)},
    )
    assert r.status_code == status, r.text
    assert await avatar.backend.list_keys(f"avatars/{user}/") == []


async def test_avatar_size_limit_is_exactly_2_mib(avatar: Served, client: httpx.AsyncClient) -> None:
    # A valid PNG padded to exactly MAX_SIZE (trailing bytes after IEND are ignored by Pillow).
    png = image_bytes("PNG", (300, 300))
    limit = example("profile_picture").MAX_SIZE
    assert limit == 2 * 1024 * 1024
    user = uid()
    r = await client.post(
        f"{avatar.url}/users/me/avatar",
        headers={"X-User-Id": user},
        files={"file": ("me.png", png + b"\0" * (limit - len(png)), "image/png")},
    )
    assert r.status_code == 200, r.text
    assert Image.open(io.BytesIO(await avatar.backend.get(f"avatars/{user}/profile.png"))).size == (200, 200)


async def test_avatar_needs_a_user(avatar: Served, client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"{avatar.url}/users/me/avatar",
        files={"file": ("me.png", image_bytes("PNG", (10, 10)), "image/png")},
    )
    assert r.status_code == 401


# --- documents with metadata ------------------------------------------------------------------


async def upload_document(
    served: Served, client: httpx.AsyncClient, user: str, filename: str, body: bytes, **params: Any
) -> httpx.Response:
    return await client.post(
        f"{served.url}/documents/upload",
        params=params,
        headers={"X-User-Id": user},
        files={"file": (filename, body, "application/pdf")},
    )


async def test_document_upload_keeps_tags_and_category(documents: Served, client: httpx.AsyncClient) -> None:
    user = uid()
    body = b"%PDF-1.4 quarterly numbers" + os.urandom(100)
    r = await upload_document(
        documents, client, user, "q3 report.pdf", body, category="reports", tags=["q3", "finance"]
    )
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["filename"] == "q3 report.pdf"
    assert doc["size"] == len(body)
    assert doc["category"] == "reports"
    assert doc["tags"] == ["q3", "finance"]
    document_id = str(uuid.UUID(doc["document_id"]))

    key = f"documents/{user}/reports/{document_id}/q3 report.pdf"
    meta = await documents.backend.get_metadata(key)
    assert meta["tags"] == "q3,finance"
    assert meta["category"] == "reports"
    assert meta["document_id"] == document_id
    assert meta["user_id"] == user
    assert meta["original_filename"] == "q3 report.pdf"
    assert meta["size"] == len(body)

    served = await client.get(doc["url"])
    assert served.status_code == 200
    assert served.content == body


async def test_document_list_returns_metadata_and_filters_by_category(
    documents: Served, client: httpx.AsyncClient
) -> None:
    user, other = uid(), uid()
    uploads = [
        ("a.pdf", b"A" * 10, {"category": "reports", "tags": ["x"]}),
        ("b.pdf", b"B" * 2000, {"category": "invoices"}),
        ("c.pdf", b"C" * 7, {}),  # default category "general"
    ]
    for filename, body, params in uploads:
        r = await upload_document(documents, client, user, filename, body, **params)
        assert r.status_code == 200, r.text
    # Another user, and one whose id has `user` as a prefix: neither shows up in the listing.
    for stranger in (other, user + "x"):
        r = await upload_document(documents, client, stranger, "secret.pdf", b"S", category="reports")
        assert r.status_code == 200

    r = await client.get(f"{documents.url}/documents", headers={"X-User-Id": user})
    assert r.status_code == 200
    listed = r.json()["documents"]
    assert sorted((d["filename"], d["size"], d["category"]) for d in listed) == [
        ("a.pdf", 10, "reports"),
        ("b.pdf", 2000, "invoices"),
        ("c.pdf", 7, "general"),
    ]
    for d in listed:
        assert d["key"].startswith(f"documents/{user}/{d['category']}/")
        assert d["key"].endswith("/" + d["filename"])
        uploaded = datetime.fromisoformat(d["uploaded_at"])
        assert abs(uploaded - datetime.utcnow()) < timedelta(minutes=5)

    r = await client.get(
        f"{documents.url}/documents", params={"category": "reports"}, headers={"X-User-Id": user}
    )
    assert [d["filename"] for d in r.json()["documents"]] == ["a.pdf"]

    r = await client.get(f"{documents.url}/documents", headers={"X-User-Id": other})
    assert [d["filename"] for d in r.json()["documents"]] == ["secret.pdf"]


async def test_document_category_cannot_escape_the_users_prefix(
    documents: Served, client: httpx.AsyncClient
) -> None:
    user, victim = uid(), uid()
    r = await upload_document(documents, client, user, "x.pdf", b"planted", category=f"../{victim}")
    assert r.status_code == 400
    assert await documents.backend.list_keys(f"documents/{victim}/") == []
    r = await client.get(
        f"{documents.url}/documents", params={"category": f"../{victim}"}, headers={"X-User-Id": user}
    )
    assert r.status_code == 400


async def test_documents_need_a_user(documents: Served, client: httpx.AsyncClient) -> None:
    assert (await client.get(f"{documents.url}/documents")).status_code == 401
    r = await client.get(f"{documents.url}/documents", headers={"X-User-Id": "../admin"})
    assert r.status_code == 401


# --- tenant-scoped files ------------------------------------------------------------------------


async def upload_tenant_file(
    served: Served, client: httpx.AsyncClient, tenant: str, filename: str, body: bytes
) -> httpx.Response:
    return await client.post(
        f"{served.url}/tenant-files/upload",
        headers={"X-Tenant-Id": tenant, "X-User-Id": "u1"},
        files={"file": (filename, body, "text/plain")},
    )


async def list_tenant(served: Served, client: httpx.AsyncClient, tenant: str) -> dict[str, Any]:
    r = await client.get(f"{served.url}/tenant-files", headers={"X-Tenant-Id": tenant})
    assert r.status_code == 200, r.text
    listing: dict[str, Any] = r.json()
    return listing


async def test_tenant_listing_never_shows_another_tenants_files(
    tenants: Served, client: httpx.AsyncClient
) -> None:
    a = "acme-" + uid()
    b = "beta-" + uid()
    a2 = a + "2"  # a longer id with a's id as its prefix
    uploads = {a: ["a1.txt", "a2.txt", "a3.txt"], b: ["b1.txt"], a2: ["x.txt"]}
    for tenant, names in uploads.items():
        for name in names:
            r = await upload_tenant_file(tenants, client, tenant, name, f"{tenant}/{name}".encode())
            assert r.status_code == 200, r.text
            assert r.json()["filename"] == name

    for tenant, names in uploads.items():
        listing = await list_tenant(tenants, client, tenant)
        assert listing["count"] == len(names) == len(listing["files"])
        assert all(k.startswith(f"tenants/{tenant}/files/") for k in listing["files"])
        assert sorted(k.rsplit("/", 1)[1] for k in listing["files"]) == names
        for k in listing["files"]:
            assert await tenants.backend.get(k) == f"{tenant}/{k.rsplit('/', 1)[1]}".encode()
            meta = await tenants.backend.get_metadata(k)
            assert meta["tenant_id"] == tenant
            assert meta["user_id"] == "u1"


async def test_tenant_upload_returns_a_working_signed_url(tenants: Served, client: httpx.AsyncClient) -> None:
    tenant = uid()
    r = await upload_tenant_file(tenants, client, tenant, "hello.txt", b"tenant data")
    assert r.status_code == 200
    assert urlsplit(r.json()["url"]).path.startswith(url_path(tenants, f"tenants/{tenant}/files/"))
    assert (await client.get(r.json()["url"])).content == b"tenant data"


@pytest.mark.parametrize("bad", ["", "../other", "victim/files/planted", "a b"])
async def test_tenant_id_must_be_a_plain_name(
    tenants: Served, client: httpx.AsyncClient, bad: str
) -> None:
    victim = "victim"
    before = await list_tenant(tenants, client, victim)
    headers = {"X-User-Id": "u1"} if bad == "" else {"X-Tenant-Id": bad, "X-User-Id": "u1"}
    r = await client.post(
        f"{tenants.url}/tenant-files/upload",
        headers=headers,
        files={"file": ("planted.txt", b"planted", "text/plain")},
    )
    assert r.status_code == 400
    assert (await client.get(f"{tenants.url}/tenant-files", headers=headers)).status_code == 400
    assert await list_tenant(tenants, client, victim) == before
    assert all("planted" not in k for k in await tenants.backend.list_keys("", limit=10_000))


async def test_tenant_upload_needs_a_user(tenants: Served, client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"{tenants.url}/tenant-files/upload",
        headers={"X-Tenant-Id": "acme"},
        files={"file": ("a.txt", b"a", "text/plain")},
    )
    assert r.status_code == 401


# --- signed download URLs ----------------------------------------------------------------------

PDF = b"%PDF-1.4\n" + b"signed content " * 100


async def seed_document(served: Served) -> str:
    file_id = uid()
    await served.backend.put(f"uploads/{file_id}/document.pdf", PDF, "application/pdf")
    return file_id


async def get_link(served: Served, client: httpx.AsyncClient, file_id: str, **params: Any) -> httpx.Response:
    return await client.get(
        f"{served.url}/files/{file_id}/download-url", params=params, headers={"X-User-Id": "alice"}
    )


async def test_signed_url_downloads_the_file_as_an_attachment(
    signed: Served, client: httpx.AsyncClient
) -> None:
    file_id = await seed_document(signed)
    before = time.time()
    r = await get_link(signed, client, file_id, expires_in=300)
    assert r.status_code == 200, r.text
    link = r.json()
    assert link["expires_in"] == 300
    expires_at = datetime.fromisoformat(link["expires_at"])
    assert abs(expires_at - (datetime.utcnow() + timedelta(seconds=300))) < timedelta(seconds=30)

    url = link["url"]
    parts = urlsplit(url)
    assert parts.path == url_path(signed, f"uploads/{file_id}/document.pdf")
    query = parse_qs(parts.query)
    if isinstance(signed.backend, S3Backend):
        assert query["X-Amz-Expires"] == ["300"]
        assert query["response-content-disposition"][0].startswith("attachment")  # download defaults to True
    else:
        assert before + 300 - 5 <= int(query["expires"][0]) <= time.time() + 300 + 5
        assert query["disposition"] == ["attachment"]  # download defaults to True

    r = await client.get(url)
    assert r.status_code == 200
    assert r.content == PDF
    assert r.headers["content-type"] == "application/pdf"
    assert r.headers["content-disposition"].startswith("attachment")
    assert 'filename="document.pdf"' in r.headers["content-disposition"]


async def test_signed_url_with_download_false_is_served_inline(
    signed: Served, client: httpx.AsyncClient
) -> None:
    file_id = await seed_document(signed)
    r = await get_link(signed, client, file_id, download="false")
    assert r.status_code == 200
    assert r.json()["expires_in"] == 3600  # the guide's default
    served = await client.get(r.json()["url"])
    assert served.status_code == 200
    assert served.content == PDF
    assert "attachment" not in served.headers.get("content-disposition", "")


async def test_signed_url_for_missing_file_is_404(signed: Served, client: httpx.AsyncClient) -> None:
    r = await get_link(signed, client, "never-" + uid())
    assert r.status_code == 404
    assert r.json() == {"detail": "File not found"}


async def test_signed_url_stops_working_when_the_file_is_deleted_or_tampered(
    signed: Served, client: httpx.AsyncClient
) -> None:
    file_id = await seed_document(signed)
    url = (await get_link(signed, client, file_id)).json()["url"]
    assert (await client.get(url)).status_code == 200
    tampered = url.replace(f"uploads/{file_id}/", f"uploads/{file_id}x/")
    assert (await client.get(tampered)).status_code == 403
    unsigned = url.split("?", 1)[0]
    assert (await client.get(unsigned)).status_code == 403
    assert await signed.backend.delete(f"uploads/{file_id}/document.pdf")
    assert (await client.get(url)).status_code == 404


@pytest.mark.parametrize("expires_in", [59, 86401, -1])
async def test_signed_url_expiry_bounds(signed: Served, client: httpx.AsyncClient, expires_in: int) -> None:
    file_id = await seed_document(signed)
    r = await get_link(signed, client, file_id, expires_in=expires_in)
    assert r.status_code == 422


async def test_signed_url_needs_a_user(signed: Served, client: httpx.AsyncClient) -> None:
    file_id = await seed_document(signed)
    r = await client.get(f"{signed.url}/files/{file_id}/download-url")
    assert r.status_code == 401


# --- large file upload ------------------------------------------------------------------------


async def test_large_file_upload_round_trips(large: Served, client: httpx.AsyncClient) -> None:
    user = uid()
    body = os.urandom(9 * 1024 * 1024 + 12345)  # several MiB, not a multiple of the 1 MiB chunk
    r = await client.post(
        f"{large.url}/large-files/upload",
        headers={"X-User-Id": user},
        files={"file": ("big.bin", body, "application/octet-stream")},
    )
    assert r.status_code == 200, r.text
    result = r.json()
    assert result["status"] == "uploaded"
    assert result["size"] == len(body)
    file_id = str(uuid.UUID(result["file_id"]))

    key = f"large-files/{user}/{file_id}/big.bin"
    assert await large.backend.list_keys(f"large-files/{user}/") == [key]
    meta = await large.backend.get_metadata(key)
    assert meta["size"] == len(body)
    assert meta["file_id"] == file_id
    assert meta["user_id"] == user

    digest = hashlib.sha256()
    received = 0
    async with client.stream("GET", result["url"]) as served:
        assert served.status_code == 200
        assert int(served.headers["content-length"]) == len(body)
        async for chunk in served.aiter_bytes():
            digest.update(chunk)
            received += len(chunk)
    assert received == len(body)
    assert digest.hexdigest() == hashlib.sha256(body).hexdigest()

    tail = await client.get(result["url"], headers={"Range": "bytes=-1000"})
    assert tail.status_code == 206
    assert tail.content == body[-1000:]


async def test_large_file_uploads_in_parallel_stay_separate(large: Served, client: httpx.AsyncClient) -> None:
    user = uid()
    bodies = [os.urandom(3 * 1024 * 1024 + i) for i in range(3)]

    async def upload(i: int, body: bytes) -> dict[str, Any]:
        r = await client.post(
            f"{large.url}/large-files/upload",
            headers={"X-User-Id": user},
            files={"file": (f"part{i}.bin", body, "application/octet-stream")},
        )
        assert r.status_code == 200, r.text
        result: dict[str, Any] = r.json()
        return result

    results = await asyncio.gather(*(upload(i, b) for i, b in enumerate(bodies)))
    assert len({r["file_id"] for r in results}) == 3
    for result, body in zip(results, bodies, strict=True):
        assert (await client.get(result["url"])).content == body


# --- the guide's S3 provider sections, against SeaweedFS ---------------------------------------


async def test_s3_intelligent_tiering_through_the_raw_client(seaweed: S3Server, client: httpx.AsyncClient) -> None:
    mod = example("s3_provider")
    storage = seaweed.backend()
    try:
        key = f"tiering/{uid()}.txt"
        url = await mod.put_with_intelligent_tiering(storage, key, b"tiered", "text/plain")
        r = await client.get(url)
        assert (r.status_code, r.content) == (200, b"tiered")
    finally:
        await storage.aclose()


async def test_s3_multipart_example_with_its_own_session(
    seaweed: S3Server, client: httpx.AsyncClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", seaweed.endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required")
    mod = example("s3_provider")
    storage = seaweed.backend()
    data = os.urandom(11 * 1024 * 1024 + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    try:
        key = f"multipart/{uid()}.bin"
        url = await mod.upload_large_file(storage, key, str(path), chunk_size=5 * 1024 * 1024)
        r = await client.get(url)
        assert r.status_code == 200 and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
        assert (await storage.head(key)).size == len(data)
    finally:
        await storage.aclose()
