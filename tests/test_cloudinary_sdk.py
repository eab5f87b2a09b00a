"""Cloudinary URLs and settings held to the official SDK (``cloudinary``, a dev dependency).

Regressions for issue 11 item 12: (a) signed delivery URLs of public ids with ``~`` (every key
with ``? & # \\ % < > + ~``) differed from the SDK's (``a~2Bb`` vs ``a%7E2Bb``) and the fake accepted
them only because it checked with our own helper; (b) ``CLOUDINARY_URL``'s query options were
dropped by auto-detection while ``backend_from_url`` honoured them.
"""

from __future__ import annotations

import io
import uuid
from typing import Any
from urllib.parse import urlsplit

import cloudinary.utils
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from unistore import InvalidKeyError, backend_from_url, easy_storage, validate_key
from unistore.backends.cloudinary import CloudinaryBackend, Transform
from unistore.backends.cloudinary._api import encode_public_id, url_signature
from unistore.testing._cloudinary_fake import FakeCloudinary

RESERVED = "?&#\\%<>+~"
# keys built from the reserved characters, unicode, spaces and the characters the SDK keeps as they are
_alphabet = st.sampled_from(list(RESERVED + "ab/ .-_:é中 \U0001f600!$'()*,;=@[]^`{|}\"")) | st.characters(
    codec="utf-8", exclude_categories=("Cs", "Cc")
)


def _valid(key: str) -> bool:
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


keys = st.text(_alphabet, min_size=1, max_size=40).filter(_valid)
transforms = st.none() | st.builds(
    Transform,
    width=st.none() | st.integers(1, 4000),
    height=st.integers(1, 4000),
    crop=st.none() | st.sampled_from(["fill", "scale", "fit"]),
    format=st.none() | st.sampled_from(["auto", "webp"]),
    quality=st.none() | st.just("auto"),
)


def _sdk_url(backend: CloudinaryBackend, key: str, rtype: str, fmt: str, t: Transform | None, download: bool) -> str:
    s = backend.settings
    chain: list[dict[str, Any]] = []
    if t is not None:
        step = {"width": t.width, "height": t.height, "crop": t.crop, "fetch_format": t.format, "quality": t.quality}
        chain.append({k: v for k, v in step.items() if v is not None})
    if download:
        chain.append({"flags": "attachment"})
    signed = s.delivery_type != "upload" or bool(chain)
    host: dict[str, Any] = {"secure_distribution": s.cname} if s.secure else {"cname": s.cname}
    url, _ = cloudinary.utils.cloudinary_url(
        encode_public_id(s.folder, key),
        resource_type=rtype,
        type=s.delivery_type,
        format=fmt or None,
        version=7,
        transformation=chain,
        sign_url=signed,
        signature_algorithm=s.signature_algorithm,
        cloud_name=s.cloud_name,
        api_secret=str(s.api_secret),
        secure=s.secure,
        private_cdn=False,
        **host,
    )
    return str(url)


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"signature_algorithm": "sha256", "folder": "f/g"},
        {"delivery_type": "upload", "secure": False, "cname": "cdn.example.com"},
        {"cname": "media.example.com"},
    ],
)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=keys, t=transforms, download=st.booleans(), image=st.booleans())
def test_delivery_urls_equal_the_sdks(
    options: dict[str, Any], key: str, t: Transform | None, download: bool, image: bool
) -> None:
    backend = CloudinaryBackend(cloud_name="demo", api_key="123", api_secret="shh-secret", **options)
    rtype, fmt = ("image", "png") if image else ("raw", "")
    s = backend.settings
    res = {"resource_type": rtype, "public_id": encode_public_id(s.folder, key), "format": fmt, "version": 7}
    ours = backend._urls.delivery_url(res, t, download)
    assert ours == _sdk_url(backend, key, rtype, fmt, t, download)


def test_tilde_keys_sign_like_the_sdk() -> None:
    """The reported case: ``a+b`` is the public id ``a~2Bb``, which the SDK writes ``a%7E2Bb``."""
    backend = CloudinaryBackend(cloud_name="demo", api_key="123", api_secret="shh-secret")
    res = {"resource_type": "raw", "public_id": encode_public_id("", "u/a+b"), "format": "", "version": 7}
    ours = backend._urls.delivery_url(res, None, False)
    assert "/u/a%7E2Bb" in ours
    assert ours == _sdk_url(backend, "u/a+b", "raw", "", None, False)


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (2, 2), (1, 2, 3)).save(buf, "PNG")
    return buf.getvalue()


