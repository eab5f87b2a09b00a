"""Short-lived, scoped bearer tokens signed by the service (HMAC-SHA256), with key ids for rotation.

A token is ``ust2.{kid}.{payload}.{signature}``: ``kid`` names the secret that
signed it (a keyed fingerprint of the secret, never the secret), ``payload`` is
base64url JSON ``{"sub", "act", "pfx", "iat", "exp"}`` (subject, actions, key
prefix, issue and expiry times in Unix seconds) and ``signature =
base64url(HMAC-SHA256(secret, "ust2." + kid + "." + payload))``, compared in
constant time. Actions are ``read``, ``write``, ``delete``, ``metrics`` (scrape
``/metrics``) and ``admin`` (implies the others and may issue tokens).

Tokens are minted with the current secret and verified with it or with any
*accepted* (previous or next) secret, so a secret can be rotated with an overlap
window; dropping a secret from the accepted list revokes every token it signed.
A token is good until ``min(exp, iat + max_lifetime)``: lowering the server-wide
maximum lifetime shortens tokens already issued.

A token minted from another (:meth:`TokenAuthority.issue` with ``parent``) never
outlives, out-scopes or out-acts its parent, and its subject is the parent's
(``parent/child`` when a subject is asked for). A missing, malformed, forged,
expired or retired-key token is 401 (:class:`UnauthorizedError`); a valid token
used outside its actions or prefix is 403.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeAlias, cast

from .._errors import ConfigurationError, InvalidArgumentError, PermissionDeniedError
from .._keys import validate_prefix

__all__ = ["ACTIONS", "Action", "Grant", "TokenAuthority", "UnauthorizedError", "key_id", "secret_bytes"]

Action: TypeAlias = Literal["read", "write", "delete", "metrics", "admin"]
ACTIONS: Final[tuple[Action, ...]] = ("read", "write", "delete", "metrics", "admin")
_VERSION = "ust2"
_CLOCK_SKEW = 60
"""Seconds a token's issue time may lie ahead of this server's clock (replicas' clocks differ a little)."""
_NAME = r"[A-Za-z0-9][A-Za-z0-9@._:+=-]{0,127}"
_SUBJECT = re.compile(rf"{_NAME}(/{_NAME})*")
MAX_SUBJECT = 512


class UnauthorizedError(PermissionDeniedError):
    """No valid credentials: a missing, malformed, forged, expired or retired-key token (401)."""

    status = 401


@dataclass(frozen=True, slots=True)
class Grant:
    """What one verified token allows: ``actions`` on keys starting with ``prefix`` until ``expires``.

    ``token_id`` identifies the token (rate limits are kept per token id); it
    is empty for the grant every request has when auth is off.
    """

    subject: str
    actions: frozenset[Action]
    prefix: str
    expires: int
    token_id: str = ""

    def allows(self, action: Action) -> bool:
        """Whether ``action`` is granted (admin grants every action)."""
        return action in self.actions or "admin" in self.actions

    def require(self, action: Action, key: str) -> None:
        """Raise 403 unless ``action`` is granted and ``key`` (or a listing prefix) lies within ``prefix``."""
        if not self.allows(action):
            raise PermissionDeniedError(f"token does not grant {action}", key=key)
        if not key.startswith(self.prefix):
            raise PermissionDeniedError(f"token is restricted to keys under {self.prefix!r}", key=key)

    def lifetime_left(self, now: float | None = None) -> int:
        """Whole seconds until this grant expires (0 once expired)."""
        return max(0, self.expires - int(time.time() if now is None else now))


FULL_ACCESS: Final = Grant("anonymous", frozenset(ACTIONS), "", 2**62)
"""The grant every request has when auth is off."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def key_id(secret: bytes) -> str:
    """The id tokens signed with ``secret`` carry: a keyed fingerprint (11 base64url characters)."""
    return _b64(hmac.new(secret, b"unistore token key id", hashlib.sha256).digest())[:11]


def _check_subject(subject: object) -> str:
    if not isinstance(subject, str) or len(subject) > MAX_SUBJECT or not _SUBJECT.fullmatch(subject):
        raise InvalidArgumentError(
            "subject must be '/'-separated names of 1..128 letters, digits or @._:+=-, each starting with"
            f" a letter or digit (at most {MAX_SUBJECT} characters)"
        )
    return subject


def secret_bytes(value: object, name: str) -> bytes:
    """A secret given as bytes, or as str (UTF-8 encoded); anything else is a :class:`ConfigurationError`."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise ConfigurationError(f"{name} must be bytes or str, not {type(value).__name__}")


class TokenAuthority:
    """Issues tokens with ``secret`` and verifies them with it or any of ``accepted`` (rotation overlap)."""

    __slots__ = ("_current", "_keys", "_verified", "max_lifetime")

    cache_size: Final = 4096
    """Verified tokens remembered (least recently used forgotten first), so a client sending its
    token on every request pays for the signature check and the claims' parsing once."""

    def __init__(
        self, secret: bytes | str, *, accepted: Iterable[bytes | str] = (), max_lifetime: int = 7 * 24 * 3600
    ) -> None:
        """``secret`` and ``accepted`` are bytes, or str (used UTF-8 encoded, as ``UNISTORE_SECRET`` is)."""
        secrets = [secret_bytes(s, "token secret") for s in (secret, *accepted)]
        secret = secrets[0]
        if any(len(s) < 16 for s in secrets):
            raise ConfigurationError("token secrets must be at least 16 bytes")
        if max_lifetime < 1:
            raise ConfigurationError("max_lifetime must be >= 1 second")
        self._keys = {key_id(s): s for s in reversed(secrets)}
        self._current = key_id(secret)
        self.max_lifetime = max_lifetime
        self._verified: OrderedDict[str, tuple[Grant, int]] = OrderedDict()

    def __repr__(self) -> str:
        return f"TokenAuthority(key_id={self._current!r}, accepted={len(self._keys) - 1}, secret=<redacted>)"

    @property
    def key_id(self) -> str:
        """The id of the secret new tokens are signed with."""
        return self._current

    def _mac(self, kid: str, payload: str) -> str:
        message = f"{_VERSION}.{kid}.{payload}".encode()
        return _b64(hmac.new(self._keys[kid], message, hashlib.sha256).digest())

    def issue(
        self,
        actions: Iterable[str],
        *,
        prefix: str = "",
        expires_in: int = 3600,
        subject: str | None = None,
        parent: Grant | None = None,
        now: float | None = None,
    ) -> str:
        """A token granting ``actions`` on keys under ``prefix`` for ``expires_in`` seconds.

        ``expires_in`` is at most :attr:`max_lifetime` (400), and ``prefix`` obeys
        the key rules (400). With ``parent`` (the grant of the token asking), the
        parent must grant ``admin``, every action asked for and ``prefix``
        (403); the new token expires no later than the parent, and its subject
        is the parent's, or ``parent/subject`` when ``subject`` is given.
        Without ``parent`` the subject defaults to ``client``.
        """
        acts = sorted(set(actions))
        if not acts or any(a not in ACTIONS for a in acts):
            raise InvalidArgumentError(f"actions must be a non-empty subset of {', '.join(ACTIONS)}")
        if isinstance(expires_in, bool) or not isinstance(expires_in, int) or not 0 < expires_in <= self.max_lifetime:
            raise InvalidArgumentError(f"expires_in must be in 1..{self.max_lifetime} seconds")
        validate_prefix(prefix)
        issued = int(time.time() if now is None else now)
        expires = issued + expires_in
        if parent is None:
            subject = _check_subject("client" if subject is None else subject)
        else:
            parent.require("admin", prefix)
            for action in acts:
                parent.require(cast(Action, action), prefix)
            subject = parent.subject if subject is None else f"{parent.subject}/{_check_subject(subject)}"
            subject = _check_subject(subject)
            expires = min(expires, parent.expires)
            if expires <= issued:
                raise UnauthorizedError("bearer token has expired")
        claims = {"sub": subject, "act": acts, "pfx": prefix, "iat": issued, "exp": expires}
        payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
        kid = self._current
        return f"{_VERSION}.{kid}.{payload}.{self._mac(kid, payload)}"

    def verify(self, token: str, *, now: float | None = None) -> Grant:
        """The :class:`Grant` of a genuine, unexpired token; :class:`UnauthorizedError` otherwise.

        A token verified at the present time is remembered until it expires (at most
        :attr:`cache_size` of them), and asked again it costs a lookup and a clock read.
        """
        if now is None:
            cached = self._verified.get(token)
            if cached is not None and cached[1] == self.max_lifetime:
                if cached[0].expires > time.time():
                    self._verified.move_to_end(token)
                    return cached[0]
                del self._verified[token]
            grant = self._verify(token, time.time())
            self._verified[token] = (grant, self.max_lifetime)
            if len(self._verified) > self.cache_size:
                self._verified.popitem(last=False)
            return grant
        return self._verify(token, now)

    def _verify(self, token: str, current: float) -> Grant:
        parts = token.split(".")
        if len(parts) != 4 or parts[0] != _VERSION or not all(parts):
            raise UnauthorizedError("malformed bearer token")
        _, kid, payload, signature = parts
        if kid not in self._keys:
            raise UnauthorizedError("bearer token is signed with an unknown or retired key")
        if not hmac.compare_digest(self._mac(kid, payload).encode(), signature.encode("utf-8", "replace")):
            raise UnauthorizedError("bearer token signature is invalid")
        try:
            grant = self._grant(json.loads(_unb64(payload)), kid, payload, current)
        except (ValueError, KeyError, TypeError, InvalidArgumentError):
            raise UnauthorizedError("malformed bearer token") from None
        if grant.expires <= current:
            raise UnauthorizedError("bearer token has expired")
        return grant

    def _grant(self, data: Any, kid: str, payload: str, now: float) -> Grant:
        acts, issued, expires, prefix = data["act"], data["iat"], data["exp"], data["pfx"]
        if not isinstance(acts, list) or not acts or any(a not in ACTIONS for a in acts):
            raise ValueError("bad actions")
        if not all(type(t) is int for t in (issued, expires)) or not isinstance(prefix, str):
            raise ValueError("bad claims")
        if issued > now + _CLOCK_SKEW:
            raise ValueError("issued in the future")
        token_id = hashlib.sha256(f"{kid}.{payload}".encode()).hexdigest()[:32]
        return Grant(
            subject=_check_subject(data["sub"]),
            actions=frozenset(cast(list[Action], acts)),
            prefix=prefix,
            expires=min(expires, issued + self.max_lifetime),
            token_id=token_id,
        )

    def authenticate(self, authorization: str | None) -> Grant:
        """The grant of an ``Authorization: Bearer <token>`` header value (401 if absent or bad)."""
        if not authorization:
            raise UnauthorizedError("missing bearer token (Authorization: Bearer ...)")
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise UnauthorizedError("Authorization must use the Bearer scheme")
        return self.verify(token.strip())
