"""The S3 wire protocol for :mod:`unistore.backends.s3`: SigV4 signing, error translation, XML.

Kept apart from the backend so the signer can be tested against botocore's and
the error table read in one place. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

from ..._base import quote_etag
from ..._errors import (
    AlreadyExistsError,
    ConfigurationError,
    IntegrityError,
    InvalidArgumentError,
    InvalidRangeError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    RateLimitedError,
    StorageError,
    UnavailableError,
    UnsupportedError,
    parse_retry_after,
)
from ..._types import IfMatch, WriteMode

__all__ = [
    "Credentials",
    "EMPTY_SHA256",
    "SigV4",
    "UNSIGNED",
    "checksum_header",
    "condition_headers",
    "decode_meta",
    "encode_meta",
    "error_from_response",
    "http_date",
    "iso_date",
    "md5_of_etag",
    "uri_encode",
    "xml_children",
    "xml_find",
]

UNSIGNED = "UNSIGNED-PAYLOAD"
_SIGNED_PREFIXES = ("x-amz-", "if-")
_SIGNED_NAMES = frozenset({"content-type", "content-md5", "range"})
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True, slots=True)
class Credentials:
    """One set of AWS credentials (the secret and token never appear in ``repr``)."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def uri_encode(value: str, safe: str = "") -> str:
    """RFC 3986 encoding as SigV4 wants it: only ``A-Za-z0-9-_.~`` (and ``safe``) left alone."""
    return quote(value, safe=safe)


class SigV4:
    """AWS Signature Version 4 for one region and service, with the daily signing key cached."""

    __slots__ = ("_keys", "region", "service")

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._keys: dict[tuple[str, str], bytes] = {}

    def _key(self, secret: str, day: str) -> bytes:
        cached = self._keys.get((secret, day))
        if cached is None:
            k = hmac.new(("AWS4" + secret).encode(), day.encode(), hashlib.sha256).digest()
            for part in (self.region, self.service, "aws4_request"):
                k = hmac.new(k, part.encode(), hashlib.sha256).digest()
            if len(self._keys) > 8:
                self._keys.clear()
            self._keys[(secret, day)] = cached = k
        return cached

    def _scope(self, day: str) -> str:
        return f"{day}/{self.region}/{self.service}/aws4_request"

    def sign_headers(
        self,
        creds: Credentials,
        method: str,
        host: str,
        path: str,
        query: Mapping[str, str] | None,
        headers: dict[str, str],
        payload_hash: str = UNSIGNED,
        now: float | None = None,
    ) -> None:
        """Add ``x-amz-date``, ``x-amz-content-sha256``, the token and ``authorization`` to ``headers``.

        ``path`` is the already encoded request path; ``headers`` keys are lower-case.
        """
        amz_date = _amz_date(int(time.time() if now is None else now))
        headers["x-amz-date"] = amz_date
        headers["x-amz-content-sha256"] = payload_hash
        if creds.token:
            headers["x-amz-security-token"] = creds.token
        signed = {"host": host}
        for name, value in headers.items():
            if name.startswith(_SIGNED_PREFIXES) or name in _SIGNED_NAMES:
                signed[name] = value.strip() if "  " not in value else " ".join(value.split())
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical = "\n".join(
            (
                method,
                path,
                _canonical_query(query),
                "".join(f"{n}:{signed[n]}\n" for n in names),
                signed_names,
                payload_hash,
            )
        )
        day = amz_date[:8]
        scope = self._scope(day)
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._key(creds.secret_key, day), to_sign.encode(), "sha256").hex()
        headers["authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={signed_names}, "
            f"Signature={signature}"
        )

    def presign(
        self,
        creds: Credentials,
        method: str,
        host: str,
        path: str,
        expires_in: int,
        query: Mapping[str, str] | None = None,
        signed_headers: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> str:
        """The query string of a presigned URL (SigV4 query authentication, unsigned payload)."""
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        headers = {"host": host, **{k.lower(): v for k, v in (signed_headers or {}).items()}}
        names = sorted(headers)
        params = dict(query or {})
        params.update(
            {
                "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
                "X-Amz-Credential": f"{creds.access_key}/{self._scope(day)}",
                "X-Amz-Date": amz_date,
                "X-Amz-Expires": str(expires_in),
                "X-Amz-SignedHeaders": ";".join(names),
            }
        )
        if creds.token:
            params["X-Amz-Security-Token"] = creds.token
        canonical = "\n".join(
            (
                method,
                path,
                _canonical_query(params),
                "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                ";".join(names),
                UNSIGNED,
            )
        )
        to_sign = f"AWS4-HMAC-SHA256\n{amz_date}\n{self._scope(day)}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._key(creds.secret_key, day), to_sign.encode(), hashlib.sha256).hexdigest()
        return f"{_canonical_query(params)}&X-Amz-Signature={signature}"

    def post_policy(self, creds: Credentials, policy: dict[str, Any], now: float | None = None) -> dict[str, str]:
        """Sign a browser POST policy; returns the form fields (policy conditions must include them)."""
        import json

        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = amz_date[:8]
        fields = {
            "x-amz-algorithm": "AWS4-HMAC-SHA256",
            "x-amz-credential": f"{creds.access_key}/{self._scope(day)}",
            "x-amz-date": amz_date,
        }
        if creds.token:
            fields["x-amz-security-token"] = creds.token
        conditions = list(policy.get("conditions", [])) + [{k: v} for k, v in fields.items()]
        document = json.dumps({**policy, "conditions": conditions}, separators=(",", ":"))
        encoded = base64.b64encode(document.encode()).decode()
        fields["policy"] = encoded
        fields["x-amz-signature"] = hmac.new(
            self._key(creds.secret_key, day), encoded.encode(), hashlib.sha256
        ).hexdigest()
        return fields


def _canonical_query(query: Mapping[str, str] | None) -> str:
    if not query:
        return ""
    return "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query.items()))


# --- metadata values ----------------------------------------------------------------------

_PLAIN = re.compile(r"[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?")


def encode_meta(value: str) -> str:
    """A metadata value as an ASCII header value; anything else as RFC 2047 ``=?UTF-8?B?…?=``,
    the form S3 itself uses for non-ASCII metadata."""
    if value and _PLAIN.fullmatch(value) and not value.startswith("=?"):
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


def decode_meta(value: str) -> str:
    """Inverse of :func:`encode_meta` (plain values pass through)."""
    if value.startswith("=?UTF-8?B?") and value.endswith("?="):
        try:
            return base64.b64decode(value[10:-2], validate=True).decode()
        except ValueError:
            return value
    return value


# --- dates and XML ----------------------------------------------------------------------------


def http_date(value: str | None) -> datetime:
    """An HTTP date header as an aware datetime (now, if missing or unparsable)."""
    if value:
        parsed = _parse_http_date(value)
        if parsed is not None:
            return parsed
    return datetime.now(UTC)


@functools.lru_cache(maxsize=256)
def _parse_http_date(value: str) -> datetime | None:
    # Date and Last-Modified repeat for every response within a second: parse each once.
    try:
        return parsedate_to_datetime(value).astimezone(UTC)
    except (TypeError, ValueError):
        return None


@functools.lru_cache(maxsize=4)
def _amz_date(second: int) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))


