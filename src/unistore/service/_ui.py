"""The web UI at ``/ui``: static files shipped in the package, served under content-hashed names.

The app is plain ES modules (no build step, nothing fetched from another host). At start-up each
asset is read once, its ``import`` specifiers are rewritten to the hashed names of the modules
they name, and it is served as ``/ui/assets/NAME.HASH.EXT`` with a year-long immutable cache;
``/ui/`` (the page, which names the hashed files) is never cached. Every UI response carries a
strict Content-Security-Policy: scripts and styles only from this origin, no inline script, no
plugins, no framing of the app; ``connect-src``/``img-src``/``media-src`` add the origin of the
store's own signed URLs (an S3 endpoint receiving direct part uploads, say) when it differs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response

from .._base import StorageBackend
from .._errors import NotFoundError

__all__ = ["UiAssets", "content_security_policy", "mount_ui"]

_IMPORT = re.compile(r"""(\bfrom\s*|\bimport\s*\(?\s*)(["'])\./([A-Za-z0-9_-]+\.js)\2""")
_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}
_IMMUTABLE = "public, max-age=31536000, immutable"


@dataclass(frozen=True, slots=True)
class UiAssets:
    """The page (with hashed names filled in) and every asset by its hashed name."""

    page: bytes
    files: dict[str, tuple[bytes, str]]
    names: dict[str, str]

    @classmethod
    def load(cls) -> UiAssets:
        """Read the packaged ``ui/`` folder and hash every asset (imports first, so a change to a
        module changes the names of the modules that import it)."""
        root = resources.files("unistore.service") / "ui"
        sources = {
            entry.name: entry.read_bytes()
            for entry in root.iterdir()
            if entry.is_file() and "." + entry.name.rsplit(".", 1)[-1] in _TYPES
        }
        names: dict[str, str] = {}
        files: dict[str, tuple[bytes, str]] = {}

        def hashed(name: str, trail: tuple[str, ...] = ()) -> str:
            if name in names:
                return names[name]
            if name not in sources or name in trail:
                raise ValueError(f"the UI module {name!r} is missing or imported in a cycle ({' -> '.join(trail)})")
            body = sources[name]
            if name.endswith(".js"):
                text = body.decode()
                text = _IMPORT.sub(lambda m: f"{m[1]}{m[2]}./{hashed(m[3], (*trail, name))}{m[2]}", text)
                body = text.encode()
            stem, ext = name.rsplit(".", 1)
            final = f"{stem}.{hashlib.sha256(body).hexdigest()[:12]}.{ext}"
            names[name] = final
            files[final] = (body, _TYPES["." + ext])
            return final

        for name in sorted(sources):
            hashed(name)
        page = (root / "index.html").read_text()
        for name, final in names.items():
            page = page.replace(f'"{name}"', f'"assets/{final}"')
        return cls(page.encode(), files, names)


def content_security_policy(extra_origins: tuple[str, ...] = ()) -> str:
    """The UI's policy; ``extra_origins`` may be fetched from, shown and streamed (the store's signed URLs)."""
    extra = "".join(f" {origin}" for origin in extra_origins)
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; "
        f"form-action 'none'; frame-ancestors 'none'; connect-src 'self'{extra}; img-src 'self' blob: data:{extra}; "
        f"media-src 'self' blob:{extra}; frame-src 'self' blob:{extra}; worker-src 'self'"
    )


def _origin(url: str) -> str | None:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}" if parts.scheme in ("http", "https") and parts.netloc else None


def mount_ui(app: FastAPI, store: StorageBackend) -> None:
    """Serve the web UI at ``/ui/`` on ``app``; ``store`` is asked once for a signed URL to learn its origin."""
    assets = UiAssets.load()
    origins: list[tuple[str, ...]] = []

    async def policy(request: Request) -> str:
        if not origins:
            found: tuple[str, ...] = ()
            try:
                origin = _origin(await store.sign_url("ui-origin-probe", expires_in=60))
            except Exception:  # a store that signs nothing: the UI then fetches only from this origin
                origin = None
            own = f"{request.url.scheme}://{request.url.netloc}"
            if origin is not None and origin != own:
                found = (origin,)
            origins.append(found)
        return content_security_policy(origins[0])

    def headers(csp: str, cache: str) -> dict[str, str]:
        return {
            "Content-Security-Policy": csp,
            "Cache-Control": cache,
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Referrer-Policy": "no-referrer",
            "Cross-Origin-Opener-Policy": "same-origin",
        }

    @app.get("/ui", include_in_schema=False)
    async def ui_root() -> RedirectResponse:
        return RedirectResponse("/ui/", status_code=308)

    @app.get("/ui/", include_in_schema=False)
    async def ui_page(request: Request) -> Response:
        csp = await policy(request)
        return Response(assets.page, media_type="text/html; charset=utf-8", headers=headers(csp, "no-cache"))

    @app.get("/ui/assets/{name}", include_in_schema=False)
    async def ui_asset(name: str, request: Request) -> Response:
        found: Any = assets.files.get(name)
        if found is None:
            raise NotFoundError(f"no UI asset named {name!r}", key=name)
        body, media_type = found
        return Response(body, media_type=media_type, headers=headers(await policy(request), _IMMUTABLE))
