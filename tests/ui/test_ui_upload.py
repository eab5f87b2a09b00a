"""The web UI's uploads in a real Chromium: folders, large files through upload sessions with
progress, resume after a reload (only the missing parts are sent), cancel, read-only tokens, and
direct part uploads to an S3 store (SeaweedFS)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from ui_support import UiService

from unistore import MemoryBackend, UnavailableError
from unistore._types import Body, ObjectInfo, WriteMode
from unistore.testing import S3Server

pytestmark = pytest.mark.xdist_group("chromium")

MiB = 1024 * 1024
T = TypeVar("T")
_PART_BODY = re.compile(r"\.unistore/service/uploads/parts/[^/]+/(\d{5})$")
_PART = re.compile(r"\.unistore/service/uploads/parts/[^/]+/(\d{5})\.sha256$")


class CountingBackend(MemoryBackend):
    """A MemoryBackend that records every upload-session part the service stores (by part number)."""

    def __init__(self, fail_once: frozenset[int] = frozenset()) -> None:
        super().__init__()
        self.parts: list[int] = []
        self.failed: list[int] = []
        self.fail_once = set(fail_once)
        self._lock = threading.Lock()

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        m = _PART_BODY.search(key)
        if m is not None and int(m[1]) in self.fail_once:  # the store is briefly unavailable for this part
            self.fail_once.discard(int(m[1]))
            self.failed.append(int(m[1]))
            raise UnavailableError("the store is briefly unavailable", key=key)
        info = await super().put_object(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        m = _PART.search(key)
        if m is not None:  # a part's digest is written once its body has fully arrived
            with self._lock:
                self.parts.append(int(m[1]))
        return info

    def received(self) -> list[int]:
        with self._lock:
            return list(self.parts)


def _sync(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine on a thread of its own (Playwright's sync API holds this thread's loop)."""
    out: list[T] = []
    worker = threading.Thread(target=lambda: out.append(asyncio.run(make())))
    worker.start()
    worker.join()
    return out[0]


def _settled(backend: CountingBackend) -> set[int]:
    """The parts stored once no more arrive for half a second (requests cut mid-way have ended)."""
    seen = backend.received()
    while True:
        time.sleep(0.5)
        now = backend.received()
        if now == seen:
            return set(now)
        seen = now


def _get(svc: UiService, token: str, key: str) -> httpx.Response:
    return httpx.get(f"{svc.url}/v1/objects/{key}", headers={"Authorization": f"Bearer {token}"}, timeout=30)


def _errors(page_errors: list[str]) -> list[str]:
    """The page's errors but the browser's own favicon request (the page's requests are checked apart)."""
    return [e for e in page_errors if not e.startswith("Failed to load resource")]


