"""Regression tests for configuration and CLI defects found on the way (each fails on the old code)."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import backend_from_url
from unistore.cli import app
from unistore.testing import S3Server

runner = CliRunner()


@pytest.fixture
def no_cloud_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in list(os.environ):
        if var.startswith(("STORAGE_", "AWS_", "UNISTORE_", "GOOGLE_", "CLOUDINARY_")):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    return monkeypatch


# --- a. s3:// and gs:// URLs take the rest of their settings from the environment ---------------------------


async def test_s3_url_uses_storage_s3_env(seaweed: S3Server, no_cloud_env: pytest.MonkeyPatch) -> None:
    for name, value in seaweed.env(bucket="not-this-one", prefix="nor-this/").items():
        no_cloud_env.setenv(name, value)
    prefix = f"url-env-{uuid.uuid4().hex[:8]}"
    store = backend_from_url(f"s3://unistore-tests/{prefix}")
    async with store:
        await store.put_object("k", b"v")  # endpoint, keys and region from STORAGE_S3_*
        assert await store.get("k") == b"v"
    assert seaweed.client().get_object(Bucket="unistore-tests", Key=f"{prefix}/k")["Body"].read() == b"v"


def test_cli_s3_object_urls_use_storage_s3_env(
    seaweed: S3Server, no_cloud_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in seaweed.env().items():
        if name not in ("STORAGE_BACKEND", "STORAGE_S3_BUCKET"):
            no_cloud_env.setenv(name, value)
    prefix = f"cli-env-{uuid.uuid4().hex[:8]}"
    (tmp_path / "a.txt").write_bytes(b"hello")
    up = runner.invoke(app, ["cp", str(tmp_path / "a.txt"), f"s3://unistore-tests/{prefix}/a.txt", "-q"])
    assert up.exit_code == 0, up.stderr
    down = runner.invoke(app, ["cp", f"s3://unistore-tests/{prefix}/a.txt", str(tmp_path / "b.txt"), "-q"])
    assert down.exit_code == 0, down.stderr
    assert (tmp_path / "b.txt").read_bytes() == b"hello"


async def test_gs_url_uses_the_emulator_host(fake_gcs: dict[str, str], no_cloud_env: pytest.MonkeyPatch) -> None:
    no_cloud_env.setenv("STORAGE_EMULATOR_HOST", fake_gcs["url"])
    store = backend_from_url(f"gs://{fake_gcs['bucket']}/url-env-{uuid.uuid4().hex[:8]}?timeout=5")
    async with store:
        await store.put_object("k", b"v")
        assert await store.get("k") == b"v"


# --- b. without the [cli] extra the console script says how to install it ---------------------------------

_HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
sys.argv = ["unistore", "--help"]
from unistore.cli import main
main()
"""


