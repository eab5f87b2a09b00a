"""A keyring whose KEKs are AWS KMS keys: data keys are wrapped by the KMS ``Encrypt`` API."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
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

__all__ = ["AwsKmsKeyring", "AwsKmsKeyringSettings"]

_INTEGRITY = {"InvalidCiphertextException", "IncorrectKeyException", "NotFoundException", "InvalidKeyUsageException"}
_DENIED = {"AccessDeniedException", "DisabledException", "KMSInvalidStateException", "UnrecognizedClientException"}
_THROTTLED = {"ThrottlingException", "LimitExceededException", "RequestLimitExceeded"}


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(item for item in (text or "").replace(",", " ").split() if item)


@dataclass(frozen=True)
class AwsKmsKeyringSettings:
    """Which AWS KMS keys an :class:`AwsKmsKeyring` uses. Read by :meth:`from_env` from ``UNISTORE_AWS_KMS_*``."""

    keys: tuple[str, ...] = ()
    """`UNISTORE_AWS_KMS_KEYS`: the KMS keys (key ARNs, key ids or `alias/...` names), separated by commas or
    whitespace; each is also the KEK id stored with the objects it wraps. The first is the primary unless
    `primary` names another."""
    primary: str | None = None
    """`UNISTORE_AWS_KMS_PRIMARY`: the key new data keys are wrapped under; unset: the first of `keys`."""
    region: str | None = None
    """`UNISTORE_AWS_KMS_REGION`: the KMS region; unset: `AWS_REGION`/`AWS_DEFAULT_REGION`, else the region of
    a key ARN."""
    endpoint: str | None = None
    """`UNISTORE_AWS_KMS_ENDPOINT`: another KMS endpoint URL (a VPC endpoint, a test server); unset: AWS's."""
    access_key: str | None = field(default=None, repr=False)
    """`UNISTORE_AWS_KMS_ACCESS_KEY`: an access key id; unset: botocore's standard chain (`AWS_ACCESS_KEY_ID`,
    profile, SSO, web identity, container, IMDS)."""
    secret_key: str | None = field(default=None, repr=False)
    """`UNISTORE_AWS_KMS_SECRET_KEY`: the secret of `access_key`."""
    timeout: float = 10.0
    """`UNISTORE_AWS_KMS_TIMEOUT`: seconds to connect, and again to read an answer, per KMS request."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise ConfigurationError("an AWS KMS keyring needs at least one key (UNISTORE_AWS_KMS_KEYS)")
        if len(set(self.keys)) != len(self.keys):
            raise ConfigurationError("UNISTORE_AWS_KMS_KEYS names a key twice")
        if self.primary is not None and self.primary not in self.keys:
            raise ConfigurationError(f"the primary KMS key {self.primary!r} is not in UNISTORE_AWS_KMS_KEYS")
        if (self.access_key is None) != (self.secret_key is None):
            raise ConfigurationError("set both UNISTORE_AWS_KMS_ACCESS_KEY and UNISTORE_AWS_KMS_SECRET_KEY, or neither")
        if self.timeout <= 0:
            raise ConfigurationError("UNISTORE_AWS_KMS_TIMEOUT must be positive")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AwsKmsKeyringSettings:
        """The settings from the ``UNISTORE_AWS_KMS_*`` variables."""
        env = os.environ if env is None else env
        timeout = env.get("UNISTORE_AWS_KMS_TIMEOUT") or "10"
        try:
            seconds = float(timeout)
        except ValueError:
            raise ConfigurationError(f"UNISTORE_AWS_KMS_TIMEOUT must be a number, not {timeout!r}") from None
        return cls(
            keys=_split(env.get("UNISTORE_AWS_KMS_KEYS")),
            primary=env.get("UNISTORE_AWS_KMS_PRIMARY") or None,
            region=env.get("UNISTORE_AWS_KMS_REGION") or None,
            endpoint=env.get("UNISTORE_AWS_KMS_ENDPOINT") or None,
            access_key=env.get("UNISTORE_AWS_KMS_ACCESS_KEY") or None,
            secret_key=env.get("UNISTORE_AWS_KMS_SECRET_KEY") or None,
            timeout=seconds,
        )


class AwsKmsKeyring:
    """KEKs that never leave AWS KMS: ``wrap`` calls KMS ``Encrypt`` under the primary key,
    ``unwrap`` calls ``Decrypt`` naming the key the object records, both with the object's
    context as the KMS *encryption context* (logged by CloudTrail, required to decrypt).

    A wrong context, a tampered blob or a key the keyring does not hold raises
    :class:`IntegrityError`; a disabled key or missing permission :class:`PermissionDeniedError`;
    an unreachable or throttling KMS a :class:`TransientError`. Needs the ``[s3]`` extra
    (aiobotocore). One client per event loop, closed by :meth:`aclose`.
    """

    def __init__(self, settings: AwsKmsKeyringSettings | None = None, **options: Any) -> None:
        self.settings = settings if settings is not None else AwsKmsKeyringSettings(**options)
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self._primary = self.settings.primary or self.settings.keys[0]
        self._client: Any = None
        self._context: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        return f"AwsKmsKeyring(primary={self._primary!r}, key_ids={sorted(self.settings.keys)!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AwsKmsKeyring:
        """The keyring the ``UNISTORE_AWS_KMS_*`` variables describe."""
        return cls(AwsKmsKeyringSettings.from_env(env))

    @property
    def primary_id(self) -> str:
        """The KMS key that new data keys are wrapped under."""
        return self._primary

    def key_ids(self) -> frozenset[str]:
        """Every KMS key this keyring unwraps with."""
        return frozenset(self.settings.keys)

    def _region(self) -> str:
        s = self.settings
        if s.region:
            return s.region
        env = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if env:
            return env
        if self._primary.startswith("arn:"):
            return self._primary.split(":")[3]
        raise ConfigurationError("no KMS region: set UNISTORE_AWS_KMS_REGION or AWS_REGION, or use key ARNs")

    async def _kms(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        if self._lock is None or self._loop is not loop:
            self._lock = asyncio.Lock()
            self._client = self._context = None
            self._loop = loop
        async with self._lock:
            if self._client is None:
                try:
                    from aiobotocore.config import AioConfig
                    from aiobotocore.session import get_session
                except ImportError as exc:
                    raise ConfigurationError("AwsKmsKeyring needs the [s3] extra: pip install 'unistore[s3]'") from exc
                s = self.settings
                config = AioConfig(
                    connect_timeout=s.timeout, read_timeout=s.timeout, retries={"max_attempts": 2, "mode": "standard"}
                )
                kwargs: dict[str, Any] = {"region_name": self._region(), "config": config}
                if s.endpoint:
                    kwargs["endpoint_url"] = s.endpoint
                if s.access_key:
                    kwargs["aws_access_key_id"] = s.access_key
                    kwargs["aws_secret_access_key"] = s.secret_key
                context = get_session().create_client("kms", **kwargs)
                self._client = await context.__aenter__()
                self._context = context
        return self._client

    async def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """``dek`` encrypted by KMS under the primary key, bound to ``context``."""
        client = await self._kms()
        answer = await self._call(
            client.encrypt, "wrap", KeyId=self._primary, Plaintext=dek, EncryptionContext=dict(context)
        )
        return WrappedKey(self._primary, bytes(answer["CiphertextBlob"]))

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key in ``wrapped``, decrypted by KMS with the key it names and ``context``."""
        if wrapped.key_id not in self.settings.keys:
            raise IntegrityError(f"the keyring holds no KMS key {wrapped.key_id!r}", operation="unwrap")
        client = await self._kms()
        answer = await self._call(
            client.decrypt,
            "unwrap",
            KeyId=wrapped.key_id,
            CiphertextBlob=wrapped.blob,
            EncryptionContext=dict(context),
        )
        return bytes(answer["Plaintext"])

    async def _call(self, method: Any, operation: str, **kwargs: Any) -> Any:
        try:
            return await method(**kwargs)
        except Exception as exc:
            raise _translate(exc, operation) from exc

    async def aclose(self) -> None:
        """Close the KMS client (safe to call twice)."""
        context, self._context, self._client = self._context, None, None
        if context is not None:
            await context.__aexit__(None, None, None)


def _translate(exc: Exception, operation: str) -> StorageError:
    """The unistore error for a failed KMS call."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        message = f"KMS {code}: {error.get('Message', '')}".strip()
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _INTEGRITY:
            return IntegrityError(f"the wrapped data key does not unwrap ({message})", operation=operation)
        if code in _DENIED:
            return PermissionDeniedError(message, operation=operation)
        if code in _THROTTLED or status == 429:
            return RateLimitedError(message, operation=operation)
        if status >= 500 or code in ("KMSInternalException", "DependencyTimeoutException"):
            return UnavailableError(message, operation=operation)
        return StorageError(message, operation=operation)
    if isinstance(exc, BotoCoreError | OSError | asyncio.TimeoutError):
        return UnavailableError(f"KMS unreachable: {type(exc).__name__}: {exc}", operation=operation)
    return StorageError(f"KMS call failed: {type(exc).__name__}: {exc}", operation=operation)