def md5_of_etag(etag: str) -> str | None:
    """The base64 MD5 a plain (32-hex) ETag stands for; ``None`` for any other ETag."""
    etag = etag.strip('"')
    if len(etag) != 32:
        return None
    try:
        return base64.b64encode(bytes.fromhex(etag)).decode()
    except ValueError:
        return None


def iso_date(value: str | None) -> datetime:
    """An S3 XML timestamp (``2026-01-02T03:04:05.000Z``) as an aware datetime."""
    if not value:
        return datetime.now(UTC)
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return when if when.tzinfo is UTC else when.astimezone(UTC)


def xml_find(el: ElementTree.Element, name: str, default: str = "") -> str:
    """The text of child ``name`` of ``el`` in any (or no) XML namespace; ``default`` if absent."""
    text = el.findtext("{*}" + name)
    return default if text is None else text


def xml_children(el: ElementTree.Element, name: str) -> list[ElementTree.Element]:
    """The children of ``el`` named ``name`` in any (or no) namespace."""
    return el.findall("{*}" + name)


# --- errors -------------------------------------------------------------------------------------

_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "RequestTimeout", "InternalError", "ThrottlingException"}
_SIGNATURE_CODES = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationHeaderMalformed"}


def _header_retry_after(headers: Mapping[str, str]) -> float | None:
    return parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))


