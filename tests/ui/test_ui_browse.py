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
        store = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files", url_secret="ui-files-secret-0123456789")
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


def expect_names(page: Page, expected: list[str]) -> None:
    expect(page.locator("#listing tbody button.name")).to_have_text(expected)


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


def test_breadcrumbs_folders_and_details(served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]) -> None:
    svc = served(SAMPLE)
    page = signed_in(new_page, svc)
    expect_names(page, ["docs/", "top.txt"])
    page.get_by_role("button", name="docs/").click()
    expect(page.get_by_role("navigation", name="Folder path").get_by_role("link", name="docs")).to_have_attribute("aria-current", "page")
    expect_names(page, ["sub/", "big.bin", "data.json", "readme.txt"])
    expect(page.get_by_role("row", name=re.compile("big.bin"))).to_contain_text("4.9 KiB")
    page.get_by_role("button", name="sub/").click()
    expect_names(page, ["inner.txt"])
    crumbs = page.get_by_role("navigation", name="Folder path")
    expect(crumbs.get_by_role("link")).to_have_text(["Home", "docs", "sub"])
    crumbs.get_by_role("link", name="docs").click()
    expect(page.get_by_role("button", name="sub/")).to_be_visible()
    page.go_back()
    expect(page.get_by_role("button", name="inner.txt")).to_be_visible()
    crumbs.get_by_role("link", name="Home").click()
    expect(page.get_by_role("button", name="top.txt")).to_be_visible()
    # a JSON file: pretty-printed text, and its details
    page.get_by_role("button", name="docs/").click()
    page.get_by_role("button", name="data.json").click()
    details = page.get_by_role("complementary", name="data.json")
    expect(details.get_by_label("Contents of data.json")).to_have_text('{\n  "b": 1,\n  "a": [\n    1,\n    2\n  ]\n}')
    expect(details).to_contain_text("application/json")
    page.screenshot(path=str(DOCS_IMG / "web-ui.png"))
    details.get_by_role("button", name="Close details").click()
    expect(details).to_be_hidden()
    assert page_errors == []


def test_a_2500_entry_folder_pages_in_and_stays_responsive(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    store = MemoryBackend()
    total = 2500
    plant(store, {f"many/f{i:05d}.txt": b"x" * (i % 97) for i in range(total - 10)})
    plant(store, {f"many/dir{i}/a.txt": b"a" for i in range(10)})
    svc = ui_service(store)
    page: Page = new_page()
    # long tasks on the main thread while pages arrive (the page must never freeze)
    page.add_init_script(
        "window.__long = []; new PerformanceObserver((l) => { for (const e of l.getEntries()) window.__long.push(e.duration); })"
        ".observe({ type: 'longtask', buffered: true });"
    )
    page.goto(svc.link(svc.token(["read"])).replace("#", "#p=many%2F&"))
    count = page.locator(".more .count")
    expect(count).to_have_text("1,000 loaded, more available")
    # only the rows in view are in the document
    assert rows(page).count() < 100
    page.get_by_role("button", name="Load more").click()
    expect(count).to_have_text("2,000 loaded, more available")
    # scrolling to the end of what is loaded fetches the next page (infinite scroll), and every entry is reachable
    seen: list[str] = []
    for _ in range(400):
        batch = page.evaluate(SCROLL_AND_READ)
        seen += batch["names"]
        if batch["atEnd"] and batch["count"] == "2,500 items":
            break
    expect(count).to_have_text("2,500 items")
    expect(page.get_by_role("button", name="Load more")).to_be_hidden()
    assert sorted(set(seen)) == sorted([f"dir{i}/" for i in range(10)] + [f"f{i:05d}.txt" for i in range(total - 10)])
    assert page.locator("table.files").get_attribute("aria-rowcount") == str(total + 1)
    # the keyboard reaches the ends of the list
    page.locator("#listing .scroller").evaluate("(s) => { s.scrollTop = 0; }")
    page.get_by_role("button", name="dir0/").focus()
    page.keyboard.press("End")
    expect(page.get_by_role("button", name=f"f{total - 11:05d}.txt")).to_be_focused()
    page.keyboard.press("ArrowUp")
    expect(page.get_by_role("button", name=f"f{total - 12:05d}.txt")).to_be_focused()
    page.keyboard.press("Home")
    expect(page.get_by_role("button", name="dir0/")).to_be_focused()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("button", name="dir1/")).to_be_focused()
    # sorting every loaded row stays fast
    started = time.monotonic()
    page.get_by_role("button", name="Size", exact=True).click()
    expect(page.locator("th.col-size")).to_have_attribute("aria-sort", "ascending")
    sort_seconds = time.monotonic() - started
    longest = max(page.evaluate("window.__long"), default=0)
    assert sort_seconds < 2 and longest < 1000, (sort_seconds, longest)
    assert page_errors == []


SCROLL_AND_READ = """async () => {
  const s = document.querySelector('#listing .scroller');
  const read = () => [...document.querySelectorAll('#listing tbody button.name')].map((b) => b.textContent);
  const count = document.querySelector('#listing .more .count').textContent;
  const names = read();
  s.scrollTop += s.clientHeight - 40;
  await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
  return { names: names.concat(read()), count, atEnd: s.scrollTop + s.clientHeight >= s.scrollHeight - 2 };
}"""


def test_sort_by_name_size_and_date(ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]) -> None:
    svc = ui_service()
    plant(svc.backend, {"b.txt": b"12345", "a.txt": b"123"})
    time.sleep(0.02)
    plant(svc.backend, {"c.txt": b"1"})
    page = signed_in(new_page, svc)
    expect_names(page, ["a.txt", "b.txt", "c.txt"])
    page.get_by_role("button", name="Name", exact=True).click()
    expect(page.locator("th.col-name")).to_have_attribute("aria-sort", "descending")
    expect_names(page, ["c.txt", "b.txt", "a.txt"])
    page.get_by_role("button", name="Size", exact=True).click()
    expect_names(page, ["c.txt", "a.txt", "b.txt"])
    page.get_by_role("button", name="Size", exact=True).click()
    expect_names(page, ["b.txt", "a.txt", "c.txt"])
    page.get_by_role("button", name="Modified", exact=True).click()
    assert names(page)[-1] == "c.txt"
    assert page_errors == []
