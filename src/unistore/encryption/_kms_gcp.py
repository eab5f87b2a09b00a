"""A keyring whose KEKs are Google Cloud KMS crypto keys, spoken to over the Cloud KMS REST API."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._errors import (
    ConfigurationError,
    IntegrityError,
    PermissionDeniedError,
    RateLimitedError,
    StorageError,
    UnavailableError,
)
from ._keyring import WrappedKey

__all__ = ["GcpKmsKeyring", "GcpKmsKeyringSettings", "kms_aad"]

DEFAULT_ENDPOINT = "https://cloudkms.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/cloudkms"]
_KEY_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+")


def kms_aad(context: Mapping[str, str]) -> bytes:
    """The ``additionalAuthenticatedData`` a data key is wrapped with: the context, canonically encoded."""
    body = json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"unistore-kms-v1\x00" + body.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class GcpKmsKeyringSettings:
    """Which Cloud KMS keys a :class:`GcpKmsKeyring` uses. Read by :meth:`from_env` from ``UNISTORE_GCP_KMS_*``."""

    keys: tuple[str, ...] = ()
    """`UNISTORE_GCP_KMS_KEYS`: crypto key resource names (`projects/P/locations/L/keyRings/R/cryptoKeys/K`),
    separated by commas or whitespace; each is also the KEK id stored with the objects it wraps. The first is the
    primary unless `primary` names another."""
    primary: str | None = None
    """`UNISTORE_GCP_KMS_PRIMARY`: the crypto key new data keys are wrapped under; unset: the first of `keys`."""
    credentials: str | None = None
    """`UNISTORE_GCP_KMS_CREDENTIALS`: a Google credentials file (service account key, workload identity
    federation...); unset: Application Default Credentials (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud, the
    metadata server)."""
    endpoint: str = DEFAULT_ENDPOINT
    """`UNISTORE_GCP_KMS_ENDPOINT`: the Cloud KMS API root (a regional or private endpoint, a test server)."""
    timeout: float = 10.0
    """`UNISTORE_GCP_KMS_TIMEOUT`: seconds per KMS request."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigurationError("a Cloud KMS keyring needs at least one key (UNISTORE_GCP_KMS_KEYS)")
        for name in self.keys:
            if not _KEY_NAME.fullmatch(name):
                raise ConfigurationError(
                    f"{name!r} is not a crypto key name (projects/P/locations/L/keyRings/R/cryptoKeys/K)"
                )
        if len(set(self.keys)) != len(self.keys):
            raise ConfigurationError("UNISTORE_GCP_KMS_KEYS names a key twice")
        if self.primary is not None and self.primary not in self.keys:
            raise ConfigurationError(f"the primary crypto key {self.primary!r} is not in UNISTORE_GCP_KMS_KEYS")
        if not self.endpoint.startswith(("https://", "http://")):
            raise ConfigurationError("UNISTORE_GCP_KMS_ENDPOINT must be an http(s) URL")
        if self.timeout <= 0:
            raise ConfigurationError("UNISTORE_GCP_KMS_TIMEOUT must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GcpKmsKeyringSettings:
        """The settings from the ``UNISTORE_GCP_KMS_*`` variables."""
        env = os.environ if env is None else env
        timeout = env.get("UNISTORE_GCP_KMS_TIMEOUT") or "10"
        try:
            seconds = float(timeout)
        except ValueError:
            raise ConfigurationError(f"UNISTORE_GCP_KMS_TIMEOUT must be a number, not {timeout!r}") from None
        return cls(
            keys=tuple(k for k in (env.get("UNISTORE_GCP_KMS_KEYS") or "").replace(",", " ").split() if k),
            primary=env.get("UNISTORE_GCP_KMS_PRIMARY") or None,
            credentials=env.get("UNISTORE_GCP_KMS_CREDENTIALS") or None,
            endpoint=(env.get("UNISTORE_GCP_KMS_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/"),
            timeout=seconds,
        )


class GcpKmsKeyring:
    """KEKs that never leave Cloud KMS: ``wrap`` calls ``cryptoKeys.encrypt`` on the primary key,
    ``unwrap`` calls ``cryptoKeys.decrypt`` on the key the object records, both with the object's
    context as ``additionalAuthenticatedData`` (:func:`kms_aad`). Rotating a crypto key's
    version inside KMS needs no rewrap: KMS decrypts with the version that encrypted.

    A wrong context, a tampered blob or a key the keyring does not hold raises
    :class:`IntegrityError`; a disabled key version or missing permission
    :class:`PermissionDeniedError`; an unreachable or throttling KMS a :class:`TransientError`.
    OAuth tokens come from google-auth (the ``[gcs]`` extra).
    """

    def __init__(self, settings: GcpKmsKeyringSettings | None = None, **options: Any) -> None:
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self.settings = settings if settings is not None else GcpKmsKeyringSettings(**options)
        self._primary = self.settings.primary or self.settings.keys[0]
        self._google: Any = None
        self._clients: dict[asyncio.AbstractEventLoop, Any] = {}
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"GcpKmsKeyring(primary={self._primary!r}, key_ids={sorted(self.settings.keys)!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GcpKmsKeyring:
        """The keyring the ``UNISTORE_GCP_KMS_*`` variables describe."""
        return cls(GcpKmsKeyringSettings.from_env(env))

    @property
    def primary_id(self) -> str:
        """The crypto key that new data keys are wrapped under."""
        return self._primary

    def key_ids(self) -> frozenset[str]:
        """Every crypto key this keyring unwraps with."""
        return frozenset(self.settings.keys)

    def _load(self) -> Any:
        try:
            import google.auth
            import google.auth.transport.requests
        except ImportError as exc:
            raise ConfigurationError("GcpKmsKeyring needs the [gcs] extra: pip install 'unistore[gcs]'") from exc
        path = self.settings.credentials
        if path:
            # the operator's own configuration, trusted as google.auth.default() trusts it
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                creds, _ = google.auth.load_credentials_from_file(path, scopes=_SCOPES)  # type: ignore[no-untyped-call]
        else:
            creds, _ = google.auth.default(scopes=_SCOPES)
        return creds

    def _refresh(self) -> str:
        import google.auth.transport.requests

        if self._google is None:
            self._google = self._load()
        if not self._google.valid:
            self._google.refresh(google.auth.transport.requests.Request())
        return str(self._google.token)

    async def _token(self) -> str:
        loop = asyncio.get_running_loop()
        google = self._google
        if google is not None and google.valid:
            return str(google.token)
        lock = self._locks.setdefault(loop, asyncio.Lock())
        async with lock:
            try:
                return await asyncio.to_thread(self._refresh)
            except StorageError:
                raise
            except Exception as exc:
                raise _auth_error(exc) from exc

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(timeout=self.settings.timeout)
        return client

    async def _post(self, key: str, method: str, body: dict[str, str], operation: str) -> dict[str, Any]:
        import httpx

        token = await self._token()
        url = f"{self.settings.endpoint}/v1/{key}:{method}"
        try:
            r = await self._client().post(url, json=body, headers={"Authorization": f"Bearer {token}"})
        except httpx.HTTPError as exc:
            raise UnavailableError(f"Cloud KMS unreachable: {type(exc).__name__}", operation=operation) from exc
        if r.status_code != 200:
            raise _status_error(r, operation)
        try:
            answer: dict[str, Any] = r.json()
        except ValueError:
            raise UnavailableError("Cloud KMS answered something that is not JSON", operation=operation) from None
        return answer

    async def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """``dek`` encrypted by Cloud KMS under the primary crypto key, bound to ``context``."""
        body = {
            "plaintext": base64.b64encode(dek).decode(),
            "additionalAuthenticatedData": base64.b64encode(kms_aad(context)).decode(),
        }
        answer = await self._post(self._primary, "encrypt", body, "wrap")
        if not str(answer.get("name", "")).startswith(self._primary + "/cryptoKeyVersions/"):
            raise IntegrityError("Cloud KMS encrypted with another key than asked", operation="wrap")
        try:
            blob = base64.b64decode(answer["ciphertext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise UnavailableError("Cloud KMS answered no ciphertext", operation="wrap") from None
        return WrappedKey(self._primary, blob)

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key in ``wrapped``, decrypted by the crypto key it names with ``context``."""
        if wrapped.key_id not in self.settings.keys:
            raise IntegrityError(f"the keyring holds no crypto key {wrapped.key_id!r}", operation="unwrap")
        body = {
            "ciphertext": base64.b64encode(wrapped.blob).decode(),
            "additionalAuthenticatedData": base64.b64encode(kms_aad(context)).decode(),
        }
        answer = await self._post(wrapped.key_id, "decrypt", body, "unwrap")
        try:
            return base64.b64decode(answer["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise UnavailableError("Cloud KMS answered no plaintext", operation="unwrap") from None

    async def aclose(self) -> None:
        """Close the HTTP client of the running loop (safe to call twice)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()


def _status_error(r: Any, operation: str) -> StorageError:
    """The unistore error for a Cloud KMS error answer (``{"error": {"status", "message"}}``)."""
    try:
        error = r.json()["error"]
        reason, message = str(error.get("status", "")), str(error.get("message", ""))
    except Exception:
        reason, message = "", r.reason_phrase or ""
    text = f"Cloud KMS {r.status_code} {reason}: {message}".strip()
    status = r.status_code
    if status == 400 and reason == "FAILED_PRECONDITION":
        return PermissionDeniedError(text, operation=operation)  # a disabled or destroyed key version
    if status in (400, 404):
        return IntegrityError(f"the wrapped data key does not unwrap ({text})", operation=operation)
    if status in (401, 403):
        return PermissionDeniedError(text, operation=operation)
    if status == 429:
        return RateLimitedError(text, operation=operation)
    if status >= 500 or status == 408:
        return UnavailableError(text, operation=operation)
    return StorageError(text, operation=operation)


def _auth_error(exc: Exception) -> StorageError:
    """The unistore error for a failure to get an access token."""
    from google.auth import exceptions

    detail = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if isinstance(exc, exceptions.DefaultCredentialsError):
        return ConfigurationError(f"no Google credentials for Cloud KMS ({detail})", operation="token")
    if isinstance(exc, exceptions.TransportError) or getattr(exc, "retryable", False):
        return UnavailableError(f"Google token endpoint unreachable: {detail}", operation="token")
    if isinstance(exc, exceptions.GoogleAuthError):
        return PermissionDeniedError(f"could not get a Google access token: {detail}", operation="token")
    return UnavailableError(f"could not get a Google access token: {detail}", operation="token")
