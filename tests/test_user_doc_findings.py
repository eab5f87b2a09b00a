"""Defects found while writing the user docs' examples, one regression test each."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from unistore import (
    InvalidArgumentError,
    LocalBackend,
    MemoryBackend,
    RateLimitedError,
    StorageBackend,
    UnsupportedError,
    add_storage,
)
from unistore._base import BaseBackend
from unistore.backends.cloudinary import CloudinaryBackend
from unistore.backends.gcs import GCSBackend
from unistore.backends.http import HttpBackend
from unistore.layers import Cache, Idempotency, Observe, RateLimit, Retry
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import S3Server, free_port, running_server

SECRET = "user-doc-findings-secret-0123456789"


@pytest.fixture(params=["memory", "local"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BaseBackend]:
    """A memory or local store whose signed URLs are served by an ``add_storage`` app."""
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/files"
    backend: BaseBackend
    if request.param == "memory":
        backend = MemoryBackend(base_url=base_url, url_secret=SECRET)
    else:
        backend = LocalBackend(base_path=str(tmp_path / "store"), base_url=base_url, url_secret=SECRET, fsync=False)
    app = FastAPI()
    add_storage(app, backend, serve_files=True)
    with running_server(app, port):
        yield backend


@pytest.mark.parametrize("method", ["PUT", "DELETE", "post"])
async def test_local_and_memory_refuse_to_sign_write_urls(served: BaseBackend, method: str) -> None:
    # Before: a PUT/DELETE URL was handed out, and the file route (GET/HEAD only) answered 405.
    await served.put_object("doc.txt", b"hello")
    with pytest.raises(UnsupportedError, match="GET or HEAD"):
        await served.sign_url("doc.txt", method=method)


async def test_signed_head_url_works_where_get_works(served: BaseBackend) -> None:
    # Before: a URL signed for HEAD was signed over "HEAD" but verified as GET: 403 for HEAD and GET.
    await served.put_object("doc.txt", b"hello", content_type="text/plain")
    head_url = await served.sign_url("doc.txt", method="HEAD")
    async with httpx.AsyncClient() as client:
        head = await client.head(head_url)
        get = await client.get(head_url)
    assert head.status_code == 200, head.text
    assert head.headers["content-length"] == "5"
    assert get.status_code == 200
    assert get.content == b"hello"


async def test_cloudinary_signs_head_urls(fake_cloudinary: tuple[Any, str]) -> None:
    # Before: UnsupportedError for HEAD, though the GET URL answers HEAD.
    fake, url = fake_cloudinary
    store = CloudinaryBackend(
        cloud_name=fake.cloud_name, api_key=fake.api_key, api_secret=fake.api_secret,
        upload_prefix=url, cname=urlsplit(url).netloc, secure=False,
    )
    try:
        await store.put_object("findings/head.txt", b"hello", content_type="text/plain")
        signed = await store.sign_url("findings/head.txt", method="HEAD")
        async with httpx.AsyncClient() as client:
            head = await client.head(signed)
        assert head.status_code == 200
        with pytest.raises(UnsupportedError):
            await store.sign_url("findings/head.txt", method="PUT")
    finally:
        await store.remove("findings/head.txt")
        await store.aclose()


@pytest.fixture(scope="module")
def service() -> Iterator[str]:
    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files")
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET.encode())), port) as url:
        yield url


@pytest.fixture
async def http_store(service: str) -> AsyncIterator[HttpBackend]:
    token = TokenAuthority(SECRET.encode()).issue(["admin"], expires_in=3600)
    store = HttpBackend(url=service, token=token)
    yield store
    await store.aclose()


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_http_backend_sign_url_honours_the_method(http_store: HttpBackend, method: str) -> None:
    # Before: any method got a GET URL, so an uploader's PUT to it failed only at upload time.
    await http_store.put_object("doc.txt", b"hello")
    with pytest.raises(UnsupportedError, match="GET or HEAD"):
        await http_store.sign_url("doc.txt", method=method)


async def test_http_backend_head_url_answers_head(http_store: HttpBackend) -> None:
    await http_store.put_object("doc.txt", b"hello")
    signed = await http_store.sign_url("doc.txt", method="HEAD")
    async with httpx.AsyncClient() as client:
        head = await client.head(signed)
    assert head.status_code == 200
    assert head.headers["content-length"] == "5"


@pytest.mark.parametrize(
    "above",
    [None, Idempotency, Cache, partial(Retry, attempts=1), partial(Observe, metrics=False)],
    ids=["alone", "Idempotency", "Cache", "Retry", "Observe"],
)
async def test_rate_limit_counts_a_put_once(above: Callable[[StorageBackend], StorageBackend] | None) -> None:
    # Before: put = put_object + sign_url took two tokens, so one put at rate=1/burst=1 was refused,
    # alone and under the layers recommended above it.
    limited = RateLimit(MemoryBackend(), rate=1, burst=1, wait=False)
    store: StorageBackend = limited if above is None else above(limited)
    url = await store.put("a.txt", b"x")
    assert "a.txt" in url
    with pytest.raises(RateLimitedError):
        await store.put("b.txt", b"x")  # the one token is spent: the next put waits for the next one
    assert await limited.inner.get("a.txt") == b"x"


async def test_rate_limit_still_counts_a_plain_sign_url() -> None:
    limited = RateLimit(MemoryBackend(), rate=1, burst=1, wait=False)
    await limited.inner.put_object("a.txt", b"x")
    await limited.sign_url("a.txt")
    with pytest.raises(RateLimitedError):
        await limited.sign_url("a.txt")


async def test_observe_measures_a_put_as_one_operation() -> None:
    # Before: one put showed as a put and a sign_url (two requests, two log lines, the key counted
    # twice as hot).
    registry = CollectorRegistry()
    store = Observe(RateLimit(MemoryBackend()), metrics=registry)
    await store.put("a.txt", b"hello")
    assert registry.get_sample_value("unistore_requests_total", {"backend": "MemoryBackend", "operation": "put"}) == 1
    assert registry.get_sample_value(
        "unistore_requests_total", {"backend": "MemoryBackend", "operation": "sign_url"}
    ) is None
    assert registry.get_sample_value("unistore_bytes_total", {"backend": "MemoryBackend", "direction": "in"}) == 5
    await store.get_url("a.txt")  # a URL asked for on its own is an operation of its own
    assert registry.get_sample_value(
        "unistore_requests_total", {"backend": "MemoryBackend", "operation": "sign_url"}
    ) == 1


_WITHOUT = """
import importlib.abc, sys
class Missing(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r} or name.startswith({module!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Missing())
from unistore import ConfigurationError
from unistore.backends.{backend} import {cls}
try:
    {cls}(bucket="b", **{options!r})
except ConfigurationError as exc:
    print("ConfigurationError:", exc)
else:
    print("created")
"""


@pytest.mark.parametrize(
    ("backend", "cls", "extra", "module", "options"),
    [
        ("s3", "S3Backend", "s3", "aiohttp", {"endpoint": "http://127.0.0.1:9", "access_key": "a", "secret_key": "s"}),
        ("s3", "S3Backend", "s3", "aioboto3", {"endpoint": "http://127.0.0.1:9", "access_key": "a", "secret_key": "s"}),
        ("gcs", "GCSBackend", "gcs", "google.auth", {}),
    ],
)
def test_backend_without_its_extra_names_it(
    backend: str, cls: str, extra: str, module: str, options: dict[str, str]
) -> None:
    # Before: the backend was created and failed later, far from the missing install: S3 with a
    # bare ModuleNotFoundError (a large upload, a download, the credential chain), GCS with
    # "GCS request failed: ModuleNotFoundError" on its first request.
    code = textwrap.dedent(_WITHOUT.format(module=module, backend=backend, cls=cls, options=options))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.startswith("ConfigurationError:"), done.stdout + done.stderr
    assert f"pip install 'unistore[{extra}]'" in done.stdout
    assert module in done.stdout


@pytest.fixture(scope="module")
def s3_service(seaweed: S3Server) -> Iterator[str]:
    backend = seaweed.backend(prefix=f"findings-{uuid.uuid4().hex[:8]}/")
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET.encode()))) as url:
        yield url


async def test_http_backend_head_url_works_over_an_s3_service(s3_service: str) -> None:
    # Before: the service always signed a GET, and an S3 presigned GET URL refuses HEAD (403):
    # the method is part of the signature.
    token = TokenAuthority(SECRET.encode()).issue(["admin"], expires_in=3600)
    store = HttpBackend(url=s3_service, token=token)
    try:
        await store.put_object("doc.txt", b"hello", content_type="text/plain")
        head_url = await store.sign_url("doc.txt", method="HEAD")
        get_url = await store.sign_url("doc.txt")
        async with httpx.AsyncClient() as client:
            head = await client.head(head_url)
            get = await client.get(get_url)
        assert head.status_code == 200, head.status_code
        assert head.headers["content-length"] == "5"
        assert get.content == b"hello"
    finally:
        await store.aclose()


async def test_expires_in_zero_is_refused_not_an_hour(served: BaseBackend, http_store: HttpBackend) -> None:
    # Before: local, memory, GCS, Cloudinary and HttpBackend read ``expires_in or default``, so a URL
    # asked to expire at once (0) lived for the default hour; S3 already refused it.
    for store in (served, http_store):
        await store.put_object("doc.txt", b"hello")
        with pytest.raises(InvalidArgumentError):
            await store.sign_url("doc.txt", expires_in=0)
        with pytest.raises(InvalidArgumentError):
            await store.get_url("doc.txt", expires_in=0)
        assert await store.get_url("doc.txt", expires_in=None)  # None: the store's default lifetime


async def test_gcs_and_cloudinary_refuse_expires_in_zero(
    fake_gcs: dict[str, str], fake_cloudinary: tuple[Any, str]
) -> None:
    fake, url = fake_cloudinary
    cld = CloudinaryBackend(
        cloud_name=fake.cloud_name, api_key=fake.api_key, api_secret=fake.api_secret,
        upload_prefix=url, cname=urlsplit(url).netloc, secure=False,
    )
    gcs = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"])
    try:
        for store in (gcs, cld):
            await store.put_object("findings/zero.txt", b"x", content_type="text/plain")
            with pytest.raises(InvalidArgumentError):
                await store.sign_url("findings/zero.txt", expires_in=0)
            await store.remove("findings/zero.txt")
    finally:
        await gcs.aclose()
        await cld.aclose()
