"""The S3 connection: where requests go, how they are signed, and the one place errors are translated.

One pooled aiohttp session per event loop (created on first use), SigV4 header
signing, and the credentials: static ones from the settings or ``AWS_*``
variables, else botocore's standard chain, refreshed when it says so.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..._errors import ConfigurationError, IntegrityError, StorageError, UnavailableError
from ._auth import static_credentials
from ._fast import FastPool, FastStream, FileRange, ShortFile
from ._settings import S3Settings
from ._wire import Credentials, SigV4, error_from_response, uri_encode

if TYPE_CHECKING:
    import aiohttp

__all__ = ["FAST_MAX", "Response", "S3Connection"]

FAST_MAX = 1024 * 1024  # bodies up to this size (and none) go through the lean pool


@dataclass(frozen=True, slots=True)
class Response:
    """A finished response: status, headers and the whole body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class S3Connection:
    """Requests to one bucket: addressing, signing, pooling and error translation."""

    def __init__(self, settings: S3Settings, backend_name: str) -> None:
        s = self.settings = settings
        self.backend_name = backend_name
        self.signer = SigV4(s.region)
        endpoint = s.endpoint or (
            "https://s3.amazonaws.com" if s.region == "us-east-1" else f"https://s3.{s.region}.amazonaws.com"
        )
        parts = urlsplit(endpoint)
        base_path = parts.path.rstrip("/")
        virtual = s.addressing_style == "virtual" or (
            s.addressing_style == "auto" and s.endpoint is None and _dns_safe(s.bucket)
        )
        if virtual:
            self.host = f"{s.bucket}.{parts.netloc}"
            self.bucket_path = base_path + "/"
        else:
            self.host = parts.netloc
            self.bucket_path = f"{base_path}/{uri_encode(s.bucket)}/"
        self.origin = f"{parts.scheme}://{self.host}"
        self.read_headers: dict[str, str] = {}
        self.write_extra: dict[str, str] = {}
        if s.sse_customer_key:
            digest = base64.b64encode(hashlib.md5(base64.b64decode(s.sse_customer_key)).digest()).decode()
            self.read_headers = {
                "x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": s.sse_customer_key,
                "x-amz-server-side-encryption-customer-key-md5": digest,
            }
            self.write_extra.update(self.read_headers)
        if s.sse:
            self.write_extra["x-amz-server-side-encryption"] = s.sse
        if s.sse_kms_key_id:
            self.write_extra["x-amz-server-side-encryption-aws-kms-key-id"] = s.sse_kms_key_id
        if s.storage_class:
            self.write_extra["x-amz-storage-class"] = s.storage_class
        # one pool per event loop (an aiohttp session cannot cross loops): apps that also use
        # the backend from another thread's loop (test servers, sync wrappers) each get theirs
        self._sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = (
            weakref.WeakKeyDictionary()
        )
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FastPool] = weakref.WeakKeyDictionary()
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._static = static_credentials(s)
        self._chain: Any = None  # botocore credentials object, resolved on first use

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is not None and self._session_loop is loop and not self._session.closed:
            return self._session
        session = self._sessions.get(loop)
        if session is None or session.closed:
            try:
                import aiohttp
            except ImportError as exc:
                raise ConfigurationError("S3Backend needs aiohttp: pip install 'unistore[s3]'") from exc

            s = self.settings
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
                auto_decompress=False,
                skip_auto_headers=("Content-Type",),
            )
            self._sessions[loop] = session
        # the last loop's session is cached in two attributes: the common one-loop case costs no lookup
        self._session, self._session_loop = session, loop
        return session

    async def credentials(self) -> Credentials:
        """The credentials the next request is signed with (refreshed by botocore when they expire)."""
        if self._static is not None:
            return self._static
        chain = self._chain
        if chain is None:
            from aiobotocore.session import AioSession

            chain = await AioSession().get_credentials()
            if chain is None:
                raise ConfigurationError(
                    "no S3 credentials: set STORAGE_S3_ACCESS_KEY/STORAGE_S3_SECRET_KEY, AWS_ACCESS_KEY_ID/"
                    "AWS_SECRET_ACCESS_KEY, or an AWS profile",
                    backend=self.backend_name,
                )
            self._chain = chain
        frozen = await chain.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def object_path(self, key: str) -> str:
        return self.bucket_path + uri_encode(self.settings.prefix + key, safe="/")

    async def send(
        self,
        method: str,
        path: str,
        *,
        op: str,
        key: str | None = None,
        query: Mapping[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        create: bool = False,
        stream: bool = False,
    ) -> Any:
        """Sign and send one request; non-2xx and transport failures become unistore errors here.

        Returns a :class:`Response` with the whole body, or (``stream=True``) the open
        response (a :class:`FastStream` for a request without a body, else aiohttp's), which the
        caller must release.
        """
        headers = {} if headers is None else headers
        creds = self._static or await self.credentials()
        self.signer.sign_headers(creds, method, self.host, path, query, headers)
        target = path
        if query:
            target += "?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query.items()))
        if not stream and (
            body is None or (isinstance(body, bytes | bytearray | memoryview) and len(body) <= FAST_MAX)
        ):
            return await self._send_small(method, target, headers, body, op, key, create)
        if stream and body is None:
            return await self._stream(method, target, headers, op, key)
        if isinstance(body, FileRange):
            pool = self._fast()
            if pool.can_sendfile and not stream:
                return await self._send_small(method, target, headers, body, op, key, create)
            body = body.chunks()
        url = self.origin + target
        import aiohttp
        from yarl import URL

        try:
            resp = await self._http().request(
                method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UnavailableError(
                f"request failed: {type(exc).__name__}: {exc}", key=key, backend=self.backend_name, operation=op
            ) from exc
        try:
            if resp.status >= 300:
                data = b"" if method == "HEAD" else await resp.read()
                raise error_from_response(
                    resp.status,
                    resp.headers,
                    data,
                    key=key,
                    operation=op,
                    backend=self.backend_name,
                    bucket=self.settings.bucket,
                    create=create,
                )
            if stream:
                return resp
            return Response(resp.status, resp.headers, await resp.read())
        except StorageError:
            resp.release()
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            resp.release()
            raise UnavailableError(
                f"response failed: {type(exc).__name__}: {exc}", key=key, backend=self.backend_name, operation=op
            ) from exc
        finally:
            if not stream:
                resp.release()

    def _fast(self) -> FastPool:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            parts = urlsplit(self.origin)
            tls = parts.scheme == "https"
            s = self.settings
            pool = FastPool(
                parts.hostname or "",
                parts.port or (443 if tls else 80),
                tls=tls,
                server_name=parts.hostname or "",
                limit=s.max_connections,
                connect_timeout=s.connect_timeout,
                timeout=s.read_timeout,
            )
            self._pools[loop] = pool
        return pool

    async def _send_small(
        self,
        method: str,
        target: str,
        headers: dict[str, str],
        body: bytes | bytearray | memoryview | FileRange | None,
        op: str,
        key: str | None,
        create: bool,
    ) -> Response:
        """A request whose whole body is in memory or a file range, through the lean keep-alive pool."""
        try:
            if isinstance(body, FileRange):
                r = await self._fast().request_file(method, target, self.host, headers, body)
            else:
                r = await self._fast().request(method, target, self.host, headers, body)
        except ShortFile as exc:
            raise IntegrityError(
                f"the file changed size during the upload ({exc})", key=key, backend=self.backend_name, operation=op
            ) from exc
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise UnavailableError(
                f"request failed: {type(exc).__name__}: {exc}", key=key, backend=self.backend_name, operation=op
            ) from exc
        if r.status >= 300:
            raise error_from_response(
                r.status,
                r.headers,
                r.body,
                key=key,
                operation=op,
                backend=self.backend_name,
                bucket=self.settings.bucket,
                create=create,
            )
        return Response(r.status, r.headers, r.body)

    async def _stream(self, method: str, target: str, headers: dict[str, str], op: str, key: str | None) -> FastStream:
        """A bodiless request (a download) through the lean pool, its body left to read."""
        try:
            r = await self._fast().stream(method, target, self.host, headers)
        except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError) as exc:
            raise UnavailableError(
                f"request failed: {type(exc).__name__}: {exc}", key=key, backend=self.backend_name, operation=op
            ) from exc
        if r.status >= 300:
            try:
                data = await r.read()
            except (OSError, TimeoutError, asyncio.IncompleteReadError):
                data = b""
            finally:
                r.release()
            raise error_from_response(
                r.status,
                r.headers,
                data,
                key=key,
                operation=op,
                backend=self.backend_name,
                bucket=self.settings.bucket,
                create=False,
            )
        return r

    async def close(self) -> None:
        """Close the pooled sessions (new ones are made if the connection is used again).

        The current loop's session is awaited; another running loop's is closed on that loop.
        """
        current = asyncio.get_running_loop()
        pools = list(self._pools.items())
        self._pools.clear()
        for loop, pool in pools:
            if loop is current or loop.is_closed():
                pool.close()
            elif loop.is_running():
                loop.call_soon_threadsafe(pool.close)
        sessions = list(self._sessions.items())
        self._sessions.clear()
        self._session = self._session_loop = None
        for loop, session in sessions:
            if session.closed:
                continue
            if loop is current:
                with contextlib.suppress(RuntimeError):
                    await session.close()
            elif loop.is_running():
                asyncio.run_coroutine_threadsafe(session.close(), loop)


def _dns_safe(bucket: str) -> bool:
    return "." not in bucket and bucket == bucket.lower() and 3 <= len(bucket) <= 63