async def test_fake_serves_sdk_signed_urls_for_reserved_character_keys(fake_cloudinary: tuple[Any, str]) -> None:
    """The fake checks delivery signatures with the SDK: our URLs for every reserved character are
    served, and one written the old way (``~`` left as is, same signature scheme) is refused."""
    fake, url = fake_cloudinary
    backend = CloudinaryBackend(
        cloud_name=fake.cloud_name, api_key=fake.api_key, api_secret=fake.api_secret,
        upload_prefix=url, cname=urlsplit(url).netloc, secure=False,
    )  # fmt: skip
    base = f"sdk-{uuid.uuid4().hex[:8]}/"
    try:
        async with httpx.AsyncClient() as client:
            for i, ch in enumerate(RESERVED.replace("\\", "")):  # a backslash is no key
                key = f"{base}{i}a{ch}b.png"
                await backend.put_object(key, _png(), content_type="image/png")
                signed = await backend.get_url(key, transform=Transform(width=2))
                r = await client.get(signed)
                assert r.status_code == 200, (key, signed, r.text)
                assert r.content == _png()
                assert await backend.get(key) == _png()
            info = await backend.head(f"{base}0a?b.png")
            version = info.etag.split("-")[0]
            old_source = encode_public_id("", f"{base}0a?b.png")  # "~3F" kept, as quote(safe="/:-_.") did
            old = url_signature(f"w_2/{old_source}.png", fake.api_secret)
            stale = f"{url}/{fake.cloud_name}/image/authenticated/{old}/w_2/v{version}/{old_source}.png"
            assert (await client.get(stale)).status_code == 401
    finally:
        await backend.aclose()


def _fake_env(fake: FakeCloudinary, url: str) -> str:
    host = urlsplit(url).netloc
    return (
        f"cloudinary://{fake.api_key}:{fake.api_secret}@{fake.cloud_name}"
        f"?upload_prefix={url}&cname={host}&secure=false&delivery_type=upload"
    )


@pytest.mark.parametrize("how", ["easy_storage", "backend_from_url", "settings"])
async def test_cloudinary_url_query_options_are_honoured_everywhere(
    how: str, fake_cloudinary: tuple[Any, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, url = fake_cloudinary
    env_url = _fake_env(fake, url)
    for var in ("STORAGE_BACKEND", "AWS_ACCESS_KEY_ID", "STORAGE_S3_BUCKET", "GOOGLE_APPLICATION_CREDENTIALS",
                "STORAGE_GCS_BUCKET", "RAILWAY_VOLUME_MOUNT_PATH"):  # fmt: skip
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("CLOUDINARY_URL", env_url)
    if how == "easy_storage":
        backend: Any = easy_storage()
    elif how == "backend_from_url":
        backend = backend_from_url(env_url)
    else:
        backend = CloudinaryBackend(url=env_url)
    try:
        assert isinstance(backend, CloudinaryBackend)
        s = backend.settings
        assert (s.upload_prefix, s.cname, s.secure, s.delivery_type) == (url, urlsplit(url).netloc, False, "upload")
        key = f"q-{uuid.uuid4().hex[:8]}.txt"
        await backend.put_object(key, b"through the URL's upload_prefix")  # reaches the fake, not api.cloudinary.com
        public = await backend.get_url(key)
        assert public.startswith(f"http://{urlsplit(url).netloc}/")
        async with httpx.AsyncClient() as client:
            assert (await client.get(public)).content == b"through the URL's upload_prefix"
    finally:
        await backend.aclose()


def test_explicit_settings_win_over_the_url_query() -> None:
    b = CloudinaryBackend(url="cloudinary://k:s@c?cname=a.example.com&secure=false", cname="b.example.com")
    assert (b.settings.cname, b.settings.secure) == ("b.example.com", False)
    with pytest.raises(Exception, match="unknown option 'nope'"):
        CloudinaryBackend(url="cloudinary://k:s@c?nope=1")
