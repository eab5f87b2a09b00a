"""Keyrings: where key-encryption keys (KEKs) live, and how a data key (DEK) is wrapped."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

__all__ = ["Keyring", "WrappedKey"]


@dataclass(frozen=True)
class WrappedKey:
    """A data key wrapped by one KEK: the KEK's id and the wrapped bytes, both stored with the object."""

    key_id: str
    blob: bytes


@runtime_checkable
class Keyring(Protocol):
    """Wraps fresh data keys under the primary KEK and unwraps them under any KEK it still holds.

    ``context`` is authenticated with the wrapped key (AES-GCM associated data, a KMS
    encryption context): unwrapping with a different context fails. A blob that does not
    unwrap, or a key id the keyring does not hold, raises :class:`~unistore.IntegrityError`;
    an unreachable KMS raises a :class:`~unistore.TransientError`.
    """

    @property
    def primary_id(self) -> str:
        """The id of the KEK that new data keys are wrapped under."""
        ...

    def key_ids(self) -> frozenset[str]:
        """Every KEK id this keyring can unwrap with (the primary included)."""
        ...

    async def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        """Wrap ``dek`` under the primary KEK, bound to ``context``."""
        ...

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        """The data key inside ``wrapped``; the same ``context`` it was wrapped with is required."""
        ...
