"""CloudinaryBackend against the local fake of Cloudinary's REST API: conformance plus specifics."""

from __future__ import annotations

import asyncio
import io
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from PIL import Image

from unistore import (
    CloudinaryBackend,
    CommonPrefix,
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    UnsupportedError,
    backend_from_url,
    easy_storage,
)
from unistore.backends.cloudinary import CloudinarySettings, Transform
from unistore.testing import TRICKY_KEYS, BackendConformance
from unistore.testing._cloudinary_fake import FakeCloudinary


def make(fake_cloudinary: tuple[Any, str], **kw: Any) -> CloudinaryBackend:
    fake, url = fake_cloudinary
    host = urlsplit(url).netloc
    options: dict[str, Any] = dict(
        cloud_name=fake.cloud_name, api_key=fake.api_key, api_secret=fake.api_secret,
        upload_prefix=url, cname=host, secure=False, chunk_size=1024 * 1024,
    )
    options.update(kw)
    return CloudinaryBackend(**options)


@pytest.fixture
async def cld(fake_cloudinary: tuple[Any, str]) -> AsyncIterator[CloudinaryBackend]:
    b = make(fake_cloudinary)
    yield b
    await b.aclose()


class TestCloudinary(BackendConformance):
    list_count = 60  # in Admin-API pages of 25: next_cursor paging inside the conformance listing test

    @pytest.fixture
    async def backend(self, fake_cloudinary: tuple[Any, str]) -> AsyncIterator[CloudinaryBackend]:
        b = make(fake_cloudinary, page_size=25)
        yield b
        await b.aclose()


class TestCloudinarySha256Public(BackendConformance):
    """Public (``upload``) delivery and SHA-256 signatures: the same contract except URL expiry."""

    list_count = 50

    @pytest.fixture
    async def backend(self, fake_cloudinary: tuple[Any, str]) -> AsyncIterator[CloudinaryBackend]:
        b = make(fake_cloudinary, signature_algorithm="sha256", delivery_type="upload", folder="pub")
        yield b
        await b.aclose()

    async def test_signed_url_round_trip(self, backend: Any, prefix: str) -> None:
        pytest.skip("public delivery URLs do not expire: covered by test_public_urls_are_plain")


def _png(w: int = 4, h: int = 3) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


# --- key mapping -------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "image/png", None])
async def test_every_tricky_key_round_trips_with_its_extension(
    cld: CloudinaryBackend, content_type: str | None
) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}/"
    data = _png() if content_type == "image/png" else b"bytes"
    keys = [prefix + k for k in TRICKY_KEYS] + [prefix + "pic.png", prefix + "pic.jpg", prefix + "pic"]
    for k in keys:
        await cld.put_object(k, data, content_type=content_type)
    assert await cld.list_keys(prefix) == sorted(keys)
    for k in keys:
        assert await cld.get(k) == data, k
        assert (await cld.head(k)).key == k


