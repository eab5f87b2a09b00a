"""Client-side envelope encryption: keyrings, the :class:`Encrypt` layer and key rotation."""

from ._keyring import Keyring, WrappedKey

__all__ = ["Keyring", "WrappedKey"]
