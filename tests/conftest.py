from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI

from unistore import LocalBackend, MemoryBackend, add_storage
from unistore.testing import RedisServer, free_port, redis_server, running_server
from unistore.testing._clamd import ClamdServer, clamd_server
from unistore.testing._s3servers import S3Server, moto_server, seaweedfs

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture(scope="session")
def served_memory() -> Iterator[MemoryBackend]:
    """One memory store for the session, served over real HTTP at its base_url."""
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret=SECRET)
    app = FastAPI()
    add_storage(app, backend, serve_files=True)
    with running_server(app, port):
        yield backend


@pytest.fixture(scope="session")
def served_local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBackend]:
    """One local store (fsync off, for speed) for the session, served over real HTTP."""
    port = free_port()
    root = tmp_path_factory.mktemp("local-store")
    backend = LocalBackend(base_path=str(root), base_url=f"http://127.0.0.1:{port}/files", fsync=False)
    app = FastAPI()
    add_storage(app, backend, serve_files=True)
    with running_server(app, port):
        yield backend


@pytest.fixture
def key() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def local(tmp_path: Path) -> AsyncIterator[LocalBackend]:
    backend = LocalBackend(base_path=str(tmp_path / "store"), fsync=False, url_secret=SECRET)
    yield backend
    await backend.aclose()


# --- real S3 servers (one per xdist worker, started on first use) -----------------------------


@pytest.fixture(scope="session")
def seaweed() -> Iterator[S3Server]:
    """SeaweedFS `weed mini` with one identity: SigV4 is checked on every request."""
    with seaweedfs() as server:
        server.create_bucket("unistore-tests")
        yield server


@pytest.fixture(scope="session")
def moto() -> Iterator[S3Server]:
    """moto's server in its own process (lenient: checks no signatures)."""
    with moto_server() as server:
        server.create_bucket("unistore-tests")
        yield server


# --- GCS: fake-gcs-server, launched once per worker ------------------------------------------


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """fake-gcs-server (in-memory) with one bucket, plus a throwaway service-account key for signing."""
    from unistore.testing._gcs_server import create_bucket, make_service_account, running_fake_gcs

    creds = make_service_account(tmp_path_factory.mktemp("gcs") / "sa.json")
    with running_fake_gcs() as url:
        create_bucket(url, "unistore-test")
        yield {"url": url, "bucket": "unistore-test", "credentials": str(creds)}


# --- Cloudinary: the local fake of its REST API, served once per worker ----------------------


@pytest.fixture(scope="session")
def fake_cloudinary() -> Iterator[tuple[object, str]]:
    """The Cloudinary fake (state) and the base URL it is served at."""
    from unistore.testing._cloudinary_fake import FakeCloudinary

    fake = FakeCloudinary()
    with running_server(fake.app) as url:
        yield fake, url


# --- Redis: Debian redis-server, one per worker, in memory only --------------------------------


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """A redis-server child process on a free port (no persistence), stopped by its pid."""
    with redis_server() as server:
        yield server


# --- ClamAV: Debian clamd, one per worker, with a generated test database ----------------------


@pytest.fixture(scope="session")
def clamd() -> Iterator[ClamdServer]:
    """clamd on a Unix socket and a TCP port, loading only the generated EICAR/marker signatures.

    Fails (never skips) when clamd is not installed: CI installs it (make test-tools)."""
    with clamd_server() as server:
        yield server
