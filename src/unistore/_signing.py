"""HMAC-SHA256 signed URLs for stores that serve their own files (local, memory).

A URL is ``{base_url}/{quoted key}?expires=T[&disposition=attachment]&signature=S`` with
``S = base64url(HMAC-SHA256(secret, "v1\\n" + method + "\\n" + key + "\\n" + T + "\\n" + disposition))``.
The key is signed as the decoded string, so any re-encoding of the path verifies
the same; ``HEAD`` is verified as ``GET``. Comparison is constant-time. The URL
carries the key only, never a filesystem path.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote, urlencode

from ._errors import ConfigurationError, InvalidArgumentError, PermissionDeniedError, UnsupportedError

__all__ = ["UrlSigner"]

_MAX_EXPIRES_IN = 10 * 365 * 24 * 3600


class UrlSigner:
    """Signs and verifies file URLs with one secret."""

    __slots__ = ("_secret", "base_url")

    def __init__(self, secret: bytes, base_url: str) -> None:
        if len(secret) < 16:
            raise ConfigurationError("URL secret must be at least 16 bytes (STORAGE_URL_SECRET)")
        self._secret = secret
        self.base_url = base_url.rstrip("/")

    def __repr__(self) -> str:
        return f"UrlSigner(base_url={self.base_url!r}, secret=<redacted>)"

    def _mac(self, method: str, key: str, expires: int, disposition: str) -> str:
        msg = f"v1\n{method}\n{key}\n{expires}\n{disposition}".encode("utf-8", "surrogatepass")
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(
        self,
        key: str,
        *,
        expires_in: int,
        download: bool = False,
        method: str = "GET",
        now: float | None = None,
    ) -> str:
        """A URL for ``key`` valid for ``expires_in`` seconds; ``method`` GET or HEAD (one URL serves
        both), anything else :class:`UnsupportedError` (the file route serves reads only)."""
        if not 0 < expires_in <= _MAX_EXPIRES_IN:
            raise InvalidArgumentError(f"expires_in must be in 1..{_MAX_EXPIRES_IN} seconds, got {expires_in}")
        expires = int(now if now is not None else time.time()) + int(expires_in)
        disposition = "attachment" if download else ""
        params = {"expires": str(expires)}
        if disposition:
            params["disposition"] = disposition
        method = method.upper()
        if method not in ("GET", "HEAD"):
            raise UnsupportedError(
                f"signed URLs of this store serve downloads only (GET or HEAD), not {method}",
                key=key,
                operation="sign_url",
            )
        params["signature"] = self._mac("GET", key, expires, disposition)  # HEAD is verified as GET
        return f"{self.base_url}/{quote(key, safe='/')}?{urlencode(params)}"

    def verify(
        self,
        key: str,
        *,
        expires: str | None,
        signature: str | None,
        disposition: str | None = None,
        method: str = "GET",
        now: float | None = None,
    ) -> None:
        """Raise :class:`PermissionDeniedError` unless the parameters carry a valid, unexpired signature."""
        if not expires or not signature:
            raise PermissionDeniedError("URL is not signed", key=key)
        try:
            expires_at = int(expires)
        except ValueError:
            raise PermissionDeniedError("URL has a malformed expiry", key=key) from None
        method = "GET" if method.upper() == "HEAD" else method.upper()
        expected = self._mac(method, key, expires_at, disposition or "")
        if not hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace")):
            raise PermissionDeniedError("URL signature is invalid", key=key)
        if (now if now is not None else time.time()) >= expires_at:
            raise PermissionDeniedError("URL has expired", key=key)
