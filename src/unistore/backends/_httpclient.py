"""The pooled ``httpx.AsyncClient`` each HTTP-API backend (GCS, Cloudinary) holds for its lifetime."""

from __future__ import annotations

import functools
import ssl

import httpx

__all__ = ["pooled_client"]


@functools.cache
def _tls() -> ssl.SSLContext:
    """httpx's default verifying context (certifi, or ``SSL_CERT_FILE``/``SSL_CERT_DIR``), built once:
    loading the CA bundle takes 50-150 ms, which every backend would otherwise pay when created."""
    return httpx.create_ssl_context()


def pooled_client(timeout: float, max_connections: int) -> httpx.AsyncClient:
    """A keep-alive client: ``max_connections`` pooled, ``timeout`` per operation (10 s to connect)."""
    return httpx.AsyncClient(
        timeout=httpx.Timeout(timeout, connect=10),
        limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        headers={"User-Agent": "unistore"},
        verify=_tls(),
    )
