"""S3Backend beyond the conformance suite, against real servers (SeaweedFS checks SigV4; moto does not)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from unistore import (
    AlreadyExistsError,
    ByteRange,
    ConfigurationError,
    IntegrityError,
    InvalidArgumentError,
    InvalidRangeError,
    NotFoundError,
    PermissionDeniedError,
    PreconditionFailedError,
    RateLimitedError,
    UnavailableError,
    UnsupportedError,
    backend_from_url,
    easy_storage,
)
from unistore.backends.s3 import S3Backend, S3Settings
from unistore.backends.s3._wire import EMPTY_SHA256, Credentials, SigV4, decode_meta, encode_meta
from unistore.testing import TRICKY_KEYS, free_port, running_server
from unistore.testing._s3servers import S3Server

MiB = 1024 * 1024


@pytest.fixture
async def weed(seaweed: S3Server) -> AsyncIterator[S3Backend]:
    backend = seaweed.backend()
    yield backend
    await backend.aclose()


@pytest.fixture
def pfx() -> str:
    return f"t-{os.urandom(5).hex()}/"


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class _Boom(Exception):
    pass


async def _fails_after(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]
    raise _Boom("source failed")


# --- signing against botocore's reference implementation --------------------------------------


def test_header_signature_matches_botocore() -> None:
    import calendar

    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials as BotoCredentials

    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-tok")
    path = "/bucket/" + "a/%C3%BC%20b%2Bc.txt"
    ref = AWSRequest(
        method="PUT",
        url="https://s3.example.com:9000" + path + "?partNumber=3",
        headers={
            "content-type": "text/plain",
            "x-amz-meta-a": "1",
            "if-none-match": "*",
            "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD",
        },
    )
    auth = S3SigV4Auth(BotoCredentials("AKIDEXAMPLE", creds.secret_key, "session-tok"), "s3", "eu-west-1")
    auth.add_auth(ref)
    now = calendar.timegm(time.strptime(ref.headers["X-Amz-Date"], "%Y%m%dT%H%M%SZ"))
    headers = {"content-type": "text/plain", "x-amz-meta-a": "1", "if-none-match": "*"}
    signer = SigV4("eu-west-1")
    signer.sign_headers(creds, "PUT", "s3.example.com:9000", path, {"partNumber": "3"}, headers, EMPTY_SHA256, now)
    assert headers["x-amz-date"] == ref.headers["X-Amz-Date"]
    assert headers["authorization"].split("Signature=")[1] == ref.headers["Authorization"].split("Signature=")[1]


def test_metadata_value_encoding_round_trips() -> None:
    for value in ["plain", "Résumé ✓", " lead", "trail ", "", "=?UTF-8?B?x?=", "tab\there", "emoji 🎉", "a  b"]:
        encoded = encode_meta(value)
        assert encoded.isascii() and "\n" not in encoded
        assert decode_meta(encoded) == value


# --- configuration --------------------------------------------------------------------------------


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_S3_BUCKET", "uploads")
    monkeypatch.setenv("STORAGE_S3_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("STORAGE_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("STORAGE_S3_SECRET_KEY", "topsecret")
    monkeypatch.setenv("STORAGE_S3_PREFIX", "app/")
    monkeypatch.setenv("STORAGE_S3_CHECKSUM", "sha256")
    monkeypatch.setenv("STORAGE_S3_PART_SIZE", str(16 * MiB))
    monkeypatch.delenv("STORAGE_BACKEND", raising=False)
    backend = easy_storage()
    assert isinstance(backend, S3Backend)
    s = backend.settings
    assert (s.bucket, s.region, s.prefix, s.checksum, s.part_size) == (
        "uploads",
        "us-east-1",
        "app/",
        "sha256",
        16 * MiB,
    )
    assert "topsecret" not in repr(s) and "topsecret" not in repr(backend)


def test_credentials_fall_back_to_aws_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFALLBACK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fallback-secret")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "tok")
    backend = S3Backend(bucket="b")
    assert asyncio.run(backend.credentials()) == Credentials("AKIAFALLBACK", "fallback-secret", "tok")
    explicit = S3Backend(bucket="b", access_key="ak", secret_key="sk")
    assert asyncio.run(explicit.credentials()).access_key == "ak"


async def test_credentials_from_the_standard_chain(
    moto: S3Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, pfx: str
) -> None:
    """A shared-credentials profile with a session token, through botocore's chain."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    creds = tmp_path / "credentials"
    creds.write_text(
        "[ci]\naws_access_key_id = AKIACHAIN\naws_secret_access_key = chain-secret\naws_session_token = tok\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_PROFILE", "ci")
    backend = S3Backend(bucket="unistore-tests", endpoint=moto.endpoint)
    try:
        assert await backend.credentials() == Credentials("AKIACHAIN", "chain-secret", "tok")
        await backend.put(pfx + "chain.txt", b"via profile")
        assert await backend.get(pfx + "chain.txt") == b"via profile"
    finally:
        await backend.aclose()


