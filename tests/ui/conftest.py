"""Fixtures of the web UI's browser tests: Debian's Chromium driven by Playwright, and services to point it at."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from ui_support import BROWSER_ARGS, CHROMIUM, SECRET, UiService

from unistore import MemoryBackend, StorageBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server


class _Playwright:
    """Playwright's sync API and its event loop, which it leaves set as the thread's running loop.

    Left set, every ``asyncio.run`` later on this thread (pytest-asyncio's tests sharing the
    xdist worker) fails with "cannot be called from a running event loop": the loop is set only
    while a browser test (or a fixture of one) runs, and taken off the thread otherwise."""

    def __init__(self, api: Any, loop: asyncio.AbstractEventLoop | None) -> None:
        self.api, self.loop = api, loop

    @contextlib.contextmanager
    def active(self) -> Iterator[Any]:
        previous = asyncio.events._get_running_loop()
        asyncio.events._set_running_loop(self.loop)
        try:
            yield self.api
        finally:
            asyncio.events._set_running_loop(previous)


@pytest.fixture(scope="session")
def playwright_sync() -> Iterator[_Playwright]:
    if not os.path.exists(CHROMIUM):
        pytest.fail("Debian chromium is not installed: `make test-tools` installs it (run as root)")
    from playwright.sync_api import sync_playwright

    manager = sync_playwright()
    api = manager.__enter__()
    handle = _Playwright(api, asyncio.events._get_running_loop())
    asyncio.events._set_running_loop(None)
    try:
        yield handle
    finally:
        with handle.active():
            manager.__exit__(None, None, None)


@pytest.fixture(autouse=True)
def _playwright_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Playwright's loop on the thread for the browser tests only (see :class:`_Playwright`)."""
    if "playwright_sync" not in request.fixturenames:
        yield
        return
    handle: _Playwright = request.getfixturevalue("playwright_sync")
    with handle.active():
        yield


@pytest.fixture(scope="session")
def browser(playwright_sync: _Playwright) -> Iterator[Any]:
    """One headless Chromium for the session (each test opens its own context)."""
    with playwright_sync.active() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS, timeout=30_000)
    try:
        yield b
    finally:
        with playwright_sync.active():
            b.close()


@pytest.fixture
def page_errors() -> list[str]:
    """Console errors and uncaught page errors collected by :func:`new_page` (CSP violations included)."""
    return []


@pytest.fixture
def new_page(browser: Any, page_errors: list[str], tmp_path: Any) -> Iterator[Callable[..., Any]]:
    """Open a page in a fresh context (``width`` by ``height``); every context is closed after the test."""
    contexts: list[Any] = []

    def open_page(width: int = 1280, height: int = 800, **context_options: Any) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height}, **context_options)
        context.set_default_timeout(15_000)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: page_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: page_errors.append(str(e)))
        return page

    yield open_page
    for context in contexts:
        context.close()


@pytest.fixture
def ui_service() -> Iterator[Callable[..., UiService]]:
    """Start services with auth on over a backend (a fresh MemoryBackend by default)."""
    stack: list[Any] = []

    def start(backend: StorageBackend | None = None, **settings: Any) -> UiService:
        store = backend if backend is not None else MemoryBackend()
        app = create_app(store, settings=ServiceSettings(secret=SECRET.encode(), **settings))
        server = running_server(app)
        url = server.__enter__()
        stack.append(server)
        return UiService(url, store)

    yield start
    for server in reversed(stack):
        server.__exit__(None, None, None)
