"""GCSBackend against fake-gcs-server: the conformance suite, plus GCS specifics.

Emulator gaps are strict xfails naming the gap; the code path is the one real GCS takes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest

from unistore import (
    AlreadyExistsError,
    ConfigurationError,
    GCSBackend,
    IfMatch,
    InvalidArgumentError,
    PreconditionFailedError,
    backend_from_url,
    easy_storage,
)
from unistore.backends.gcs import GCSSettings
from unistore.testing import BackendConformance

EMULATOR_NO_SIGNATURES = "fake-gcs-server serves signed URLs without verifying signatures or expiry"


def make(fake_gcs: dict[str, str], **kw: Any) -> GCSBackend:
    return GCSBackend(
        bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"], **kw
    )


@pytest.fixture
async def gcs(fake_gcs: dict[str, str]) -> AsyncIterator[GCSBackend]:
    backend = make(fake_gcs, chunk_size=256 * 1024)
    yield backend
    await backend.aclose()


class TestGCS(BackendConformance):
    # The emulator takes ~3-5 ms a request: 60 keys in pages of 25 still page (start_after too: see
    # test_listing_pages_and_start_after), and 8 writers x 5 increments still race on every round
    # (the default 20 x 20 is ~16,000 requests, 20-50 s here).
    list_count = 60
    race_writers = 8
    race_increments = 5

    @pytest.fixture
    async def backend(self, fake_gcs: dict[str, str]) -> AsyncIterator[GCSBackend]:
        # small chunks so the multi-MiB test exercises resumable sessions of several chunks
        b = make(fake_gcs, chunk_size=1024 * 1024, page_size=25)
        yield b
        await b.aclose()

    @pytest.mark.xfail(strict=True, reason=EMULATOR_NO_SIGNATURES + "; it also ignores response-content-disposition")
    async def test_signed_url_round_trip(self, backend: Any, prefix: str) -> None:
        await super().test_signed_url_round_trip(backend, prefix)

    @pytest.mark.xfail(
        strict=True, reason="fake-gcs-server stores a metadata value patched to null as '' (GCS removes the name)"
    )
    async def test_replace_metadata_removes_names(self, backend: Any, prefix: str) -> None:
        await super().test_replace_metadata_removes_names(backend, prefix)


# --- configuration ---------------------------------------------------------------------------


def test_settings_are_strict(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="bucket"):
        GCSSettings()
    with pytest.raises(ConfigurationError, match="256 KiB"):
        GCSSettings(bucket="b", chunk_size=1000)
    with pytest.raises(ConfigurationError):
        GCSBackend(bucket="b", credentials=str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text(json.dumps({"type": "external_account"}))
    with pytest.raises(ConfigurationError, match="external_account"):
        GCSBackend(bucket="b", credentials=str(tmp_path / "bad.json"))


async def test_easy_storage_reads_the_spec_variables(
    fake_gcs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_BACKEND", raising=False)
    for var in ("RAILWAY_VOLUME_MOUNT_PATH", "AWS_ACCESS_KEY_ID", "STORAGE_S3_BUCKET"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", fake_gcs["credentials"])
    monkeypatch.setenv("STORAGE_GCS_BUCKET", fake_gcs["bucket"])
    monkeypatch.setenv("STORAGE_GCS_PROJECT", "proj")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", fake_gcs["url"])
    backend = easy_storage()  # auto-detected from GOOGLE_APPLICATION_CREDENTIALS
    assert isinstance(backend, GCSBackend)
    assert backend.settings.project == "proj"
    await backend.ping()
    await backend.aclose()


async def test_url_form_with_prefix(fake_gcs: dict[str, str]) -> None:
    url = f"gs://{fake_gcs['bucket']}/tenant-a?emulator_host={fake_gcs['url']}&credentials={fake_gcs['credentials']}"
    scoped = backend_from_url(url)
    assert isinstance(scoped, GCSBackend) and scoped.settings.prefix == "tenant-a/"
    plain = make(fake_gcs)
    key = f"u-{uuid.uuid4().hex}.txt"
    await scoped.put_object(key, b"scoped")
    assert await plain.get("tenant-a/" + key) == b"scoped"
    assert await scoped.list_keys() == [k async for k in scoped.iter_keys()] and key in await scoped.list_keys()
    await scoped.aclose()
    await plain.aclose()


async def test_ping_reports_a_missing_bucket(fake_gcs: dict[str, str]) -> None:
    b = GCSBackend(bucket="no-such-bucket", emulator_host=fake_gcs["url"])
    with pytest.raises(ConfigurationError, match="does not exist"):  # as S3's ping says it
        await b.ping()
    await b.aclose()


async def test_unreachable_server_is_unavailable() -> None:
    from unistore import UnavailableError
    from unistore.testing import free_port

    b = GCSBackend(bucket="b", emulator_host=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(UnavailableError):
        await b.head("x")
    await b.aclose()


# --- generations, streaming, listing, copy ---------------------------------------------------------


async def test_generation_is_the_etag_and_round_trips(gcs: GCSBackend) -> None:
    key = f"g-{uuid.uuid4().hex}/doc.txt"
    info = await gcs.put_object(
        key, b"v1", metadata={"a": "1"}, cache_control="no-cache", content_disposition="inline; filename=x.txt"
    )
    assert info.etag.isdigit()
    head = await gcs.head(key)
    expected = (info.etag, "no-cache", "inline; filename=x.txt")
    assert (head.etag, head.cache_control, head.content_disposition) == expected
    assert head.content_type == "text/plain" and dict(head.metadata) == {"a": "1"}


async def test_resumable_upload_in_bounded_chunks(gcs: GCSBackend) -> None:
    data = bytes(range(256)) * 4096 * 3 + b"tail"  # 3 MiB + 4: twelve 256 KiB chunks plus a short one
    sent: list[int] = []

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 100_000):
            sent.append(i)
            yield data[i : i + 100_000]

    info = await gcs.put_object(f"big-{uuid.uuid4().hex}", body(), metadata={"m": "v"})
    assert info.size == len(data) and dict(info.metadata) == {"m": "v"}
    assert await gcs.get(info.key) == data
    async with await gcs.open(info.key) as dl:
        assert b"".join([c async for c in dl]) == data


async def test_large_bytes_body_goes_resumable(gcs: GCSBackend) -> None:
    data = b"x" * (256 * 1024 * 2 + 5)
    info = await gcs.put_object(f"bb-{uuid.uuid4().hex}", data)
    assert info.size == len(data) and await gcs.get(info.key) == data


async def test_failed_streamed_body_cancels_the_session(gcs: GCSBackend) -> None:
    key = f"f-{uuid.uuid4().hex}"
    await gcs.put_object(key, b"old")

    async def body() -> AsyncIterator[bytes]:
        yield b"y" * (600 * 1024)
        raise RuntimeError("source died")

    with pytest.raises(RuntimeError):
        await gcs.put_object(key, body())
    assert await gcs.get(key) == b"old"


async def test_create_only_on_multipart_uploads(gcs: GCSBackend) -> None:
    key = f"c-{uuid.uuid4().hex}"
    await gcs.put_object(key, b"1", mode="create")
    with pytest.raises(AlreadyExistsError):
        await gcs.put_object(key, b"2", mode="create")
    with pytest.raises(PreconditionFailedError):
        await gcs.put_object(key, b"2", mode=IfMatch("not-a-generation"))
    with pytest.raises(PreconditionFailedError):
        await gcs.put_object(f"absent-{uuid.uuid4().hex}", b"x", mode=IfMatch("*"))
    info = await gcs.put_object(key, b"3", mode=IfMatch("*"))
    assert await gcs.get(key) == b"3" and info.etag == (await gcs.head(key)).etag


@pytest.mark.xfail(strict=True, reason="fake-gcs-server ignores ifGenerationMatch on resumable uploads")
async def test_create_only_on_resumable_uploads(gcs: GCSBackend) -> None:
    key = f"cr-{uuid.uuid4().hex}"
    await gcs.put_object(key, b"1")
    with pytest.raises(AlreadyExistsError):
        await gcs.put_object(key, b"z" * (300 * 1024), mode="create")


@pytest.mark.xfail(strict=True, reason="fake-gcs-server ignores ifGenerationMatch on rewrite")
async def test_create_only_copy(gcs: GCSBackend) -> None:
    key = f"cc-{uuid.uuid4().hex}"
    await gcs.put_object(key, b"1")
    await gcs.put_object(key + "-dst", b"2")
    with pytest.raises(AlreadyExistsError):
        await gcs.copy(key, key + "-dst", mode="create")


@pytest.mark.xfail(strict=True, reason="fake-gcs-server ignores ifGenerationMatch on delete")
async def test_conditional_delete(gcs: GCSBackend) -> None:
    key = f"cd-{uuid.uuid4().hex}"
    info = await gcs.put_object(key, b"1")
    with pytest.raises(PreconditionFailedError):
        await gcs.remove(key, if_match=str(int(info.etag) + 1))


async def test_conditional_delete_on_missing_and_matching(gcs: GCSBackend) -> None:
    key = f"cdm-{uuid.uuid4().hex}"
    with pytest.raises(PreconditionFailedError):
        await gcs.remove(key, if_match="123")
    with pytest.raises(PreconditionFailedError):
        await gcs.remove(key, if_match="not-a-generation")
    info = await gcs.put_object(key, b"1")
    assert await gcs.remove(key, if_match=info.etag) is True


async def test_copy_keeps_properties_server_side(gcs: GCSBackend) -> None:
    key = f"cp-{uuid.uuid4().hex}"
    await gcs.put_object(key, b"data", content_type="text/csv", metadata={"x": "1"}, cache_control="max-age=60")
    info = await gcs.copy(key, key + "-copy")
    assert (info.size, info.content_type, dict(info.metadata), info.cache_control) == (4, "text/csv", {"x": "1"},
                                                                                       "max-age=60")


async def test_listing_pages_and_start_after(fake_gcs: dict[str, str]) -> None:
    gcs = make(fake_gcs, page_size=7)
    prefix = f"l-{uuid.uuid4().hex}/"
    keys = [f"{prefix}{i:04d}" for i in range(30)]
    for k in keys:
        await gcs.put_object(k, b"")
    assert [k async for k in gcs.iter_keys(prefix)] == keys
    assert [k async for k in gcs.iter_keys(prefix, start_after=keys[6])] == keys[7:]
    infos = [i async for i in gcs.iter_objects(prefix, start_after=keys[20])]
    assert [i.key for i in infos] == keys[21:]
    assert await gcs.list_keys(prefix, limit=15) == keys[:15]
    await gcs.aclose()


# --- signed URLs ---------------------------------------------------------------------------------


def _verify_v4(url: str, credentials: str, method: str = "GET") -> dict[str, str]:
    """Check a V4 signature with the service account's public key, recomputing the canonical request
    independently from the URL (Google's documented V4 signing process)."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = bytes.fromhex(query.pop("X-Goog-Signature"))
    from urllib.parse import quote

    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    canonical = f"{method}\n{parts.path}\n{canonical_query}\nhost:{parts.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    to_sign = f"GOOG4-RSA-SHA256\n{query['X-Goog-Date']}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
    key = serialization.load_pem_private_key(json.loads(Path(credentials).read_text())["private_key"].encode(), None)
    assert isinstance(key, rsa.RSAPrivateKey)
    key.public_key().verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    return query


async def test_signed_urls_are_valid_v4_signatures(gcs: GCSBackend, fake_gcs: dict[str, str]) -> None:
    key = f"s-{uuid.uuid4().hex}/ünï report.pdf"
    await gcs.put_object(key, b"%PDF")
    url = await gcs.get_url(key, expires_in=600, download=True)
    query = _verify_v4(url, fake_gcs["credentials"])
    assert query["X-Goog-Expires"] == "600" and query["X-Goog-Algorithm"] == "GOOG4-RSA-SHA256"
    assert query["response-content-disposition"].startswith("attachment; filename*=UTF-8''")
    assert query["X-Goog-Credential"].startswith("unistore-test@test-project.iam.gserviceaccount.com/")
    async with httpx.AsyncClient() as client:  # the emulator serves it (without checking)
        assert (await client.get(url)).content == b"%PDF"
    put_url = await gcs.sign_url(key, method="PUT")
    _verify_v4(put_url, fake_gcs["credentials"], "PUT")


async def test_signed_url_expiry_limits(gcs: GCSBackend) -> None:
    assert await gcs.sign_url("k", expires_in=7 * 24 * 3600)
    with pytest.raises(InvalidArgumentError, match="7 days"):
        await gcs.sign_url("k", expires_in=7 * 24 * 3600 + 1)
    with pytest.raises(InvalidArgumentError):
        await gcs.sign_url("k", expires_in=-5)
    with pytest.raises(InvalidArgumentError):
        await gcs.sign_url("k", method="POST")


async def test_signing_without_a_key_is_a_configuration_error(fake_gcs: dict[str, str]) -> None:
    b = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"])
    with pytest.raises(ConfigurationError, match="GOOGLE_APPLICATION_CREDENTIALS"):
        await b.sign_url("k")
    await b.aclose()


async def test_v4_signature_matches_a_fixed_vector(tmp_path: Path) -> None:
    """Deterministic: same key, time and request give the same URL, and it verifies."""
    from unistore.backends.gcs._credentials import IAM_ENDPOINT, load_credentials, v4_signed_url
    from unistore.testing._gcs_server import make_service_account

    path = make_service_account(tmp_path / "sa.json")
    creds = load_credentials(str(path), anonymous=False)
    async with httpx.AsyncClient() as client:
        email, sign = await creds.signer(client, IAM_ENDPOINT)  # a key file signs locally: no request
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    args: dict[str, Any] = dict(scheme="https", host="storage.googleapis.com", bucket="b", name="a b/c?.txt",
                                method="GET", expires_in=60, now=when)
    url = await v4_signed_url(email, sign, **args)
    assert url == await v4_signed_url(email, sign, **args)
    assert url.startswith("https://storage.googleapis.com/b/a%20b/c%3F.txt?X-Goog-Algorithm=GOOG4-RSA-SHA256&")
    assert "X-Goog-Date=20260102T030405Z" in url and "%2F20260102%2Fauto%2Fstorage%2Fgoog4_request" in url
    _verify_v4(url, str(path))


async def test_signed_put_url_uploads(gcs: GCSBackend) -> None:
    key = f"sp-{uuid.uuid4().hex}"
    async with httpx.AsyncClient() as client:
        r = await client.put(await gcs.sign_url(key, method="PUT"), content=b"via url")
    assert r.status_code == 200 and await gcs.get(key) == b"via url"


async def test_service_account_tokens_come_from_its_token_uri(tmp_path: Path) -> None:
    """A key file's tokens (google-auth): an RS256 JWT-bearer grant for the storage scope (RFC 7523)
    at the file's ``token_uri``, cached until it nears expiry."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from unistore.backends.gcs._credentials import load_credentials
    from unistore.testing import running_server
    from unistore.testing._gcs_server import make_service_account

    seen: list[dict[str, str]] = []

    async def token(request: Request) -> JSONResponse:
        seen.append(dict(parse_qsl((await request.body()).decode())))
        return JSONResponse({"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"})

    with running_server(Starlette(routes=[Route("/token", token, methods=["POST"])])) as url:
        path = make_service_account(tmp_path / "sa.json")
        info = json.loads(path.read_text())
        path.write_text(json.dumps({**info, "token_uri": f"{url}/token"}))
        creds = load_credentials(str(path), anonymous=False)
        async with httpx.AsyncClient() as client:
            assert (await creds.token(client), await creds.token(client)) == ("tok", "tok")
        creds.close()
    assert len(seen) == 1 and seen[0]["grant_type"] == "urn:ietf:params:oauth:grant-type:jwt-bearer"
    header, claims, _sig = seen[0]["assertion"].split(".")
    body = json.loads(base64.urlsafe_b64decode(claims + "=="))
    assert body["scope"].endswith("devstorage.read_write") and body["exp"] - body["iat"] == 3600
    assert json.loads(base64.urlsafe_b64decode(header + "=="))["alg"] == "RS256"