def test_addressing_style() -> None:
    aws = S3Backend(bucket="my-bucket", region="eu-west-1", access_key="a", secret_key="s")
    assert aws._origin == "https://my-bucket.s3.eu-west-1.amazonaws.com" and aws._bucket_path == "/"
    dotted = S3Backend(bucket="my.bucket", access_key="a", secret_key="s")
    assert dotted._origin == "https://s3.amazonaws.com" and dotted._bucket_path == "/my.bucket/"
    minio = S3Backend(bucket="b12", endpoint="https://minio.example.com", access_key="a", secret_key="s")
    assert minio._origin == "https://minio.example.com" and minio._bucket_path == "/b12/"
    spaces = S3Backend(
        bucket="b12",
        endpoint="https://nyc3.digitaloceanspaces.com",
        addressing_style="virtual",
        access_key="a",
        secret_key="s",
    )
    assert spaces._origin == "https://b12.nyc3.digitaloceanspaces.com"
    r2 = S3Backend(bucket="b12", endpoint="https://acct.r2.cloudflarestorage.com", access_key="a", secret_key="s")
    assert r2._equal_parts is True and minio._equal_parts is False


@pytest.mark.parametrize(
    "options",
    [
        {"bucket": ""},
        {"bucket": "b", "checksum": "crc64"},
        {"bucket": "b", "part_size": MiB},
        {"bucket": "b", "sse": "aws:kms", "sse_customer_key": base64.b64encode(b"k" * 32).decode()},
        {"bucket": "b", "sse_customer_key": "short"},
        {"bucket": "b", "sse_kms_key_id": "key"},
        {"bucket": "b", "endpoint": "ftp://x"},
        {"bucket": "b", "prefix": "/abs/"},
        {"bucket": "b", "url_expiration": 8 * 24 * 3600},
        {"bucket": "b", "access_key": "only-half"},
    ],
)
def test_bad_settings_are_configuration_errors(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        S3Backend(**options)


def test_s3_url_form(seaweed: S3Server) -> None:
    backend = backend_from_url(
        f"s3://unistore-tests/some/prefix?endpoint={seaweed.endpoint}&checksum=none",
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
    )
    assert isinstance(backend, S3Backend)
    assert (backend.bucket, backend.settings.prefix, backend.settings.checksum) == (
        "unistore-tests",
        "some/prefix/",
        "none",
    )


# --- data path details ------------------------------------------------------------------------------


async def test_tricky_keys_and_metadata_round_trip_exactly(weed: S3Backend, pfx: str) -> None:
    meta = {"name": "Résumé final ✓", "spaces": " padded ", "rfc2047": "=?UTF-8?B?not-really?="}
    for key in TRICKY_KEYS:
        await weed.put_object(
            pfx + key, key.encode(), metadata=meta, cache_control="max-age=60", content_disposition="inline"
        )
    for key in TRICKY_KEYS:
        info = await weed.head(pfx + key)
        assert await weed.get(pfx + key) == key.encode()
        assert dict(info.metadata) == meta
        assert (info.cache_control, info.content_disposition) == ("max-age=60", "inline")
    assert sorted(await weed.list_keys(pfx)) == sorted(pfx + k for k in TRICKY_KEYS)


async def test_streamed_multipart_upload_and_download(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=3)
    try:
        data = os.urandom(17 * MiB + 3)
        info = await backend.put_object(pfx + "big.bin", _chunks(data, 700_000), metadata={"k": "v"})
        assert info.etag.endswith("-4")  # four parts
        assert info.size == len(data)
        async with await backend.open(pfx + "big.bin") as dl:
            got = bytearray()
            async for chunk in dl:
                got += chunk
        assert bytes(got) == data
        part = await backend.open(pfx + "big.bin", range=ByteRange(6 * MiB, 6 * MiB + 10))
        assert await part.read() == data[6 * MiB : 6 * MiB + 10]
        assert (await backend.head(pfx + "big.bin")).metadata == {"k": "v"}
    finally:
        await backend.aclose()


async def test_streamed_upload_holds_only_the_parts_in_flight(seaweed: S3Server, pfx: str) -> None:
    """A streamed upload's memory is its parts in flight: the first part is freed once sent, and a
    sent part is not kept alive by the HTTP client until a garbage collection."""
    import gc
    import tracemalloc

    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=2)
    block = os.urandom(MiB)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield bytes(memoryview(block))  # a fresh chunk each time, as a file read would allocate it

    await backend.put_object(pfx + "warm.bin", _chunks(os.urandom(6 * MiB), MiB))  # imports, connections
    gc.disable()  # what the client keeps must not be freed by a collection that happens to run
    tracemalloc.start()
    try:
        info = await backend.put_object(pfx + "lean.bin", source())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        gc.enable()
        await backend.aclose()
    assert info.size == 40 * MiB
    assert peak < 13 * MiB, f"{peak / MiB:.1f} MiB traced for 2 parts of 5 MiB in flight"


