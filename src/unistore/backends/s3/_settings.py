"""Settings of :class:`unistore.backends.s3.S3Backend`."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Final, Literal
from urllib.parse import urlsplit

from ..._errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "MAX_PRESIGN",
    "S3Settings",
    "S3_STORAGE_CLASSES",
    "check_s3_class",
]

MiB = 1024 * 1024
MAX_PRESIGN = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Settings of :class:`S3Backend` (``easy_storage`` keyword names; ``STORAGE_S3_*`` variables).

    Credentials: ``access_key``/``secret_key`` (and ``session_token``), else
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, else
    botocore's standard chain (profile, SSO, web identity, container, IMDS).
    """

    bucket: str = ""
    """The bucket (required)."""
    region: str = "us-east-1"
    """Region used to sign requests."""
    endpoint: str | None = None
    """Endpoint URL of an S3-compatible server (MinIO, SeaweedFS, R2...); unset: AWS for ``region``."""
    access_key: str | None = None
    """Access key id; unset: ``AWS_ACCESS_KEY_ID``, else botocore's standard credential chain."""
    secret_key: str | None = field(default=None, repr=False)
    """Secret access key, set together with ``access_key``."""
    session_token: str | None = field(default=None, repr=False)
    """Session token of temporary credentials."""
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``auto``: virtual-hosted on AWS for DNS-safe bucket names, path style on custom endpoints."""
    prefix: str = ""
    """Prepended to every key (``"app1/"`` keeps several apps in one bucket)."""
    checksum: Literal["auto", "crc32", "md5", "sha256", "none"] = "auto"
    """Body checksum sent with every upload and part, verified by the server: ``crc32``
    (x-amz-checksum-crc32, what AWS's SDKs send by default; a tenth of MD5's CPU), ``md5``
    (Content-MD5, which every S3-compatible server checks), ``sha256`` (x-amz-checksum-sha256),
    or ``none``. ``auto``: ``crc32`` on AWS and Cloudflare R2, ``md5`` on other endpoints (Backblaze
    B2 and some others refuse the newer headers; MinIO, SeaweedFS and Ceph accept ``crc32``).
    Resumable upload sessions use MD5 under ``crc32`` (those of the CLI, which hashes its own parts, keep CRC-32)."""
    equal_parts: bool | None = None
    """Multipart parts must all have the same size but the last (R2). Unset: on for R2 endpoints only."""
    part_size: int = 8 * MiB
    """Bytes per multipart upload part (5 MiB to 5 GiB); larger bodies are uploaded in parts. Grown where
    S3's 10,000 parts would not hold the object: a body of known size gets the smallest whole-MiB part
    that fits, a stream of unknown size doubles its part size every 800 parts (unless parts must be equal)."""
    max_concurrency: int = 8
    """Parts in flight per upload. A stream holds at most ``part_size * max_concurrency`` bytes;
    a file is read straight from each part's byte range (about 1 MiB per part in flight)."""
    sse: Literal["AES256", "aws:kms"] | None = None
    """Server-side encryption asked for on every write: ``AES256`` or ``aws:kms``; unset: the bucket's default."""
    sse_kms_key_id: str | None = None
    """KMS key for ``sse=aws:kms``; unset: the account's default key."""
    sse_customer_key: str | None = field(default=None, repr=False)
    """SSE-C: a 32-byte key, base64-encoded. Every read then needs it too."""
    storage_class: str | None = None
    """Storage class of new objects (``STANDARD_IA``, ``GLACIER_IR``...); unset: the bucket's default."""
    conditional_delete: bool = True
    """The server honours If-Match on DELETE (AWS, SeaweedFS, MinIO, moto). Off: ``remove(if_match=)``
    raises :class:`UnsupportedError` and two concurrent deletes may both report ``True``."""
    copy_if_match: bool | None = None
    """The server decides `If-Match` (the destination's etag) on CopyObject atomically with the copy, as AWS does:
    `replace_metadata` then copies the object onto itself inside the server. Off, it rewrites the object with a
    conditional PUT (the body passes through the client), since a copy that is not conditional on the version it
    replaces could overwrite a write landing during the copy. Unset: on for AWS (no `endpoint`), off for other
    servers (moto ignores the header; SeaweedFS checks it, but not atomically)."""
    url_expiration: int = 3600
    """Lifetime of a presigned URL when the caller gives none, in seconds (at most 7 days)."""
    page_size: int = 1000
    """Keys asked for per listing request (S3 answers at most 1,000)."""
    max_connections: int = 64
    """Connections kept open to the server."""
    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    read_timeout: float = 60.0
    """Seconds to wait for data on an open connection."""
    copy_part_size: int = 512 * MiB
    """Bytes per part of a server-side multipart copy."""
    multipart_copy_threshold: int = 5 * 1024 * MiB
    """Objects at least this large (bytes) are copied part by part on the server."""

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigurationError("S3Backend needs a bucket: set STORAGE_S3_BUCKET (or bucket=...)")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigurationError(f"addressing_style must be auto, path or virtual, not {self.addressing_style!r}")
        if self.checksum not in ("auto", "crc32", "md5", "sha256", "none"):
            raise ConfigurationError(f"checksum must be auto, crc32, md5, sha256 or none, not {self.checksum!r}")
        if self.checksum == "auto":
            object.__setattr__(self, "checksum", "crc32" if _verifies_crc32(self.endpoint) else "md5")
        if self.sse not in (None, "AES256", "aws:kms"):
            raise ConfigurationError(f"sse must be AES256 or aws:kms, not {self.sse!r}")
        if self.sse_kms_key_id and self.sse != "aws:kms":
            raise ConfigurationError("sse_kms_key_id needs sse='aws:kms'")
        if self.sse_customer_key is not None:
            if self.sse:
                raise ConfigurationError("sse_customer_key (SSE-C) cannot be combined with sse")
            try:
                raw = base64.b64decode(self.sse_customer_key, validate=True)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigurationError("sse_customer_key must be a base64-encoded 32-byte key")
        if not 5 * MiB <= self.part_size <= 5 * 1024 * MiB:
            raise ConfigurationError("part_size must be between 5 MiB and 5 GiB (S3's part limits)")
        if not 1 <= self.page_size <= 1000:
            raise ConfigurationError("page_size must be between 1 and 1000")
        if self.max_concurrency < 1 or self.max_connections < 1:
            raise ConfigurationError("max_concurrency and max_connections must be positive")
        if not 0 < self.url_expiration <= MAX_PRESIGN:
            raise ConfigurationError(f"url_expiration must be between 1 and {MAX_PRESIGN} seconds")
        if self.prefix and (self.prefix.startswith("/") or not self.prefix.endswith("/")):
            raise ConfigurationError("prefix must not start with '/' and must end with '/'")
        if self.endpoint is not None and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ConfigurationError(f"endpoint must be an http(s) URL, not {self.endpoint!r}")


