"""Choosing and building a keyring from the environment: :func:`keyring_from_env`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .._errors import ConfigurationError
from ._keyring import Keyring

__all__ = ["KEYRING_KINDS", "KEYRING_SETTINGS", "KeyringSettings", "keyring_from_env"]

KEYRING_KINDS = ("local", "aws-kms", "gcp-kms")
"""The keyring kinds ``UNISTORE_KEYRING_KIND`` names."""


@dataclass(frozen=True)
class KeyringSettings:
    """Which keyring :func:`keyring_from_env` builds."""

    kind: Literal["local", "aws-kms", "gcp-kms"] | None = None
    """`UNISTORE_KEYRING_KIND`: `local` (`UNISTORE_KEYRING*`), `aws-kms` (`UNISTORE_AWS_KMS_*`) or `gcp-kms`
    (`UNISTORE_GCP_KMS_*`); unset: the first of them whose keys are set (`UNISTORE_KEYRING` or
    `UNISTORE_KEYRING_FILE`, `UNISTORE_AWS_KMS_KEYS`, `UNISTORE_GCP_KMS_KEYS`)."""

    def __post_init__(self) -> None:
        if self.kind is not None and self.kind not in KEYRING_KINDS:
            raise ConfigurationError(f"UNISTORE_KEYRING_KIND must be one of {', '.join(KEYRING_KINDS)}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> KeyringSettings:
        """The settings from ``UNISTORE_KEYRING_KIND``, else the kind whose keys are set."""
        env = os.environ if env is None else env
        kind: Any = (env.get("UNISTORE_KEYRING_KIND") or "").strip().lower() or None
        if kind is None:
            if env.get("UNISTORE_KEYRING") or env.get("UNISTORE_KEYRING_FILE"):
                kind = "local"
            elif env.get("UNISTORE_AWS_KMS_KEYS"):
                kind = "aws-kms"
            elif env.get("UNISTORE_GCP_KMS_KEYS"):
                kind = "gcp-kms"
        return cls(kind=kind)


def _settings_classes() -> tuple[tuple[str, type[Any]], ...]:
    from ._kms_aws import AwsKmsKeyringSettings
    from ._kms_gcp import GcpKmsKeyringSettings

    return (
        ("Choosing the keyring", KeyringSettings),
        ("AWS KMS (`aws-kms`)", AwsKmsKeyringSettings),
        ("Google Cloud KMS (`gcp-kms`)", GcpKmsKeyringSettings),
    )


KEYRING_SETTINGS = _settings_classes
"""A callable returning each keyring settings class with its section title (for the configuration reference)."""


def keyring_from_env(env: Mapping[str, str] | None = None) -> Keyring:
    """The keyring the environment configures (see :class:`KeyringSettings`); ConfigurationError if none is."""
    env = os.environ if env is None else env
    kind = KeyringSettings.from_env(env).kind
    if kind == "local":
        from ._local import LocalKeyring

        return LocalKeyring.from_env(env)
    if kind == "aws-kms":
        from ._kms_aws import AwsKmsKeyring

        return AwsKmsKeyring.from_env(env)
    if kind == "gcp-kms":
        from ._kms_gcp import GcpKmsKeyring

        return GcpKmsKeyring.from_env(env)
    raise ConfigurationError(
        "no keyring configured: set UNISTORE_KEYRING (id:base64key pairs), UNISTORE_AWS_KMS_KEYS or "
        "UNISTORE_GCP_KMS_KEYS"
    )