def _open(new_page: Callable[..., Any], svc: UiService, token: str) -> Any:
    page = new_page()
    page.failed = []  # every answer >= 400 to a request of the page
    page.on("response", lambda r: page.failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.goto(svc.link(token))
    page.get_by_role("button", name="Upload files").wait_for()
    return page


def _watch_progress(page: Any, name: str) -> None:
    """Record every value the file's progress bar takes (the attribute reflects ``value``)."""
    page.evaluate(
        """(name) => {
          window.__seen = [];
          new MutationObserver(() => {
            const bar = document.querySelector(`#uploads progress[aria-label="Upload progress of ${name}"]`);
            if (bar) window.__seen.push(bar.value / bar.max);
          }).observe(document.getElementById("uploads"), { subtree: true, childList: true, attributes: true });
        }""",
        name,
    )


def _throttle(page: Any, bytes_per_second: int) -> Any:
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send(
        "Network.emulateNetworkConditions",
        {"offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": bytes_per_second},
    )
    return cdp


def _row(page: Any, key: str) -> Any:
    return page.locator("#uploads li.upload-row").filter(has=page.get_by_label(f"Upload progress of {key}"))


def _wait_done(page: Any, count: int, timeout: float = 25_000) -> None:
    page.wait_for_function(
        "(n) => document.querySelectorAll('#uploads li.upload-row[data-state=done]').length >= n",
        arg=count,
        timeout=timeout,
    )


def test_a_folder_of_20_files_lands_under_its_folder_name(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path, page_errors: list[str]
) -> None:
    backend = MemoryBackend()
    svc = ui_service(backend)
    token = svc.token()
    folder = tmp_path / "photos"
    (folder / "2024").mkdir(parents=True)
    files = {}
    for i in range(20):
        rel = f"2024/img-{i:02d}.bin" if i % 2 else f"note {i:02d}.txt"
        data = os.urandom(1000 + i * 3000)
        (folder / rel).write_bytes(data)
        files["photos/" + rel] = data
    page = _open(new_page, svc, token)
    page.get_by_label("Folder to upload").set_input_files(folder)
    _wait_done(page, 20)
    assert page.get_by_role("status").filter(has_text="20 of 20 files finished").count() == 1
    stored = _sync(lambda: _contents(backend, list(files)))
    assert stored == files
    assert _errors(page_errors) == [] and page.failed == []


def _drop(page: Any, selector: str, paths: list[Path]) -> None:
    """Drag ``paths`` (files or folders) from the desktop onto ``selector``: Chromium's own drag
    pipeline (CDP Input.dispatchDragEvent), so folders arrive as directory entries."""
    box = page.locator(selector).bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.context.new_cdp_session(page)
    data = {"items": [], "files": [str(p) for p in paths], "dragOperationsMask": 1}
    for kind in ("dragEnter", "dragOver", "drop"):
        cdp.send("Input.dispatchDragEvent", {"type": kind, "x": x, "y": y, "data": data})


@pytest.mark.parametrize("target", ["#uploads .upload-drop", "header"])
def test_a_dropped_folder_is_walked_and_a_dropped_file_kept(
    target: str, ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = MemoryBackend()
    svc = ui_service(backend)
    token = svc.token()
    files = {"album/a.txt": b"a", "album/deep/er/b.bin": os.urandom(70_000), "loose.txt": b"loose"}
    for rel, data in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    for i in range(150):  # more than one readEntries batch (Chromium answers 100 at a time)
        (tmp_path / "album" / f"n{i:03d}").write_bytes(b"%d" % i)
        files[f"album/n{i:03d}"] = b"%d" % i
    page = _open(new_page, svc, token)
    _drop(page, target, [tmp_path / "album", tmp_path / "loose.txt"])
    _wait_done(page, len(files))
    assert _sync(lambda: _contents(backend, list(files))) == files
    assert page.url.startswith(svc.url + "/ui/")  # the browser did not navigate to a dropped file


def test_a_60_mib_file_goes_through_a_session_with_moving_progress(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = CountingBackend()
    svc = ui_service(backend)
    token = svc.token()
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(60 * MiB))
    page = _open(new_page, svc, token)
    _watch_progress(page, "big.bin")
    _throttle(page, 30 * MiB)  # about two seconds: enough frames to see the bar move
    page.get_by_label("Files to upload").set_input_files(big)
    row = _row(page, "big.bin")
    row.locator("text=/MiB\\/s/").wait_for()  # the rate and ETA are shown while it runs
    assert re.search(r"of 60 MiB · [\d.]+ MiB/s · .* left", row.inner_text())
    _wait_done(page, 1)
    seen = page.evaluate("window.__seen")
    intermediate = sorted({round(v, 3) for v in seen if 0 < v < 1})
    assert len(intermediate) >= 3, seen
    assert seen == sorted(seen) and seen[-1] == 1  # never backwards, and full at the end
    assert sorted(backend.received()) == list(range(1, 9))  # 8 MiB parts through the service
    assert hashlib.sha256(_get(svc, token, "big.bin").content).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('unistore.upload.'))") == []


def test_a_reload_mid_upload_resumes_and_sends_only_the_missing_parts(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = CountingBackend()
    svc = ui_service(backend)
    token = svc.token()
    big = tmp_path / "resume.bin"
    big.write_bytes(os.urandom(60 * MiB))
    page = _open(new_page, svc, token)
    _throttle(page, 12 * MiB)
    page.get_by_label("Files to upload").set_input_files(big)
    deadline = time.monotonic() + 20
    while len(backend.received()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    page.reload()
    page.get_by_role("button", name="Upload files").wait_for()
    before = _settled(backend)
    assert 3 <= len(before) < 8, before
    pending = page.locator("#uploads li.upload-pending-row")
    assert "resume.bin" in pending.inner_text() and "interrupted" in pending.inner_text()
    page.get_by_label("Files to upload").set_input_files(big)
    _row(page, "resume.bin").locator(f"text=Resuming: {len(before)} of 8 parts").wait_for()
    _wait_done(page, 1)
    after = backend.received()[len(before) :]
    assert sorted(after) == sorted(set(range(1, 9)) - before)  # only the missing parts, each once
    got = _get(svc, token, "resume.bin").content
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(big.read_bytes()).hexdigest()
    assert pending.count() == 0


def test_offline_pauses_and_online_resumes_without_resending_stored_parts(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = CountingBackend()
    svc = ui_service(backend)
    token = svc.token()
    big = tmp_path / "drop.bin"
    big.write_bytes(os.urandom(60 * MiB))
    page = _open(new_page, svc, token)
    _throttle(page, 12 * MiB)
    page.get_by_label("Files to upload").set_input_files(big)
    deadline = time.monotonic() + 20
    while len(backend.received()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    page.context.set_offline(True)
    row = _row(page, "drop.bin")
    row.locator("text=Paused: offline").wait_for()
    before = _settled(backend)
    page.context.set_offline(False)
    _wait_done(page, 1)
    after = backend.received()[len(before) :]
    assert sorted(after) == sorted(set(range(1, 9)) - before)
    got = _get(svc, token, "drop.bin").content
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_a_part_the_service_fails_is_retried(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = CountingBackend(fail_once=frozenset({2}))
    svc = ui_service(backend)
    token = svc.token()
    big = tmp_path / "retry.bin"
    big.write_bytes(os.urandom(20 * MiB))
    page = _open(new_page, svc, token)
    page.get_by_label("Files to upload").set_input_files(big)
    _wait_done(page, 1)
    assert backend.failed == [2] and sorted(backend.received()) == [1, 2, 3]
    got = _get(svc, token, "retry.bin").content
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()


def test_cancel_aborts_the_session_and_stores_nothing(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any], tmp_path: Path
) -> None:
    backend = CountingBackend()
    svc = ui_service(backend)
    token = svc.token()
    big = tmp_path / "cancel.bin"
    big.write_bytes(os.urandom(40 * MiB))
    page = _open(new_page, svc, token)
    _throttle(page, 8 * MiB)
    page.get_by_label("Files to upload").set_input_files(big)
    deadline = time.monotonic() + 20
    while not backend.received() and time.monotonic() < deadline:
        time.sleep(0.05)
    record = page.evaluate("Object.entries(localStorage).find(([k]) => k.startsWith('unistore.upload.'))[1]")
    upload_id = re.search(r'"upload_id":"([^"]+)"', record)[1]  # type: ignore[index]
    page.get_by_role("button", name="Cancel upload of cancel.bin").click()
    row = _row(page, "cancel.bin")
    page.wait_for_function("() => document.querySelector('#uploads li.upload-row').dataset.state === 'cancelled'")
    assert "Cancelled" in row.inner_text()
    headers = {"Authorization": f"Bearer {token}"}
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = httpx.get(f"{svc.url}/v1/uploads/{upload_id}/parts", headers=headers)
        if r.status_code == 404:
            break
        time.sleep(0.1)
    assert r.status_code == 404
    assert _get(svc, token, "cancel.bin").status_code == 404
    deadline = time.monotonic() + 5
    while (left := _sync(lambda: _keys(backend, ".unistore/service/uploads/"))) and time.monotonic() < deadline:
        time.sleep(0.1)  # a part the server was still writing at the abort takes itself back
    assert left == []  # the session record and every stored part are gone
    assert page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('unistore.upload.'))") == []


async def _contents(backend: MemoryBackend, keys: list[str]) -> dict[str, bytes]:
    return {key: await backend.get(key) for key in keys}


async def _keys(backend: MemoryBackend, prefix: str) -> list[str]:
    from unistore._keys import reserved_keys

    with reserved_keys():
        return [key async for key in backend.iter_keys(prefix)]


def test_a_read_only_token_sees_no_upload_controls(
    ui_service: Callable[..., UiService], new_page: Callable[..., Any]
) -> None:
    svc = ui_service()
    page = new_page()
    page.goto(svc.link(svc.token(["read"])))
    page.wait_for_function("() => !document.getElementById('app').hidden")
    page.wait_for_timeout(300)
    assert page.get_by_role("button", name="Upload files").count() == 0
    assert page.get_by_role("button", name="Upload folder").count() == 0
    assert page.get_by_label("Files to upload").count() == 0
    assert page.locator("#uploads").is_hidden()


@pytest.mark.parametrize("checksum", ["sha256", "md5"])
def test_direct_parts_go_straight_to_seaweedfs(
    checksum: str,
    ui_service: Callable[..., UiService],
    new_page: Callable[..., Any],
    tmp_path: Path,
    seaweed: S3Server,
    page_errors: list[str],
) -> None:
    bucket = seaweed.create_bucket(f"ui-up-{uuid.uuid4().hex[:8]}")
    backend = seaweed.backend(bucket, prefix="ui/", checksum=checksum)
    svc = ui_service(backend)
    _sync(lambda: backend.allow_browser_uploads([svc.url]))  # the rule `unistore ui-cors` sets
    token = svc.token()
    big = tmp_path / "direct.bin"
    big.write_bytes(os.urandom(20 * MiB))
    page = _open(new_page, svc, token)
    puts: list[str] = []
    page.on("request", lambda r: puts.append(r.url) if r.method == "PUT" else None)
    page.get_by_label("Files to upload").set_input_files(big)
    _wait_done(page, 1)
    s3_origin = seaweed.endpoint.rstrip("/")
    assert len(puts) == 3 and all(u.startswith(s3_origin) and "partNumber=" in u for u in puts), puts
    got = _get(svc, token, "direct.bin").content
    assert hashlib.sha256(got).digest() == hashlib.sha256(big.read_bytes()).digest()
    assert _errors(page_errors) == [] and page.failed == []
