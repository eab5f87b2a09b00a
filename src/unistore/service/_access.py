"""Who may do what: authentication, rate limits and scope, checked in that order on every route."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Request

from .._base import StorageBackend
from ._auth import FULL_ACCESS, Action, Grant, TokenAuthority
from ._limits import Buckets
from ._settings import ServiceSettings

__all__ = ["ServiceContext"]

_ADMITTED = "unistore.grant"


@dataclass(slots=True)
class ServiceContext:
    """What the routes share: the layered store, the settings, the token authority and the limiters."""

    storage: StorageBackend
    settings: ServiceSettings
    authority: TokenAuthority | None
    per_client: Buckets | None
    overall: Buckets | None

    @classmethod
    def build(cls, storage: StorageBackend, settings: ServiceSettings) -> ServiceContext:
        authority = None
        if settings.auth:
            assert settings.secret is not None  # checked by ServiceSettings
            authority = TokenAuthority(settings.secret, max_lifetime=settings.max_token_lifetime)
        per_client = Buckets(settings.token_rate, settings.token_burst) if settings.token_rate else None
        overall = Buckets(settings.global_rate, settings.global_burst) if settings.global_rate else None
        return cls(storage, settings, authority, per_client, overall)

    def grant(self, request: Request) -> tuple[Grant, str]:
        """The request's grant (401 if auth is on and it has none) and its rate-limit identity."""
        if self.authority is None:
            host = request.client.host if request.client else "unknown"
            return FULL_ACCESS, "addr:" + host
        header = request.headers.get("authorization")
        grant = self.authority.authenticate(header)
        assert header is not None
        return grant, "token:" + hashlib.sha256(header.encode()).hexdigest()[:32]

    def admit(self, request: Request) -> Grant:
        """Authenticate (401), then rate-limit (429): the grant to check scopes against.

        Done once per request: a route that admits again (after its JSON body was
        read) gets the same grant without spending another rate-limit token."""
        admitted: Grant | None = request.scope.get(_ADMITTED)
        if admitted is not None:
            return admitted
        grant, client = self.grant(request)
        if self.per_client is not None:
            self.per_client.take(client, what="per-client rate limit")
        if self.overall is not None:
            self.overall.take("*", what="service rate limit")
        request.scope[_ADMITTED] = grant
        return grant

    def check(self, request: Request, action: Action, key: str) -> Grant:
        """:meth:`admit`, then require ``action`` on ``key`` (403)."""
        grant = self.admit(request)
        grant.require(action, key)
        return grant
