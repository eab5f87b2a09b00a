"""CDN URL makers: CloudFront (signed URLs and cookies), BunnyCDN tokens, plain CDN domains."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable
from urllib.parse import parse_qsl, quote, urlsplit

from .._errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "BunnyURLs",
    "CDNUrls",
    "CloudFrontURLs",
    "PlainCDN",
    "attachment",
    "cdn_path",
]


def cdn_path(key: str) -> str:
    """The URL path of ``key`` on a CDN: ``/`` then the key percent-encoded (``/`` kept)."""
    return "/" + quote(key, safe="/")


def attachment(key: str) -> str:
    """``attachment`` with the key's file name, escaped per RFC 6266 and RFC 8187."""
    name = key.rsplit("/", 1)[-1]
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"\\%' else "_" for c in name)
    value = f'attachment; filename="{fallback}"'
    if fallback != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


def _base(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigurationError(f"a CDN base URL is http(s)://host[/path] with no query: {url!r}")
    return url.rstrip("/")


def _epoch(at: datetime | int | float) -> int:
    if isinstance(at, datetime):
        if at.tzinfo is None:
            raise InvalidArgumentError("CDN times must be timezone-aware datetimes or epoch seconds")
        return int(at.timestamp())
    return int(at)


@runtime_checkable
class CDNUrls(Protocol):
    """What the :class:`~unistore.layers.CDN` layer needs of a CDN: URLs for keys and, if it
    ``signs``, signed ones."""

    base_url: str
    signs: ClassVar[bool]
    download_param: str | None
    """The query parameter the CDN (or its origin) answers with ``Content-Disposition``; ``None``: none."""

    def url(self, key: str) -> str:
        """The unsigned CDN URL of ``key``."""
        ...

    def sign(self, url: str, *, expires_at: datetime | int) -> str:
        """``url`` signed until ``expires_at``."""
        ...


@dataclass(frozen=True, slots=True)
class PlainCDN:
    """A CDN domain in front of a public bucket, with no URL signing: a Cloudflare R2 custom
    domain, DigitalOcean Spaces' CDN endpoint, or any pull zone without token authentication."""

    base_url: str
    download_param: str | None = None
    signs: ClassVar[bool] = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _base(self.base_url))

    @classmethod
    def r2_custom_domain(cls, domain: str, *, download_param: str | None = None) -> PlainCDN:
        """An R2 bucket served at ``https://{domain}`` (a custom domain connected to the bucket)."""
        return cls(f"https://{domain}", download_param)

    @classmethod
    def spaces(cls, bucket: str, region: str, *, download_param: str | None = None) -> PlainCDN:
        """A Spaces bucket's CDN endpoint, ``https://{bucket}.{region}.cdn.digitaloceanspaces.com``."""
        return cls(f"https://{bucket}.{region}.cdn.digitaloceanspaces.com", download_param)

    def url(self, key: str) -> str:
        """``{base_url}/{key}``, the key percent-encoded."""
        return self.base_url + cdn_path(key)

    def sign(self, url: str, *, expires_at: datetime | int) -> str:
        """Not available: a plain CDN signs nothing."""
        raise ConfigurationError("a plain CDN cannot sign URLs")


# --- CloudFront ------------------------------------------------------------------------------


def _load_private_key(pem: bytes | str | os.PathLike[str]) -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
    except ImportError as exc:
        raise ConfigurationError("CloudFront signing needs the [cdn] extra: pip install 'unistore[cdn]'") from exc
    if isinstance(pem, os.PathLike):
        with open(pem, "rb") as f:
            data = f.read()
    else:
        data = pem.encode() if isinstance(pem, str) else pem
    try:
        return serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError("the CloudFront private key is not an unencrypted PEM RSA key") from exc


def _cf_b64(raw: bytes) -> str:
    """CloudFront's URL-safe base64: ``+`` → ``-``, ``=`` → ``_``, ``/`` → ``~``."""
    return base64.b64encode(raw).decode().translate(str.maketrans("+=/", "-_~"))