@pytest.mark.parametrize("checksum", ["md5", "sha256", "none"])
async def test_file_upload_reads_parts_from_their_ranges(
    seaweed: S3Server, pfx: str, tmp_path: Any, checksum: str
) -> None:
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=3, checksum=checksum)
    data = os.urandom(16 * MiB + 11)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    try:
        info = await backend.put_object(pfx + "file.bin", path, content_type="application/x-f", metadata={"m": "é"})
        assert info.etag.endswith("-4") and info.size == len(data)
        assert await backend.get(pfx + "file.bin") == data
        head = await backend.head(pfx + "file.bin")
        assert (head.content_type, dict(head.metadata), head.etag) == ("application/x-f", {"m": "é"}, info.etag)
    finally:
        await backend.aclose()


async def test_file_that_shrinks_during_upload_fails_and_leaves_nothing(
    seaweed: S3Server, pfx: str, tmp_path: Any
) -> None:
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=1)
    path = tmp_path / "shrinking.bin"
    path.write_bytes(os.urandom(16 * MiB))
    original = backend._send

    async def send_then_truncate(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if kwargs.get("op") == "upload_part":
            os.truncate(path, 6 * MiB)  # another process rewrites the file mid-upload
        return result

    backend._send = send_then_truncate  # type: ignore[method-assign]  # wraps the real request: a race no server makes
    try:
        with pytest.raises(IntegrityError, match="changed size"):
            await backend.put_object(pfx + "shrink.bin", path)
        assert not await backend.exists(pfx + "shrink.bin")
        assert await backend.uploads.list(pfx) == []
    finally:
        await backend.aclose()


async def test_multipart_failure_leaves_no_upload_behind(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB)
    try:
        await backend.put_object(pfx + "keep", b"old")
        with pytest.raises(_Boom):
            await backend.put_object(pfx + "keep", _fails_after(os.urandom(12 * MiB), MiB))
        assert await backend.get(pfx + "keep") == b"old"
        assert await backend.uploads.list(pfx) == []
        # a completion refused by the server (create-only on an existing key) aborts too
        with pytest.raises(AlreadyExistsError):
            await backend.put_object(pfx + "keep", _chunks(os.urandom(11 * MiB), MiB), mode="create")
        assert await backend.get(pfx + "keep") == b"old"
        assert await backend.uploads.list(pfx) == []
    finally:
        await backend.aclose()


async def test_multipart_memory_is_bounded(seaweed: S3Server, pfx: str) -> None:
    import tracemalloc

    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=2, checksum="none")
    block = os.urandom(MiB)

    async def source() -> AsyncIterator[bytes]:
        for _ in range(48):
            yield bytes(block)  # a fresh buffer each time, like a socket or file read

    try:
        tracemalloc.start()
        await backend.put_object(pfx + "bounded", source())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await backend.aclose()
    assert peak < 5 * MiB * 2 + 4 * MiB, f"peak {peak / MiB:.1f} MiB"  # part_size x max_concurrency


async def test_ranges_and_416(weed: S3Backend, pfx: str) -> None:
    await weed.put_object(pfx + "r", b"0123456789")
    with pytest.raises(InvalidRangeError) as exc:
        await weed.open(pfx + "r", range=ByteRange(10))
    assert exc.value.size == 10
    dl = await weed.open(pfx + "r", range=ByteRange(8, 100))
    assert (await dl.read(), dl.start, dl.end) == (b"89", 8, 10)


