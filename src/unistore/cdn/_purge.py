"""CDN cache purges: CloudFront invalidations, BunnyCDN purge, Cloudflare purge by URL, Spaces CDN cache purge."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any, ClassVar, Protocol, runtime_checkable
from urllib.parse import quote, unquote, urlsplit

from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    PermissionDeniedError,
    RateLimitedError,
    StorageError,
    UnavailableError,
    parse_retry_after,
)

__all__ = ["BunnyPurger", "CloudFrontInvalidator", "CloudflarePurger", "Purger", "SpacesPurger"]


@runtime_checkable
class Purger(Protocol):
    """Removes CDN URLs from the edge caches. ``max_batch`` URLs go in one :meth:`purge`;
    ``wildcards`` says whether a URL may end in ``*`` (everything under that prefix)."""

    max_batch: int
    wildcards: bool

    async def purge(self, urls: Sequence[str], *, reference: str) -> None:
        """Purge ``urls``; raise a :class:`TransientError` when a retry may succeed. ``reference``
        is the same on every retry of one batch (an idempotency token, where the API takes one)."""
        ...

    async def aclose(self) -> None:
        """Release the HTTP client."""
        ...


def _http_error(status: int, text: str, retry_after: str | None, what: str) -> StorageError:
    message = f"{what} answered {status}: {text[:200]}".strip()
    if status in (401, 403):
        return PermissionDeniedError(message, operation="purge")
    if status == 429:
        return RateLimitedError(message, retry_after=parse_retry_after(retry_after), operation="purge")
    if status >= 500:
        return UnavailableError(message, operation="purge")
    return InvalidArgumentError(message, operation="purge")


class _HttpPurger:
    """An httpx client made on first use (per event loop) and closed by :meth:`aclose`."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _http(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                import httpx
            except ImportError as exc:
                raise ConfigurationError("CDN purges need the [cdn] extra: pip install 'unistore[cdn]'") from exc
            self._client = httpx.AsyncClient(timeout=self.timeout)
            self._loop = loop
        return self._client

    async def _send(self, what: str, method: str, url: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = await self._http().request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise UnavailableError(f"{what} unreachable: {type(exc).__name__}", operation="purge") from exc
        if response.status_code >= 300:
            raise _http_error(response.status_code, response.text, response.headers.get("retry-after"), what)
        return response

    async def aclose(self) -> None:
        """Close the HTTP client (safe to call twice; one made on another event loop is dropped)."""
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()


class BunnyPurger(_HttpPurger):
    """BunnyCDN's purge API: ``POST {api}/purge?url=…`` with the account's ``AccessKey`` header,
    one URL a request (a trailing ``*`` purges everything under it)."""

    max_batch: int = 1
    wildcards: bool = True
    API: ClassVar[str] = "https://api.bunny.net"

    def __init__(self, api_key: str, *, api_url: str = API, timeout: float = 10.0) -> None:
        super().__init__(timeout)
        if not api_key:
            raise ConfigurationError("BunnyPurger needs the account API key")
        self._api_key = api_key
        self.api_url = api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"BunnyPurger(api_url={self.api_url!r})"

    async def purge(self, urls: Sequence[str], *, reference: str = "") -> None:
        """One purge request per URL (purging twice is harmless: ``reference`` is not sent)."""
        for url in urls:
            await self._send(
                "BunnyCDN purge",
                "POST",
                f"{self.api_url}/purge",
                params={"url": url, "async": "false"},
                headers={"AccessKey": self._api_key},
            )


class CloudflarePurger(_HttpPurger):
    """Cloudflare's purge by URL: ``POST {api}/zones/{zone_id}/purge_cache`` with
    ``{"files": [...]}`` and ``Authorization: Bearer {api_token}``, up to 100 URLs a request."""

    max_batch: int = 100
    wildcards: bool = False
    API: ClassVar[str] = "https://api.cloudflare.com/client/v4"

    def __init__(self, zone_id: str, api_token: str, *, api_url: str = API, timeout: float = 10.0) -> None:
        super().__init__(timeout)
        if not zone_id or not api_token:
            raise ConfigurationError("CloudflarePurger needs zone_id and api_token")
        self.zone_id = zone_id
        self._token = api_token
        self.api_url = api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"CloudflarePurger(zone_id={self.zone_id!r})"

    async def purge(self, urls: Sequence[str], *, reference: str = "") -> None:
        """Purge ``urls`` (at most :attr:`max_batch`) in one request (``reference`` is not sent)."""
        if any(url.endswith("*") for url in urls):
            raise InvalidArgumentError("Cloudflare purges by exact URL, not by wildcard", operation="purge")
        response = await self._send(
            "Cloudflare purge",
            "POST",
            f"{self.api_url}/zones/{quote(self.zone_id, safe='')}/purge_cache",
            json={"files": list(urls)},
            headers={"Authorization": f"Bearer {self._token}"},
        )
        try:
            ok = bool(response.json().get("success"))
        except ValueError:
            ok = False
        if not ok:
            raise UnavailableError(f"Cloudflare purge did not succeed: {response.text[:200]}", operation="purge")


class SpacesPurger(_HttpPurger):
    """DigitalOcean Spaces CDN: ``DELETE {api}/cdn/endpoints/{endpoint_id}/cache`` with
    ``{"files": [...]}`` (object paths, ``dir/*`` for a folder) and ``Authorization: Bearer
    {api_token}``, up to 50 paths a request (DigitalOcean's rate limit)."""

    max_batch: int = 50
    wildcards: bool = True
    API: ClassVar[str] = "https://api.digitalocean.com/v2"

    def __init__(self, endpoint_id: str, api_token: str, *, api_url: str = API, timeout: float = 10.0) -> None:
        super().__init__(timeout)
        if not endpoint_id or not api_token:
            raise ConfigurationError("SpacesPurger needs endpoint_id (the CDN endpoint's ID) and api_token")
        self.endpoint_id = endpoint_id
        self._token = api_token
        self.api_url = api_url.rstrip("/")

    def __repr__(self) -> str:
        return f"SpacesPurger(endpoint_id={self.endpoint_id!r})"

    async def purge(self, urls: Sequence[str], *, reference: str = "") -> None:
        """Purge the object paths of ``urls`` in one request (``reference`` is not sent)."""
        files = [unquote(urlsplit(url).path.lstrip("/")) for url in urls]
        await self._send(
            "Spaces CDN purge",
            "DELETE",
            f"{self.api_url}/cdn/endpoints/{quote(self.endpoint_id, safe='')}/cache",
            json={"files": files},
            headers={"Authorization": f"Bearer {self._token}"},
        )


class CloudFrontInvalidator:
    """CloudFront ``CreateInvalidation`` on ``distribution_id`` (aiobotocore): one invalidation
    per batch of up to 3,000 paths (the URLs' paths; ``/dir/*`` is one path for billing).
    ``endpoint_url`` and the keys default to the usual AWS configuration."""

    max_batch: int = 3000
    wildcards: bool = True

    def __init__(
        self,
        distribution_id: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 10.0,
    ) -> None:
        if not distribution_id:
            raise ConfigurationError("CloudFrontInvalidator needs a distribution_id")
        self.distribution_id = distribution_id
        self.endpoint_url = endpoint_url
        self.region = region
        self._keys = (access_key, secret_key)
        self.timeout = timeout
        self._client: Any = None
        self._context: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        return f"CloudFrontInvalidator(distribution_id={self.distribution_id!r})"

    async def _cloudfront(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is loop:
            return self._client
        try:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import get_session
        except ImportError as exc:
            raise ConfigurationError(
                "CloudFront invalidation needs the [cdn] extra: pip install 'unistore[cdn]'"
            ) from exc
        config = AioConfig(connect_timeout=self.timeout, read_timeout=self.timeout, retries={"max_attempts": 1})
        kwargs: dict[str, Any] = {"region_name": self.region, "config": config}
        if self.endpoint_url:
            kwargs["endpoint_url"] = self.endpoint_url
        if self._keys[0]:
            kwargs["aws_access_key_id"], kwargs["aws_secret_access_key"] = self._keys
        context = get_session().create_client("cloudfront", **kwargs)
        self._client = await context.__aenter__()
        self._context, self._loop = context, loop
        return self._client

    async def purge(self, urls: Sequence[str], *, reference: str = "") -> None:
        """One ``CreateInvalidation`` for the paths of ``urls``; ``reference`` is its
        ``CallerReference``, so a retry after a lost answer does not pay for a second one."""
        paths = sorted({urlsplit(url).path or "/" for url in urls})
        if not paths:
            return
        client = await self._cloudfront()
        batch = {"Paths": {"Quantity": len(paths), "Items": paths}, "CallerReference": reference or uuid.uuid4().hex}
        try:
            await client.create_invalidation(DistributionId=self.distribution_id, InvalidationBatch=batch)
        except Exception as exc:
            raise _translate(exc) from exc

    async def aclose(self) -> None:
        """Close the CloudFront client (safe to call twice)."""
        context, self._context, self._client = self._context, None, None
        if context is not None and self._loop is asyncio.get_running_loop():
            await context.__aexit__(None, None, None)


def _translate(exc: Exception) -> StorageError:
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"CloudFront {code}: {error.get('Message', '')}".strip()
        if code in ("TooManyInvalidationsInProgress", "Throttling", "ThrottlingException") or status == 429:
            return RateLimitedError(message, operation="purge")
        if status in (401, 403) or code in ("AccessDenied", "InvalidClientTokenId", "SignatureDoesNotMatch"):
            return PermissionDeniedError(message, operation="purge")
        if status >= 500:
            return UnavailableError(message, operation="purge")
        return InvalidArgumentError(message, operation="purge")
    if isinstance(exc, BotoCoreError | OSError | asyncio.TimeoutError):
        return UnavailableError(f"CloudFront unreachable: {type(exc).__name__}", operation="purge")
    return StorageError(f"CloudFront invalidation failed: {type(exc).__name__}: {exc}", operation="purge")
