"""Google credentials for the GCS backend: access tokens (google-auth) and V4 URL signing.

Credentials are Google's own ``google-auth``: a ``GOOGLE_APPLICATION_CREDENTIALS`` file of any
type it reads (service account, ``authorized_user``, external account / workload identity
federation, impersonated service account), else Application Default Credentials (gcloud's file,
then the metadata server of Cloud Run, GKE, GCE). Its refreshes are blocking calls, run in a worker
thread, one at a time, about once an hour.

URLs are signed as Google's client does: locally with a service-account key, else through the
IAM Credentials ``signBlob`` API as the credentials' service account (metadata-server
credentials: the service account needs ``iam.serviceAccounts.signBlob`` on itself, e.g. the
"Service Account Token Creator" role).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import warnings
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from ..._errors import ConfigurationError, InvalidArgumentError

__all__ = ["Credentials", "IAM_ENDPOINT", "MAX_SIGNED_URL_SECONDS", "load_credentials", "v4_signed_url"]

MAX_SIGNED_URL_SECONDS = 7 * 24 * 3600  # GCS rejects V4 signatures valid for longer
IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_SIGNING_ALGORITHM = "GOOG4-RSA-SHA256"


class Credentials:
    """Where access tokens come from and how URLs are signed, for one backend.

    ``kind`` is the credentials file's type, ``default`` (Application Default Credentials,
    resolved on first use) or ``anonymous`` (an emulator: no tokens are sent, but a key file,
    when given, still signs URLs).
    """

    def __init__(self, kind: str, google: Any = None, *, send_tokens: bool = True) -> None:
        self.kind = kind
        self._google = google
        self._send_tokens = send_tokens and kind != "anonymous"
        self._lock: asyncio.Lock | None = None
        self._session: Any = None

    def __repr__(self) -> str:
        return f"Credentials(kind={self.kind!r})"

    def _request(self) -> Any:
        import google.auth.transport.requests
        import requests

        if self._session is None:
            self._session = requests.Session()
        return google.auth.transport.requests.Request(self._session)

    async def _resolved(self) -> Any:
        """The google-auth credentials, refreshed if their token is missing or about to expire."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        google = self._google
        if google is not None and google.valid:
            return google
        async with self._lock:
            if self._google is None:
                self._google = await asyncio.to_thread(_default_credentials)
            if not self._google.valid:
                await asyncio.to_thread(self._google.refresh, self._request())
            return self._google

    async def token(self, client: httpx.AsyncClient) -> str | None:
        """A valid access token (``None`` for anonymous access, e.g. the emulator)."""
        if not self._send_tokens:
            return None
        token = (await self._resolved()).token
        return str(token)

    async def signer(
        self, client: httpx.AsyncClient, iam_endpoint: str
    ) -> tuple[str, Callable[[bytes], Awaitable[bytes]]]:
        """The service-account email URLs are signed as, and the signing function (a local key,
        else IAM ``signBlob`` at ``iam_endpoint``)."""
        from google.auth.credentials import Signing
        from google.oauth2 import service_account

        google = self._google
        if google is None and not self._send_tokens:
            raise ConfigurationError(
                "signed URLs need credentials that can sign: set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service-account key file"
            )
        if self._send_tokens and not isinstance(google, service_account.Credentials):
            google = await self._resolved()  # metadata-server credentials learn their email on refresh
        email = getattr(google, "service_account_email", None)
        if not isinstance(email, str) or not email or email == "default":
            raise ConfigurationError(
                f"signed URLs need a service account, and {self.kind} credentials have none: use a service-account "
                "key file (GOOGLE_APPLICATION_CREDENTIALS) or run as a service account (metadata server)"
            )
        if isinstance(google, service_account.Credentials):

            async def local(message: bytes) -> bytes:
                signature: bytes = google.sign_bytes(message)
                return signature

            return email, local
        if isinstance(google, Signing):  # e.g. impersonated credentials: google-auth's own IAM call

            async def delegated(message: bytes) -> bytes:
                signature: bytes = await asyncio.to_thread(google.sign_bytes, message)
                return signature

            return email, delegated

        async def sign_blob(message: bytes) -> bytes:
            from ._wire import raise_for

            token = (await self._resolved()).token
            url = f"{iam_endpoint.rstrip('/')}/v1/projects/-/serviceAccounts/{quote(email, safe='@')}:signBlob"
            r = await client.post(
                url,
                json={"payload": base64.b64encode(message).decode()},
                headers={"Authorization": f"Bearer {token}"},
            )
            if r.status_code != 200:
                raise_for(r, "sign_url", None)
            return base64.b64decode(r.json()["signedBlob"])

        return email, sign_blob

    def close(self) -> None:
        """Close the HTTP session google-auth refreshes through."""
        session, self._session = self._session, None
        if session is not None:
            session.close()


def _default_credentials() -> Any:
    """Application Default Credentials (blocking: reads files, may probe the metadata server)."""
    import google.auth

    credentials, _project = google.auth.default(scopes=_SCOPES)
    return credentials


def load_credentials(path: str | None, *, anonymous: bool) -> Credentials:
    """The credentials of ``GOOGLE_APPLICATION_CREDENTIALS`` (``path``): any file type google-auth
    reads. Without one, Application Default Credentials on first use, or anonymous access when
    talking to an emulator."""
    if path is None:
        return Credentials("anonymous" if anonymous else "default")
    try:
        with open(path, "rb") as f:
            kind = json.load(f).get("type")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"cannot read Google credentials file {path!r}: {type(exc).__name__}") from exc
    try:
        import google.auth
    except ImportError as exc:
        raise ConfigurationError("GCSBackend needs google-auth: pip install 'unistore[gcs]'") from exc
    try:
        # The file is the operator's own configuration, trusted as google.auth.default() trusts
        # it (which silences the same warning): an external_account file may name a command or URL.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            creds, _project = google.auth.load_credentials_from_file(path, scopes=_SCOPES)  # type: ignore[no-untyped-call]
    except Exception as exc:  # DefaultCredentialsError, or a ValueError/KeyError of an incomplete file
        raise ConfigurationError(f"unusable Google credentials file {path!r} of type {kind!r}: {exc}") from exc
    return Credentials(str(kind), creds, send_tokens=not anonymous)


def _q(value: str, safe: str = "-_.~") -> str:
    return quote(value, safe=safe)


async def v4_signed_url(
    email: str,
    sign: Callable[[bytes], Awaitable[bytes]],
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
    """A V4 signed URL (path style) for ``method`` on ``bucket/name``, signed by ``sign`` as ``email``.

    Follows Google's "V4 signing process": canonical request over the method,
    path, sorted query, the ``host`` header and ``UNSIGNED-PAYLOAD``; string to
    sign ``GOOG4-RSA-SHA256\\n{timestamp}\\n{scope}\\n{sha256(canonical)}``.
    """
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
    signature = (await sign(to_sign.encode())).hex()
    return f"{scheme}://{host}{path}?{canonical_query}&X-Goog-Signature={signature}"
