"""A keyring holding its KEKs in process memory, read from the environment or a JSON file."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .._errors import ConfigurationError, IntegrityError
from ._keyring import WrappedKey

__all__ = ["LocalKeyring", "LocalKeyringSettings", "context_bytes"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_VERSION = b"\x01"
_NONCE = 12


def context_bytes(key_id: str, context: Mapping[str, str]) -> bytes:
    """The associated data a wrapped key is bound to: the KEK id and the context, canonically encoded."""
    body = json.dumps(dict(context), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return b"unistore-keyring-v1\x00" + key_id.encode() + b"\x00" + body.encode("utf-8", "surrogatepass")


def _decode_key(key_id: str, text: str) -> bytes:
    text = text.strip()
    padded = (text + "=" * (-len(text) % 4)).encode()
    try:
        raw = base64.b64decode(padded, altchars=b"-_" if b"-" in padded or b"_" in padded else None, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"keyring key {key_id!r} is not base64") from None
    if len(raw) != 32:
        raise ConfigurationError(f"keyring key {key_id!r} must be 32 bytes (AES-256), not {len(raw)}")
    return raw


@dataclass(frozen=True)
class LocalKeyringSettings:
    """Where a :class:`LocalKeyring` finds its keys. Read by :meth:`from_env` from ``UNISTORE_KEYRING*``."""

    keys: str | None = field(default=None, repr=False)
    """`UNISTORE_KEYRING`: KEKs as `id:base64key` pairs separated by commas or whitespace (32-byte keys, standard
    or URL-safe base64; ids of letters, digits, `.`, `_`, `-`). The first is the primary unless `primary` names
    another."""
    file: str | None = None
    """`UNISTORE_KEYRING_FILE`: a JSON file `{"primary": "id", "keys": {"id": "base64key", ...}}`; its keys join
    those of `keys` (an id in both must hold the same key)."""
    primary: str | None = None
    """`UNISTORE_KEYRING_PRIMARY`: the id new data keys are wrapped under; unset: the file's `primary`, else the
    first key of `keys`."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalKeyringSettings:
        """The settings from ``UNISTORE_KEYRING``, ``UNISTORE_KEYRING_FILE`` and ``UNISTORE_KEYRING_PRIMARY``."""
        env = os.environ if env is None else env
        return cls(
            keys=env.get("UNISTORE_KEYRING") or None,
            file=env.get("UNISTORE_KEYRING_FILE") or None,
            primary=env.get("UNISTORE_KEYRING_PRIMARY") or None,
        )


class LocalKeyring:
    """KEKs held in memory: AES-256 keys by id, one of them the primary.

    A data key is wrapped with AES-256-GCM under the primary KEK, with the KEK id and the
    context as associated data; the blob is ``0x01 || nonce (12) || ciphertext || tag (16)``.
    Keep old KEKs in the keyring while objects still use them.
    """

    def __init__(self, keys: Mapping[str, bytes], primary: str | None = None) -> None:
        if not keys:
            raise ConfigurationError("a keyring needs at least one key (UNISTORE_KEYRING or UNISTORE_KEYRING_FILE)")
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _ID.fullmatch(key_id):
                raise ConfigurationError(f"keyring key id {key_id!r} must match [A-Za-z0-9][A-Za-z0-9._-]*")
            if not isinstance(key, bytes) or len(key) != 32:
                raise ConfigurationError(f"keyring key {key_id!r} must be 32 bytes (AES-256)")
        primary = primary if primary is not None else next(iter(keys))
        if primary not in keys:
            raise ConfigurationError(f"the primary key id {primary!r} is not in the keyring")
        self._aeads = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._primary = primary

    def __repr__(self) -> str:
        return f"LocalKeyring(primary={self._primary!r}, key_ids={sorted(self._aeads)!r})"

    @staticmethod
    def generate_key() -> str:
        """A fresh random 32-byte KEK, base64-encoded (for ``UNISTORE_KEYRING``)."""
        return base64.b64encode(os.urandom(32)).decode()

    @classmethod
    def from_settings(cls, settings: LocalKeyringSettings) -> LocalKeyring:
        """The keyring ``settings`` describe."""
        keys: dict[str, bytes] = {}
        for item in re.split(r"[,\s]+", settings.keys or ""):
            if not item:
                continue
            key_id, sep, text = item.partition(":")
            if not sep:
                raise ConfigurationError("UNISTORE_KEYRING entries are id:base64key")
            if key_id in keys:
                raise ConfigurationError(f"keyring key id {key_id!r} given twice")
            keys[key_id] = _decode_key(key_id, text)
        primary = settings.primary
        if settings.file:
            try:
                doc = json.loads(Path(settings.file).read_text())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(f"cannot read the keyring file {settings.file}: {exc}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
                raise ConfigurationError('the keyring file must be {"primary": "id", "keys": {"id": "base64key"}}')
            for key_id, text in doc["keys"].items():
                if not isinstance(text, str):
                    raise ConfigurationError(f"keyring key {key_id!r} must be base64 text")
                key = _decode_key(key_id, text)
                if keys.setdefault(key_id, key) != key:
                    raise ConfigurationError(f"keyring key id {key_id!r} holds two different keys")
            file_primary = doc.get("primary")
            if primary is None and isinstance(file_primary, str):
                primary = file_primary
        return cls(keys, primary)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LocalKeyring:
        """The keyring the ``UNISTORE_KEYRING*`` variables describe."""
        return cls.from_settings(LocalKeyringSettings.from_env(env))

    @property
    def primary_id(self) -> str:
        """The id of the KEK that new data keys are wrapped under."""
        return self._primary

    def key_ids(self) -> frozenset[str]:
        """Every KEK id held."""
        return frozenset(self._aeads)

    async def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """``dek`` sealed under the primary KEK, bound to its id and ``context``."""
        nonce = os.urandom(_NONCE)
        sealed = self._aeads[self._primary].encrypt(nonce, dek, context_bytes(self._primary, context))
        return WrappedKey(self._primary, _VERSION + nonce + sealed)

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key in ``wrapped``; IntegrityError for an unknown KEK id, a bad blob or another context."""
        aead = self._aeads.get(wrapped.key_id)
        if aead is None:
            raise IntegrityError(f"the keyring holds no key {wrapped.key_id!r}")
        blob = wrapped.blob
        if len(blob) < 1 + _NONCE + 16 or blob[:1] != _VERSION:
            raise IntegrityError("the wrapped data key is malformed")
        try:
            return aead.decrypt(blob[1 : 1 + _NONCE], blob[1 + _NONCE :], context_bytes(wrapped.key_id, context))
        except InvalidTag:
            raise IntegrityError(f"the wrapped data key does not unwrap under {wrapped.key_id!r}") from None
