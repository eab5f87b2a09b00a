"""The service's one typed, frozen settings object and its environment form."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from .._errors import ConfigurationError

__all__ = ["ServiceSettings"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """How the service authenticates, limits and bounds requests.

    ``auth=True`` needs ``secret`` (at least 16 bytes): bearer tokens are
    HMAC-signed with it. ``auth=False`` lets every request do everything (local
    development only). ``max_body_size`` bounds a request body (413 beyond it) and
    ``max_json_size`` a JSON one (a control request: tokens, upload sessions), read
    only after the caller is authenticated. ``header_timeout`` is how long a
    connection may take to send a request's headers (from its opening or the
    previous response; then it is closed), ``body_timeout`` how long a body may
    pause between chunks and ``body_deadline`` how long a whole body may take
    (``None``: no limit); a stalled body gets 408.
    ``token_rate``/``token_burst`` limit each token (or each client address when
    auth is off) and ``global_rate``/``global_burst`` the whole service, in
    requests per second (``None``: unlimited). ``max_list_limit`` caps a listing
    page. ``idempotency_ttl`` is how long a recorded write answers a replay;
    ``upload_ttl`` how long an upload session lives, and every
    ``upload_sweep_interval`` seconds expired ones are swept. ``webhooks`` are URLs that
    receive each completion event as signed JSON (HMAC with ``webhook_secret``,
    else ``secret``).
    """

    auth: bool = True
    secret: bytes | None = field(default=None, repr=False)
    max_body_size: int = 5 * 1024**3
    max_json_size: int = 1024**2
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    body_deadline: float | None = None
    token_rate: float | None = None
    token_burst: int | None = None
    global_rate: float | None = None
    global_burst: int | None = None
    max_list_limit: int = 1000
    idempotency_ttl: float = 24 * 3600.0
    max_token_lifetime: int = 7 * 24 * 3600
    upload_ttl: float = 24 * 3600.0
    upload_sweep_interval: float = 600.0
    webhooks: tuple[str, ...] = ()
    webhook_secret: bytes | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.auth and (self.secret is None or len(self.secret) < 16):
            raise ConfigurationError(
                "auth needs a secret of at least 16 bytes (UNISTORE_SECRET); set UNISTORE_AUTH=off for local use"
            )
        if min(self.max_body_size, self.max_json_size) < 1:
            raise ConfigurationError("max_body_size and max_json_size must be >= 1")
        if min(self.header_timeout, self.body_timeout, self.body_deadline or 1.0) <= 0:
            raise ConfigurationError("header_timeout, body_timeout and body_deadline must be > 0")
        for name in ("token_rate", "global_rate"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ConfigurationError(f"{name} must be > 0")
        for name in ("token_burst", "global_burst"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigurationError(f"{name} must be >= 1")
        if not 1 <= self.max_list_limit <= 100_000:
            raise ConfigurationError("max_list_limit must be in 1..100000")
        for url in self.webhooks:
            if not url.startswith(("http://", "https://")):
                raise ConfigurationError(f"webhook URL must be http(s): {url!r}")
        if min(self.idempotency_ttl, self.max_token_lifetime, self.upload_ttl, self.upload_sweep_interval) <= 0:
            raise ConfigurationError(
                "idempotency_ttl, max_token_lifetime, upload_ttl and upload_sweep_interval must be > 0"
            )

    def __repr__(self) -> str:
        secret = "<redacted>" if self.secret else None
        return (
            f"ServiceSettings(auth={self.auth}, secret={secret}, max_body_size={self.max_body_size}, "
            f"token_rate={self.token_rate}, global_rate={self.global_rate})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read ``UNISTORE_SECRET``, ``UNISTORE_AUTH`` (on/off), ``UNISTORE_MAX_BODY_SIZE``,
        ``UNISTORE_MAX_JSON_SIZE``, ``UNISTORE_HEADER_TIMEOUT``, ``UNISTORE_BODY_TIMEOUT``,
        ``UNISTORE_BODY_DEADLINE`` (seconds),
        ``UNISTORE_TOKEN_RATE``, ``UNISTORE_TOKEN_BURST``, ``UNISTORE_GLOBAL_RATE``,
        ``UNISTORE_GLOBAL_BURST``, ``UNISTORE_UPLOAD_TTL``, ``UNISTORE_UPLOAD_SWEEP_INTERVAL``,
        ``UNISTORE_WEBHOOKS`` (URLs separated by commas or spaces), ``UNISTORE_WEBHOOK_SECRET``.
        Auth is on unless ``UNISTORE_AUTH`` says off."""
        env = os.environ if env is None else env
        auth_text = env.get("UNISTORE_AUTH", "on").strip().lower()
        if auth_text not in _TRUE | _FALSE:
            raise ConfigurationError("UNISTORE_AUTH must be on or off")
        secret = env.get("UNISTORE_SECRET")
        hook_secret = env.get("UNISTORE_WEBHOOK_SECRET")
        kwargs: dict[str, object] = {
            "auth": auth_text in _TRUE,
            "secret": secret.encode() if secret else None,
            "webhooks": tuple(env.get("UNISTORE_WEBHOOKS", "").replace(",", " ").split()),
            "webhook_secret": hook_secret.encode() if hook_secret else None,
        }
        casts: dict[str, type] = {
            "max_body_size": int,
            "max_json_size": int,
            "header_timeout": float,
            "body_timeout": float,
            "body_deadline": float,
            "token_rate": float,
            "token_burst": int,
            "global_rate": float,
            "global_burst": int,
            "upload_ttl": float,
            "upload_sweep_interval": float,
        }
        for name, cast in casts.items():
            raw = env.get("UNISTORE_" + name.upper())
            if raw:
                try:
                    kwargs[name] = cast(raw)
                except ValueError:
                    raise ConfigurationError(f"UNISTORE_{name.upper()} must be a {cast.__name__}") from None
        return cls(**kwargs)  # type: ignore[arg-type]
