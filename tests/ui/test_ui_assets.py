"""The UI's static files: hashed names, caching, the Content-Security-Policy, nothing from another host."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
from ui_support import UiService

from unistore.service._ui import UiAssets, content_security_policy


def test_the_page_names_only_hashed_assets_and_is_never_cached(ui_service: Callable[..., UiService]) -> None:
    svc = ui_service()
    r = httpx.get(svc.url + "/ui/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.headers["cache-control"] == "no-cache"
    refs = re.findall(r'(?:src|href)="([^"]+)"', r.text)
    assert refs and all(re.fullmatch(r"assets/[a-z]+\.[0-9a-f]{12}\.(js|css|svg)", ref) for ref in refs), refs
    for ref in refs:
        asset = httpx.get(f"{svc.url}/ui/{ref}")
        assert asset.status_code == 200
        assert asset.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert asset.headers["x-content-type-options"] == "nosniff"
    assert httpx.get(svc.url + "/ui", follow_redirects=False).headers["location"] == "/ui/"


def test_module_imports_name_hashed_files_that_are_served(ui_service: Callable[..., UiService]) -> None:
    svc = ui_service()
    assets = UiAssets.load()
    app = assets.files[assets.names["app.js"]][0].decode()
    imported = re.findall(r'from "\./([^"]+)"', app)
    assert imported and all(name in assets.files for name in imported), imported
    assert all(httpx.get(f"{svc.url}/ui/assets/{name}").status_code == 200 for name in imported)


def test_every_ui_response_carries_a_strict_policy(ui_service: Callable[..., UiService]) -> None:
    svc = ui_service()
    csp = httpx.get(svc.url + "/ui/").headers["content-security-policy"]
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"  # no 'unsafe-inline', no 'unsafe-eval', no other host
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp


def test_the_page_has_no_inline_script_or_style() -> None:
    page = UiAssets.load().page.decode()
    assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", page)
    assert " style=" not in page and "<style" not in page and " on" + "click=" not in page


def test_an_unknown_asset_is_a_404_in_the_error_shape(ui_service: Callable[..., UiService]) -> None:
    svc = ui_service()
    r = httpx.get(svc.url + "/ui/assets/app.000000000000.js")
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"
    assert httpx.get(svc.url + "/ui/assets/..%2F_ui.py").status_code == 404


def test_a_store_on_another_origin_is_allowed_for_fetches_and_nothing_else() -> None:
    csp = content_security_policy(("http://s3.example:8333",))
    directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
    assert "http://s3.example:8333" in directives["connect-src"]
    assert "http://s3.example:8333" not in directives["script-src"] + directives["style-src"]
