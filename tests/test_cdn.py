"""CDN URLs and purges: signatures checked by independent verifiers, purges observed at moto's
CloudFront and at the Bunny/Cloudflare fakes."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from unistore import (
    CommonPrefix,
    ConfigurationError,
    InvalidArgumentError,
    MemoryBackend,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    UnsupportedError,
)
from unistore._keys import reserved_keys
from unistore.cdn import (
    BunnyPurger,
    BunnyURLs,
    CloudflarePurger,
    CloudFrontInvalidator,
    CloudFrontURLs,
    PlainCDN,
    SpacesPurger,
    attachment,
)
from unistore.encryption import Encrypt, LocalKeyring
from unistore.layers import CDN, Compress, Retry
from unistore.testing import no_sleep, running_server
from unistore.testing._cdn_fakes import FakeCDN, SignatureRejected, verify_bunny, verify_cloudfront
from unistore.testing._s3servers import S3Server

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
PUBLIC = {"KPAIR": KEY.public_key()}
BASE = "https://d111111abcdef8.cloudfront.net"
NOW = 1_900_000_000


@pytest.fixture
def cf() -> CloudFrontURLs:
    return CloudFrontURLs(BASE, "KPAIR", PEM)


# --- CloudFront signed URLs and cookies ---------------------------------------------------------


def test_canned_url_verifies_with_the_public_key(cf: CloudFrontURLs) -> None:
    url = cf.sign(cf.url("reports/q1 2026.pdf"), expires_at=NOW + 60)
    query = dict(parse_qsl(urlsplit(url).query))
    assert set(query) == {"Expires", "Signature", "Key-Pair-Id"} and query["Expires"] == str(NOW + 60)
    verify_cloudfront(url, PUBLIC, now=NOW)
    # by hand, from AWS's documented canned policy and base64 alphabet
    resource = BASE + "/reports/q1%202026.pdf"
    policy = '{"Statement":[{"Resource":"' + resource + '","Condition":{"DateLessThan":{"AWS:EpochTime":'
    policy += str(NOW + 60) + "}}}]}"
    assert set(query["Signature"]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_~")
    raw = base64.b64decode(query["Signature"].translate(str.maketrans("-_~", "+=/")))
    KEY.public_key().verify(raw, policy.encode(), padding.PKCS1v15(), hashes.SHA1())


def test_canned_url_rejections(cf: CloudFrontURLs) -> None:
    url = cf.sign(cf.url("a.txt"), expires_at=NOW + 60)
    with pytest.raises(SignatureRejected, match="expired"):
        verify_cloudfront(url, PUBLIC, now=NOW + 60)
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify_cloudfront(url.replace("/a.txt", "/b.txt"), PUBLIC, now=NOW)
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify_cloudfront(url.replace(f"Expires={NOW + 60}", f"Expires={NOW + 6000}"), PUBLIC, now=NOW)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(SignatureRejected, match="bad signature"):
        verify_cloudfront(url, {"KPAIR": other.public_key()}, now=NOW)
    with pytest.raises(SignatureRejected, match="unknown key pair"):
        verify_cloudfront(url.replace("KPAIR", "KOTHER"), PUBLIC, now=NOW)


def test_custom_policy_ip_range_and_start_time(cf: CloudFrontURLs) -> None:
    url = cf.sign(cf.url("v.mp4"), expires_at=NOW + 600, starts_at=NOW + 60, ip_range="203.0.113.0/24")
    query = dict(parse_qsl(urlsplit(url).query))
    assert "Policy" in query and "Expires" not in query
    policy = json.loads(base64.b64decode(query["Policy"].translate(str.maketrans("-_~", "+=/"))))
    condition = policy["Statement"][0]["Condition"]
    assert condition["IpAddress"] == {"AWS:SourceIp": "203.0.113.0/24"}
    assert condition["DateGreaterThan"] == {"AWS:EpochTime": NOW + 60}
    verify_cloudfront(url, PUBLIC, client_ip="203.0.113.9", now=NOW + 61)
    with pytest.raises(SignatureRejected, match="not yet valid"):
        verify_cloudfront(url, PUBLIC, client_ip="203.0.113.9", now=NOW + 59)
    with pytest.raises(SignatureRejected, match="source IP"):
        verify_cloudfront(url, PUBLIC, client_ip="198.51.100.1", now=NOW + 61)
    single = cf.sign(cf.url("v.mp4"), expires_at=NOW + 600, ip_range="203.0.113.7")
    verify_cloudfront(single, PUBLIC, client_ip="203.0.113.7", now=NOW)
    with pytest.raises(SignatureRejected, match="source IP"):
        verify_cloudfront(single, PUBLIC, client_ip="203.0.113.8", now=NOW)


def test_wildcard_resource_grants_a_prefix(cf: CloudFrontURLs) -> None:
    url = cf.sign(cf.url("videos/42/index.m3u8"), expires_at=NOW + 60, resource=f"{BASE}/videos/42/*")
    signature = url.split("?", 1)[1]
    verify_cloudfront(url, PUBLIC, now=NOW)
    verify_cloudfront(f"{BASE}/videos/42/seg-001.ts?{signature}", PUBLIC, now=NOW)  # same policy, other file
    with pytest.raises(SignatureRejected, match="resource not granted"):
        verify_cloudfront(f"{BASE}/videos/43/seg-001.ts?{signature}", PUBLIC, now=NOW)


def test_signed_cookies_grant_a_prefix(cf: CloudFrontURLs) -> None:
    cookies = cf.cookies(f"{BASE}/users/7/*", expires_at=NOW + 60, ip_range="10.0.0.0/8")
    assert set(cookies) == {"CloudFront-Policy", "CloudFront-Signature", "CloudFront-Key-Pair-Id"}
    verify_cloudfront(f"{BASE}/users/7/avatar.png", PUBLIC, cookies=cookies, client_ip="10.1.2.3", now=NOW)
    with pytest.raises(SignatureRejected, match="resource not granted"):
        verify_cloudfront(f"{BASE}/users/8/avatar.png", PUBLIC, cookies=cookies, client_ip="10.1.2.3", now=NOW)
    with pytest.raises(SignatureRejected, match="source IP"):
        verify_cloudfront(f"{BASE}/users/7/avatar.png", PUBLIC, cookies=cookies, client_ip="192.0.2.1", now=NOW)
    with pytest.raises(SignatureRejected, match="expired"):
        verify_cloudfront(f"{BASE}/users/7/avatar.png", PUBLIC, cookies=cookies, client_ip="10.1.2.3", now=NOW + 60)


def test_cloudfront_bad_settings() -> None:
    with pytest.raises(ConfigurationError):
        CloudFrontURLs(BASE, "KPAIR", b"not a key")
    with pytest.raises(ConfigurationError):
        CloudFrontURLs(BASE, "", PEM)
    with pytest.raises(ConfigurationError):
        CloudFrontURLs("ftp://x", "KPAIR", PEM)
    cf = CloudFrontURLs(BASE, "KPAIR", PEM)
    with pytest.raises(InvalidArgumentError):
        cf.sign(cf.url("a"), expires_at=NOW, ip_range="not-an-ip")
    with pytest.raises(InvalidArgumentError):
        cf.sign(cf.url("a"), expires_at=NOW, starts_at=NOW + 1)
    assert "BEGIN" not in repr(cf)


# --- BunnyCDN tokens ---------------------------------------------------------------------------

# Vectors published in BunnyWay/BunnyCDN.TokenAuthentication (e2e/vectors.json): key "SecurityKey",
# host https://token-tester.b-cdn.net, expires 1598024587.
BUNNY_HOST = "https://token-tester.b-cdn.net"
BUNNY_VECTORS = [
    ({}, "/300kb.jpg", "HS256-o10JRWlsAItyAsdKS6jJKjabHN4FrFsplDHPV1idcX4"),
    ({"countries": "CA,US"}, "/300kb.jpg", "HS256-i5s3Uv7mnrFfN5nznwU2BxhILpnipYeE18TapV0WNFM"),
    ({"countries_blocked": "RU,CN"}, "/300kb.jpg", "HS256-JS8dSuBSjSH-W2-xhdkCPC36-2rlxfDCQJjlNMPqKZQ"),
    ({"token_path": "/abc"}, "/abc/300kb.jpg", "HS256-uVZvT3SbEoVKYJyDJgbcsDmSFf73cv-uNUVaJiKWpbQ"),
    ({"user_ip": "1.2.3.4"}, "/300kb.jpg", "HS256-1-L2rISTLcujMY9UFf2tbZ41d5i-Bme1g1oTK_Z2QMLJk"),
    (
        {"user_ip": "2001:0db8:85a3:0000:0000:8a2e:0370:7334"},
        "/300kb.jpg",
        "HS256-1-Z1BaGdhTZdU4iANcyKpurFR2VgCNdqC6hlBv5x_TyaI",
    ),
]


@pytest.mark.parametrize(("options", "path", "token"), BUNNY_VECTORS)
def test_bunny_sha256_matches_bunnys_published_vectors(options: dict[str, str], path: str, token: str) -> None:
    bunny = BunnyURLs(BUNNY_HOST, "SecurityKey")
    url = bunny.sign(BUNNY_HOST + path, expires_at=1598024587, **options)
    assert dict(parse_qsl(urlsplit(url).query))["token"] == token
    verify_bunny(url, "SecurityKey", client_ip=options.get("user_ip", "127.0.0.1"), now=1598024586)


def test_bunny_in_path_token_matches_bunnys_vector() -> None:
    bunny = BunnyURLs(BUNNY_HOST, "SecurityKey", token_in_path=True)
    url = bunny.sign(BUNNY_HOST + "/abc/", expires_at=1598024587, user_ip="1.2.3.4", countries="CA,US")
    expected = "HS256-1-4lIDGI2_t3wiTmopXzB7z71wtZKTe1Ic0lDlL72iAJw"
    assert url == f"{BUNNY_HOST}/bcdn_token={expected}&token_countries=CA%2CUS&expires=1598024587/abc/"
    assert verify_bunny(url, "SecurityKey", client_ip="1.2.3.4", now=1)[0] == "/abc/"


def test_bunny_path_prefix_token_covers_the_folder_only() -> None:
    bunny = BunnyURLs("https://z.b-cdn.net", "k3y", token_path="/videos/7/")
    url = bunny.sign(bunny.url("videos/7/playlist.m3u8"), expires_at=NOW + 60)
    query = urlsplit(url).query
    verify_bunny(url, "k3y", now=NOW)
    verify_bunny(f"https://z.b-cdn.net/videos/7/seg-9.ts?{query}", "k3y", now=NOW)
    with pytest.raises(SignatureRejected, match="outside token_path"):
        verify_bunny(f"https://z.b-cdn.net/videos/8/seg-9.ts?{query}", "k3y", now=NOW)
    with pytest.raises(SignatureRejected, match="bad token"):
        verify_bunny(url.replace("%2Fvideos%2F7%2F", "%2Fvideos%2F"), "k3y", now=NOW)
    with pytest.raises(SignatureRejected, match="expired"):
        verify_bunny(url, "k3y", now=NOW + 60)
    with pytest.raises(InvalidArgumentError):
        bunny.sign(bunny.url("music/x.mp3"), expires_at=NOW + 60)


def test_bunny_md5_token_is_bunnys_basic_formula() -> None:
    bunny = BunnyURLs("https://z.b-cdn.net", "token_security_key", scheme="md5")
    url = bunny.sign(bunny.url("pathto/file.jpg"), expires_at=1456761770)
    # Bunny's documented basic token: base64(md5(key + path + expires)) with + / = mapped to - _ and dropped
    digest = hashlib.md5(b"token_security_key/pathto/file.jpg1456761770").digest()
    token = base64.b64encode(digest).decode().replace("+", "-").replace("/", "_").replace("=", "")
    assert url == f"https://z.b-cdn.net/pathto/file.jpg?token={token}&expires=1456761770"
    verify_bunny(url, "token_security_key", now=1456761769)
    with pytest.raises(SignatureRejected):
        verify_bunny(url, "other-key", now=1456761769)
    with pytest.raises(ConfigurationError):
        BunnyURLs("https://z.b-cdn.net", "k", scheme="md5", token_path="/a/")


# --- URLs through the layer --------------------------------------------------------------------


async def test_layer_urls(cf: CloudFrontURLs) -> None:
    inner = MemoryBackend(base_url="http://origin.test/files", url_secret="s" * 32)
    public = CDN(inner, urls=cf)
    private = CDN(inner, urls=cf, private=True, clock=lambda: NOW)
    assert await public.put("docs/a b.txt", b"x", "text/plain") == f"{BASE}/docs/a%20b.txt"
    assert await public.get_url("docs/a b.txt") == f"{BASE}/docs/a%20b.txt"
    signed = await private.get_url("docs/a b.txt", expires_in=120)
    assert signed.startswith(f"{BASE}/docs/a%20b.txt?Expires={NOW + 120}&")
    verify_cloudfront(signed, PUBLIC, now=NOW + 119)
    download = await private.get_url("docs/a b.txt", download=True)
    query = dict(parse_qsl(urlsplit(download).query))
    assert query["response-content-disposition"] == 'attachment; filename="a b.txt"'
    verify_cloudfront(download, PUBLIC, now=NOW)
    with pytest.raises(UnsupportedError, match="not PUT"):  # uploads are the store's: memory signs reads only
        await private.sign_url("docs/up.txt", method="PUT")
    with pytest.raises(NotFoundError):
        await private.get_url("docs/missing.txt")
    with pytest.raises(InvalidArgumentError):
        await private.sign_url("docs/a b.txt", expires_in=0)
    cookies = private.signed_cookies("docs/", expires_in=60)
    verify_cloudfront(f"{BASE}/docs/a%20b.txt", PUBLIC, cookies=cookies, now=NOW)


async def test_plain_cdns() -> None:
    inner = MemoryBackend(base_url="http://origin.test/files", url_secret="s" * 32)
    await inner.put_object("img/cat.jpg", b"jpg")
    r2 = CDN(inner, urls=PlainCDN.r2_custom_domain("cdn.example.com"))
    assert await r2.get_url("img/cat.jpg") == "https://cdn.example.com/img/cat.jpg"
    spaces = CDN(inner, urls=PlainCDN.spaces("mybucket", "nyc3"))
    assert await spaces.get_url("img/cat.jpg") == "https://mybucket.nyc3.cdn.digitaloceanspaces.com/img/cat.jpg"
    with pytest.raises(UnsupportedError, match="download_param"):
        await spaces.get_url("img/cat.jpg", download=True)
    # a private bucket behind a domain that cannot sign: the store's own signed URL
    private = CDN(inner, urls=PlainCDN.r2_custom_domain("cdn.example.com"), private=True)
    assert (await private.get_url("img/cat.jpg")).startswith("http://origin.test/files/img/cat.jpg?")
    with pytest.raises(UnsupportedError):
        r2.signed_cookies()


def test_attachment_escapes_names() -> None:
    assert attachment("a/report.pdf") == 'attachment; filename="report.pdf"'
    assert attachment('x/"é".txt') == "attachment; filename=\"___.txt\"; filename*=UTF-8''%22%C3%A9%22.txt"


# --- a verifying edge: what a browser gets -----------------------------------------------------


@pytest.fixture
def bunny_edge() -> Iterator[tuple[FakeCDN, str, str]]:
    fake = FakeCDN(MemoryBackend(), bunny_key="zone-key", download_param="download")
    with running_server(fake.edge_app) as edge, running_server(fake.api_app) as api:
        fake.url = edge
        yield fake, edge, api


async def test_bunny_edge_serves_signed_urls_and_purges_make_writes_visible(
    bunny_edge: tuple[FakeCDN, str, str],
) -> None:
    fake, edge, api = bunny_edge
    urls = BunnyURLs(edge, "zone-key", download_param="download")
    store = CDN(fake.origin, urls=urls, purger=BunnyPurger("bunny-api-key", api_url=api), private=True)
    async with httpx.AsyncClient() as client:
        url = await store.put("news/today.html", b"v1", "text/html")
        assert url.startswith(edge + "/news/today.html?token=HS256-")
        assert (await client.get(url)).content == b"v1"
        assert (await client.get(urls.url("news/today.html"))).status_code == 403  # unsigned
        await store.put("news/today.html", b"v2", "text/html")
        assert (await client.get(url)).content == b"v1"  # the edge's copy, until the purge
        await store.flush()
        assert fake.purges == [[urls.url("news/today.html")]]
        assert (await client.get(url)).content == b"v2"
        r = await client.get(await store.get_url("news/today.html", download=True))
        assert r.status_code == 200 and r.headers["content-disposition"] == 'attachment; filename="today.html"'
        await store.delete("news/today.html")
        await store.flush()
        assert (await client.get(url)).status_code == 404
        in_path = CDN(fake.origin, urls=BunnyURLs(edge, "zone-key", token_in_path=True), private=True)
        await in_path.put_object("videos/1/index.m3u8", b"#EXTM3U")
        url = await in_path.get_url("videos/1/index.m3u8")
        assert url.startswith(edge + "/bcdn_token=HS256-") and url.endswith("/videos/1/index.m3u8")
        assert (await client.get(url)).content == b"#EXTM3U"
        basic = CDN(fake.origin, urls=BunnyURLs(edge, "zone-key", scheme="md5"), private=True)
        assert (await client.get(await basic.get_url("videos/1/index.m3u8"))).content == b"#EXTM3U"
        wrong = CDN(fake.origin, urls=BunnyURLs(edge, "not-the-zone-key"), private=True)
        assert (await client.get(await wrong.get_url("videos/1/index.m3u8"))).status_code == 403
    await store.aclose()


# --- purges ------------------------------------------------------------------------------------


@pytest.fixture
def purge_api() -> Iterator[tuple[FakeCDN, str]]:
    fake = FakeCDN(MemoryBackend())
    with running_server(fake.api_app) as api:
        yield fake, api


def _cloudflare(fake: FakeCDN, api: str, token: str = "cf-token", **options: Any) -> CDN:
    purger = CloudflarePurger("zone-1", token, api_url=api + "/client/v4")
    options.setdefault("metrics", False)
    return CDN(fake.origin, urls=PlainCDN("https://cdn.example.com"), purger=purger, sleep=no_sleep, **options)


async def test_cloudflare_purges_are_coalesced_and_batched(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    store = _cloudflare(fake, api, batch_delay=60)
    for _ in range(5):
        await store.put_object("hot.json", b"{}")
    for i in range(250):
        await store.put_object(f"many/{i:03}.json", b"{}")
    await store.put_object("brand-new.json", b"{}", mode="create")  # nothing cached: no purge
    assert len(store.pending_purges) == 251
    await store.flush()
    assert [len(batch) for batch in fake.purges] == [100, 100, 51]
    purged = [url for batch in fake.purges for url in batch]
    assert purged.count("https://cdn.example.com/hot.json") == 1
    assert "https://cdn.example.com/brand-new.json" not in purged
    assert store.purged == 251 and store.purge_requests == 3 and not store.pending_purges
    await store.aclose()


async def test_purge_auth_failure_never_fails_the_write_and_is_retried_later(
    purge_api: tuple[FakeCDN, str],
) -> None:
    fake, api = purge_api
    store = _cloudflare(fake, api, token="wrong", batch_delay=60)
    await store.put_object("a.txt", b"1")
    assert await store.delete("a.txt") is True
    await store.flush()
    assert fake.rejected == 1 and fake.purges == []  # a 403 is not retried
    assert list(store.failed_purges) == ["https://cdn.example.com/a.txt"]
    assert "403" in store.failed_purges["https://cdn.example.com/a.txt"]
    assert store.purger is not None
    store.purger._token = "cf-token"  # type: ignore[attr-defined]  # the operator fixes the token
    await store.flush()
    assert fake.purges == [["https://cdn.example.com/a.txt"]] and not store.failed_purges
    await store.aclose()


async def test_purge_metrics(purge_api: tuple[FakeCDN, str]) -> None:
    from prometheus_client import CollectorRegistry

    fake, api = purge_api
    registry = CollectorRegistry()
    fake.fail_next = [503, 503]
    store = _cloudflare(fake, api, batch_delay=60, attempts=2, metrics=registry)
    await store.put_object("a.txt", b"1")
    await store.put_object("b.txt", b"1")
    labels = {"backend": "MemoryBackend"}
    assert registry.get_sample_value("unistore_cdn_purge_queue", labels) == 2
    await store.flush()
    assert registry.get_sample_value("unistore_cdn_purge_failures_total", labels) == 2
    assert registry.get_sample_value("unistore_cdn_purge_queue", labels) == 2
    await store.flush()
    assert registry.get_sample_value("unistore_cdn_purged_urls_total", labels) == 2
    assert registry.get_sample_value("unistore_cdn_purge_queue", labels) == 0
    await store.aclose()


async def test_transient_purge_failures_are_retried(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    fake.fail_next = [503, 429]
    store = _cloudflare(fake, api, batch_delay=60)
    await store.put_object("a.txt", b"1")
    await store.flush()
    assert fake.purges == [["https://cdn.example.com/a.txt"]] and not store.failed_purges
    fake.fail_next = [503] * 3
    flaky = _cloudflare(fake, api, batch_delay=60, attempts=3)
    await flaky.put_object("b.txt", b"1")
    await flaky.flush()
    assert "503" in flaky.failed_purges["https://cdn.example.com/b.txt"]
    await flaky.put_object("c.txt", b"1")
    await flaky.flush()  # the failed URL rides along with the next batch
    assert fake.purges[-1] == ["https://cdn.example.com/b.txt", "https://cdn.example.com/c.txt"]
    assert not flaky.failed_purges
    await store.aclose()
    await flaky.aclose()


async def test_purges_flush_in_the_background_and_on_close(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    fake.fail_next = [503]
    store = _cloudflare(fake, api, batch_delay=0.05, attempts=1, retry_interval=0.1)
    await store.put_object("a.txt", b"1")
    await store.put_object("b.txt", b"1")
    for _ in range(100):
        if fake.purges:
            break
        await asyncio.sleep(0.05)
    assert fake.purges == [["https://cdn.example.com/a.txt", "https://cdn.example.com/b.txt"]]  # failed, then retried
    closing = _cloudflare(fake, api, batch_delay=60)
    await closing.put_object("c.txt", b"1")
    await closing.aclose()
    assert fake.purges[-1] == ["https://cdn.example.com/c.txt"]
    await store.aclose()


async def test_bunny_purge_checks_the_access_key(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    purger = BunnyPurger("nope", api_url=api)
    with pytest.raises(PermissionDeniedError):
        await purger.purge(["https://z.b-cdn.net/a.txt"])
    assert fake.rejected == 1
    await purger.aclose()


async def test_a_huge_queue_becomes_one_wildcard(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    store = CDN(
        fake.origin,
        urls=PlainCDN("https://z.b-cdn.net"),
        purger=BunnyPurger("bunny-api-key", api_url=api),
        batch_delay=60,
        max_queue=5,
    )
    for i in range(20):
        await store.put_object(f"k{i}", b"x")
    await store.flush()
    assert fake.purges == [["https://z.b-cdn.net/*"]]  # one request, not twenty
    await store.aclose()


async def test_the_queue_survives_a_new_event_loop(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    store = _cloudflare(fake, api, batch_delay=60)
    await store.put_object("a.txt", b"1")

    def other_loop() -> None:
        async def main() -> None:
            await store.put_object("b.txt", b"1")
            await store.flush()

        asyncio.run(main())

    await asyncio.to_thread(other_loop)
    assert fake.purges == [["https://cdn.example.com/a.txt", "https://cdn.example.com/b.txt"]]
    await store.aclose()


async def test_failed_purges_outlive_the_process_in_the_outbox(purge_api: tuple[FakeCDN, str]) -> None:
    fake, api = purge_api
    origin = fake.origin
    fake.fail_next = [503] * 10
    first = _cloudflare(fake, api, batch_delay=60, attempts=2, outbox=origin, close_timeout=1)
    await first.put_object("a.txt", b"1")
    await first.put_object("dir/b.txt", b"1")
    await first.flush()
    assert len(first.failed_purges) == 2
    assert await first.list_keys() == ["a.txt", "dir/b.txt"]  # the outbox is not listed
    root = [e.prefix if isinstance(e, CommonPrefix) else e.key async for e in first.iter_entries()]
    assert root == ["a.txt", "dir/"]
    with reserved_keys():
        assert len([k async for k in origin.iter_keys(".unistore/cdn-purges/")]) == 2
    assert first._task is not None
    first._task.cancel()  # the process dies: no close, no flush
    fake.fail_next = []
    second = _cloudflare(fake, api, batch_delay=60, outbox=origin)
    await second.flush()  # a new process picks the failed purges up
    assert [sorted(batch) for batch in fake.purges] == [
        ["https://cdn.example.com/a.txt", "https://cdn.example.com/dir/b.txt"]
    ]
    assert not second.failed_purges
    with reserved_keys():
        assert [k async for k in origin.iter_keys(".unistore/cdn-purges/")] == []
    await second.aclose()


async def test_a_close_that_times_out_records_what_it_did_not_purge() -> None:
    class Hanging:
        max_batch = 10
        wildcards = False

        async def purge(self, urls: list[str], *, reference: str) -> None:
            await asyncio.sleep(3600)

        async def aclose(self) -> None:
            pass

    outbox = MemoryBackend()
    store = CDN(
        MemoryBackend(), urls=PlainCDN("https://cdn.example.com"), purger=Hanging(), outbox=outbox, close_timeout=0.1
    )
    await store.put_object("a.txt", b"1")
    await store.aclose()
    assert store.failed_purges == {"https://cdn.example.com/a.txt": "interrupted"}
    with reserved_keys():
        [entry] = [k async for k in outbox.iter_keys(".unistore/cdn-purges/")]
        assert json.loads(await outbox.get(entry))["url"] == "https://cdn.example.com/a.txt"


async def test_spaces_cdn_purges_object_paths_and_makes_writes_visible() -> None:
    fake = FakeCDN(MemoryBackend())
    with running_server(fake.edge_app) as edge, running_server(fake.api_app) as api:
        fake.url = edge
        purger = SpacesPurger(fake.spaces_endpoint, "do-token", api_url=api + "/v2")
        store = CDN(fake.origin, urls=PlainCDN(edge), purger=purger, batch_delay=60, wildcard_after=2, metrics=False)
        async with httpx.AsyncClient() as client:
            url = await store.put("docs/a b.txt", b"v1", "text/plain")
            assert (await client.get(url)).content == b"v1"
            await store.put("docs/a b.txt", b"v2", "text/plain")
            assert (await client.get(url)).content == b"v1"
            await store.flush()
            assert fake.purges == [["docs/a b.txt"]]
            assert (await client.get(url)).content == b"v2"
            for name in ("x", "y", "z"):
                await store.put_object(f"img/{name}.png", b"png")
            await store.flush()
            assert fake.purges[-1] == ["img/*"]
        wrong = CDN(
            fake.origin,
            urls=PlainCDN(edge),
            purger=SpacesPurger(fake.spaces_endpoint, "nope", api_url=api + "/v2"),
            batch_delay=60,
            metrics=False,
        )
        await wrong.put_object("a.txt", b"1")
        await wrong.flush()
        assert fake.rejected == 1 and "401" in wrong.failed_purges[f"{edge}/a.txt"]
        await store.aclose()
        await wrong.aclose()


# --- CloudFront invalidations at moto ----------------------------------------------------------


def _distribution(moto: S3Server) -> tuple[Any, str]:
    import boto3

    client = boto3.client(
        "cloudfront",
        endpoint_url=moto.endpoint,
        region_name="us-east-1",
        aws_access_key_id=moto.access_key,
        aws_secret_access_key=moto.secret_key,
    )
    origin = {
        "Id": "o1",
        "DomainName": "unistore-tests.s3.amazonaws.com",
        "S3OriginConfig": {"OriginAccessIdentity": ""},
    }
    behaviour = {
        "TargetOriginId": "o1",
        "ViewerProtocolPolicy": "https-only",
        "MinTTL": 0,
        "ForwardedValues": {"QueryString": True, "Cookies": {"Forward": "none"}},
        "TrustedSigners": {"Enabled": False, "Quantity": 0},
    }
    config = {
        "CallerReference": uuid.uuid4().hex,
        "Origins": {"Quantity": 1, "Items": [origin]},
        "DefaultCacheBehavior": behaviour,
        "Comment": "unistore tests",
        "Enabled": True,
    }
    return client, client.create_distribution(DistributionConfig=config)["Distribution"]["Id"]


def _invalidated(client: Any, distribution: str) -> list[list[str]]:
    out = []
    for item in client.list_invalidations(DistributionId=distribution)["InvalidationList"].get("Items", []):
        batch = client.get_invalidation(DistributionId=distribution, Id=item["Id"])["Invalidation"]["InvalidationBatch"]
        assert batch["Paths"]["Quantity"] == len(batch["Paths"]["Items"])
        out.append(sorted(batch["Paths"]["Items"]))
    return sorted(out)


@pytest.fixture
async def cloudfront(moto: S3Server) -> AsyncIterator[tuple[Any, str, CloudFrontInvalidator]]:
    client, distribution = _distribution(moto)
    invalidator = CloudFrontInvalidator(
        distribution, endpoint_url=moto.endpoint, access_key=moto.access_key, secret_key=moto.secret_key
    )
    yield client, distribution, invalidator
    await invalidator.aclose()


async def test_cloudfront_invalidation_batches_paths(
    cloudfront: tuple[Any, str, CloudFrontInvalidator], cf: CloudFrontURLs
) -> None:
    client, distribution, invalidator = cloudfront
    store = CDN(MemoryBackend(), urls=cf, purger=invalidator, batch_delay=60)
    for key in ("a.txt", "dir/b c.txt", "a.txt", "dir/ü.txt"):
        await store.put_object(key, b"1")
    await store.copy("a.txt", "copy.txt")
    await store.replace_metadata("a.txt", {"k": "v"})
    await store.delete("dir/b c.txt")
    await store.flush()
    assert _invalidated(client, distribution) == [["/a.txt", "/copy.txt", "/dir/%C3%BC.txt", "/dir/b%20c.txt"]]
    store.purger = None  # the fixture closes the invalidator
    await store.aclose()


async def test_a_retried_batch_keeps_its_reference() -> None:
    class Flaky:
        max_batch = 1
        wildcards = False

        def __init__(self) -> None:
            self.calls: list[tuple[str, str]] = []

        async def purge(self, urls: list[str], *, reference: str) -> None:
            self.calls.append((urls[0], reference))
            if len(self.calls) % 2:
                raise UnavailableError("lost answer")

        async def aclose(self) -> None:
            pass

    flaky = Flaky()
    store = CDN(MemoryBackend(), urls=PlainCDN("https://cdn.example.com"), purger=flaky, sleep=no_sleep, metrics=False)
    await store.put_object("a", b"1")
    await store.put_object("b", b"1")
    await store.flush()
    (a1, ra1), (a2, ra2), (b1, rb1), (b2, rb2) = flaky.calls
    assert a1 == a2 and b1 == b2 and ra1 == ra2 and rb1 == rb2 and ra1 != rb1
    await store.aclose()


async def test_cloudfront_caller_reference_is_the_batch_reference(
    cloudfront: tuple[Any, str, CloudFrontInvalidator],
) -> None:
    client, distribution, invalidator = cloudfront
    await invalidator.purge([f"{BASE}/x.txt"], reference="batch-1")
    [item] = client.list_invalidations(DistributionId=distribution)["InvalidationList"]["Items"]
    batch = client.get_invalidation(DistributionId=distribution, Id=item["Id"])["Invalidation"]["InvalidationBatch"]
    assert batch["CallerReference"] == "batch-1"


async def test_cloudfront_wildcards_collapse_a_busy_folder(
    cloudfront: tuple[Any, str, CloudFrontInvalidator], cf: CloudFrontURLs
) -> None:
    client, distribution, invalidator = cloudfront
    store = CDN(MemoryBackend(), urls=cf, purger=invalidator, batch_delay=60, wildcard_after=3)
    for i in range(10):
        await store.put_object(f"thumbs/{i}.jpg", b"1")
    await store.put_object("index.html", b"1")
    await store.flush()
    assert _invalidated(client, distribution) == [["/index.html", "/thumbs/*"]]
    assert store.purged == 2  # CloudFront bills two paths, not eleven
    store.purger = None
    await store.aclose()


async def test_cloudfront_unknown_distribution_is_recorded(moto: S3Server, cf: CloudFrontURLs) -> None:
    invalidator = CloudFrontInvalidator(
        "ENOSUCHDIST", endpoint_url=moto.endpoint, access_key=moto.access_key, secret_key=moto.secret_key
    )
    store = CDN(MemoryBackend(), urls=cf, purger=invalidator, batch_delay=60, sleep=no_sleep)
    await store.put_object("a.txt", b"1")
    await store.flush()
    assert "NoSuchDistribution" in store.failed_purges[f"{BASE}/a.txt"]
    assert await store.get("a.txt") == b"1"
    await store.aclose()


def test_layer_settings_are_checked(cf: CloudFrontURLs) -> None:
    with pytest.raises(ConfigurationError):
        CDN(MemoryBackend(), urls="https://cdn.example.com")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        CDN(MemoryBackend(), urls=cf, wildcard_after=0)
    with pytest.raises(ConfigurationError, match="below Compress"):
        CDN(Compress(MemoryBackend(), metrics=False), urls=cf)
    with pytest.raises(ConfigurationError, match="below Compress"):
        CDN(Retry(Encrypt(MemoryBackend(), LocalKeyring({"k": bytes(32)}))), urls=cf)