def error_from_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    key: str | None,
    operation: str,
    backend: str,
    bucket: str,
    create: bool = False,
) -> StorageError:
    """The unistore error for a non-2xx S3 response (the one place S3 errors are mapped)."""
    code, message = "", ""
    if body:
        try:
            root = ElementTree.fromstring(body)
            code, message = xml_find(root, "Code"), xml_find(root, "Message")
        except ElementTree.ParseError:
            message = body[:200].decode("utf-8", "replace")
    detail = f"{code}: {message}" if code else message or f"HTTP {status}"
    kw: dict[str, Any] = {"key": key, "operation": operation, "backend": backend}
    if status == 304:
        etag = headers.get("ETag") or headers.get("etag")
        return NotModifiedError(etag=etag.strip('"') if etag else None, **kw)
    if code == "NoSuchBucket":
        return ConfigurationError(f"bucket {bucket!r} does not exist ({detail})", **kw)
    if status == 404 or code == "NoSuchKey":
        return NotFoundError("no such object" if not code or code == "NoSuchKey" else detail, **kw)
    if code in _SIGNATURE_CODES:
        why = "signature or access key rejected: check the credentials and clock"
        return PermissionDeniedError(f"{why} ({detail})", **kw)
    if status == 403:
        return PermissionDeniedError(f"access denied ({detail})", **kw)
    if status in (409, 412) and create:
        return AlreadyExistsError("key already exists", **kw)
    if status == 412 or code in ("PreconditionFailed", "ConditionalRequestConflict"):
        return PreconditionFailedError(f"precondition failed ({detail})", **kw)
    if status == 416:
        size = None
        content_range = headers.get("Content-Range") or headers.get("content-range") or ""
        if content_range.startswith("bytes */"):
            size = int(content_range[8:]) if content_range[8:].isdigit() else None
        return InvalidRangeError(f"range not satisfiable ({detail})", size=size, **kw)
    if status == 429 or code in ("SlowDown", "ThrottlingException"):
        return RateLimitedError(f"throttled ({detail})", retry_after=_header_retry_after(headers), **kw)
    if status >= 500 or code in _TRANSIENT_CODES:
        if status == 501 or code == "NotImplemented":
            return UnsupportedError(f"not supported by this server ({detail})", **kw)
        return UnavailableError(f"server error ({detail})", retry_after=_header_retry_after(headers), **kw)
    if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch", "InvalidChecksum"):
        return IntegrityError(f"checksum mismatch ({detail})", **kw)
    if code == "EntityTooLarge":
        return QuotaExceededError(f"object too large ({detail})", **kw)
    if code == "NoSuchUpload":
        return NotFoundError(f"no such upload session ({detail})", **kw)
    return InvalidArgumentError(f"request rejected ({detail})", **kw)


#: the x-amz-checksum algorithm of a checksum mode that has one: header ``x-amz-checksum-<mode>``,
#: ``x-amz-checksum-algorithm`` value, and ``Checksum<NAME>`` element of a multipart completion
CHECKSUM_ALGORITHMS = {"crc32": "CRC32", "sha256": "SHA256"}


@functools.cache
def _crc32() -> Any:
    """zlib-ng's CRC-32 where installed (several times faster), else the standard library's: same values."""
    try:
        from zlib_ng import zlib_ng

        return zlib_ng.crc32
    except ImportError:
        import zlib

        return zlib.crc32


def checksum_header(mode: str, chunks: Iterable[bytes | memoryview]) -> tuple[dict[str, str], str | None]:
    """The upload checksum header for ``mode`` (``crc32``, ``md5``, ``sha256``, ``none``) over
    ``chunks``, and the base64 digest the server keeps for it."""
    if mode == "none":
        return {}, None
    if mode == "crc32":
        crc, update = 0, _crc32()
        for c in chunks:
            crc = update(c, crc)
        value = base64.b64encode(crc.to_bytes(4, "big")).decode()
        return {"x-amz-checksum-crc32": value}, value
    h = hashlib.md5(usedforsecurity=False) if mode == "md5" else hashlib.sha256()
    for c in chunks:
        h.update(c)
    digest = base64.b64encode(h.digest()).decode()
    return ({"content-md5": digest} if mode == "md5" else {"x-amz-checksum-sha256": digest}), digest


def condition_headers(mode: WriteMode) -> dict[str, str]:
    """The precondition headers of a write in ``mode``."""
    if mode == "overwrite":
        return {}
    if mode == "create":
        return {"if-none-match": "*"}
    if isinstance(mode, IfMatch):
        return {"if-match": quote_etag(mode.etag)}
    raise TypeError(f"invalid write mode {mode!r}")
