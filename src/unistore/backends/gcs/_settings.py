"""Settings of the GCS backend (:class:`GCSSettings`, re-exported by :mod:`unistore.backends.gcs`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._errors import ConfigurationError
from ..._keys import validate_prefix
from ._credentials import IAM_ENDPOINT

__all__ = ["API", "GCSSettings"]

_QUANTUM = 256 * 1024  # resumable chunks must be multiples of 256 KiB
API = "https://storage.googleapis.com"


@dataclass(frozen=True, slots=True)
class GCSSettings:
    """Settings of :class:`GCSBackend` (``easy_storage`` keyword names)."""

    bucket: str = ""
    """The bucket (required)."""
    project: str | None = None
    """Accepted for compatibility and unused: the bucket alone names the store."""
    credentials: str | None = None
    """``GOOGLE_APPLICATION_CREDENTIALS``: a credentials file google-auth reads (service account,
    ``authorized_user``, external account, impersonated); none: Application Default Credentials."""
    emulator_host: str | None = None
    """``STORAGE_EMULATOR_HOST``: base URL of an emulator (fake-gcs-server); no tokens are sent."""
    prefix: str = ""
    """Prepended to every key (``gs://bucket/prefix``)."""
    chunk_size: int = 8 * 1024 * 1024
    """Bytes per resumable upload chunk (a multiple of 256 KiB); smaller bodies go in one request."""
    url_expiration: int = 3600
    """Lifetime of a signed URL when the caller gives none, in seconds."""
    timeout: int = 60
    """Seconds a request may take."""
    max_connections: int = 64
    """Connections kept open to the server."""
    page_size: int = 1000
    """Objects per listing request (GCS's maximum is 1000)."""
    endpoint: str = field(default=API, repr=False)
    """The JSON and upload API's base URL (a regional or private endpoint); signed URLs name this host too."""
    iam_endpoint: str = IAM_ENDPOINT
    """The IAM Credentials API, which signs URLs for credentials without a key (``signBlob``)."""

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigurationError("GCSBackend needs a bucket: set STORAGE_GCS_BUCKET")
        if self.chunk_size <= 0 or self.chunk_size % _QUANTUM:
            raise ConfigurationError("chunk_size must be a positive multiple of 256 KiB")
        if min(self.url_expiration, self.timeout, self.max_connections, self.page_size) <= 0:
            raise ConfigurationError("url_expiration, timeout, max_connections and page_size must be positive")
        if self.prefix:
            validate_prefix(self.prefix)
