"""The web UI in Chromium: sign-in, browsing, sorting, actions, previews, permissions, layouts."""

from __future__ import annotations

import asyncio
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Page, expect
from ui_support import SECRET, UiService

from unistore import LocalBackend, MemoryBackend, StorageBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import free_port, running_server

pytestmark = pytest.mark.xdist_group("chromium")

DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
# `UNISTORE_DOCS_SCREENSHOTS=1 pytest tests/ui` rewrites docs/img/web-ui.png; other runs leave the tree alone.
WRITE_DOCS_IMG = os.environ.get("UNISTORE_DOCS_SCREENSHOTS") == "1"


@pytest.fixture(autouse=True)
def patient_expect() -> Iterator[None]:
    """A busy two-core machine is slow to paint, not wrong: assertions wait up to 10 s here."""
    expect.set_options(timeout=10_000)
    yield
    expect.set_options(timeout=5_000)  # Playwright's default, for the other modules


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


def test_sign_in_by_pasting_a_token(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
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


def test_a_service_without_auth_opens_straight_away(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = ui_service(auth=False)
    plant(svc.backend, {"open.txt": b"o"})
    page: Page = new_page()
    page.goto(svc.url + "/ui/")
    expect_names(page, ["open.txt"])
    expect(page.locator("#who")).to_have_text("auth off")
    expect(page.get_by_role("button", name="Sign out")).to_be_hidden()
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


def test_breadcrumbs_folders_and_details(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served(SAMPLE)
    page = signed_in(new_page, svc)
    expect_names(page, ["docs/", "top.txt"])
    page.get_by_role("button", name="docs/").click()
    expect(page.get_by_role("navigation", name="Folder path").get_by_role("link", name="docs")).to_have_attribute(
        "aria-current", "page"
    )
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
    expect(page.locator("#listing tr[aria-current]")).to_have_attribute("data-key", "docs/data.json")
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
        "window.__long = []; new PerformanceObserver((l) => {"
        " for (const e of l.getEntries()) window.__long.push(e.duration); })"
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
    # scrolling a little keeps the focus on its row; scrolling it out of the page hands it to the list
    scroller = page.locator("#listing .scroller")
    page.get_by_role("button", name="dir5/").focus()
    scroller.evaluate("async (s) => { s.scrollTop = 540; await new Promise((r) => requestAnimationFrame(r)); }")
    assert page.locator("#listing tbody tr").first.get_attribute("class") == "spacer"  # rows 0-3 left the page
    expect(page.get_by_role("button", name="dir5/")).to_be_focused()
    scroller.evaluate("async (s) => { s.scrollTop = 20000; await new Promise((r) => requestAnimationFrame(r)); }")
    expect(scroller).to_be_focused()
    page.keyboard.press("ArrowDown")  # back to the row that had the focus
    expect(page.get_by_role("button", name="dir5/")).to_be_focused()
    page.keyboard.press("Home")
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("button", name="dir1/")).to_be_focused()
    # sorting every loaded row stays fast
    started = time.monotonic()
    page.get_by_role("button", name="Size", exact=True).click()
    expect(page.locator("th.col-size")).to_have_attribute("aria-sort", "ascending")
    sort_seconds = time.monotonic() - started
    longest = max(page.evaluate("window.__long"), default=0)
    assert sort_seconds < 3 and longest < 1500, (sort_seconds, longest)
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


def test_a_failed_page_stops_the_infinite_scroll_until_asked(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    store = MemoryBackend()
    plant(store, {f"p/{i:04d}": b"" for i in range(1500)})
    svc = ui_service(store)
    page: Page = new_page()
    failed: list[str] = []

    def refuse(route: Any) -> None:
        failed.append(route.request.url)
        route.abort()

    page.route(re.compile(r".*/v1/objects\?.*cursor=.*"), refuse)
    page.goto(svc.link(svc.token()).replace("#", "#p=p%2F&"))
    count = page.locator(".more .count")
    expect(count).to_have_text("1,000 loaded, more available")
    page.locator("#listing .scroller").evaluate("(s) => { s.scrollTop = s.scrollHeight; }")
    expect(page.locator("#status")).to_contain_text("cannot be reached")
    page.wait_for_timeout(500)
    assert len(failed) == 1  # one failed page, not a storm of retries
    page.unroute(re.compile(r".*/v1/objects\?.*cursor=.*"))
    page.get_by_role("button", name="Load more").click()
    expect(count).to_have_text("1,500 items")
    assert [e for e in page_errors if "ERR_FAILED" not in e] == []


def test_sort_by_name_size_and_date(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
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


def test_sorting_a_large_folder_by_size_orders_the_whole_folder(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    store = MemoryBackend()
    total = 2500  # three pages: the largest objects are in the last page by name
    plant(store, {f"big/f{i:05d}.bin": b"x" * i for i in range(total)})
    svc = ui_service(store)
    page: Page = new_page()
    page.goto(svc.link(svc.token(["read"])).replace("#", "#p=big%2F&"))
    count = page.locator(".more .count")
    expect(count).to_have_text("1,000 loaded, more available")
    page.get_by_role("button", name="Size", exact=True).click()
    expect(count).to_have_text("2,500 items")  # the rest of the folder was fetched to sort it
    expect(page.locator("#listing tbody button.name").first).to_have_text("f00000.bin")
    page.get_by_role("button", name="Size", exact=True).click()
    expect(page.locator("th.col-size")).to_have_attribute("aria-sort", "descending")
    expect(page.locator("#listing tbody button.name").first).to_have_text(f"f{total - 1:05d}.bin")
    assert page_errors == []


def test_delete_one_after_confirming_and_several_at_once(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served(
        {f"d/{n}.txt": (n.encode(), "text/plain") for n in ("a", "b", "c", "d")}
        | {"d/sub/x.txt": b"x", "d/sub/y/z.txt": b"z"}
    )
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="d/").click()
    expect_names(page, ["sub/", "a.txt", "b.txt", "c.txt", "d.txt"])
    # one file, from its details panel; cancelling first keeps it
    page.get_by_role("button", name="a.txt").click()
    page.get_by_role("complementary").get_by_role("button", name="Delete").click()
    dialog = page.get_by_role("dialog", name="Delete")
    expect(dialog).to_contain_text("Delete “a.txt”? This cannot be undone.")
    dialog.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    assert http_get(svc, "d/a.txt").status_code == 200
    page.get_by_role("complementary").get_by_role("button", name="Delete").click()
    dialog.get_by_role("button", name="Delete").click()
    expect_names(page, ["sub/", "b.txt", "c.txt", "d.txt"])
    expect(page.get_by_role("status").first).to_contain_text("Deleted “a.txt”.")
    assert http_get(svc, "d/a.txt").status_code == 404
    # several: two files and a folder with everything in it
    delete_selected = page.get_by_role("button", name="Delete selected")
    expect(delete_selected).to_be_disabled()
    page.get_by_role("checkbox", name="Select b.txt").check()
    page.get_by_role("checkbox", name="Select d.txt").check()
    page.get_by_role("checkbox", name="Select sub/").check()
    expect(delete_selected).to_have_text("Delete selected (3)")
    delete_selected.click()
    expect(dialog).to_contain_text("Delete 3 items and everything inside the folder?")
    dialog.get_by_role("button", name="Delete").click()
    expect_names(page, ["c.txt"])
    assert [
        http_get(svc, k).status_code for k in ("d/b.txt", "d/d.txt", "d/sub/x.txt", "d/sub/y/z.txt", "d/c.txt")
    ] == [404, 404, 404, 404, 200]
    # the keyboard: Delete on the focused row asks too
    page.get_by_role("button", name="c.txt").focus()
    page.keyboard.press("Delete")
    expect(dialog).to_contain_text("“c.txt”")
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()
    assert page_errors == []


def http_get(svc: UiService, key: str) -> httpx.Response:
    return httpx.get(f"{svc.url}/v1/objects/{key}", headers={"Authorization": "Bearer " + svc.token()})


def test_rename_and_move_are_conditional_copies(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served({"r/old.txt": (b"payload", "text/plain"), "r/taken.txt": (b"other", "text/plain")})
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="r/").click()
    page.get_by_role("button", name="old.txt").click()
    page.get_by_role("button", name="Rename or move").click()
    dialog = page.get_by_role("dialog", name=re.compile("^Rename or move"))
    field = dialog.get_by_label("New name or path")
    expect(field).to_have_value("r/old.txt")
    assert field.evaluate("(f) => [f.selectionStart, f.selectionEnd]") == [2, 5]  # "old": type over it
    # onto an existing name: refused, nothing lost
    field.fill("r/taken.txt")
    dialog.get_by_role("button", name="Rename").click()
    expect(page.locator("#status")).to_contain_text("Not renamed")
    assert http_get(svc, "r/taken.txt").content == b"other" and http_get(svc, "r/old.txt").content == b"payload"
    # a plain rename
    page.get_by_role("button", name="Rename or move").click()
    field.fill("r/new.txt")
    field.press("Enter")
    expect_names(page, ["new.txt", "taken.txt"])
    expect(page.locator("#status")).to_have_text("Renamed to new.txt")
    assert http_get(svc, "r/new.txt").content == b"payload" and http_get(svc, "r/old.txt").status_code == 404
    # a move to another folder; and a stale etag (changed behind the page's back) is refused
    page.get_by_role("button", name="new.txt").click()
    httpx.put(f"{svc.url}/v1/objects/r/new.txt", content=b"changed", headers={"Authorization": "Bearer " + svc.token()})
    page.get_by_role("button", name="Rename or move").click()
    field.fill("elsewhere/new.txt")
    dialog.get_by_role("button", name="Rename").click()
    expect(page.locator("#status")).to_contain_text("Not renamed")
    assert http_get(svc, "r/new.txt").content == b"changed" and http_get(svc, "elsewhere/new.txt").status_code == 404
    page.get_by_role("button", name="Refresh").click()
    page.get_by_role("button", name="new.txt").click()
    page.get_by_role("button", name="Rename or move").click()
    field.fill("elsewhere/new.txt")
    dialog.get_by_role("button", name="Rename").click()
    expect(page.locator("#status")).to_have_text("Moved to elsewhere/new.txt")
    expect_names(page, ["taken.txt"])
    assert http_get(svc, "elsewhere/new.txt").content == b"changed"
    assert page_errors == [] or only_failed_requests(page_errors, 412)


def only_failed_requests(errors: list[str], status: int) -> bool:
    return all(f"status of {status}" in e for e in errors)


def test_create_a_folder(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = ui_service()
    page = signed_in(new_page, svc)
    expect(page.get_by_text("This folder is empty.")).to_be_visible()
    page.get_by_role("button", name="New folder").click()
    dialog = page.get_by_role("dialog", name="New folder")
    dialog.get_by_label("Folder name").fill("reports")
    dialog.get_by_role("button", name="Create").click()
    expect_names(page, ["reports/"])
    page.get_by_role("button", name="reports/").click()
    # the marker object is there but never listed
    expect(page.get_by_text("This folder is empty.")).to_be_visible()
    assert http_get(svc, "reports/.keep").status_code == 200
    assert page_errors == []


def test_folders_on_a_local_directory(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str], tmp_path: Path
) -> None:
    store = LocalBackend(base_path=str(tmp_path / "files"), fsync=False)
    plant(store, {"old/a.txt": (b"a", "text/plain"), "old/deep/b.txt": b"b"})
    svc = ui_service(store)
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="New folder").click()
    page.get_by_role("dialog", name="New folder").get_by_label("Folder name").fill("made/inner")
    page.keyboard.press("Enter")
    expect_names(page, ["made/", "old/"])
    assert (tmp_path / "files" / "made" / "inner").is_dir()
    page.get_by_role("button", name="made/").click()
    expect_names(page, ["inner/"])
    page.get_by_role("navigation", name="Folder path").get_by_role("link", name="Home").click()
    page.get_by_role("checkbox", name="Select old/").check()
    page.get_by_role("button", name="Delete selected").click()
    page.get_by_role("dialog", name="Delete").get_by_role("button", name="Delete").click()
    expect_names(page, ["made/"])
    assert not list((tmp_path / "files" / "old").rglob("*.txt"))
    assert page_errors == []


def test_an_s3_store_previews_shares_downloads_and_renames(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str], seaweed: Any
) -> None:
    """SeaweedFS behind the service: its signed URLs are on another origin, which the page's policy allows."""
    store = seaweed.backend(prefix=f"ui-{uuid.uuid4().hex[:8]}/")
    body = b"name,size\n" + b"".join(b"row%05d,%05d\n" % (i, i) for i in range(8000))  # 117 KiB
    plant(store, {"s3/table.csv": (body, "text/csv"), "s3/keep.txt": (b"k", "text/plain")})
    svc = ui_service(store)
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="s3/").click()
    page.get_by_role("button", name="table.csv").click()
    # the first 64 KiB only, by a Range request
    expect(page.get_by_label("Contents of table.csv")).to_have_text(body[: 64 * 1024].decode())
    expect(page.get_by_role("complementary")).to_contain_text("Showing the first 64 KiB of 117 KiB.")
    page.get_by_role("button", name="Share").click()
    link = page.get_by_role("textbox", name="Share link")
    expect(link).to_have_value(re.compile(r"^http://"))
    url = link.input_value()
    assert not url.startswith(svc.url)  # straight from the store
    page.keyboard.press("Escape")
    assert new_page().request.get(url).body() == body
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    assert Path(info.value.path()).read_bytes() == body
    page.get_by_role("button", name="Rename or move").click()
    page.get_by_role("dialog").get_by_label("New name or path").fill("s3/renamed.csv")
    page.keyboard.press("Enter")
    expect_names(page, ["keep.txt", "renamed.csv"])
    assert page_errors == []


def test_share_link_opens_without_a_token_and_download_is_an_attachment(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    body = bytes(range(256)) * 40
    svc = served({"s/report.bin": (body, "application/octet-stream")})
    page = signed_in(new_page, svc, svc.token(expires_in=7 * 86400))
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    page.get_by_role("button", name="s/").click()
    page.get_by_role("button", name="report.bin").click()
    page.get_by_role("button", name="Share").click()
    dialog = page.get_by_role("dialog", name="Share report.bin")
    dialog.get_by_label("Link expires after").select_option(label="1 day")
    expect(dialog.get_by_role("status")).to_contain_text("for 24 h")
    link = dialog.get_by_role("textbox", name="Share link").input_value()
    assert link.startswith(svc.url + "/files/s/report.bin?")
    dialog.get_by_role("button", name="Copy link").click()
    expect(dialog.get_by_role("status")).to_have_text("Link copied.")
    assert page.evaluate("navigator.clipboard.readText()") == link
    dialog.get_by_role("button", name="Close").click()
    # a fresh browser context: no token, no session storage
    stranger = new_page()
    response = stranger.request.get(link)
    assert response.status == 200 and response.body() == body
    # download: a signed attachment URL
    with page.expect_download() as info:
        page.get_by_role("button", name="Download").click()
    download = info.value
    assert download.suggested_filename == "report.bin"
    assert Path(download.path()).read_bytes() == body
    assert page_errors == []


def test_stored_html_previews_as_text_and_never_runs(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    evil = (
        b"<html><body><h1>hi</h1><script>alert('x'); window.pwned = 1; document.title = 'pwned'</script>"
        b'<img src=x onerror="window.pwned = 2"></body></html>'
    )
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" onload="window.pwned = 3"><script>window.pwned = 4</script></svg>'
    svc = served({"x/evil.html": (evil, "text/html"), "x/evil.svg": (svg, "image/svg+xml")})
    page = signed_in(new_page, svc)
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.get_by_role("button", name="x/").click()
    page.get_by_role("button", name="evil.html").click()
    expect(page.get_by_label("Contents of evil.html")).to_have_text(evil.decode())
    page.get_by_role("button", name="evil.svg").click()
    expect(page.get_by_label("Contents of evil.svg")).to_have_text(svg.decode())
    page.wait_for_timeout(300)
    assert dialogs == []
    assert page.evaluate("window.pwned") is None and page.title() != "pwned"
    assert page.locator("#details h1, #details svg, #details iframe, #details script").count() == 0
    assert page_errors == []


def test_images_preview_from_a_blob_and_metadata_shows(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    png = bytes.fromhex(
        "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
        "1f15c4890000000d49444154789c6360f8cfc0f01f0005000201a5f1f5b40000000049454e44ae426082"
    )
    svc = served({"i/dot.png": (png, "image/png")})

    async def tag() -> None:
        await svc.backend.put_object(
            "i/tagged.txt",
            b"t",
            content_type="text/plain",
            metadata={"schema_version": "3", "x-storage-key-id": "key-2026", "owner": "ana"},
        )

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, tag()).result()
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="i/").click()
    page.get_by_role("button", name="dot.png").click()
    image = page.get_by_role("img", name="Preview of dot.png")
    expect(image).to_have_attribute("src", re.compile(r"^blob:"))
    assert image.evaluate("(img) => img.decode().then(() => img.naturalWidth)") == 1
    page.get_by_role("button", name="tagged.txt").click()
    details = page.get_by_role("complementary", name="tagged.txt")
    meta = details.locator("dl.meta")
    expect(meta).to_contain_text("Schema version3")
    expect(meta).to_contain_text("Encryption key idkey-2026")
    expect(meta).to_contain_text("ownerana")
    assert page_errors == []


def test_a_read_only_token_is_offered_nothing_it_may_not_do(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served({"ro/a.txt": (b"a", "text/plain")})
    page = signed_in(new_page, svc, svc.token(["read"]))
    page.get_by_role("button", name="ro/").click()
    expect_names(page, ["a.txt"])
    for name in ("New folder", "Delete selected", "Upload"):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.locator("#uploads")).to_be_hidden()
    expect(page.get_by_role("checkbox")).to_have_count(0)
    page.get_by_role("button", name="a.txt").click()
    details = page.get_by_role("complementary", name="a.txt")
    expect(details.get_by_role("button", name="Download")).to_be_visible()
    expect(details.get_by_role("button", name="Share")).to_be_visible()
    expect(details.get_by_role("button", name="Delete")).to_have_count(0)
    expect(details.get_by_role("button", name="Rename or move")).to_have_count(0)
    page.keyboard.press("Escape")
    page.get_by_role("button", name="a.txt").press("Delete")
    expect(page.get_by_role("dialog")).to_have_count(0)
    assert page_errors == []


def test_keyboard_filter_and_a_scoped_token(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = ui_service()
    plant(
        svc.backend,
        {"team/alpha.txt": (b"A", "text/plain"), "team/beta.txt": b"B", "team/alps/x.txt": b"x", "other/no.txt": b"n"},
    )
    page = signed_in(new_page, svc, svc.token(prefix="team/"))
    crumbs = page.get_by_role("navigation", name="Folder path")
    expect(crumbs.get_by_role("link")).to_have_text(["team"])
    expect_names(page, ["alps/", "alpha.txt", "beta.txt"])
    # arrow keys, Enter opens a folder, Backspace goes up, Enter on a file opens its details
    page.get_by_role("button", name="alps/").focus()
    page.keyboard.press("ArrowDown")
    expect(page.get_by_role("button", name="alpha.txt")).to_be_focused()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("checkbox", name="Select alpha.txt")).to_be_focused()
    page.keyboard.press("Space")
    expect(page.get_by_role("button", name="Delete selected")).to_have_text("Delete selected (1)")
    page.keyboard.press("ArrowUp")
    expect(page.get_by_role("checkbox", name="Select alps/")).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Enter")
    expect_names(page, ["x.txt"])
    page.keyboard.press("Backspace")
    expect_names(page, ["alps/", "alpha.txt", "beta.txt"])
    page.get_by_role("button", name="beta.txt").press("Enter")
    expect(page.get_by_role("complementary", name="beta.txt")).to_be_visible()
    expect(page.get_by_role("button", name="Close details")).to_be_focused()
    page.keyboard.press("Escape")
    expect(page.get_by_role("button", name="beta.txt")).to_be_focused()
    # exactly one listing control is in the Tab order
    assert page.locator("#listing tbody [tabindex='0']").count() == 1
    # the filter narrows by name prefix, on the server
    page.get_by_role("searchbox", name="Filter by name").fill("alp")
    expect_names(page, ["alps/", "alpha.txt"])
    page.get_by_role("searchbox", name="Filter by name").fill("zzz")
    expect(page.get_by_text("Nothing here starts with “zzz”.")).to_be_visible()
    # a folder outside the token's prefix is never shown
    page.goto(svc.url + "/ui/#p=other%2F")
    expect_names(page, ["alps/", "alpha.txt", "beta.txt"])
    assert page_errors == []


def test_error_and_offline_states(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served({"a.txt": b"a"})
    page = signed_in(new_page, svc)
    expect_names(page, ["a.txt"])
    page.context.set_offline(True)
    expect(page.get_by_text("You are offline")).to_be_visible()
    page.get_by_role("button", name="Refresh").click()
    expect(page.locator("#status")).to_contain_text("You are offline.")
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    page.context.set_offline(False)
    expect(page.get_by_text("You are offline")).to_be_hidden()
    expect(page.locator("#status")).to_have_text("")
    expect_names(page, ["a.txt"])
    # the token expires (here: is revoked by a new secret on a new service) → back to sign-in with a message
    page.evaluate("sessionStorage.setItem('unistore.token', 'expired')")
    page.get_by_role("button", name="Refresh").click()
    expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    expect(page.get_by_role("alert")).to_contain_text("sign in again")
    assert only_unauthorized([e for e in page_errors if "ERR_INTERNET_DISCONNECTED" not in e])


def test_pdf_audio_and_video_play_in_the_browsers_own_viewers_from_signed_urls(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    pdf = (
        b"%PDF-1.1\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj 2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n"
        b"trailer<</Root 1 0 R>>\n%%EOF\n"
    )
    svc = served(
        {
            "m/doc.pdf": (pdf, "application/pdf"),
            "m/clip.webm": (b"\x1aE\xdf\xa3", "video/webm"),
            "m/song.ogg": (b"OggS", "audio/ogg"),
            "m/blob.bin": (b"\0\1", "application/x-thing"),
        }
    )
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="m/").click()
    page.get_by_role("button", name="doc.pdf").click()
    frame = page.locator("#details iframe")
    expect(frame).to_have_attribute("src", re.compile(re.escape(svc.url) + r"/files/m/doc\.pdf\?.*signature="))
    expect(frame).to_have_attribute("title", "Preview of doc.pdf")
    # what the frame loads is the stored PDF, served as a PDF that nothing may sniff into a page
    r = httpx.get(frame.get_attribute("src") or "")
    assert r.content == pdf and r.headers["content-type"] == "application/pdf"
    assert r.headers["x-content-type-options"] == "nosniff"
    page.get_by_role("button", name="clip.webm").click()
    expect(page.locator("#details video[controls]")).to_have_attribute("src", re.compile(r"/files/m/clip\.webm\?"))
    page.get_by_role("button", name="song.ogg").click()
    expect(page.locator("#details audio[controls]")).to_have_attribute("src", re.compile(r"/files/m/song\.ogg\?"))
    page.get_by_role("button", name="blob.bin").click()
    expect(page.get_by_role("complementary", name="blob.bin")).to_contain_text("No preview for this type of file.")
    # the media files are not real media: the players may say so, nothing else is logged
    assert [e for e in page_errors if "MEDIA" not in e.upper()] == []


def test_every_control_has_an_accessible_name(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str]
) -> None:
    svc = served(SAMPLE)
    page = signed_in(new_page, svc)
    page.get_by_role("button", name="docs/").click()
    page.get_by_role("button", name="readme.txt").click()
    expect(page.get_by_label("Contents of readme.txt")).to_be_visible()
    unnamed = re.compile(r"^\s*- (button|checkbox|textbox|searchbox|combobox|link|img|region|table|dialog)(:|\s*$| \[)")
    snapshots = [page.locator("body").aria_snapshot()]
    page.get_by_role("button", name="Share").click()
    expect(page.get_by_role("textbox", name="Share link")).not_to_have_value("")
    snapshots.append(page.get_by_role("dialog").aria_snapshot())
    page.keyboard.press("Escape")
    page.get_by_role("button", name="New folder").click()
    snapshots.append(page.get_by_role("dialog").aria_snapshot())
    missing = [line for snap in snapshots for line in snap.splitlines() if unnamed.match(line)]
    assert missing == [], "\n".join(snapshots)
    assert page_errors == []


@pytest.mark.parametrize("width", [1280, 360])
def test_screenshots_at_desktop_and_phone_width(
    served: Callable[..., UiService], new_page: Callable[..., Any], page_errors: list[str], tmp_path: Path, width: int
) -> None:
    svc = served(SAMPLE | {f"docs/notes-{i:02d}.md": (b"# note %d\n" % i, "text/markdown") for i in range(12)})
    page = signed_in(new_page, svc, width=width, height=800)
    page.get_by_role("button", name="docs/").click()
    expect(page.get_by_role("button", name="readme.txt")).to_be_visible()
    # nothing sticks out sideways
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    page.screenshot(path=str(tmp_path / f"web-ui-{width}.png"))
    page.get_by_role("button", name="readme.txt").click()
    details = page.get_by_role("complementary", name="readme.txt")
    expect(details.get_by_label("Contents of readme.txt")).to_have_text("hello world\n")
    for control in details.get_by_role("button").all():
        box = control.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= width
    page.screenshot(path=str(tmp_path / f"web-ui-{width}-details.png"))
    if width == 1280:  # the docs' picture: a JSON file's details beside the listing
        page.get_by_role("button", name="data.json").click()
        expect(page.get_by_label("Contents of data.json")).to_contain_text('"a": [')
        page.evaluate("window.scrollTo(0, 0)")
        page.screenshot(path=str((DOCS_IMG if WRITE_DOCS_IMG else tmp_path) / "web-ui.png"))
    assert page_errors == []


def test_the_browser_leaves_no_running_loop_on_the_thread(request: pytest.FixtureRequest) -> None:
    """Async tests that share this worker after the browser started still get to run their own loop."""
    browser = request.getfixturevalue("browser")
    assert browser.is_connected()
    assert asyncio.events._get_running_loop() is None

    async def ping() -> str:
        await asyncio.sleep(0)
        return "ok"

    assert asyncio.run(ping()) == "ok"
