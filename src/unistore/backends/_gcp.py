"""Google credentials for the GCS backend: OAuth2 access tokens and V4 URL signing.

Three sources, as Google's client libraries resolve them: a service-account
JSON key (tokens by the JWT-bearer grant, RFC 7523; also signs URLs), an
``authorized_user`` file from ``gcloud auth application-default login``
(refresh-token grant), or the metadata server on Google Cloud. Tokens are
cached until five minutes before they expire; one refresh at a time.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from .._errors import ConfigurationError, InvalidArgumentError

__all__ = ["Credentials", "MAX_SIGNED_URL_SECONDS", "load_credentials", "v4_signed_url"]

MAX_SIGNED_URL_SECONDS = 7 * 24 * 3600  # GCS rejects V4 signatures valid for longer
_SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"
_METADATA_TOKEN = "http://metadata.google.internal/computeMetadata/v1/instance/service-accounts/default/token"
_SIGNING_ALGORITHM = "GOOG4-RSA-SHA256"


@dataclass
class Credentials:
    """Where access tokens come from, and the key that signs URLs (service accounts only)."""

    kind: str  # "service_account" | "authorized_user" | "metadata" | "anonymous"
    info: dict[str, Any] = field(default_factory=dict, repr=False)
    _key: Any = field(default=None, repr=False)
    _token: str | None = field(default=None, repr=False)
    _expires: float = 0.0
    _lock: asyncio.Lock | None = field(default=None, repr=False)

    @property
    def email(self) -> str | None:
        value = self.info.get("client_email")
        return value if isinstance(value, str) else None

    def sign(self, message: bytes) -> bytes:
        """RSASSA-PKCS1-v1_5 with SHA-256 over ``message`` with the service-account key."""
        if self._key is None:
            from cryptography.hazmat.primitives import serialization

            self._key = serialization.load_pem_private_key(self.info["private_key"].encode(), password=None)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        signature: bytes = self._key.sign(message, padding.PKCS1v15(), hashes.SHA256())
        return signature

    async def token(self, client: httpx.AsyncClient) -> str | None:
        """A valid access token (``None`` for anonymous access, e.g. the emulator)."""
        if self.kind == "anonymous":
            return None
        if self._token is not None and time.time() < self._expires - 300:
            return self._token
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._token is None or time.time() >= self._expires - 300:
                self._token, lifetime = await self._fetch(client)
                self._expires = time.time() + lifetime
            return self._token

    async def _fetch(self, client: httpx.AsyncClient) -> tuple[str, float]:
        if self.kind == "service_account":
            now = int(time.time())
            token_uri = self.info.get("token_uri", "https://oauth2.googleapis.com/token")
            claims = {"iss": self.email, "scope": _SCOPE, "aud": token_uri, "iat": now, "exp": now + 3600}
            header = {"alg": "RS256", "typ": "JWT", "kid": self.info.get("private_key_id", "")}
            signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
            assertion = f"{signing_input}.{_b64(self.sign(signing_input.encode()))}"
            r = await client.post(
                token_uri,
                data={"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": assertion},
            )
        elif self.kind == "authorized_user":
            r = await client.post(
                "https://oauth2.googleapis.com/token",
                data={
                    "grant_type": "refresh_token",
                    "client_id": self.info["client_id"],
                    "client_secret": self.info["client_secret"],
                    "refresh_token": self.info["refresh_token"],
                },
            )
        else:
            r = await client.get(_METADATA_TOKEN, headers={"Metadata-Flavor": "Google"})
        r.raise_for_status()
        body = r.json()
        return str(body["access_token"]), float(body.get("expires_in", 3600))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_credentials(path: str | None, *, anonymous: bool) -> Credentials:
    """Read a credentials file (``GOOGLE_APPLICATION_CREDENTIALS``); without one, the metadata
    server, or anonymous access when talking to an emulator."""
    if path is None:
        return Credentials("anonymous" if anonymous else "metadata")
    try:
        with open(path, "rb") as f:
            info = json.load(f)
    except (OSError, ValueError) as exc:
        raise ConfigurationError(f"cannot read Google credentials file {path!r}: {type(exc).__name__}") from exc
    kind = info.get("type") if isinstance(info, dict) else None
    if kind == "service_account":
        if not info.get("private_key") or not info.get("client_email"):
            raise ConfigurationError(f"service-account file {path!r} lacks private_key or client_email")
    elif kind == "authorized_user":
        if not all(info.get(k) for k in ("client_id", "client_secret", "refresh_token")):
            raise ConfigurationError(f"authorized_user file {path!r} is incomplete")
    else:
        raise ConfigurationError(f"unsupported Google credentials type {kind!r} in {path!r}")
    # An emulator takes no tokens, but signing URLs still uses the key.
    return Credentials("anonymous" if anonymous else kind, info)


def _q(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


def v4_signed_url(
    creds: Credentials,
    *,
    scheme: str,
    host: str,
    bucket: str,
    name: str,
    method: str,
    expires_in: int,
    extra_query: dict[str, str] | None = None,
    now: datetime | None = None,
) -> str:
    """A V4 signed URL (path style) for ``method`` on ``bucket/name``, signed locally.

    Follows Google's "V4 signing process": canonical request over the method,
    path, sorted query, the ``host`` header and ``UNSIGNED-PAYLOAD``; string to
    sign ``GOOG4-RSA-SHA256\\n{timestamp}\\n{scope}\\n{sha256(canonical)}``.
    """
    email = creds.info.get("client_email")
    if not creds.info.get("private_key") or not isinstance(email, str):
        raise ConfigurationError(
            "signed URLs need a service-account key: set GOOGLE_APPLICATION_CREDENTIALS to its JSON file"
        )
    if not 0 < expires_in <= MAX_SIGNED_URL_SECONDS:
        raise InvalidArgumentError(
            f"expires_in={expires_in}: GCS signed URLs last 1 to {MAX_SIGNED_URL_SECONDS} seconds (7 days)"
        )
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    scope = f"{now.strftime('%Y%m%d')}/auto/storage/goog4_request"
    path = f"/{bucket}/{_q(name, safe='/-_.~')}"
    query = {
        "X-Goog-Algorithm": _SIGNING_ALGORITHM,
        "X-Goog-Credential": f"{email}/{scope}",
        "X-Goog-Date": stamp,
        "X-Goog-Expires": str(expires_in),
        "X-Goog-SignedHeaders": "host",
        **(extra_query or {}),
    }
    canonical_query = "&".join(f"{_q(k)}={_q(v)}" for k, v in sorted(query.items()))
    canonical = "\n".join([method, path, canonical_query, f"host:{host}\n", "host", "UNSIGNED-PAYLOAD"])
    to_sign = "\n".join([_SIGNING_ALGORITHM, stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signature = creds.sign(to_sign.encode()).hex()
    return f"{scheme}://{host}{path}?{canonical_query}&X-Goog-Signature={signature}"