@dataclass(frozen=True, slots=True)
class CloudFrontURLs:
    """A CloudFront distribution at ``base_url`` with a trusted key group's key pair.

    Signed URLs and cookies are made by botocore's ``CloudFrontSigner`` (the policy format is
    AWS's, not ours) with an RSA-SHA1 signer from ``cryptography``. A URL with only an expiry
    gets a *canned* policy (``Expires=``); a start time, an IP range or a resource other than
    the URL itself (a ``*`` wildcard) makes a *custom* policy (``Policy=``). ``download_param``
    defaults to ``response-content-disposition``, which an S3 origin answers when the
    distribution forwards that query string to it.
    """

    base_url: str
    key_pair_id: str
    private_key: bytes | str | os.PathLike[str] = field(repr=False)
    download_param: str | None = "response-content-disposition"
    signs: ClassVar[bool] = True
    _signer: Any = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _base(self.base_url))
        if not self.key_pair_id:
            raise ConfigurationError("CloudFront signing needs key_pair_id (the public key's ID)")
        key = _load_private_key(self.private_key)
        try:
            from botocore.signers import CloudFrontSigner
            from cryptography.hazmat.primitives import hashes
            from cryptography.hazmat.primitives.asymmetric import padding, rsa
        except ImportError as exc:
            raise ConfigurationError("CloudFront signing needs the [cdn] extra: pip install 'unistore[cdn]'") from exc
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ConfigurationError("CloudFront keys are RSA keys")

        def rsa_sha1(message: bytes) -> bytes:
            return bytes(key.sign(message, padding.PKCS1v15(), hashes.SHA1()))

        object.__setattr__(self, "_signer", CloudFrontSigner(self.key_pair_id, rsa_sha1))

    def url(self, key: str) -> str:
        """``{base_url}/{key}``, the key percent-encoded."""
        return self.base_url + cdn_path(key)

    def policy(
        self,
        resource: str,
        *,
        expires_at: datetime | int,
        starts_at: datetime | int | None = None,
        ip_range: str | None = None,
    ) -> str:
        """The custom policy JSON (botocore's ``build_policy``): ``resource`` (``*`` wildcards
        allowed), valid from ``starts_at`` until ``expires_at``, from ``ip_range`` (CIDR) only."""
        if ip_range is not None:
            try:
                ipaddress.ip_network(ip_range, strict=False)
            except ValueError as exc:
                raise InvalidArgumentError(f"not an IP address or CIDR range: {ip_range!r}") from exc
        end = datetime.fromtimestamp(_epoch(expires_at), UTC)
        start = None if starts_at is None else datetime.fromtimestamp(_epoch(starts_at), UTC)
        if start is not None and start >= end:
            raise InvalidArgumentError("starts_at must be before expires_at")
        return str(self._signer.build_policy(resource, end, date_greater_than=start, ip_address=ip_range))

    def sign(
        self,
        url: str,
        *,
        expires_at: datetime | int,
        starts_at: datetime | int | None = None,
        ip_range: str | None = None,
        resource: str | None = None,
    ) -> str:
        """``url`` signed until ``expires_at``: canned policy unless a start, an IP range or a
        ``resource`` (e.g. ``https://cdn.example.com/videos/*``) asks for a custom one."""
        if starts_at is None and ip_range is None and resource is None:
            end = datetime.fromtimestamp(_epoch(expires_at), UTC)
            return str(self._signer.generate_presigned_url(url, date_less_than=end))
        policy = self.policy(resource or url, expires_at=expires_at, starts_at=starts_at, ip_range=ip_range)
        return str(self._signer.generate_presigned_url(url, policy=policy))

    def cookies(
        self,
        resource: str,
        *,
        expires_at: datetime | int,
        starts_at: datetime | int | None = None,
        ip_range: str | None = None,
    ) -> dict[str, str]:
        """Signed cookies (custom policy) granting ``resource``, e.g. ``https://cdn.example.com/user/42/*``:
        ``CloudFront-Policy``, ``CloudFront-Signature`` and ``CloudFront-Key-Pair-Id``."""
        policy = self.policy(resource, expires_at=expires_at, starts_at=starts_at, ip_range=ip_range)
        signature = self._signer.rsa_signer(policy.encode())
        return {
            "CloudFront-Policy": _cf_b64(policy.encode()),
            "CloudFront-Signature": _cf_b64(signature),
            "CloudFront-Key-Pair-Id": self.key_pair_id,
        }


