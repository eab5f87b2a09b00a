"""The service's API docs (/docs) work offline: every asset comes from the service itself."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from unistore import MemoryBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server


@pytest.fixture(scope="module")
def service_url() -> Iterator[str]:
    settings = ServiceSettings(secret=b"docs-secret-0123456789abcdef")
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        yield url


def test_docs_page_loads_its_assets_from_the_service(service_url: str) -> None:
    page = httpx.get(f"{service_url}/docs")
    assert page.status_code == 200 and "swagger-ui" in page.text
    urls = re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", page.text) + re.findall(r"url: ?'([^']+)'", page.text)
    assert urls and all(not urlsplit(u).netloc for u in urls), urls  # nothing from another host (no CDN)
    for url in urls:
        assert httpx.get(service_url + url).status_code == 200, url


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian chromium is not installed (make test-tools)")
def test_docs_render_in_chromium_with_every_other_host_blocked(service_url: str) -> None:
    from playwright.sync_api import sync_playwright

    host = urlsplit(service_url).netloc
    outside: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"],
        )
        try:
            page = browser.new_page()

            def route(r: object) -> None:
                request = r.request  # type: ignore[attr-defined]
                if urlsplit(request.url).netloc != host:
                    outside.append(request.url)
                    r.abort()  # type: ignore[attr-defined]
                else:
                    r.continue_()  # type: ignore[attr-defined]

            page.route("**/*", route)
            page.goto(f"{service_url}/docs")
            page.wait_for_selector(".opblock", timeout=15_000)  # operations rendered from /openapi.json
            assert page.locator(".opblock").count() > 5
        finally:
            browser.close()
    assert outside == []