async def test_multipart_copy_above_threshold(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB, multipart_copy_threshold=6 * MiB, copy_part_size=5 * MiB)
    try:
        data = os.urandom(11 * MiB + 7)
        await backend.put_object(pfx + "src.bin", data, metadata={"origin": "é"}, content_type="application/x-test")
        info = await backend.copy(pfx + "src.bin", pfx + "dst.bin")
        assert info.etag.endswith("-3")  # copied in three ranged parts
        assert await backend.get(pfx + "dst.bin") == data
        head = await backend.head(pfx + "dst.bin")
        assert (head.content_type, dict(head.metadata)) == ("application/x-test", {"origin": "é"})
        small = await backend.copy(pfx + "dst.bin", pfx + "again.bin", mode="create")
        assert small.size == len(data)
        with pytest.raises(AlreadyExistsError):
            await backend.copy(pfx + "dst.bin", pfx + "again.bin", mode="create")
    finally:
        await backend.aclose()


async def test_conditional_delete(weed: S3Backend, pfx: str) -> None:
    info = await weed.put_object(pfx + "d", b"x")
    with pytest.raises(PreconditionFailedError):
        await weed.remove(pfx + "d", if_match="0" * 32)
    assert await weed.remove(pfx + "d", if_match=info.etag) is True
    with pytest.raises(PreconditionFailedError):
        await weed.remove(pfx + "d", if_match=info.etag)
    off = S3Backend(weed.settings.__class__(**{**_fields(weed), "conditional_delete": False}))
    try:
        assert off.capabilities.conditional_delete is False and weed.capabilities.conditional_delete is True
        with pytest.raises(UnsupportedError):
            await off.remove(pfx + "d", if_match="x")
    finally:
        await off.aclose()


def _fields(backend: S3Backend) -> dict[str, Any]:
    from dataclasses import fields

    return {f.name: getattr(backend.settings, f.name) for f in fields(backend.settings)}


async def test_escape_hatch_raw_client(weed: S3Backend, pfx: str) -> None:
    """The spec's Intelligent-Tiering example: ``storage._client.put_object(Bucket=storage.bucket, ...)``."""
    await weed._client.put_object(
        Bucket=weed.bucket, Key=pfx + "raw.txt", Body=b"raw", ContentType="text/plain", StorageClass="STANDARD"
    )
    assert await weed.get(pfx + "raw.txt") == b"raw"
    assert (await weed.boto_client()) is (await weed.boto_client())


# --- errors -----------------------------------------------------------------------------------------


async def test_missing_bucket_is_named(moto: S3Server) -> None:
    backend = moto.backend(bucket="no-such-bucket-here")
    try:
        with pytest.raises(ConfigurationError, match="no-such-bucket-here"):
            await backend.put_object("k", b"x")
        with pytest.raises(ConfigurationError, match="no-such-bucket-here"):
            await backend.list_keys()
    finally:
        await backend.aclose()


async def test_wrong_secret_is_a_signature_error(seaweed: S3Server) -> None:
    backend = S3Backend(
        bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key, secret_key="wrong"
    )
    try:
        with pytest.raises(PermissionDeniedError, match="signature") as exc:
            await backend.put_object("k", b"x")
        assert "wrong" not in str(exc.value)
    finally:
        await backend.aclose()


async def test_unreachable_server_is_unavailable() -> None:
    backend = S3Backend(
        bucket="b", endpoint=f"http://127.0.0.1:{free_port()}", access_key="a", secret_key="s", connect_timeout=2
    )
    try:
        with pytest.raises(UnavailableError):
            await backend.get("k")
    finally:
        await backend.aclose()


def _throttling_app() -> FastAPI:
    """A server answering like S3 under load: SlowDown/503 and 429 with Retry-After, 500 without."""
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "PUT", "HEAD", "DELETE", "POST"])
    async def reply(request: Request, path: str) -> Response:
        code = path.rsplit("/", 1)[-1]
        xml = f"<Error><Code>{code}</Code><Message>try later</Message></Error>"
        status = {"SlowDown": 503, "TooManyRequests": 429, "InternalError": 500, "ServiceUnavailable": 503}[code]
        headers = {"Retry-After": "7"} if code != "InternalError" else {}
        return Response(xml, status_code=status, headers=headers, media_type="application/xml")

    return app


async def test_throttling_and_server_errors_carry_retry_after() -> None:
    with running_server(_throttling_app()) as url:
        backend = S3Backend(bucket="b", endpoint=url, access_key="a", secret_key="s")
        try:
            with pytest.raises(RateLimitedError) as slow:
                await backend.put_object("SlowDown", b"x")
            assert slow.value.retry_after == 7.0
            with pytest.raises(RateLimitedError) as many:
                await backend.get("TooManyRequests")
            assert many.value.retry_after == 7.0
            with pytest.raises(UnavailableError) as unavailable:
                await backend.get("ServiceUnavailable")
            assert unavailable.value.retry_after == 7.0 and not isinstance(unavailable.value, RateLimitedError)
            with pytest.raises(UnavailableError) as internal:
                await backend.get("InternalError")
            assert internal.value.retry_after is None
        finally:
            await backend.aclose()


