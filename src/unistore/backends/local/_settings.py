"""The settings of :class:`~unistore.backends.local.LocalBackend`."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..._base import DEFAULT_CHUNK_SIZE
from ..._errors import ConfigurationError

__all__ = ["LocalSettings"]


@dataclass(frozen=True, slots=True)
class LocalSettings:
    """Settings of :class:`LocalBackend`, named after ``STORAGE_*`` variables without the prefix."""

    base_path: str = "/data/uploads"
    """Directory holding the files, created if missing (default ``RAILWAY_VOLUME_MOUNT_PATH`` when that is set)."""
    base_url: str = "http://localhost:8000/files"
    """Public URL prefix of the route serving the files; signed URLs are ``{base_url}/{key}?expires=…&signature=…``."""
    url_secret: str | None = field(default=None, repr=False)
    """Key that signs URLs. Unset: a random secret created when the first URL is signed and kept in
    ``<base_path>/.unistore/url-secret`` (0600)."""
    url_expiration: int = 3600
    """Lifetime of a signed URL when the caller gives none, in seconds."""
    fsync: bool = True
    """Flush each write (file and directory) to disk before it is reported done; off trades crash safety for speed."""
    chunk_size: int = DEFAULT_CHUNK_SIZE
    """Bytes per read or write when streaming."""
    max_object_size: int | None = None
    """Largest object accepted, in bytes (larger writes fail with ``QuotaExceededError``); unset: no limit."""

    def __post_init__(self) -> None:
        if self.url_expiration <= 0:
            raise ConfigurationError("url_expiration must be positive")
        if self.chunk_size <= 0:
            raise ConfigurationError("chunk_size must be positive")
        if self.max_object_size is not None and self.max_object_size < 0:
            raise ConfigurationError("max_object_size must be >= 0")