async def test_resource_types_follow_the_content_type(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"rt-{uuid.uuid4().hex[:8]}/photo.png"
    pid = key
    await cld.put_object(key, _png())
    assert ("image", "authenticated", pid) in fake.assets
    await cld.put_object(key, b"not an image", content_type="image/png")  # refused as image: kept as raw
    assert ("raw", "authenticated", pid) in fake.assets and ("image", "authenticated", pid) not in fake.assets
    assert await cld.get(key) == b"not an image" and (await cld.head(key)).content_type == "image/png"
    await cld.put_object(key, _png(8, 8))
    assert await cld.get(key) == _png(8, 8) and await cld.list_keys(key) == [key]
    assert await cld.delete(key) is True and not await cld.exists(key)


async def test_get_of_a_raw_key_is_one_request(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"one-{uuid.uuid4().hex[:8]}/data.bin"
    await cld.put_object(key, b"raw bytes")
    before = fake.requests
    assert await cld.get(key) == b"raw bytes"
    assert fake.requests - before == 1  # the delivery GET, no Admin-API lookup
    await cld.put_object(key, _png(), content_type="image/png")  # now an image: the raw URL is a 404
    assert ("raw", "authenticated", key) not in fake.assets
    before = fake.requests
    assert await cld.get(key) == _png()  # falls back to the lookup
    assert fake.requests - before > 1
    with pytest.raises(FileNotFoundError):
        await cld.get(key + ".missing")


async def test_public_ids_escape_reserved_characters(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"e-{uuid.uuid4().hex[:8]}/100% a+b?c#d&e~f.txt"
    await cld.put_object(key, b"x")
    pids = [pid for (_, _, pid) in fake.assets if pid.startswith(key[:11])]
    assert pids == [key[:11] + "100~25 a~2Bb~3Fc~23d~26e~7Ef.txt"]


async def test_long_keys_are_rejected(cld: CloudinaryBackend) -> None:
    with pytest.raises(InvalidKeyError, match="255"):
        await cld.put_object("a/" * 100 + "b" * 100, b"x")


# --- metadata, chunked uploads, paging -------------------------------------------------------------


async def test_metadata_in_context_and_tags(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"m-{uuid.uuid4().hex[:8]}/doc.pdf"
    meta = {"user_id": "7", "tags": "a,b", "weird": "x=y|z\\w"}
    await cld.put_object(key, b"%PDF", metadata=meta, cache_control="max-age=9", content_disposition="inline")
    info = await cld.head(key)
    assert dict(info.metadata) == meta
    assert (info.content_type, info.cache_control, info.content_disposition) == ("application/pdf", "max-age=9",
                                                                                 "inline")
    assert fake.assets[("raw", "authenticated", key)].tags == ["a", "b"]
    md = await cld.get_metadata(key)
    assert md["user_id"] == "7" and md["size"] == 4


async def test_chunked_upload_of_a_stream(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    fake: FakeCloudinary = fake_cloudinary[0]
    data = bytes(range(256)) * 4096 * 3 + b"end"  # 3 MiB + 3 with 1 MiB chunks: four chunked POSTs

    async def body() -> AsyncIterator[bytes]:
        for i in range(0, len(data), 300_000):
            yield data[i : i + 300_000]

    before = fake.requests
    info = await cld.put_object(f"big-{uuid.uuid4().hex[:8]}.bin", body())
    assert info.size == len(data) and fake.requests - before >= 4
    assert await cld.get(info.key) == data
    assert not fake.chunks  # every chunked upload completed


async def test_listing_pages_with_next_cursor(fake_cloudinary: Any) -> None:
    b = make(fake_cloudinary, page_size=3)
    prefix = f"p-{uuid.uuid4().hex[:8]}/"
    keys = [f"{prefix}{i:02d}" for i in range(10)]
    await asyncio.gather(*(b.put_object(k, b"") for k in keys))
    assert await b.list_keys(prefix) == keys
    assert [k async for k in b.iter_keys(prefix, start_after=keys[4])] == keys[5:]
    await b.aclose()


# --- URLs -----------------------------------------------------------------------------------------


async def test_transformations_in_signed_delivery_urls(cld: CloudinaryBackend) -> None:
    key = f"img-{uuid.uuid4().hex[:8]}/avatar.png"
    await cld.put_object(key, _png())
    t = Transform(width=200, height=200, crop="fill", gravity="auto", format="webp", quality="auto")
    url = await cld.get_url(key, transform=t)
    assert "/image/authenticated/s--" in url and "/c_fill,f_webp,g_auto,h_200,q_auto,w_200/v" in url
    assert url.endswith("/avatar.png.png")
    async with httpx.AsyncClient() as client:
        r = await client.get(url)
        assert r.status_code == 200 and r.headers["x-fake-transformation"] == str(t)
        assert (await client.get(url.replace("w_200", "w_2000"))).status_code == 401  # tampered transformation
        r = await client.get(await cld.get_url(key, transform=Transform(width=50), download=True))
        assert r.headers["content-disposition"].startswith("attachment")
    with pytest.raises(InvalidArgumentError):
        Transform(width=0)
    with pytest.raises(InvalidArgumentError):
        Transform(crop="explode")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        Transform(format="png/../x")
    with pytest.raises(InvalidArgumentError):
        Transform()


async def test_download_urls_match_the_official_sdk(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    import cloudinary.utils

    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"sdk-{uuid.uuid4().hex[:8]}/a&b c.txt"
    await cld.put_object(key, b"x")
    ours = dict(parse_qsl(urlsplit(await cld.get_url(key, expires_in=60, download=True)).query))
    theirs = dict(parse_qsl(urlsplit(cloudinary.utils.private_download_url(
        ours["public_id"], "", type="authenticated", attachment=True, expires_at=int(ours["expires_at"]),
        api_key=fake.api_key, api_secret=fake.api_secret, cloud_name=fake.cloud_name,
        timestamp=ours["timestamp"],
    )).query))
    assert ours["signature"] == theirs["signature"] or ours["timestamp"] != theirs["timestamp"]


async def test_signed_delivery_urls_match_the_official_sdk(cld: CloudinaryBackend, fake_cloudinary: Any) -> None:
    import cloudinary.utils

    fake: FakeCloudinary = fake_cloudinary[0]
    key = f"sdk-{uuid.uuid4().hex[:8]}/ünï pic.png"
    await cld.put_object(key, _png())
    t = Transform(width=10, crop="scale")
    ours = await cld.get_url(key, transform=t)
    info = await cld.head(key)
    theirs, _ = cloudinary.utils.cloudinary_url(
        key, format="png", type="authenticated", sign_url=True, transformation=[{"width": 10, "crop": "scale"}],
        version=info.etag.split("-")[0], cloud_name=fake.cloud_name, api_secret=fake.api_secret,
        secure=False, cname=cld.settings.cname, private_cdn=False, secure_distribution=None,
    )
    assert ours == theirs


async def test_public_urls_are_plain(fake_cloudinary: Any) -> None:
    b = make(fake_cloudinary, delivery_type="upload")
    key = f"pub-{uuid.uuid4().hex[:8]}.txt"
    url = await b.put(key, b"public", "text/plain")
    assert "/raw/upload/v" in url and "s--" not in url
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"public"
    await b.aclose()


async def test_private_assets_are_read_through_the_download_api(fake_cloudinary: Any) -> None:
    b = make(fake_cloudinary, delivery_type="private")
    key = f"priv-{uuid.uuid4().hex[:8]}.bin"
    await b.put_object(key, b"0123456789")
    assert await b.get(key) == b"0123456789"
    from unistore import ByteRange

    async with await b.open(key, range=ByteRange(2, 5)) as dl:
        assert await dl.read() == b"234"
    await b.aclose()


async def test_unsupported_capabilities_raise(cld: CloudinaryBackend) -> None:
    key = f"u-{uuid.uuid4().hex[:8]}"
    await cld.put_object(key, b"x")
    for call in (
        cld.sign_url(key, method="PUT"),
        cld.open(key, if_match="x"),
        cld.remove(key, if_match="x"),
        cld.put_object(key, b"y", mode="create"),
    ):
        with pytest.raises(UnsupportedError):
            await call
    assert await cld.get(key) == b"x"


# --- the fake refuses what Cloudinary refuses ---------------------------------------------------------


async def test_fake_rejects_bad_credentials(fake_cloudinary: Any) -> None:
    from unistore import PermissionDeniedError

    for kw in ({"api_secret": "wrong"}, {"api_key": "999"}):
        b = make(fake_cloudinary, **kw)
        with pytest.raises(PermissionDeniedError):
            await b.put_object("x", b"x")
        with pytest.raises(PermissionDeniedError):
            await b.head("x")
        await b.aclose()


async def test_fake_rejects_stale_timestamps(fake_cloudinary: Any) -> None:
    fake, url = fake_cloudinary
    from unistore.backends.cloudinary._api import api_signature

    params = {"public_id": "old", "timestamp": "1000000000"}
    params["signature"] = api_signature(params, fake.api_secret)
    params["api_key"] = fake.api_key
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{url}/v1_1/{fake.cloud_name}/raw/upload", data=params, files={"file": b"x"})
    assert r.status_code == 400 and "Stale" in r.text


# --- configuration ------------------------------------------------------------------------------------


def test_settings_from_url_and_explicit_values() -> None:
    s = CloudinarySettings(url="cloudinary://key:topsecret@cloud")
    assert (s.cloud_name, s.api_key, s.api_secret) == ("cloud", "key", "topsecret")
    assert "topsecret" not in repr(s)
    assert CloudinarySettings(url="cloudinary://key:s@cloud", cloud_name="other").cloud_name == "other"
    with pytest.raises(ConfigurationError, match="CLOUDINARY_URL"):
        CloudinarySettings()
    with pytest.raises(ConfigurationError):
        CloudinarySettings(url="https://key:s@cloud")
    with pytest.raises(ConfigurationError):
        CloudinarySettings(url="cloudinary://k:s@c", delivery_type="public")


def test_easy_storage_and_url_form(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("STORAGE_BACKEND", "RAILWAY_VOLUME_MOUNT_PATH", "AWS_ACCESS_KEY_ID", "STORAGE_S3_BUCKET",
                "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDINARY_URL", "cloudinary://key:topsecret@cloud")
    b = easy_storage()
    assert isinstance(b, CloudinaryBackend) and b.settings.cloud_name == "cloud"
    monkeypatch.delenv("CLOUDINARY_URL")
    monkeypatch.setenv("STORAGE_CLOUDINARY_CLOUD_NAME", "c2")
    monkeypatch.setenv("STORAGE_CLOUDINARY_API_KEY", "k2")
    monkeypatch.setenv("STORAGE_CLOUDINARY_API_SECRET", "s2")
    b = easy_storage("cloudinary", secure=False)
    assert (b.settings.cloud_name, b.settings.secure) == ("c2", False)  # typed option, not the string "false"
    b = backend_from_url("cloudinary://key:topsecret@cloud?folder=app&delivery_type=upload")
    assert isinstance(b, CloudinaryBackend) and b.settings.folder == "app/"


# --- folder listing (folders + Search APIs) ------------------------------------------------------------


async def test_a_folder_level_reads_nothing_below_it(fake_cloudinary: Any) -> None:
    fake, _ = fake_cloudinary
    b = make(fake_cloudinary, page_size=3)
    p = f"lvl-{uuid.uuid4().hex[:8]}/"
    await asyncio.gather(*(b.put_object(f"{p}deep/x/{i:02d}.txt", b"x") for i in range(30)))
    await b.put_object(f"{p}top.txt", b"top")
    await b.put_object(f"{p}top2.bin", b"2")
    before = fake.requests
    entries = [e async for e in b.iter_entries(p)]
    assert [getattr(e, "prefix", None) or getattr(e, "key", None) for e in entries] == [
        f"{p}deep/", f"{p}top.txt", f"{p}top2.bin"
    ]
    assert entries[1].size == 3 and entries[1].content_type == "text/plain"  # type: ignore[union-attr]
    # folders (1) + search (1) + a probe of deep/ (1 to 3); a prefix scan of the 30 keys would take 10+ pages
    assert fake.requests - before <= 5
    # Cloudinary keeps emptied folders: the fake does too, the listing leaves them out
    await asyncio.gather(*(b.remove(f"{p}deep/x/{i:02d}.txt") for i in range(30)))
    assert f"{p}deep/x" in fake.folders
    assert [e async for e in b.iter_entries(p + "deep/")] == []
    assert len([e async for e in b.iter_entries(p)]) == 2
    await b.aclose()


async def test_folder_listing_pages_folders_with_next_cursor(fake_cloudinary: Any) -> None:
    b = make(fake_cloudinary, page_size=2, folder=f"store-{uuid.uuid4().hex[:6]}")
    await asyncio.gather(*(b.put_object(f"d{i}/k", b"") for i in range(5)))
    assert [e.prefix async for e in b.iter_entries("") if isinstance(e, CommonPrefix)] == [
        f"d{i}/" for i in range(5)
    ]
    assert [e.prefix async for e in b.iter_entries("", start_after="d2/") if isinstance(e, CommonPrefix)] == [
        "d3/", "d4/"
    ]
    await b.aclose()


async def test_fake_checks_auth_on_folders_and_search(fake_cloudinary: Any) -> None:
    from unistore import PermissionDeniedError

    fake, url = fake_cloudinary
    api = f"{url}/v1_1/{fake.cloud_name}"
    for path, method in ((f"{api}/folders", "GET"), (f"{api}/resources/search", "POST")):
        async with httpx.AsyncClient() as c:
            r = await c.request(method, path, auth=(fake.api_key, "wrong"), json={})
        assert r.status_code == 401
    b = make(fake_cloudinary, api_secret="wrong")
    with pytest.raises(PermissionDeniedError):
        [e async for e in b.iter_entries("")]
    await b.aclose()


async def test_fake_search_refuses_unknown_terms(fake_cloudinary: Any) -> None:
    fake, url = fake_cloudinary
    async with httpx.AsyncClient() as c:
        r = await c.post(
            f"{url}/v1_1/{fake.cloud_name}/resources/search",
            auth=(fake.api_key, fake.api_secret),
            json={"expression": "width>500"},
        )
    assert r.status_code == 400