# --- presigned URLs, fetched with a plain HTTP client --------------------------------------------------


async def test_presigned_get_options(weed: S3Backend, pfx: str) -> None:
    await weed.put_object(pfx + "ünï report.pdf", b"%PDF", content_type="application/pdf")
    async with httpx.AsyncClient() as client:
        r = await client.get(await weed.presign(pfx + "ünï report.pdf", download=True))
        assert r.status_code == 200 and r.content == b"%PDF"
        assert r.headers["content-disposition"].startswith("attachment")
        assert "filename*=UTF-8''%C3%BC" in r.headers["content-disposition"]
        r = await client.get(await weed.presign(pfx + "ünï report.pdf", content_type="application/octet-stream"))
        assert r.headers["content-type"] == "application/octet-stream"
    with pytest.raises(InvalidArgumentError):
        await weed.presign(pfx + "x", expires_in=8 * 24 * 3600)


async def test_presigned_put_signs_the_content_type(weed: S3Backend, pfx: str) -> None:
    url = await weed.presign(pfx + "up.png", method="PUT", content_type="image/png", expires_in=60)
    async with httpx.AsyncClient() as client:
        wrong = await client.put(url, content=b"x", headers={"Content-Type": "text/html"})
        assert wrong.status_code == 403
        ok = await client.put(url, content=b"\x89PNG", headers={"Content-Type": "image/png"})
        assert ok.status_code == 200
    info = await weed.head(pfx + "up.png")
    assert (info.content_type, await weed.get(pfx + "up.png")) == ("image/png", b"\x89PNG")


async def test_presigned_post_policy(weed: S3Backend, pfx: str) -> None:
    url, fields = await weed.presign_post(pfx + "avatar.jpg", content_type="image/jpeg", max_size=1000, expires_in=60)
    async with httpx.AsyncClient() as client:
        ok = await client.post(url, data=fields, files={"file": ("a.jpg", b"\xff\xd8jpeg", "image/jpeg")})
        assert ok.status_code in (200, 201, 204), ok.text
        assert await weed.get(pfx + "avatar.jpg") == b"\xff\xd8jpeg"
        too_big = await client.post(url, data=fields, files={"file": ("a.jpg", b"x" * 1001, "image/jpeg")})
        assert too_big.status_code in (400, 403)
        other_type = {**fields, "Content-Type": "text/html"}
        assert (await client.post(url, data=other_type, files={"file": ("a", b"<h1>", "text/html")})).status_code == 403
        tampered = {**fields, "x-amz-signature": "0" * 64}
        assert (await client.post(url, data=tampered, files={"file": ("a", b"\xff", "image/jpeg")})).status_code == 403
    assert await weed.get(pfx + "avatar.jpg") == b"\xff\xd8jpeg"


@pytest.mark.parametrize(
    "server",
    [
        "seaweed",
        pytest.param(
            "moto",
            marks=pytest.mark.xfail(strict=True, reason="moto does not verify presigned URL signatures or expiry"),
        ),
    ],
)
async def test_tampered_and_expired_presigned_urls_are_rejected(
    request: pytest.FixtureRequest, server: str, pfx: str
) -> None:
    s3: S3Server = request.getfixturevalue(server)
    backend = s3.backend()
    try:
        await backend.put_object(pfx + "secret.txt", b"s3cr3t")
        async with httpx.AsyncClient() as client:
            url = await backend.presign(pfx + "secret.txt", expires_in=1)
            sig = url.rindex("X-Amz-Signature=") + len("X-Amz-Signature=")
            tampered = url[:sig] + ("0" if url[sig] != "0" else "1") + url[sig + 1 :]
            assert (await client.get(tampered)).status_code == 403
            other_key = url.replace("secret.txt", "secreT.txt")
            assert (await client.get(other_key)).status_code == 403
            await asyncio.sleep(2.2)
            assert (await client.get(url)).status_code == 403
    finally:
        await backend.aclose()


# --- SSE-C --------------------------------------------------------------------------------------------


async def test_sse_c_round_trip_and_wrong_key(seaweed: S3Server, pfx: str) -> None:
    key_a = base64.b64encode(os.urandom(32)).decode()
    key_b = base64.b64encode(os.urandom(32)).decode()
    a = seaweed.backend(sse_customer_key=key_a, part_size=5 * MiB)
    b = seaweed.backend(sse_customer_key=key_b)
    plain = seaweed.backend()
    try:
        await a.put_object(pfx + "enc.txt", b"top secret", metadata={"m": "1"})
        assert await a.get(pfx + "enc.txt") == b"top secret"
        assert (await a.head(pfx + "enc.txt")).metadata == {"m": "1"}
        big = os.urandom(11 * MiB)
        await a.put_object(pfx + "enc.bin", _chunks(big, MiB))
        assert await a.get(pfx + "enc.bin") == big
        for wrong in (b, plain):
            with pytest.raises((PermissionDeniedError, InvalidArgumentError)):
                await wrong.get(pfx + "enc.txt")
    finally:
        for backend in (a, b, plain):
            await backend.aclose()


