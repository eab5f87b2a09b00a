"""Client-side envelope encryption: keyrings, the :class:`Encrypt` layer and key rotation.

``Encrypt(backend, keyring)`` encrypts every body with its own data key, wrapped by the
keyring's primary key-encryption key (``docs/encryption.md``).
"""

from ._encrypt import (
    ALGORITHM,
    META_ALGORITHM,
    META_HEADER,
    META_KEY_ID,
    META_PLAINTEXT_SHA256,
    META_PLAINTEXT_SIZE,
    META_SEGMENT_SIZE,
    META_WRAPPED_KEY,
    Encrypt,
    EncryptedObjectInfo,
    EncryptionInfo,
    associated_data,
    wrap_context,
)
from ._keyring import Keyring, WrappedKey
from ._keyring_env import KeyringSettings, keyring_from_env
from ._kms_aws import AwsKmsKeyring, AwsKmsKeyringSettings
from ._kms_gcp import GcpKmsKeyring, GcpKmsKeyringSettings
from ._local import LocalKeyring, LocalKeyringSettings
from ._rotate import (
    KeyInUseError,
    KeyUsage,
    RotationConflictError,
    RotationProgress,
    RotationReport,
    key_usage,
    reencrypt,
    retire_key,
    rewrap,
    rotate,
)

__all__ = [
    "ALGORITHM",
    "AwsKmsKeyring",
    "AwsKmsKeyringSettings",
    "Encrypt",
    "EncryptedObjectInfo",
    "EncryptionInfo",
    "GcpKmsKeyring",
    "GcpKmsKeyringSettings",
    "KeyInUseError",
    "KeyUsage",
    "Keyring",
    "KeyringSettings",
    "LocalKeyring",
    "LocalKeyringSettings",
    "META_ALGORITHM",
    "META_HEADER",
    "META_KEY_ID",
    "META_PLAINTEXT_SHA256",
    "META_PLAINTEXT_SIZE",
    "META_SEGMENT_SIZE",
    "META_WRAPPED_KEY",
    "RotationConflictError",
    "RotationProgress",
    "RotationReport",
    "WrappedKey",
    "associated_data",
    "key_usage",
    "keyring_from_env",
    "reencrypt",
    "retire_key",
    "rewrap",
    "rotate",
    "wrap_context",
]
