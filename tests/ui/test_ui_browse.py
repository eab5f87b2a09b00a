"""The web UI in Chromium: sign-in, browsing, sorting, actions, previews, permissions, layouts."""

from __future__ import annotations

import asyncio
import re
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from ui_support import SECRET, UiService

from unistore import MemoryBackend, StorageBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import free_port, running_server

pytestmark = pytest.mark.xdist_group("chromium")

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"


def plant(store: StorageBackend, objects: dict[str, bytes | tuple[bytes, str]]) -> None:
    """Put objects straight into the store (not through the UI)."""

    async def put_all() -> None:
        for key, value in objects.items():
            body, ctype = value if isinstance(value, tuple) else (value, "application/octet-stream")
            await store.put_object(key, body, content_type=ctype)

    with ThreadPoolExecutor(1) as pool:  # Playwright's sync API owns this thread's event loop
        pool.submit(asyncio.run, put_all()).result()


@pytest.fixture
def served() -> Iterator[Callable[..., UiService]]:
    """Services whose MemoryBackend signs URLs for their own ``/files`` route (share and download work)."""
    stack: list[Any] = []

    def start(objects: dict[str, bytes | tuple[bytes, str]] | None = None) -> UiService:
        port = free_port()
        store = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret="ui-files-secret")
        plant(store, objects or {})
        server = running_server(create_app(store, settings=ServiceSettings(secret=SECRET.encode())), port)
        url = server.__enter__()
        stack.append(server)
        return UiService(url, store)

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)


def signed_in(new_page: Callable[..., Any], svc: UiService, token: str | None = None, **size: int) -> Page:
    page: Page = new_page(**size)
    page.goto(svc.link(token or svc.token()))
    expect(page.locator("#app")).to_be_visible()
    return page


def rows(page: Page) -> Any:
    return page.locator("#listing tbody tr")


def names(page: Page) -> list[str]:
    return [n.strip() for n in page.locator("#listing tbody button.name").all_inner_texts()]


def only_unauthorized(errors: list[str]) -> bool:
    """Nothing logged but the browser's own line for the 401 of probing the service without a valid token."""
    return all(re.fullmatch(r"Failed to load resource: .* 401 \(Unauthorized\)", e) for e in errors)


SAMPLE = {
    "docs/readme.txt": (b"hello world\n", "text/plain"),
    "docs/big.bin": (b"x" * 5000, "application/octet-stream"),
    "docs/data.json": (b'{"b": 1, "a": [1, 2]}', "application/json"),
    "docs/sub/inner.txt": (b"inner", "text/plain"),
    "top.txt": (b"top", "text/plain"),
}


def test_sign_in_by_pasting_a_token(ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]) -> None:
    svc = ui_service()
    plant(svc.backend, {"hello.txt": b"hi"})
    page: Page = new_page()
    page.goto(svc.url + "/ui/")
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_have_text("")
    page.get_by_label("Token").fill(svc.token(["read"]))
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("button", name="hello.txt")).to_be_visible()
    assert page.evaluate("document.cookie") == ""
    assert page.evaluate("sessionStorage.getItem('unistore.token')")
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('unistore.token')") is None
    assert only_unauthorized(page_errors)


def test_sign_in_by_link_drops_the_token_from_the_address(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = ui_service()
    page = signed_in(new_page, svc)
    assert "token" not in page.url
    expect(page.locator("#who")).to_contain_text("ui-test")
    expect(page.get_by_text("This folder is empty.")).to_be_visible()
    assert page_errors == []


def test_a_bad_token_shows_the_sign_in_with_a_message(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = ui_service()
    page: Page = new_page()
    page.goto(svc.link("not-a-token"))
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("not valid or has expired")
    expect(page.locator("#app")).to_be_hidden()
    assert only_unauthorized(page_errors)