# --- resumable sessions -------------------------------------------------------------------------------

_RESUME = textwrap.dedent(
    """
    import asyncio, json, sys
    from unistore.backends.s3 import S3Backend

    async def main():
        endpoint, ak, sk, token, saved = sys.argv[1:6]
        backend = S3Backend(bucket="unistore-tests", endpoint=endpoint, access_key=ak, secret_key=sk,
                            part_size=5 * 1024 * 1024)
        session = backend.uploads.resume(token)
        manifest = {int(n): c for n, c in json.loads(saved).items()}  # what the first client persisted
        have = {p.number for p in await backend.uploads.list_parts(session)}
        data = sys.stdin.buffer.read()
        size = 5 * 1024 * 1024
        parts = [data[i:i + size] for i in range(0, len(data), size)]
        for n, chunk in enumerate(parts, 1):
            if n not in have:
                manifest[n] = (await backend.uploads.upload_part(session, n, chunk)).checksum
        info = await backend.uploads.complete(session, sorted(manifest.items()))
        print(info.size, sorted(have))
        await backend.aclose()

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("checksum", ["md5", "sha256", "crc32-kept"])
async def test_resumable_session_finished_by_another_process(seaweed: S3Server, pfx: str, checksum: str) -> None:
    """A session is resumed from its token in another process (which has the default checksum):
    the token carries the session's checksum, ``crc32`` too when the session kept it."""
    keep = checksum == "crc32-kept"
    backend = seaweed.backend(part_size=5 * MiB, checksum=checksum.removesuffix("-kept"))
    data = os.urandom(12 * MiB + 5)
    parts = [data[i : i + 5 * MiB] for i in range(0, len(data), 5 * MiB)]
    try:
        session = await backend.uploads.start(
            pfx + "resumed.bin", content_type="application/x-r", metadata={"v": "2"}, keep_crc32=keep
        )
        assert session.checksum == checksum.removesuffix("-kept")
        # this "client" uploads parts 3 and 2 (out of order, concurrently), then goes away
        done = await asyncio.gather(
            backend.uploads.upload_part(session, 3, parts[2]), backend.uploads.upload_part(session, 2, parts[1])
        )
        saved = json.dumps({p.number: p.checksum for p in done})
        if keep:
            assert {p.number: p.checksum for p in done} == {
                n: base64.b64encode(zlib.crc32(parts[n - 1]).to_bytes(4, "big")).decode() for n in (2, 3)
            }
        assert not await backend.exists(pfx + "resumed.bin")
        assert [p.number for p in await backend.uploads.list_parts(session)] == [2, 3]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _RESUME,
            seaweed.endpoint,
            seaweed.access_key,
            seaweed.secret_key,
            session.token,
            saved,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await proc.communicate(data)
        assert proc.returncode == 0, err.decode()[-2000:]
        assert out.split()[0] == str(len(data)).encode()
        assert b"[2, 3]" in out  # it resumed: only part 1 was sent again
        got = await backend.get(pfx + "resumed.bin")
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
        info = await backend.head(pfx + "resumed.bin")
        assert (info.content_type, dict(info.metadata)) == ("application/x-r", {"v": "2"})
        assert await backend.uploads.list(pfx) == []
    finally:
        await backend.aclose()


async def test_a_crc32_session_presigns_parts_with_their_crc32(seaweed: S3Server, pfx: str) -> None:
    """A part presigned in a kept-CRC-32 session is accepted with its CRC-32 only, and a session
    started without ``keep_crc32`` on a crc32 backend uses MD5 (what browsers send)."""
    import urllib.error
    import urllib.request

    backend = seaweed.backend(part_size=5 * MiB, checksum="crc32")
    try:
        assert (await backend.uploads.start(pfx + "md5.bin")).checksum == "md5"
        session = await backend.uploads.start(pfx + "p.bin", keep_crc32=True)
        body = os.urandom(1000)
        crc = base64.b64encode(zlib.crc32(body).to_bytes(4, "big")).decode()
        with pytest.raises(InvalidArgumentError, match="CRC-32"):
            await backend.uploads.presign_part(session, 1)
        with pytest.raises(InvalidArgumentError, match="CRC-32"):
            await backend.uploads.presign_part(session, 1, checksum=base64.b64encode(b"12345").decode())
        url, headers = await backend.uploads.presign_part(session, 1, checksum=crc)
        assert headers == {"x-amz-checksum-crc32": crc}

        def put(data: bytes) -> int:
            req = urllib.request.Request(url, data=data, method="PUT", headers=headers)
            try:
                with urllib.request.urlopen(req) as r:
                    return int(r.status)
            except urllib.error.HTTPError as exc:
                return exc.code

        assert await asyncio.to_thread(put, b"x" + body[1:]) >= 400  # not the signed checksum
        assert await asyncio.to_thread(put, body) == 200
        info = await backend.uploads.complete(session, [(1, crc)])
        assert info.size == 1000 and await backend.get(pfx + "p.bin") == body
    finally:
        await backend.aclose()


async def test_manifest_checksums_are_verified_before_completion(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB)
    try:
        session = await backend.uploads.start(pfx + "m.bin")
        p1 = await backend.uploads.upload_part(session, 1, os.urandom(5 * MiB))
        p2 = await backend.uploads.upload_part(session, 2, b"tail")
        bad = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
        with pytest.raises(IntegrityError, match="part 2"):
            await backend.uploads.complete(session, [(1, p1.checksum or ""), (2, bad)])
        with pytest.raises(IntegrityError, match="part 3"):
            await backend.uploads.complete(session, [p1, p2, (3, bad)])
        assert not await backend.exists(pfx + "m.bin")
        info = await backend.uploads.complete(session, [p1, p2])
        assert info.size == 5 * MiB + 4
        with pytest.raises(NotFoundError):  # completed sessions are gone
            await backend.uploads.list_parts(session)
        s2 = await backend.uploads.start(pfx + "aborted.bin")
        await backend.uploads.upload_part(s2, 1, b"x")
        await backend.uploads.abort(s2)
        assert await backend.uploads.list(pfx) == []
        with pytest.raises(InvalidArgumentError):
            backend.uploads.resume("not-a-token")
    finally:
        await backend.aclose()


async def test_equal_parts_rule(seaweed: S3Server, pfx: str) -> None:
    backend = seaweed.backend(part_size=5 * MiB, equal_parts=True)
    try:
        session = await backend.uploads.start(pfx + "eq.bin")
        with pytest.raises(InvalidArgumentError):
            await backend.uploads.upload_part(session, 1, os.urandom(5 * MiB + 1))
        p1 = await backend.uploads.upload_part(session, 1, os.urandom(5 * MiB))
        p2 = await backend.uploads.upload_part(session, 2, os.urandom(6 * MiB - 1 - MiB))
        p3 = await backend.uploads.upload_part(session, 3, b"end")
        with pytest.raises(IntegrityError, match="size"):
            await backend.uploads.complete(session, [p1, p2, p3])
        await backend.uploads.abort(session)
    finally:
        await backend.aclose()


async def test_ping(weed: S3Backend, moto: S3Server) -> None:
    await weed.ping()
    missing = moto.backend(bucket="absent-bucket-x")
    try:
        with pytest.raises(ConfigurationError, match="absent-bucket-x"):
            await missing.ping()
    finally:
        await missing.aclose()


def test_time_is_pinned_in_presign() -> None:
    signer = SigV4("us-east-1")
    creds = Credentials("AK", "SK")
    a = signer.presign(creds, "GET", "h", "/b/k", 60, now=time.time())
    assert "X-Amz-Expires=60" in a and "X-Amz-Signature=" in a


@pytest.mark.parametrize("checksum", ["md5", "none"])
async def test_file_parts_go_through_sendfile_over_plain_http(
    seaweed: S3Server, pfx: str, tmp_path: Any, checksum: str
) -> None:
    """Over plain TCP the kernel sends each part's range (no copy through Python)."""
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=2, checksum=checksum)
    data = os.urandom(11 * MiB + 3)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    loop = asyncio.get_running_loop()
    sent: list[tuple[int, int | None]] = []
    real = loop.sendfile

    async def counting(transport: Any, file: Any, offset: int = 0, count: int | None = None, **kw: Any) -> int:
        sent.append((offset, count))
        return await real(transport, file, offset, count, **kw)

    loop.sendfile = counting  # type: ignore[method-assign]  # spies on the real call
    try:
        await backend.put_object(pfx + "sf.bin", path)
        assert sorted(sent) == [(0, 5 * MiB), (5 * MiB, 5 * MiB), (10 * MiB, MiB + 3)]
        assert await backend.get(pfx + "sf.bin") == data
    finally:
        del loop.sendfile
        await backend.aclose()


