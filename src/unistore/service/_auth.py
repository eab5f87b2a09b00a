"""Short-lived, scoped bearer tokens signed by the service (HMAC-SHA256).

A token is ``ust1.{payload}.{signature}``: ``payload`` is base64url JSON
``{"sub", "act", "pfx", "exp"}`` (subject, actions, key prefix, expiry in Unix
seconds) and ``signature = base64url(HMAC-SHA256(secret, "ust1." + payload))``,
compared in constant time. Actions are ``read``, ``write``, ``delete`` and
``admin`` (admin implies the others and may issue tokens within its own scope).
A missing, malformed, forged or expired token is 401 (:class:`UnauthorizedError`);
a valid token used outside its actions or prefix is 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias, cast

from .._errors import ConfigurationError, InvalidArgumentError, PermissionDeniedError

__all__ = ["ACTIONS", "Action", "Grant", "TokenAuthority", "UnauthorizedError"]

Action: TypeAlias = Literal["read", "write", "delete", "admin"]
ACTIONS: Final[tuple[Action, ...]] = ("read", "write", "delete", "admin")
_VERSION = "ust1"


class UnauthorizedError(PermissionDeniedError):
    """No valid credentials: a missing, malformed, forged or expired token (401)."""

    status = 401


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows: ``actions`` on keys starting with ``prefix`` until ``expires``."""

    subject: str
    actions: frozenset[Action]
    prefix: str
    expires: int

    def allows(self, action: Action) -> bool:
        """Whether ``action`` is granted (admin grants every action)."""
        return action in self.actions or "admin" in self.actions

    def require(self, action: Action, key: str) -> None:
        """Raise 403 unless ``action`` is granted and ``key`` (or a listing prefix) lies within ``prefix``."""
        if not self.allows(action):
            raise PermissionDeniedError(f"token does not grant {action}", key=key)
        if not key.startswith(self.prefix):
            raise PermissionDeniedError(f"token is restricted to keys under {self.prefix!r}", key=key)


FULL_ACCESS: Final = Grant("anonymous", frozenset(ACTIONS), "", 2**62)
"""The grant every request has when auth is off."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenAuthority:
    """Issues and verifies tokens with one secret."""

    __slots__ = ("_secret", "max_lifetime")

    def __init__(self, secret: bytes, *, max_lifetime: int = 7 * 24 * 3600) -> None:
        if len(secret) < 16:
            raise ConfigurationError("token secret must be at least 16 bytes")
        self._secret = secret
        self.max_lifetime = max_lifetime

    def __repr__(self) -> str:
        return "TokenAuthority(secret=<redacted>)"

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, f"{_VERSION}.{payload}".encode(), hashlib.sha256).digest())

    def issue(
        self,
        actions: Iterable[str],
        *,
        prefix: str = "",
        expires_in: int = 3600,
        subject: str = "client",
        now: float | None = None,
    ) -> str:
        """A token granting ``actions`` on keys under ``prefix`` for ``expires_in`` seconds."""
        acts = sorted(set(actions))
        if not acts or any(a not in ACTIONS for a in acts):
            raise InvalidArgumentError(f"actions must be a non-empty subset of {', '.join(ACTIONS)}")
        if not 0 < expires_in <= self.max_lifetime:
            raise InvalidArgumentError(f"expires_in must be in 1..{self.max_lifetime} seconds")
        if not isinstance(prefix, str) or not isinstance(subject, str) or not subject:
            raise InvalidArgumentError("prefix and subject must be strings (subject non-empty)")
        expires = int(time.time() if now is None else now) + expires_in
        body = json.dumps({"sub": subject, "act": acts, "pfx": prefix, "exp": expires}, separators=(",", ":"))
        payload = _b64(body.encode())
        return f"{_VERSION}.{payload}.{self._mac(payload)}"

    def verify(self, token: str, *, now: float | None = None) -> Grant:
        """The :class:`Grant` of a genuine, unexpired token; :class:`UnauthorizedError` otherwise."""
        version, _, rest = token.partition(".")
        payload, _, signature = rest.partition(".")
        if version != _VERSION or not payload or not signature:
            raise UnauthorizedError("malformed bearer token")
        if not hmac.compare_digest(self._mac(payload).encode(), signature.encode("utf-8", "replace")):
            raise UnauthorizedError("bearer token signature is invalid")
        try:
            data = json.loads(_unb64(payload))
            grant = Grant(
                subject=str(data["sub"]),
                actions=frozenset(cast(list[Action], [a for a in data["act"] if a in ACTIONS])),
                prefix=str(data["pfx"]),
                expires=int(data["exp"]),
            )
        except (ValueError, KeyError, TypeError):
            raise UnauthorizedError("malformed bearer token") from None
        if (time.time() if now is None else now) >= grant.expires:
            raise UnauthorizedError("bearer token has expired")
        return grant

    def authenticate(self, authorization: str | None) -> Grant:
        """The grant of an ``Authorization: Bearer <token>`` header value (401 if absent or bad)."""
        if not authorization:
            raise UnauthorizedError("missing bearer token (Authorization: Bearer ...)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("Authorization must use the Bearer scheme")
        return self.verify(token.strip())