@pytest.mark.parametrize("hidden", [("typer",), ("rich",), ("typer", "rich", "click")])
def test_help_without_the_cli_extra_is_one_line_and_exit_8(hidden: tuple[str, ...]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    r = subprocess.run(
        [sys.executable, "-c", _HIDE.format(hidden=set(hidden))], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 8, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "pip install 'unistore[cli]'" in r.stderr


# --- c. a str secret is used UTF-8 encoded; anything else is refused at construction ---------------------------

TEXT_SECRET = "a text secret, 16+ bytes ✓"


def test_a_str_secret_works_like_its_utf8_bytes() -> None:
    import httpx

    from unistore import ConfigurationError, MemoryBackend
    from unistore.service import ServiceSettings, TokenAuthority, create_app
    from unistore.testing import running_server

    as_text, as_bytes = TokenAuthority(TEXT_SECRET), TokenAuthority(TEXT_SECRET.encode())
    assert as_text.key_id == as_bytes.key_id
    token = as_text.issue(["read", "write"], prefix="", expires_in=60)
    assert as_bytes.verify(token).allows("write")
    assert TokenAuthority(TEXT_SECRET.encode(), accepted=["older secret, 16 bytes"]).verify(
        TokenAuthority("older secret, 16 bytes").issue(["read"], prefix="", expires_in=60)
    ).allows("read")
    settings = ServiceSettings(secret=TEXT_SECRET, accepted_secrets=("older secret, 16 bytes",))  # type: ignore[arg-type]
    assert settings.secret == TEXT_SECRET.encode() and settings.accepted_secrets == (b"older secret, 16 bytes",)
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        r = httpx.put(f"{url}/v1/objects/a.txt", content=b"hi", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code in (200, 201), r.text
    for bad in (12345678901234567890, ["x" * 20], None):
        with pytest.raises(ConfigurationError):
            TokenAuthority(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ServiceSettings(secret=12345678901234567890)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        ServiceSettings(secret=TEXT_SECRET, accepted_secrets="one secret, not a tuple")  # type: ignore[arg-type]


# --- d. a presigned POST form with a content-type prefix carries Content-Type ----------------------------------


@pytest.mark.parametrize("server", ["seaweed", "moto"])
async def test_presigned_post_form_with_a_type_prefix_uploads(request: pytest.FixtureRequest, server: str) -> None:
    import httpx

    s3: S3Server = request.getfixturevalue(server)
    key = f"post-{uuid.uuid4().hex[:8]}/avatar.png"
    async with s3.backend() as store:
        url, fields = await store.presign_post(key, content_type_prefix="image/", max_size=1000, expires_in=60)
        assert fields["Content-Type"] == "image/png"
        async with httpx.AsyncClient() as client:
            # exactly what a browser form built from the fields sends (the file last)
            r = await client.post(url, data=fields, files={"file": ("avatar.png", b"\x89PNG", "image/png")})
            assert r.status_code in (200, 201, 204), r.text
            assert (await store.head(key)).content_type == "image/png"
            chosen = {**fields, "Content-Type": "image/webp"}  # the browser's own type, under the prefix
            r = await client.post(url, data=chosen, files={"file": ("a.webp", b"RIFF", "image/webp")})
            assert r.status_code in (200, 201, 204), r.text
            if s3.checks_signatures:  # moto does not evaluate POST policies
                outside = {**fields, "Content-Type": "text/html"}
                r = await client.post(url, data=outside, files={"file": ("a", b"<h1>", "text/html")})
                assert r.status_code == 403
        assert (await store.head(key)).content_type == "image/webp"
        unknown = await store.presign_post(f"post-{uuid.uuid4().hex[:8]}/blob", content_type_prefix="image/")
        assert unknown[1]["Content-Type"] == "image/"  # no guess fits: the prefix, for the form to refine


# --- e. a missing GCS bucket is a configuration error, as on S3 ----------------------------------------------------


async def test_a_missing_gcs_bucket_is_a_configuration_error(fake_gcs: dict[str, str], seaweed: S3Server) -> None:
    from unistore import ConfigurationError, GCSBackend, NotFoundError

    async with GCSBackend(bucket=f"missing-{uuid.uuid4().hex[:8]}", emulator_host=fake_gcs["url"]) as gcs:
        calls = (
            lambda: gcs.head("k"), lambda: gcs.get("k"), lambda: gcs.put_object("k", b"v"),
            lambda: gcs.remove("k"), lambda: gcs.list_keys(), gcs.ping,
        )  # fmt: skip
        for call in calls:
            with pytest.raises(ConfigurationError, match="does not exist"):
                await call()
    async with seaweed.backend(bucket=f"missing-{uuid.uuid4().hex[:8]}") as s3:
        with pytest.raises(ConfigurationError, match="does not exist"):
            await s3.head("k")  # the behaviour GCS now matches
    async with GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"]) as gcs:
        with pytest.raises(NotFoundError, match="no such object"):
            await gcs.head(f"absent-{uuid.uuid4().hex}")  # an existing bucket: still a missing object
        assert not await gcs.remove(f"absent-{uuid.uuid4().hex}")


# --- f. multipart part sizes fit S3's 10,000 parts -------------------------------------------------------------

MiB = 1024 * 1024


def test_part_size_for_a_known_size() -> None:
    from unistore import InvalidArgumentError
    from unistore.backends.s3._multipart import MAX_PART, MAX_PARTS, part_size_for

    assert part_size_for(0, 8 * MiB) == part_size_for(10_000 * 8 * MiB, 8 * MiB) == 8 * MiB  # fits as configured
    assert part_size_for(10_000 * 8 * MiB + 1, 8 * MiB) == 9 * MiB  # one byte more: the next whole MiB
    for size in (78 * 1024**3, 100 * 1024**3, 1024**4, 5 * 1024**4):
        part = part_size_for(size, 8 * MiB)
        assert -(-size // part) <= MAX_PARTS and part % MiB == 0 and part <= MAX_PART
        assert -(-size // (part - MiB)) > MAX_PARTS  # and the smallest such
    assert part_size_for(5 * 1024**4, 5 * 1024 * MiB) == MAX_PART  # never beyond S3's 5 GiB
    with pytest.raises(InvalidArgumentError):
        part_size_for(5 * 1024**4 + 1, 8 * MiB)


def test_stream_parts_grow_to_hold_5_tib() -> None:
    from unistore.backends.s3._multipart import GROWTH_STEP, MAX_PART, MAX_PARTS, stream_part_size

    for start in (5 * MiB, 8 * MiB, 64 * MiB):
        sizes = [stream_part_size(n, start) for n in range(1, MAX_PARTS + 1)]
        assert sizes[:GROWTH_STEP] == [start] * GROWTH_STEP  # a small stream keeps its configured parts
        assert sizes == sorted(sizes) and max(sizes) <= MAX_PART
        assert sum(sizes) >= 5 * 1024**4


async def test_uploads_cross_a_growth_step_and_fit_a_known_size(
    seaweed: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import hashlib

    from unistore.backends.s3 import _multipart as _s3multipart

    monkeypatch.setattr(_s3multipart, "GROWTH_STEP", 2)  # small steps: parts of 5, 5, 10, 10, 20... MiB
    data = os.urandom(23 * MiB)

    async def stream() -> AsyncIterator[bytes]:
        for pos in range(0, len(data), MiB):
            yield data[pos : pos + MiB]

    key = f"grow-{uuid.uuid4().hex[:8]}"
    async with seaweed.backend(part_size=5 * MiB, checksum="sha256") as s3:
        info = await s3.put_object(key + "/stream", stream())
        assert info.etag.endswith("-4")  # 5 + 5 + 10 + 3 MiB, where fixed parts would take 5
        assert hashlib.sha256(await s3.get(key + "/stream")).digest() == hashlib.sha256(data).digest()
        monkeypatch.setattr(_s3multipart, "MAX_PARTS", 3)  # a known size: 20 MiB in 3 parts of 7 MiB
        (tmp_path / "f").write_bytes(data[: 20 * MiB])
        info = await s3.put_object(key + "/file", tmp_path / "f")
        assert info.etag.endswith("-3")
        assert await s3.get(key + "/file") == data[: 20 * MiB]


# --- g. Observe counts a put once ------------------------------------------------------------------------------


async def test_observe_counts_a_put_once() -> None:
    from prometheus_client import CollectorRegistry

    from unistore import MemoryBackend
    from unistore.layers import Observe

    registry = CollectorRegistry()
    store = Observe(MemoryBackend(), metrics=registry)

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, {"backend": "MemoryBackend", **labels}) or 0.0

    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"de"

    url = await store.put("a.txt", b"hello")
    assert url.startswith(("http://", "https://", "/"))
    await store.put("b.txt", body())
    assert value("unistore_requests_total", operation="put") == 2
    assert value("unistore_requests_total", operation="sign_url") == 0  # signing is part of the put
    assert value("unistore_request_duration_seconds_count", operation="put") == 2
    assert value("unistore_bytes_total", direction="in") == 10
    await store.put_object("c.txt", b"x")
    assert value("unistore_requests_total", operation="put") == 3
