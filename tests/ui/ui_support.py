"""What the web UI's browser tests share: the running service and the browser settings."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field

from unistore import StorageBackend
from unistore.service._auth import TokenAuthority

SECRET = "ui-tests-secret-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]


@dataclass
class UiService:
    """A running service: its base URL, the store behind it, and a way to mint its tokens."""

    url: str
    backend: StorageBackend
    authority: TokenAuthority = field(default_factory=lambda: TokenAuthority(SECRET))

    def token(self, actions: list[str] | None = None, *, prefix: str = "", expires_in: int = 3600) -> str:
        return self.authority.issue(actions or ["admin"], prefix=prefix, expires_in=expires_in, subject="ui-test")

    def link(self, token: str, path: str = "") -> str:
        """The login link ``unistore ui-link`` prints: the token rides in the fragment."""
        return f"{self.url}/ui/{path}#token={token}"
