"""S3-compatible object storage: AWS S3, MinIO, SeaweedFS, Cloudflare R2, Backblaze B2, Wasabi, DO Spaces.

The data path speaks the S3 REST protocol directly over one pooled aiohttp
session with SigV4 signing (``_s3wire``): per request that costs a fraction of
botocore's CPU and a little less than obstore's (see ``docs/s3.md`` for the
measurement). botocore is used only where it adds something: the standard AWS
credential chain (profiles, SSO, IMDS, session tokens) and the raw client
escape hatch ``backend._client`` for provider-specific calls.

Deviations from the common contract, all S3's own:

* The etag is the server's (an MD5 for simple uploads): writing the same bytes
  twice gives the same etag, and metadata-only differences do not change it.
* ``remove`` needs a HEAD before the DELETE (S3 answers 204 either way) and deletes
  that version with If-Match, so one of several concurrent deletes reports ``True``.
  For servers that ignore If-Match on DELETE set ``conditional_delete=False``.
* Listings carry size, etag and date but not content type or metadata.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import quote, urlsplit

from .._base import BaseBackend, check_listing_args, iter_body
from .._errors import (
    ConfigurationError,
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    StorageError,
    UnavailableError,
    UnsupportedError,
)
from .._keys import validate_key
from .._types import (
    Body,
    ByteRange,
    Capabilities,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._s3wire import (
    Credentials,
    SigV4,
    decode_meta,
    encode_meta,
    error_from_response,
    http_date,
    iso_date,
    local_name,
    uri_encode,
    xml_children,
    xml_find,
    xml_root,
)

if TYPE_CHECKING:
    import aiohttp

    from ._s3multipart import S3Uploads

__all__ = ["S3Backend", "S3Settings"]

MiB = 1024 * 1024
MAX_PRESIGN = 7 * 24 * 3600  # SigV4 presigned URLs live at most 7 days
_SMALL_READ = 256 * 1024  # a GET at most this long is read at once and its connection released


@dataclass(frozen=True, slots=True)
class S3Settings:
    """Settings of :class:`S3Backend` (``easy_storage`` keyword names; ``STORAGE_S3_*`` variables).

    Credentials: ``access_key``/``secret_key`` (and ``session_token``), else
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``, else
    botocore's standard chain (profile, SSO, web identity, container, IMDS).
    """

    bucket: str
    region: str = "us-east-1"
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing_style: Literal["auto", "path", "virtual"] = "auto"
    """``auto``: virtual-hosted on AWS for DNS-safe bucket names, path style on custom endpoints."""
    prefix: str = ""
    """Prepended to every key (``"app1/"`` keeps several apps in one bucket)."""
    checksum: Literal["md5", "sha256", "none"] = "md5"
    """Body checksum sent with every upload and part: ``md5`` (Content-MD5, accepted everywhere),
    ``sha256`` (the newer x-amz-checksum-sha256, kept by the server per part), or ``none``."""
    equal_parts: bool | None = None
    """Multipart parts must all have the same size but the last (R2). ``None``: on for R2 endpoints."""
    part_size: int = 8 * MiB
    max_concurrency: int = 4
    """Parts in flight per upload: memory stays within ``part_size × (max_concurrency + 1)``."""
    sse: Literal["AES256", "aws:kms"] | None = None
    sse_kms_key_id: str | None = None
    sse_customer_key: str | None = field(default=None, repr=False)
    """SSE-C: a 32-byte key, base64-encoded. Every read then needs it too."""
    storage_class: str | None = None
    conditional_delete: bool = True
    """The server honours If-Match on DELETE (AWS, SeaweedFS, MinIO, moto). Off: ``remove(if_match=)``
    raises :class:`UnsupportedError` and two concurrent deletes may both report ``True``."""
    url_expiration: int = 3600
    max_connections: int = 64
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    copy_part_size: int = 512 * MiB
    multipart_copy_threshold: int = 5 * 1024 * MiB

    def __post_init__(self) -> None:
        if not self.bucket:
            raise ConfigurationError("S3 bucket is required (STORAGE_S3_BUCKET)")
        if self.addressing_style not in ("auto", "path", "virtual"):
            raise ConfigurationError(f"addressing_style must be auto, path or virtual, not {self.addressing_style!r}")
        if self.checksum not in ("md5", "sha256", "none"):
            raise ConfigurationError(f"checksum must be md5, sha256 or none, not {self.checksum!r}")
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
        if self.max_concurrency < 1 or self.max_connections < 1:
            raise ConfigurationError("max_concurrency and max_connections must be positive")
        if not 0 < self.url_expiration <= MAX_PRESIGN:
            raise ConfigurationError(f"url_expiration must be between 1 and {MAX_PRESIGN} seconds")
        if self.prefix and (self.prefix.startswith("/") or not self.prefix.endswith("/")):
            raise ConfigurationError("prefix must not start with '/' and must end with '/'")
        if self.endpoint is not None and urlsplit(self.endpoint).scheme not in ("http", "https"):
            raise ConfigurationError(f"endpoint must be an http(s) URL, not {self.endpoint!r}")


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    headers: Mapping[str, str]
    body: bytes


class S3Backend(BaseBackend):
    """One bucket of an S3-compatible store (see the module docstring for deviations)."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
        presigned_put=True,
        server_side_copy=True,
        max_object_size=5 * 1024**4,
    )

    def __init__(self, settings: S3Settings | None = None, **options: Any) -> None:
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self.settings = s = settings if settings is not None else S3Settings(**options)
        self.bucket = s.bucket
        self.default_expires_in = s.url_expiration
        self._signer = SigV4(s.region)
        endpoint = s.endpoint or (
            "https://s3.amazonaws.com" if s.region == "us-east-1" else f"https://s3.{s.region}.amazonaws.com"
        )
        parts = urlsplit(endpoint)
        base_path = parts.path.rstrip("/")
        virtual = s.addressing_style == "virtual" or (
            s.addressing_style == "auto" and s.endpoint is None and _dns_safe(s.bucket)
        )
        if virtual:
            self._host = f"{s.bucket}.{parts.netloc}"
            self._bucket_path = base_path + "/"
        else:
            self._host = parts.netloc
            self._bucket_path = f"{base_path}/{uri_encode(s.bucket)}/"
        self._origin = f"{parts.scheme}://{self._host}"
        self._equal_parts = s.equal_parts if s.equal_parts is not None else "r2.cloudflarestorage.com" in endpoint
        self._read_headers: dict[str, str] = {}
        self._write_extra: dict[str, str] = {}
        if s.sse_customer_key:
            digest = base64.b64encode(hashlib.md5(base64.b64decode(s.sse_customer_key)).digest()).decode()
            self._read_headers = {
                "x-amz-server-side-encryption-customer-algorithm": "AES256",
                "x-amz-server-side-encryption-customer-key": s.sse_customer_key,
                "x-amz-server-side-encryption-customer-key-md5": digest,
            }
            self._write_extra.update(self._read_headers)
        if s.sse:
            self._write_extra["x-amz-server-side-encryption"] = s.sse
        if s.sse_kms_key_id:
            self._write_extra["x-amz-server-side-encryption-aws-kms-key-id"] = s.sse_kms_key_id
        if s.storage_class:
            self._write_extra["x-amz-storage-class"] = s.storage_class
        if not s.conditional_delete:
            self.capabilities = replace(type(self).capabilities, conditional_delete=False)  # type: ignore[misc]
        self._session: aiohttp.ClientSession | None = None
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self._static = _static_credentials(s)
        self._chain: Any = None  # botocore credentials object, resolved on first use
        self._boto: Any = None  # aiobotocore client context, created on first use of _client
        self._boto_client: Any = None
        self._client = _BotoProxy(self)

    @property
    def uploads(self) -> S3Uploads:
        """Resumable multipart upload sessions (start, upload parts, list, complete, abort)."""
        from ._s3multipart import S3Uploads

        return S3Uploads(self)

    def __repr__(self) -> str:
        return f"S3Backend(bucket={self.bucket!r}, endpoint={self.settings.endpoint!r}, prefix={self.settings.prefix!r})"

    # --- connection, credentials and the one error boundary --------------------------------

    def _http(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session_loop is not loop or self._session.closed:
            try:
                import aiohttp
            except ImportError as exc:
                raise ConfigurationError("S3Backend needs aiohttp: pip install 'unistore[s3]'") from exc

            s = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=s.max_connections, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout, sock_read=s.read_timeout),
                auto_decompress=False,
                skip_auto_headers=("Content-Type",),
            )
            self._session_loop = loop
        return self._session

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
                    backend=self.name,
                )
            self._chain = chain
        frozen = await chain.get_frozen_credentials()
        return Credentials(frozen.access_key, frozen.secret_key, frozen.token)

    def _object_path(self, key: str) -> str:
        return self._bucket_path + uri_encode(self.settings.prefix + key, safe="/")

    async def _send(
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

        Returns a :class:`_Response` with the whole body, or (``stream=True``) the open
        aiohttp response, which the caller must release.
        """
        headers = {} if headers is None else headers
        creds = self._static or await self.credentials()
        self._signer.sign_headers(creds, method, self._host, path, query, headers)
        url = self._origin + path
        if query:
            url += "?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query.items()))
        import aiohttp
        from yarl import URL

        try:
            resp = await self._http().request(
                method, URL(url, encoded=True), headers=headers, data=body, allow_redirects=False
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UnavailableError(
                f"request failed: {type(exc).__name__}: {exc}", key=key, backend=self.name, operation=op
            ) from exc
        try:
            if resp.status >= 300:
                data = b"" if method == "HEAD" else await resp.read()
                raise error_from_response(
                    resp.status, resp.headers, data, key=key, operation=op, backend=self.name,
                    bucket=self.bucket, create=create,
                )
            if stream:
                return resp
            return _Response(resp.status, resp.headers, await resp.read())
        except StorageError:
            resp.release()
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            resp.release()
            raise UnavailableError(
                f"response failed: {type(exc).__name__}: {exc}", key=key, backend=self.name, operation=op
            ) from exc
        finally:
            if not stream:
                resp.release()

    # --- reads --------------------------------------------------------------------------------

    def _info(self, key: str, headers: Mapping[str, str], size: int) -> ObjectInfo:
        meta = {
            name[11:].lower(): decode_meta(value)
            for name, value in headers.items()
            if name[:11].lower() == "x-amz-meta-"
        }
        return ObjectInfo(
            key=key,
            size=size,
            etag=headers.get("ETag", "").strip('"'),
            last_modified=http_date(headers.get("Last-Modified")),
            content_type=headers.get("Content-Type") or "application/octet-stream",
            metadata=meta,
            cache_control=headers.get("Cache-Control"),
            content_disposition=headers.get("Content-Disposition"),
        )

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        r = await self._send("HEAD", self._object_path(key), op="head", key=key, headers=dict(self._read_headers))
        return self._info(key, r.headers, int(r.headers.get("Content-Length", 0)))

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        headers = dict(self._read_headers)
        if range is not None:
            if isinstance(range, ByteRange):
                end = "" if range.end is None else str(range.end - 1)
                headers["range"] = f"bytes={range.start}-{end}"
            else:
                headers["range"] = f"bytes=-{range.length}"
        if if_match is not None:
            headers["if-match"] = _quote_etag(if_match)
        if if_none_match is not None:
            headers["if-none-match"] = _quote_etag(if_none_match)
        resp = await self._send("GET", self._object_path(key), op="open", key=key, headers=headers, stream=True)
        try:
            length = int(resp.headers.get("Content-Length", 0))
            start, size = 0, length
            if resp.status == 206:
                span, _, total = resp.headers.get("Content-Range", "").removeprefix("bytes ").partition("/")
                start, size = int(span.partition("-")[0]), int(total)
            elif range is not None:  # a server that ignored the range: take the span from the whole body
                start, _end = range.resolve(length)
            info = self._info(key, resp.headers, size)
            if length <= _SMALL_READ or (range is not None and resp.status == 200):
                data = await resp.read()
                if range is not None and resp.status == 200:
                    data = data[start:_end]
                    length = len(data)
                resp.release()
                return Download(info, data, start=start, end=start + length, range_requested=range is not None)
        except StorageError:
            resp.release()
            raise
        except Exception as exc:
            resp.release()
            raise UnavailableError(f"read failed: {exc}", key=key, backend=self.name, operation="open") from exc

        async def close() -> None:
            resp.release()

        return Download(
            info,
            self._stream(resp, key),
            start=start,
            end=start + length,
            range_requested=range is not None,
            close=close,
        )

    async def _stream(self, resp: aiohttp.ClientResponse, key: str) -> AsyncIterator[bytes]:
        import aiohttp

        try:
            async for chunk in resp.content.iter_chunked(_SMALL_READ):
                yield chunk
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UnavailableError(
                f"download interrupted: {type(exc).__name__}: {exc}", key=key, backend=self.name, operation="open"
            ) from exc
        finally:
            resp.release()

    # --- writes ----------------------------------------------------------------------------------

    def _write_headers(
        self,
        key: str,
        content_type: str | None,
        metadata: Mapping[str, Any] | None,
        cache_control: str | None,
        content_disposition: str | None,
    ) -> tuple[dict[str, str], str, dict[str, str]]:
        meta = normalize_metadata(metadata)
        ctype = check_header_value("content_type", content_type) or guess_content_type(key)
        check_header_value("cache_control", cache_control)
        check_header_value("content_disposition", content_disposition)
        headers = {"content-type": ctype, **self._write_extra}
        for name, value in meta.items():
            headers["x-amz-meta-" + name] = encode_meta(value)
        if cache_control:
            headers["cache-control"] = cache_control
        if content_disposition:
            headers["content-disposition"] = content_disposition
        return headers, ctype, meta

    def _checksum_headers(self, chunks: list[bytes], headers: dict[str, str]) -> None:
        mode = self.settings.checksum
        if mode == "md5":
            h = hashlib.md5(usedforsecurity=False)
            for c in chunks:
                h.update(c)
            headers["content-md5"] = base64.b64encode(h.digest()).decode()
        elif mode == "sha256":
            h2 = hashlib.sha256()
            for c in chunks:
                h2.update(c)
            headers["x-amz-checksum-sha256"] = base64.b64encode(h2.digest()).decode()

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        headers, ctype, meta = self._write_headers(key, content_type, metadata, cache_control, content_disposition)
        cond = _condition_headers(mode)
        part_size = self.settings.part_size
        if isinstance(body, bytes | bytearray | memoryview) and len(body) <= part_size:
            chunks, size, rest = [bytes(body)], len(body), None
        else:
            rest = iter_body(body, chunk_size=MiB).__aiter__()
            chunks, size = await _fill(rest, part_size)
            if size < part_size:
                rest = None
        if rest is not None:
            from ._s3multipart import upload_stream

            return await upload_stream(self, key, headers, cond, chunks, size, rest, ctype, meta)
        self._checksum_headers(chunks, headers)
        headers.update(cond)
        headers["content-length"] = str(size)
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            r = await self._send(
                "PUT", self._object_path(key), op="put", key=key, headers=headers, body=data, create=mode == "create"
            )
        except NotFoundError as exc:  # If-Match on a missing key: some servers answer 404
            raise PreconditionFailedError(
                "if_match write on a missing key", key=key, backend=self.name, operation="put"
            ) from exc
        return ObjectInfo(
            key=key,
            size=size,
            etag=r.headers.get("ETag", "").strip('"'),
            last_modified=http_date(r.headers.get("Date")),
            content_type=ctype,
            metadata=meta,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        if not self.settings.conditional_delete:
            if if_match is not None:
                raise UnsupportedError(
                    "this server ignores If-Match on DELETE", key=key, backend=self.name, operation="delete"
                )
            try:
                await self.head(key)
            except NotFoundError:
                return False
            await self._send("DELETE", self._object_path(key), op="delete", key=key)
            return True
        if if_match is not None:
            try:
                await self._delete_if(key, if_match)
            except NotFoundError as exc:
                raise PreconditionFailedError(
                    "if_match on a missing key", key=key, backend=self.name, operation="delete"
                ) from exc
            return True
        # DELETE answers 204 whether or not the key existed: delete the version a HEAD saw,
        # conditionally, so that of several concurrent deletes exactly one reports True.
        while True:
            try:
                etag = (await self.head(key)).etag
                await self._delete_if(key, etag)
                return True
            except NotFoundError:
                return False
            except PreconditionFailedError:
                continue  # replaced or deleted since the HEAD: look again

    async def _delete_if(self, key: str, etag: str) -> None:
        headers = {"if-match": _quote_etag(etag)}
        await self._send("DELETE", self._object_path(key), op="delete", key=key, headers=headers)

    # --- listing ---------------------------------------------------------------------------------

    async def _pages(self, prefix: str, start_after: str | None) -> AsyncIterator[Any]:
        check_listing_args(prefix, start_after)
        base = self.settings.prefix
        query = {"list-type": "2", "prefix": base + prefix, "max-keys": "1000"}
        if start_after is not None:
            query["start-after"] = base + start_after
        while True:
            r = await self._send("GET", self._bucket_path, op="list", query=query)
            root = xml_root(r.body)
            yield root
            token = xml_find(root, "NextContinuationToken")
            if xml_find(root, "IsTruncated") != "true" or not token:
                return
            query = {"list-type": "2", "prefix": base + prefix, "max-keys": "1000", "continuation-token": token}

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        cut = len(self.settings.prefix)
        async for page in self._pages(prefix, start_after):
            for item in xml_children(page, "Contents"):
                yield ObjectInfo(
                    key=xml_find(item, "Key")[cut:],
                    size=int(xml_find(item, "Size", "0")),
                    etag=xml_find(item, "ETag").strip('"'),
                    last_modified=iso_date(xml_find(item, "LastModified")),
                )

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        cut = len(self.settings.prefix)
        async for page in self._pages(prefix, start_after):
            for name in page.iterfind("{*}Contents/{*}Key"):
                yield (name.text or "")[cut:]

    # --- URLs --------------------------------------------------------------------------------------

    async def presign(
        self,
        key: str,
        *,
        method: str = "GET",
        expires_in: int | None = None,
        download: bool = False,
        content_type: str | None = None,
    ) -> str:
        """A SigV4 presigned URL for ``method`` (GET, HEAD, PUT, DELETE) on ``key``.

        GET: ``download=True`` adds an attachment disposition and ``content_type``
        overrides the response's Content-Type. PUT: ``content_type`` is signed, so the
        uploader must send exactly that ``Content-Type``.
        """
        validate_key(key)
        expires = self.default_expires_in if expires_in is None else expires_in
        if not 0 < expires <= MAX_PRESIGN:
            raise InvalidArgumentError(
                f"expires_in must be between 1 and {MAX_PRESIGN} seconds (S3's limit)", key=key, backend=self.name
            )
        method = method.upper()
        if method not in ("GET", "HEAD", "PUT", "DELETE"):
            raise InvalidArgumentError(f"cannot presign {method}", key=key, backend=self.name)
        query: dict[str, str] = {}
        signed: dict[str, str] = {}
        if method in ("GET", "HEAD"):
            if download:
                query["response-content-disposition"] = _attachment(key)
            if content_type:
                query["response-content-type"] = check_header_value("content_type", content_type) or ""
        elif method == "PUT" and content_type:
            signed["content-type"] = check_header_value("content_type", content_type) or ""
        creds = await self.credentials()
        path = self._object_path(key)
        qs = self._signer.presign(creds, method, self._host, path, expires, query, signed)
        return f"{self._origin}{path}?{qs}"

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        return await self.presign(key, method=method, expires_in=expires_in, download=download)

    async def presign_post(
        self,
        key: str,
        *,
        expires_in: int | None = None,
        content_type: str | None = None,
        content_type_prefix: str | None = None,
        max_size: int | None = None,
        min_size: int = 0,
    ) -> tuple[str, dict[str, str]]:
        """A browser upload form: POST ``fields`` plus the file (field ``file``, last) to the URL.

        The policy pins the key, and limits the size to ``[min_size, max_size]`` and the
        content type to ``content_type`` exactly or to ``content_type_prefix`` (``"image/"``).
        """
        validate_key(key)
        expires = self.default_expires_in if expires_in is None else expires_in
        if not 0 < expires <= MAX_PRESIGN:
            raise InvalidArgumentError(f"expires_in must be between 1 and {MAX_PRESIGN} seconds", key=key)
        full_key = self.settings.prefix + key
        fields = {"key": full_key}
        conditions: list[Any] = [{"bucket": self.bucket}, ["eq", "$key", full_key]]
        if content_type is not None:
            fields["Content-Type"] = check_header_value("content_type", content_type) or ""
            conditions.append(["eq", "$Content-Type", content_type])
        elif content_type_prefix is not None:
            conditions.append(["starts-with", "$Content-Type", content_type_prefix])
        if max_size is not None:
            conditions.append(["content-length-range", min_size, max_size])
        for name, value in self._write_extra.items():
            if not name.startswith("x-amz-server-side-encryption-customer"):
                fields[name] = value
                conditions.append({name: value})
        expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires))
        creds = await self.credentials()
        fields.update(self._signer.post_policy(creds, {"expiration": expiration, "conditions": conditions}))
        return self._origin + self._bucket_path, fields

    # --- copy, health, close ------------------------------------------------------------------------

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """Server-side copy (multipart copy above ``multipart_copy_threshold``); conditional
        modes stream through a conditional PUT so the condition stays atomic."""
        validate_key(src)
        validate_key(dst)
        if mode != "overwrite":
            return await super().copy(src, dst, mode=mode)
        info = await self.head(src)
        from ._s3multipart import copy_object

        return await copy_object(self, info, dst)

    async def ping(self) -> None:
        await self._send("HEAD", self._bucket_path, op="ping", query={"list-type": "2", "max-keys": "1"})

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.closed:
            with contextlib.suppress(RuntimeError):
                await session.close()
        boto, self._boto, self._boto_client = self._boto, None, None
        if boto is not None:
            await boto.__aexit__(None, None, None)

    async def boto_client(self) -> Any:
        """The raw aiobotocore S3 client (created once, closed by :meth:`aclose`)."""
        if self._boto_client is None:
            from aiobotocore.config import AioConfig
            from aiobotocore.session import AioSession

            s = self.settings
            creds = await self.credentials()
            style = "path" if self._bucket_path != "/" else "virtual"
            ctx = AioSession().create_client(
                "s3",
                region_name=s.region,
                endpoint_url=s.endpoint,
                aws_access_key_id=creds.access_key,
                aws_secret_access_key=creds.secret_key,
                aws_session_token=creds.token,
                config=AioConfig(
                    s3={"addressing_style": style},
                    max_pool_connections=s.max_connections,
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required",
                ),
            )
            self._boto_client = await ctx.__aenter__()
            self._boto = ctx
        return self._boto_client


class _BotoProxy:
    """``backend._client``: the raw aiobotocore client's methods, awaitable before it exists."""

    def __init__(self, backend: S3Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            client = await self._backend.boto_client()
            return await getattr(client, name)(*args, **kwargs)

        call.__name__ = name
        return call


def _static_credentials(s: S3Settings) -> Credentials | None:
    if s.access_key and s.secret_key:
        return Credentials(s.access_key, s.secret_key, s.session_token)
    if s.access_key or s.secret_key:
        raise ConfigurationError("set both the S3 access key and secret key, or neither")
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
    return None


def _dns_safe(bucket: str) -> bool:
    return "." not in bucket and bucket == bucket.lower() and 3 <= len(bucket) <= 63


def _quote_etag(etag: str) -> str:
    if etag == "*" or etag.startswith(('"', "W/")):
        return etag
    return f'"{etag}"'


def _condition_headers(mode: WriteMode) -> dict[str, str]:
    if mode == "overwrite":
        return {}
    if mode == "create":
        return {"if-none-match": "*"}
    if isinstance(mode, IfMatch):
        return {"if-match": _quote_etag(mode.etag)}
    raise TypeError(f"invalid write mode {mode!r}")


def _attachment(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def _fill(it: AsyncIterator[bytes], target: int) -> tuple[list[bytes], int]:
    """Read chunks from ``it`` until ``target`` bytes or the end; returns the chunks and their size."""
    chunks: list[bytes] = []
    size = 0
    while size < target:
        try:
            chunk = await it.__anext__()
        except StopAsyncIteration:
            break
        chunks.append(chunk)
        size += len(chunk)
    return chunks, size
