"""Who may do what: rate limits (before routing, see :mod:`._limits`), then authentication and scope."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from .._base import StorageBackend
from .._errors import StorageError
from ..layers import Scoped, ValidationPolicy
from ._auth import FULL_ACCESS, Action, Grant, TokenAuthority
from ._limits import GRANT_STATE, Buckets, Limiter
from ._redis import RedisBuckets, RedisLink
from ._settings import ServiceSettings

__all__ = ["ServiceContext"]


def _address(request: Request) -> str:
    return "addr:" + (request.client.host if request.client else "unknown")


@dataclass(slots=True)
class ServiceContext:
    """What the routes share: the layered store, the settings, the token authority and the limiters."""

    storage: StorageBackend
    settings: ServiceSettings
    authority: TokenAuthority | None
    per_client: Limiter | None
    overall: Limiter | None
    redis: RedisLink | None = None
    upload_policy: ValidationPolicy | None = None

    @classmethod
    def build(cls, storage: StorageBackend, settings: ServiceSettings) -> ServiceContext:
        authority = None
        if settings.auth:
            assert settings.secret is not None  # checked by ServiceSettings
            authority = TokenAuthority(
                settings.secret, accepted=settings.accepted_secrets, max_lifetime=settings.max_token_lifetime
            )
        redis = RedisLink(settings.redis_url, prefix=settings.redis_prefix) if settings.redis_url else None

        def limiter(name: str, rate: float | None, burst: int | None) -> Limiter | None:
            if not rate:
                return None
            local = Buckets(rate, burst)
            return local if redis is None else RedisBuckets(redis, name, local)

        per_client = limiter("client", settings.token_rate, settings.token_burst)
        overall = limiter("service", settings.global_rate, settings.global_burst)
        return cls(storage, settings, authority, per_client, overall, redis, settings.upload_policy)

    def identify(self, request: Request) -> tuple[str, Grant | None, bool]:
        """The rate-limit identity: the verified token's id, else the client address (auth off, or no valid token).

        Also the grant (``None`` without a valid token) and whether the request
        spends the service-wide budget (only requests with a valid token do, or all when auth is off).
        """
        if self.authority is None:
            return _address(request), FULL_ACCESS, True
        try:
            grant = self.authority.authenticate(request.headers.get("authorization"))
        except StorageError:
            return _address(request), None, False
        return "token:" + grant.token_id, grant, True

    def grant(self, request: Request) -> Grant:
        """The request's grant (401 if auth is on and it has no valid token)."""
        verified = getattr(request.state, GRANT_STATE, None)
        if isinstance(verified, Grant):
            return verified
        if self.authority is None:
            return FULL_ACCESS
        return self.authority.authenticate(request.headers.get("authorization"))

    def admit(self, request: Request) -> Grant:
        """Authenticate (401): the grant to check scopes against (rate limits were applied before routing)."""
        return self.grant(request)

    def check(self, request: Request, action: Action, key: str) -> Grant:
        """:meth:`admit`, then require ``action`` on ``key`` (403)."""
        grant = self.admit(request)
        grant.require(action, key)
        return grant

    def store(self, grant: Grant) -> StorageBackend:
        """The store as ``grant`` reaches it: a view confined to the token's prefix (keys stay absolute).

        Routes check the grant first (401/403 before a body is read); the view then
        enforces the prefix by construction on every call the route makes.
        """
        if not grant.prefix:
            return self.storage
        return Scoped(self.storage, grant.prefix, relative=False)

    def url_lifetime(self, grant: Grant, expires_in: int) -> int:
        """``expires_in`` capped so a URL minted with ``grant`` never outlives its token."""
        if self.authority is None:
            return expires_in
        return max(1, min(expires_in, grant.lifetime_left()))
