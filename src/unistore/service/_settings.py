"""The service's one typed, frozen settings object and its environment form."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._errors import ConfigurationError, StorageError
from ..layers._validate import UploadRule, ValidationPolicy
from ._auth import secret_bytes

__all__ = ["KEY_LABELS", "ServiceSettings", "metrics_bind", "upload_rules_from_json"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
KEY_LABELS = ("hash", "prefix", "raw", "off")


def _words(text: str) -> list[str]:
    return text.replace(",", " ").split()


def metrics_bind(value: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[::1]:PORT`` for IPv6) as a host and port; :class:`ConfigurationError` otherwise."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigurationError(f"UNISTORE_METRICS must be token, open, off or HOST:PORT, not {value!r}")
    return host, int(port)


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
    ``idempotency_lease`` how long a write in progress holds its key without a
    heartbeat (a replica that dies mid-write frees the key after at most this);
    ``upload_ttl`` how long an upload session lives, and every
    ``upload_sweep_interval`` seconds expired ones are swept. ``webhooks`` are URLs that
    receive each completion event as signed JSON (HMAC with ``webhook_secret``,
    else ``secret``).

    Tokens: ``max_token_lifetime`` bounds every token (seconds, also those already
    issued); ``accepted_secrets`` are older (or upcoming) secrets whose tokens are
    still verified but never minted, the overlap window of a rotation.
    ``metrics`` guards ``/metrics``: ``"token"`` (a token with the ``metrics``
    action over all keys, e.g. an admin token), ``"open"``, ``"off"``, or
    ``"HOST:PORT"`` (served only on that separate listener, without a token).
    ``metrics_key_labels`` is how hot keys are labelled: ``"hash"`` (a digest
    of the key), ``"prefix"`` (its first segment), ``"raw"`` or ``"off"``.
    ``redis_url`` keeps rate-limit buckets and hot-key counts in Redis, shared
    by every replica, under keys starting with ``redis_prefix``.
    """

    auth: bool = True
    """Require a bearer token on every request; off lets every request do everything (local development only)."""
    secret: bytes | None = field(default=None, repr=False)
    """Key that signs and verifies tokens (at least 16 bytes); required when ``auth`` is on. A str is
    accepted and used UTF-8 encoded (as ``UNISTORE_SECRET`` is); other types are refused."""
    max_body_size: int = 5 * 1024**3
    """Largest request body, in bytes (413 beyond it)."""
    max_json_size: int = 1024**2
    """Largest JSON control request (tokens, upload sessions), in bytes, read only after authentication."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers (then it is closed)."""
    body_timeout: float = 30.0
    """Seconds a request body may pause between chunks (then 408)."""
    body_deadline: float | None = None
    """Seconds a whole request body may take (then 408); unset: no limit."""
    token_rate: float | None = None
    """Requests per second allowed to each token (each client address when auth is off); unset: unlimited."""
    token_burst: int | None = None
    """Requests one token may make at once above its rate; unset: the rate, in whole requests (at least 1)."""
    global_rate: float | None = None
    """Requests per second allowed to the whole service; unset: unlimited."""
    global_burst: int | None = None
    """Requests the service may take at once above its rate; unset: the rate, in whole requests (at least 1)."""
    max_list_limit: int = 1000
    """Most keys one listing page may return."""
    idempotency_ttl: float = 24 * 3600.0
    """Seconds a write recorded under an ``Idempotency-Key`` answers a replay."""
    idempotency_lease: float = 30.0
    """Seconds a write in progress holds its ``Idempotency-Key`` without a heartbeat."""
    max_token_lifetime: int = 7 * 24 * 3600
    """Longest lifetime of any token, in seconds (also bounds tokens already issued)."""
    upload_ttl: float = 24 * 3600.0
    """Seconds an upload session lives."""
    upload_sweep_interval: float = 600.0
    """Seconds between sweeps of expired upload sessions."""
    usage_scan_interval: float | None = None
    """Seconds between listings of the whole store that set the ``unistore_stored_bytes`` and
    ``unistore_stored_objects`` metrics (for ``unistore cost`` and storage-growth alerts); unset: never."""
    webhooks: tuple[str, ...] = ()
    """URLs that receive each completion event as signed JSON (separated by commas or spaces)."""
    webhook_secret: bytes | None = field(default=None, repr=False)
    """Key that signs webhook bodies; unset: ``secret``. A str is used UTF-8 encoded."""
    accepted_secrets: tuple[bytes, ...] = field(default=(), repr=False)
    """Older (or upcoming) secrets whose tokens are still verified but never minted, for rotation (separated by
    commas or spaces; str items are used UTF-8 encoded)."""
    metrics: str = "token"
    """Who may read ``/metrics``: ``token`` (a token with the ``metrics`` action), ``open``, ``off``, or
    ``HOST:PORT`` (a separate listener, no token)."""
    metrics_key_labels: str = "hash"
    """How hot keys are labelled in metrics: ``hash`` (a digest), ``prefix`` (first segment), ``raw`` or ``off``."""
    redis_url: str | None = field(default=None, repr=False)
    """``redis://``, ``rediss://`` or ``unix://`` URL: rate-limit buckets and hot-key counts shared by every replica;
    unset: per process."""
    redis_prefix: str = "unistore"
    """Prefix of every Redis key the service writes."""
    upload_rules: tuple[UploadRule, ...] = ()
    """What uploads may contain, by key prefix (longest match; keys under no rule are refused): a JSON list of
    objects with ``prefix`` and any of ``max_size``, ``content_types``, ``extensions``, ``max_pixels``,
    ``max_width``, ``max_height`` (see ``docs/validation.md``); unset: no upload validation."""
    upload_type_mismatch: Literal["refuse", "correct"] = "refuse"
    """A declared ``Content-Type`` the bytes contradict: ``refuse`` (415) or ``correct`` (store the sniffed type)."""
    upload_filename_checks: bool = True
    """With ``upload_rules``: refuse names with two file extensions (``a.jpg.exe``) or format characters, and
    extensions that disagree with the bytes."""
    scan_url: str | None = None
    """clamd to scan every upload with: ``unix:///path`` or ``tcp://host:port`` (see ``docs/scanning.md``);
    unset: no malware scanning."""
    scan_mode: Literal["reject", "quarantine"] = "reject"
    """An infected upload: ``reject`` (422, nothing stored) or ``quarantine`` (422, the body kept under
    ``.unistore/quarantine/`` with the verdict in its metadata, readable by no token)."""
    scan_fail_open: bool = False
    """When clamd is down or times out: off refuses the upload (503 with ``Retry-After``); on stores it
    unscanned and counts it in ``unistore_scan_unscanned_writes_total``."""
    scan_timeout: float = 30.0
    """Seconds each exchange with clamd may take (connect, each chunk, the verdict)."""
    encrypt: bool = False
    """Encrypt every object body before it reaches the store (``Encrypt``, see ``docs/encryption.md``) with the
    keyring the ``UNISTORE_KEYRING*``, ``UNISTORE_AWS_KMS_*`` or ``UNISTORE_GCP_KMS_*`` variables configure;
    signed ``/files`` URLs then serve the decrypted bytes."""
    compress: Literal["off", "gzip", "zstd"] = "off"
    """Compress bodies before they reach the store (``Compress``, see ``docs/compression.md``; before encryption
    when both are on): ``gzip`` or ``zstd`` (the ``compress`` extra). Reads send the stored bytes with
    ``Content-Encoding`` to clients whose ``Accept-Encoding`` takes it, and plain bytes to the others."""

    def __post_init__(self) -> None:
        # A str secret (as a Python caller naturally writes one) is used UTF-8 encoded, like UNISTORE_SECRET;
        # anything else fails here, not at the first token.
        for name in ("secret", "webhook_secret"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, secret_bytes(value, name))
        if isinstance(self.accepted_secrets, str | bytes):
            raise ConfigurationError("accepted_secrets must be a tuple of secrets, not one secret")
        accepted = tuple(secret_bytes(s, "accepted_secrets item") for s in self.accepted_secrets)
        object.__setattr__(self, "accepted_secrets", accepted)
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
        durations = (self.idempotency_ttl, self.idempotency_lease, self.max_token_lifetime, self.upload_ttl)
        if self.usage_scan_interval is not None and self.usage_scan_interval <= 0:
            raise ConfigurationError("usage_scan_interval must be > 0 (or unset)")
        if min(*durations, self.upload_sweep_interval) <= 0:
            raise ConfigurationError(
                "idempotency_ttl, idempotency_lease, max_token_lifetime, upload_ttl and upload_sweep_interval "
                "must be > 0"
            )

        if any(len(s) < 16 for s in self.accepted_secrets):
            raise ConfigurationError("every accepted secret must be at least 16 bytes (UNISTORE_ACCEPTED_SECRETS)")
        if self.metrics not in ("token", "open", "off"):
            metrics_bind(self.metrics)
        if self.metrics_key_labels not in KEY_LABELS:
            raise ConfigurationError(f"metrics_key_labels must be one of {', '.join(KEY_LABELS)}")
        if self.redis_url is not None and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigurationError("UNISTORE_REDIS_URL must be a redis://, rediss:// or unix:// URL")
        if not self.redis_prefix or any(c.isspace() for c in self.redis_prefix):
            raise ConfigurationError("redis_prefix must be non-empty, without spaces")
        if not all(isinstance(r, UploadRule) for r in self.upload_rules):
            raise ConfigurationError("upload_rules must be UploadRule values")
        self.upload_policy  # noqa: B018 - builds the policy, so a bad one fails here
        if self.scan_mode not in ("reject", "quarantine"):
            raise ConfigurationError("scan_mode must be reject or quarantine (UNISTORE_SCAN_MODE)")
        if self.compress not in ("off", "gzip", "zstd"):
            raise ConfigurationError("compress must be off, gzip or zstd (UNISTORE_COMPRESS)")
        if self.scan_timeout <= 0:
            raise ConfigurationError("scan_timeout must be > 0")
        if self.scan_url is not None and not self.scan_url.startswith(("unix://", "tcp://")):
            raise ConfigurationError("UNISTORE_SCAN_URL must be a unix:///path or tcp://host:port URL")

    @property
    def upload_policy(self) -> ValidationPolicy | None:
        """The upload validation policy, or ``None`` when ``upload_rules`` is empty."""
        if not self.upload_rules:
            return None
        return ValidationPolicy(
            rules=self.upload_rules,
            on_mismatch=self.upload_type_mismatch,
            check_filenames=self.upload_filename_checks,
        )

    def __repr__(self) -> str:
        secret = "<redacted>" if self.secret else None
        return (
            f"ServiceSettings(auth={self.auth}, secret={secret}, max_body_size={self.max_body_size}, "
            f"token_rate={self.token_rate}, global_rate={self.global_rate}, metrics={self.metrics!r}, "
            f"redis={'<redacted>' if self.redis_url else None})"
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceSettings:
        """Read ``UNISTORE_SECRET``, ``UNISTORE_AUTH`` (on/off), ``UNISTORE_MAX_BODY_SIZE``,
        ``UNISTORE_MAX_JSON_SIZE``, ``UNISTORE_MAX_LIST_LIMIT``, ``UNISTORE_HEADER_TIMEOUT``, ``UNISTORE_BODY_TIMEOUT``,
        ``UNISTORE_BODY_DEADLINE`` (seconds),
        ``UNISTORE_TOKEN_RATE``, ``UNISTORE_TOKEN_BURST``, ``UNISTORE_GLOBAL_RATE``,
        ``UNISTORE_GLOBAL_BURST``, ``UNISTORE_IDEMPOTENCY_TTL``, ``UNISTORE_IDEMPOTENCY_LEASE``,
        ``UNISTORE_UPLOAD_TTL``, ``UNISTORE_UPLOAD_SWEEP_INTERVAL``,
        ``UNISTORE_WEBHOOKS`` (URLs separated by commas or spaces), ``UNISTORE_WEBHOOK_SECRET``,
        ``UNISTORE_MAX_TOKEN_LIFETIME``, ``UNISTORE_ACCEPTED_SECRETS`` (separated by commas or spaces),
        ``UNISTORE_METRICS``, ``UNISTORE_METRICS_KEY_LABELS``, ``UNISTORE_REDIS_URL``, ``UNISTORE_REDIS_PREFIX``,
        ``UNISTORE_UPLOAD_RULES`` (JSON), ``UNISTORE_UPLOAD_TYPE_MISMATCH``,
        ``UNISTORE_UPLOAD_FILENAME_CHECKS`` (on/off), ``UNISTORE_SCAN_URL``, ``UNISTORE_SCAN_MODE``,
        ``UNISTORE_SCAN_FAIL_OPEN`` (on/off), ``UNISTORE_SCAN_TIMEOUT``.
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
            "webhooks": tuple(_words(env.get("UNISTORE_WEBHOOKS", ""))),
            "webhook_secret": hook_secret.encode() if hook_secret else None,
            "accepted_secrets": tuple(s.encode() for s in _words(env.get("UNISTORE_ACCEPTED_SECRETS", ""))),
            "redis_url": env.get("UNISTORE_REDIS_URL") or None,
            "scan_url": env.get("UNISTORE_SCAN_URL") or None,
        }
        if env.get("UNISTORE_UPLOAD_RULES", "").strip():
            kwargs["upload_rules"] = upload_rules_from_json(env["UNISTORE_UPLOAD_RULES"])
        for name in ("upload_filename_checks", "scan_fail_open", "encrypt"):
            flag = env.get("UNISTORE_" + name.upper(), "").strip().lower()
            if flag:
                if flag not in _TRUE | _FALSE:
                    raise ConfigurationError(f"UNISTORE_{name.upper()} must be on or off")
                kwargs[name] = flag in _TRUE
        for name in ("metrics", "metrics_key_labels", "redis_prefix", "upload_type_mismatch", "scan_mode", "compress"):
            text = env.get("UNISTORE_" + name.upper(), "").strip()
            if text:
                kwargs[name] = text.lower() if name != "redis_prefix" else text
        casts: dict[str, type] = {
            "max_body_size": int,
            "max_list_limit": int,
            "max_json_size": int,
            "header_timeout": float,
            "body_timeout": float,
            "body_deadline": float,
            "token_rate": float,
            "token_burst": int,
            "global_rate": float,
            "global_burst": int,
            "idempotency_ttl": float,
            "idempotency_lease": float,
            "upload_ttl": float,
            "upload_sweep_interval": float,
            "usage_scan_interval": float,
            "max_token_lifetime": int,
            "scan_timeout": float,
        }
        for name, cast in casts.items():
            raw = env.get("UNISTORE_" + name.upper())
            if raw:
                try:
                    kwargs[name] = cast(raw)
                except ValueError:
                    raise ConfigurationError(f"UNISTORE_{name.upper()} must be a {cast.__name__}") from None
        return cls(**kwargs)  # type: ignore[arg-type]


_RULE_FIELDS = ("prefix", "max_size", "content_types", "extensions", "max_pixels", "max_width", "max_height")


def upload_rules_from_json(text: str) -> tuple[UploadRule, ...]:
    """``UNISTORE_UPLOAD_RULES``: a JSON list of rule objects (lists for ``content_types``/``extensions``)."""
    try:
        data: Any = json.loads(text)
    except ValueError:
        raise ConfigurationError("UNISTORE_UPLOAD_RULES must be a JSON list of objects") from None
    if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
        raise ConfigurationError("UNISTORE_UPLOAD_RULES must be a JSON list of objects")
    rules = []
    for item in data:
        unknown = set(item) - set(_RULE_FIELDS)
        if unknown:
            raise ConfigurationError(f"UNISTORE_UPLOAD_RULES: unknown field(s) {', '.join(sorted(unknown))}")
        options = dict(item)
        for name in ("content_types", "extensions"):
            if options.get(name) is not None:
                values = options[name]
                if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                    raise ConfigurationError(f"UNISTORE_UPLOAD_RULES: {name} must be a list of strings")
                options[name] = frozenset(values)
        if not isinstance(options.get("prefix", ""), str):
            raise ConfigurationError("UNISTORE_UPLOAD_RULES: prefix must be a string")
        try:
            rules.append(UploadRule(**options))
        except StorageError as exc:
            raise ConfigurationError(f"UNISTORE_UPLOAD_RULES: {exc.message}") from None
    return tuple(rules)
