"""CDN URLs: a signed URL opens one object for its time only; keys cannot widen a purge or a
grant; credentials never show in a repr or an error."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from unistore import MemoryBackend
from unistore.cdn import BunnyPurger, BunnyURLs, CloudflarePurger, CloudFrontURLs, PlainCDN, SpacesPurger
from unistore.layers import CDN
from unistore.testing import running_server
from unistore.testing._cdn_fakes import FakeCDN

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
PEM = KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


@pytest.fixture
def edge() -> Iterator[tuple[FakeCDN, CDN]]:
    fake = FakeCDN(MemoryBackend(), public_keys={"KSEC": KEY.public_key()})
    with running_server(fake.edge_app) as url:
        fake.url = url
        yield fake, CDN(fake.origin, urls=CloudFrontURLs(url, "KSEC", PEM), private=True)


async def test_forged_and_replayed_cloudfront_urls_are_refused(edge: tuple[FakeCDN, CDN]) -> None:
    _, store = edge
    await store.put_object("private/a.txt", b"secret a")
    await store.put_object("private/b.txt", b"secret b")
    url = await store.get_url("private/a.txt", expires_in=300)
    query = dict(parse_qsl(urlsplit(url).query))
    async with httpx.AsyncClient() as client:
        assert (await client.get(url)).content == b"secret a"
        attempts = [
            url.replace("/private/a.txt", "/private/b.txt"),  # another object, same signature
            url.replace(f"Expires={query['Expires']}", f"Expires={int(query['Expires']) + 10**6}"),  # longer life
            url.split("?")[0],  # no signature at all
            url.split("?")[0] + f"?Expires={query['Expires']}&Key-Pair-Id=KSEC",  # signature dropped
            url.replace("Key-Pair-Id=KSEC", "Key-Pair-Id=KOTHER"),
            url.replace("/private/a.txt", "/private/a.txt/../b.txt"),
            url + "&response-content-disposition=inline",  # a parameter the signature does not cover
        ]
        for forged in attempts:
            assert (await client.get(forged)).status_code == 403, forged
        # a signature for one download disposition does not serve another
        download = await store.get_url("private/a.txt", download=True)
        swapped = download.replace("attachment%3B", "inline%3B")
        assert (await client.get(swapped)).status_code == 403


async def test_a_wildcard_grant_does_not_escape_its_folder(edge: tuple[FakeCDN, CDN]) -> None:
    fake, store = edge
    await store.put_object("users/7/avatar.png", b"7")
    await store.put_object("users/70/avatar.png", b"70")
    await store.put_object("users/7x.png", b"x")
    cookies = store.signed_cookies("users/7/", expires_in=300)
    async with httpx.AsyncClient(cookies=cookies) as client:
        assert (await client.get(f"{fake.url}/users/7/avatar.png")).content == b"7"
        assert (await client.get(f"{fake.url}/users/70/avatar.png")).status_code == 403
        assert (await client.get(f"{fake.url}/users/7x.png")).status_code == 403


async def test_keys_with_wildcards_purge_only_themselves() -> None:
    class Recorder:
        max_batch = 100
        wildcards = True

        def __init__(self) -> None:
            self.urls: list[str] = []

        async def purge(self, urls: list[str], *, reference: str) -> None:
            self.urls.extend(urls)

        async def aclose(self) -> None:
            pass

    recorder = Recorder()
    store = CDN(MemoryBackend(), urls=PlainCDN("https://cdn.example.com"), purger=recorder, batch_delay=60)
    await store.put_object("*", b"x")
    await store.put_object("img/*", b"x")
    await store.put_object("q?x=1#frag", b"x")
    await store.flush()
    assert recorder.urls == [
        "https://cdn.example.com/%2A",
        "https://cdn.example.com/img/%2A",
        "https://cdn.example.com/q%3Fx%3D1%23frag",
    ]
    assert not any(url.endswith("*") for url in recorder.urls)


async def test_credentials_never_show(caplog: pytest.LogCaptureFixture) -> None:
    urls = [
        CloudFrontURLs("https://d1.cloudfront.net", "KSEC", PEM),
        BunnyURLs("https://z.b-cdn.net", "zone-secret-key"),
    ]
    purgers = [
        BunnyPurger("bunny-secret-api-key"),
        CloudflarePurger("zone", "cf-secret-token"),
        SpacesPurger("endpoint", "do-secret-token"),
    ]
    shown = " ".join(repr(x) for x in [*urls, *purgers])
    for secret in ("PRIVATE KEY", "zone-secret-key", "bunny-secret-api-key", "cf-secret-token", "do-secret-token"):
        assert secret not in shown
    fake = FakeCDN(MemoryBackend())
    with running_server(fake.api_app) as api:
        store = CDN(
            MemoryBackend(),
            urls=PlainCDN("https://cdn.example.com"),
            purger=CloudflarePurger("zone-1", "cf-secret-token-wrong", api_url=api + "/client/v4"),
            batch_delay=60,
        )
        with caplog.at_level(logging.WARNING, logger="unistore.layers.cdn"):
            await store.put_object("a.txt", b"x")
            await store.flush()
        assert store.failed_purges and "cf-secret-token" not in str(store.failed_purges)
        assert "cf-secret-token" not in caplog.text
        await store.aclose()
