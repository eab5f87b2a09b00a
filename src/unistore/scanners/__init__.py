"""Malware scanning with ClamAV: one-off scans, and the :class:`~unistore.layers.Scan` layer's client.

>>> from unistore.scanners import scan_file
>>> result = await scan_file(content)
>>> if result.is_infected:
...     raise HTTPException(status_code=400, detail=f"File contains malware: {result.signature}")

Each function takes ``url`` (``unix:///path`` or ``tcp://host:port``; default
``UNISTORE_CLAMD_URL``, else Debian's ``unix:///var/run/clamav/clamd.ctl``) or a
ready :class:`ClamdClient` as ``client``. The body is streamed to clamd in
bounded chunks (``INSTREAM``), never loaded whole.
"""

from __future__ import annotations

from collections.abc import AsyncIterable
from pathlib import Path

from .._base import iter_body
from .._types import Body
from ._clamd import (
    DEFAULT_URL,
    ClamdClient,
    InstreamSession,
    MalwareFoundError,
    ScanError,
    ScannerUnavailableError,
    ScanResult,
    ScanTooLargeError,
)

__all__ = [
    "ClamdClient",
    "DEFAULT_URL",
    "InstreamSession",
    "MalwareFoundError",
    "ScanError",
    "ScanResult",
    "ScanTooLargeError",
    "ScannerUnavailableError",
    "scan_bytes",
    "scan_file",
    "scan_stream",
]


def _client(url: str | None, client: ClamdClient | None) -> ClamdClient:
    return client if client is not None else ClamdClient(url)


async def scan_bytes(data: bytes, *, url: str | None = None, client: ClamdClient | None = None) -> ScanResult:
    """Scan ``data``."""
    return await scan_stream(iter_body(data), url=url, client=client)


async def scan_stream(
    chunks: AsyncIterable[bytes], *, url: str | None = None, client: ClamdClient | None = None
) -> ScanResult:
    """Scan an async stream of byte chunks (an upload as it arrives)."""
    return await _client(url, client).scan_stream(chunks)


async def scan_file(source: Body | str, *, url: str | None = None, client: ClamdClient | None = None) -> ScanResult:
    """Scan ``source``: bytes, a path (``str`` or path-like), a binary file (sync or async ``read``, such as
    FastAPI's ``UploadFile``) or an async iterable of bytes."""
    body: Body = Path(source) if isinstance(source, str) else source
    return await scan_stream(iter_body(body), url=url, client=client)