async def test_file_parts_fall_back_to_reads_without_sendfile(seaweed: S3Server, pfx: str, tmp_path: Any) -> None:
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=2, checksum="none")
    data = os.urandom(10 * MiB + 7)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    loop = asyncio.get_running_loop()

    async def refused(*args: Any, **kwargs: Any) -> int:
        raise asyncio.SendfileNotAvailableError("not here")

    loop.sendfile = refused  # type: ignore[method-assign]  # as on a loop without sendfile (uvloop)
    try:
        await backend.put_object(pfx + "nosf.bin", path)
        assert await backend.get(pfx + "nosf.bin") == data
    finally:
        del loop.sendfile
        await backend.aclose()


async def test_file_that_shrinks_while_sent_by_the_kernel_fails(seaweed: S3Server, pfx: str, tmp_path: Any) -> None:
    backend = seaweed.backend(part_size=5 * MiB, max_concurrency=1, checksum="none")
    path = tmp_path / "shrinking.bin"
    path.write_bytes(os.urandom(16 * MiB))
    original = backend._send

    async def send_then_truncate(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if kwargs.get("op") == "upload_part":
            os.truncate(path, 6 * MiB)  # another process rewrites the file mid-upload
        return result

    backend._send = send_then_truncate  # type: ignore[method-assign]  # wraps the real request
    try:
        with pytest.raises(IntegrityError, match="changed size"):
            await backend.put_object(pfx + "shrink-sf.bin", path)
        assert not await backend.exists(pfx + "shrink-sf.bin")
        assert await backend.uploads.list(pfx) == []
    finally:
        await backend.aclose()


@pytest.mark.parametrize(
    ("endpoint", "want"),
    [
        (None, "crc32"),
        ("https://s3.eu-west-1.amazonaws.com", "crc32"),
        ("https://acct.r2.cloudflarestorage.com", "crc32"),
        ("https://s3.eu-central-003.backblazeb2.com", "md5"),
        ("https://fra1.digitaloceanspaces.com", "md5"),
        ("http://127.0.0.1:9000", "md5"),
        ("https://notamazonaws.com", "md5"),
    ],
)
def test_auto_checksum_is_crc32_only_where_the_server_is_known_to_check_it(endpoint: str | None, want: str) -> None:
    """B2 and others answer 400 to x-amz-checksum-crc32: other endpoints keep Content-MD5 unless told."""
    assert S3Settings(bucket="b", endpoint=endpoint).checksum == want
    assert S3Settings(bucket="b", endpoint=endpoint, checksum="crc32").checksum == "crc32"


async def test_crc32_checksums_are_sent_and_the_server_checks_them(
    seaweed: S3Server, pfx: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``checksum="crc32"`` every body and part carries x-amz-checksum-crc32; a body that does
    not match it is refused (single PUT, streamed parts, parts sent from a file). Sessions keep MD5."""
    import zlib

    from unistore.backends.s3 import _multipart
    from unistore.backends.s3._wire import checksum_header

    backend = seaweed.backend(part_size=5 * MiB, checksum="crc32")
    assert backend.settings.checksum == "crc32"
    data = os.urandom(11 * MiB + 5)
    value = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    assert checksum_header("crc32", [data[:7], memoryview(data)[7:]]) == ({"x-amz-checksum-crc32": value}, value)
    path = tmp_path / "body.bin"
    path.write_bytes(data)
    try:
        await backend.put_object(pfx + "stream", data)
        await backend.put_object(pfx + "file", path)
        await backend.put_object(pfx + "small", data[:1000])
        for key, want in (("stream", data), ("file", data), ("small", data[:1000])):
            assert await (await backend.open(pfx + key)).read() == want
        session = await backend.uploads.start(pfx + "session")
        assert session.checksum == "md5"
        await backend.uploads.abort(session)

        real = _multipart.checksum_header

        def wrong(mode: str, chunks: Any) -> tuple[dict[str, str], str | None]:
            headers, _ = real(mode, chunks)
            return {name: "AAAAAA==" for name in headers}, "AAAAAA=="

        monkeypatch.setattr(_multipart, "checksum_header", wrong)
        for body in (data, path):
            with pytest.raises(IntegrityError):
                await backend.put_object(pfx + "refused", body)
        monkeypatch.setattr("unistore.backends.s3.checksum_header", wrong)
        with pytest.raises(IntegrityError):
            await backend.put_object(pfx + "refused", data[:1000])
        assert not await backend.exists(pfx + "refused")
    finally:
        await backend.aclose()