# --- BunnyCDN --------------------------------------------------------------------------------


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@dataclass(frozen=True, slots=True)
class BunnyURLs:
    """A BunnyCDN pull zone with token authentication.

    ``scheme="sha256"`` (the default) is Bunny's current token: ``HS256-`` and the base64url
    HMAC-SHA256, under the zone's key, of the signed path, the expiry, the client IP (packed;
    IPv6 cut to its /64) and the URL's sorted ``name=value`` parameters. ``token_path`` signs a
    path *prefix* (every URL under it shares one token, as video players need); ``token_in_path``
    puts the token in the path (``/bcdn_token=…/key``) so relative URLs inherit it.
    ``scheme="md5"`` is Bunny's basic token: base64url MD5 of key, path, expiry (and IP).
    """

    base_url: str
    security_key: str = field(repr=False)
    scheme: Literal["sha256", "md5"] = "sha256"
    token_path: str | None = None
    token_in_path: bool = False
    download_param: str | None = None
    signs: ClassVar[bool] = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "base_url", _base(self.base_url))
        if not self.security_key:
            raise ConfigurationError("BunnyCDN token authentication needs the zone's security key")
        if self.scheme not in ("sha256", "md5"):
            raise ConfigurationError(f"scheme must be 'sha256' or 'md5', not {self.scheme!r}")
        if self.scheme == "md5" and (self.token_path or self.token_in_path):
            raise ConfigurationError("path-prefix and in-path tokens need scheme='sha256'")
        if self.token_path is not None and not self.token_path.startswith("/"):
            raise ConfigurationError("token_path starts with '/' (a path on the pull zone)")

    def url(self, key: str) -> str:
        """``{base_url}/{key}``, the key percent-encoded."""
        return self.base_url + cdn_path(key)

    def sign(
        self,
        url: str,
        *,
        expires_at: datetime | int,
        user_ip: str | None = None,
        token_path: str | None = None,
        countries: str | None = None,
        countries_blocked: str | None = None,
    ) -> str:
        """``url`` with a token valid until ``expires_at`` (from ``user_ip`` only, if given).
        ``token_path`` overrides the zone-wide prefix; the URL must lie under it."""
        expires = str(_epoch(expires_at))
        parts = urlsplit(url)
        if self.scheme == "md5":
            base = self.security_key + parts.path + expires + (user_ip or "")
            token = _b64url(hashlib.md5(base.encode()).digest())
            glue = "&" if parts.query else "?"
            return f"{url}{glue}token={token}&expires={expires}"
        prefix = token_path or self.token_path
        if prefix is not None and not parts.path.startswith(prefix):
            raise InvalidArgumentError(f"{parts.path!r} is not under the token path {prefix!r}")
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        if countries:
            params["token_countries"] = countries
        if countries_blocked:
            params["token_countries_blocked"] = countries_blocked
        if prefix is not None:
            params["token_path"] = prefix
        ordered = sorted(params.items())
        ip = b""
        flags = ""
        if user_ip:
            try:
                ip = ipaddress.ip_address(user_ip).packed
            except ValueError as exc:
                raise InvalidArgumentError(f"not an IP address: {user_ip!r}") from exc
            if len(ip) == 16:
                ip = ip[:8] + bytes(8)
            flags = "1-"
        message = (prefix or parts.path).encode() + expires.encode() + ip
        message += "&".join(f"{k}={v}" for k, v in ordered).encode()
        token = "HS256-" + flags + _b64url(hmac.new(self.security_key.encode(), message, hashlib.sha256).digest())
        query = "".join(f"&{k}={quote(v, safe='')}" for k, v in ordered)
        origin = f"{parts.scheme}://{parts.netloc}"
        if self.token_in_path:
            return f"{origin}/bcdn_token={token}{query}&expires={expires}{parts.path}"
        return f"{origin}{parts.path}?token={token}{query}&expires={expires}"