S3_STORAGE_CLASSES: Final = frozenset(
    {
        "STANDARD",
        "REDUCED_REDUNDANCY",
        "STANDARD_IA",
        "ONEZONE_IA",
        "INTELLIGENT_TIERING",
        "GLACIER",
        "DEEP_ARCHIVE",
        "GLACIER_IR",
        "OUTPOSTS",
        "SNOW",
        "EXPRESS_ONEZONE",
    }
)
"""The storage classes S3's PutObject takes (``x-amz-storage-class``)."""


def check_s3_class(name: str) -> str:
    """``name`` if S3 knows the class, else :class:`InvalidArgumentError` (before a byte is sent)."""
    if name not in S3_STORAGE_CLASSES:
        raise InvalidArgumentError(f"S3 has no storage class {name!r}; one of {', '.join(sorted(S3_STORAGE_CLASSES))}")
    return name


_CRC32_HOSTS: Final = ("amazonaws.com", "amazonaws.com.cn", "r2.cloudflarestorage.com")


def _verifies_crc32(endpoint: str | None) -> bool:
    """Whether the server at ``endpoint`` (None: AWS) is known to check x-amz-checksum-crc32."""
    if endpoint is None:
        return True
    host = (urlsplit(endpoint if "://" in endpoint else f"//{endpoint}").hostname or "").lower()
    return any(host == h or host.endswith("." + h) for h in _CRC32_HOSTS)
