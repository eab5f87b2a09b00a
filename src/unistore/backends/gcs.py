"""Google Cloud Storage over its JSON API, with one pooled ``httpx.AsyncClient``.

The object's **generation** is the etag: ``mode="create"`` sends
``ifGenerationMatch=0``, ``IfMatch(g)`` sends ``ifGenerationMatch=g``, and GCS
decides the condition atomically with the write. Bodies up to ``chunk_size``
go in one multipart upload; larger ones stream through a resumable session
(:mod:`._gcs_upload`; memory bounded by one chunk, cancelled if the body fails
so the stored object is untouched). ``open`` is one media request whose
headers give the info of exactly the generation served (custom metadata, when
there is any, from the JSON resource of that generation); small bodies are read
at once. Copies are server-side (``rewrite``). Credentials are google-auth's;
URLs are V4-signed with a service-account key, else through IAM ``signBlob``
(:mod:`._gcp`). ``STORAGE_EMULATOR_HOST`` points everything at an emulator (no
tokens). Errors are translated in :mod:`._gcs_wire`; settings in :mod:`._gcs_settings`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import httpx

from .._base import DEFAULT_CHUNK_SIZE, BaseBackend, check_listing_args, check_read_conditions, iter_body, settings_from
from .._errors import ConfigurationError, InvalidArgumentError, NotFoundError, StorageError, UnavailableError
from .._keys import validate_key
from .._types import (
    Body,
    ByteRange,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    SuffixRange,
    WriteMode,
    check_content_type,
    check_header_value,
    current_storage_class,
    guess_content_type,
    normalize_metadata,
)
from ._extras import require_extra
from ._gcp import Credentials, load_credentials, v4_signed_url
from ._gcs_settings import GCSSettings
from ._gcs_upload import resumable_upload
from ._gcs_wire import (
    INFO_FIELDS,
    check_gcs_class,
    has_custom_metadata,
    info_from_media,
    info_from_resource,
    json_of,
    multipart_body,
    precondition_failed,
    raise_for,
    translate,
    write_conditions,
)
from ._httpclient import pooled_client

__all__ = ["GCSBackend", "GCSSettings"]

_MEDIA = {"alt": "media"}
_EAGER = 256 * 1024  # media bodies up to this size are read at once in open()
_META_ATTEMPTS = (1, 2, 3, 4, 5)  # media + metadata request pairs open() may lose to writers before it gives up


class GCSBackend(BaseBackend):
    """A GCS bucket (optionally under a prefix) as a unistore backend."""

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

    def __init__(self, settings: GCSSettings | None = None, **options: Any) -> None:
        require_extra("GCSBackend", "gcs", "httpx", "google.auth")  # google-auth: tokens and signing
        self.settings = s = settings_from(GCSSettings, settings, options)
        self.default_expires_in = s.url_expiration
        base = (s.emulator_host or s.endpoint).rstrip("/")
        if "://" not in base:
            base = "http://" + base
        self._base = base
        self._creds: Credentials = load_credentials(s.credentials, anonymous=s.emulator_host is not None)
        sign_at = urlsplit(base)  # URLs name the host requests go to (the API, an emulator, a private endpoint)
        self._sign_scheme, self._sign_host = sign_at.scheme, sign_at.netloc
        self._bucket_path = f"{base}/storage/v1/b/{quote(s.bucket, safe='')}"
        self._upload_path = f"{base}/upload/storage/v1/b/{quote(s.bucket, safe='')}/o"
        self._client = pooled_client(s.timeout, s.max_connections)
        self._bucket_exists = False  # until a request succeeds or the bucket is seen

    def __repr__(self) -> str:
        return f"GCSBackend(bucket={self.settings.bucket!r}, prefix={self.settings.prefix!r}, auth={self._creds.kind})"

    # --- the one request path (errors: ._gcs_wire) ------------------------------------

    async def _send(
        self, method: str, url: str, op: str, key: str | None, *, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        """One request (see :meth:`_request`). GCS answers 404 for a missing bucket as for a missing
        object: until the bucket is known to exist, a 404 asks for the bucket, and a missing one is a
        :class:`ConfigurationError` (as on S3), never "no such object"."""
        r = await self._request(method, url, op, key, stream=stream, **kw)
        if r.status_code == 404 and not self._bucket_exists:
            probe = await self._request("GET", self._bucket_path, op, key, params={"fields": "name"})
            if probe.status_code == 404:
                await r.aclose()
                raise ConfigurationError(
                    f"GCS bucket {self.settings.bucket!r} does not exist", key=key, backend=self.name, operation=op
                )
            self._bucket_exists = True  # it exists (or may not be asked about): the 404 is the object's
        elif r.status_code < 300:
            self._bucket_exists = True
        return r

    async def _request(
        self, method: str, url: str, op: str, key: str | None, *, stream: bool = False, **kw: Any
    ) -> httpx.Response:
        """One request, authenticated; transport errors translated. Idempotent requests are
        retried once on a dropped pooled connection (the server may close an idle one)."""
        try:
            if self._creds.kind != "anonymous":
                token = await self._creds.token(self._client)
                kw["headers"] = {**(kw.get("headers") or {}), "Authorization": f"Bearer {token}"}
            request = self._client.build_request(method, url, **kw)
            try:
                return await self._client.send(request, stream=stream)
            except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError):
                if method not in ("GET", "HEAD", "DELETE") or kw.get("content") is not None:
                    raise
                return await self._client.send(self._client.build_request(method, url, **kw), stream=stream)
        except Exception as exc:
            raise translate(exc, op, key) from exc

    def _name(self, key: str) -> str:
        return self.settings.prefix + key

    def _object_url(self, key: str) -> str:
        return f"{self._bucket_path}/o/{quote(self._name(key), safe='')}"

    def _from_resource(self, res: Mapping[str, Any]) -> ObjectInfo:
        return info_from_resource(res, self.settings.prefix)

    async def _current_generation(self, key: str, op: str) -> str:
        """The generation ``IfMatch("*")`` pins; :class:`PreconditionFailedError` if ``key`` is missing."""
        try:
            return (await self.head(key)).etag
        except NotFoundError:
            precondition_failed(key, op, "if_match on a missing key")

    # --- primitives ---------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        r = await self._send("GET", self._object_url(key), "head", key)
        if r.status_code != 200:
            raise_for(r, "head", key)
        return self._from_resource(json_of(r, "head", key))

    async def get(self, key: str) -> bytes:
        """The object's bytes in one request (no metadata round trip)."""
        validate_key(key)
        r = await self._send("GET", self._object_url(key), "get", key, params=_MEDIA)
        if r.status_code != 200:
            raise_for(r, "get", key)
        return r.content

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        """One request; the info comes from the media response's headers, except custom
        metadata: headers lose its names' case and its values' percent signs, so when the object
        has any, it is read from the JSON resource of the generation served (a second request,
        tried again from the start if the object changed in between). Bodies up to 256 KiB are
        read at once (the connection goes straight back to the pool); larger ones stream."""
        validate_key(key)
        headers: dict[str, str] = {}
        params = dict(_MEDIA)
        if isinstance(range, ByteRange):
            headers["Range"] = f"bytes={range.start}-{'' if range.end is None else range.end - 1}"
        elif isinstance(range, SuffixRange):
            headers["Range"] = f"bytes=-{range.length}"
        if if_match is not None and if_match != "*":
            params["ifGenerationMatch"] = if_match.strip('"')
            if not params["ifGenerationMatch"].isdigit():  # not a generation: cannot match
                precondition_failed(key, "open")
        if if_none_match is not None and if_none_match != "*" and if_none_match.strip('"').isdigit():
            params["ifGenerationNotMatch"] = if_none_match.strip('"')
        for _ in _META_ATTEMPTS:  # (``range`` is the argument here)
            r = await self._send("GET", self._object_url(key), "open", key, stream=True, params=params, headers=headers)
            try:
                if r.status_code not in (200, 206):
                    await r.aread()
                    if r.status_code == 416 and range is not None:
                        # A 416 must not hide a 404, nor a 412/304 (preconditions come first, RFC 9110 §13.2.2).
                        check_read_conditions(await self.head(key), if_match, if_none_match, self.name)
                    raise_for(r, "open", key)
                info, start, end = info_from_media(key, r)
                if has_custom_metadata(r):
                    meta = await self._metadata_of(key, info.etag)
                    if meta is None:  # replaced since the media request: read the new one
                        await r.aclose()
                        continue
                    info = replace(info, metadata=meta)
            except BaseException as exc:
                await r.aclose()
                if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                    raise translate(exc, "open", key) from exc
                raise
            break
        else:
            raise UnavailableError("the object kept changing while it was opened", key=key, backend=self.name)
        try:
            # The one response is the version served: check the conditions against it too.
            check_read_conditions(info, if_match, if_none_match, self.name)
            if end - start <= _EAGER:
                await r.aread()
                return Download(info, r.content, start=start, end=end, range_requested=range is not None)
        except BaseException as exc:
            await r.aclose()
            if isinstance(exc, Exception) and not isinstance(exc, StorageError):
                raise translate(exc, "open", key) from exc
            raise
        return Download(
            info, self._stream(r, key), start=start, end=end, range_requested=range is not None, close=r.aclose
        )

    async def _metadata_of(self, key: str, generation: str) -> dict[str, str] | None:
        """The custom metadata of ``key``'s generation ``generation``; ``None`` if that is no
        longer the current one."""
        params = {"ifGenerationMatch": generation, "fields": "generation,metadata"}
        r = await self._send("GET", self._object_url(key), "open", key, params=params)
        if r.status_code in (404, 412):
            return None
        if r.status_code != 200:
            raise_for(r, "open", key)
        res = json_of(r, "open", key)
        if str(res.get("generation")) != generation:
            return None
        return {str(k): str(v) for k, v in (res.get("metadata") or {}).items()}

    async def _stream(self, r: httpx.Response, key: str) -> AsyncIterator[bytes]:
        try:
            async for chunk in r.aiter_bytes():
                yield chunk
        except Exception as exc:
            raise translate(exc, "read", key) from exc
        finally:
            await r.aclose()

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
        resource: dict[str, Any] = {
            "name": self._name(key),
            "contentType": check_content_type(content_type) or guess_content_type(key),
            "metadata": normalize_metadata(metadata),
        }
        wanted = current_storage_class()
        if wanted is not None:
            resource["storageClass"] = check_gcs_class(wanted)
        if check_header_value("cache_control", cache_control) is not None:
            resource["cacheControl"] = cache_control
        if check_header_value("content_disposition", content_disposition) is not None:
            resource["contentDisposition"] = content_disposition
        generation = None
        if isinstance(mode, IfMatch) and mode.etag == "*":
            generation = await self._current_generation(key, "put")
        params = write_conditions(mode, generation)
        if isinstance(mode, IfMatch) and not params["ifGenerationMatch"].isdigit():
            precondition_failed(key, "put")
        size = self.settings.chunk_size
        if isinstance(body, bytes | bytearray | memoryview) and len(body) <= size:
            return await self._multipart(key, bytes(body), resource, params, mode)
        chunks = iter_body(body, min(size, DEFAULT_CHUNK_SIZE))
        buf = bytearray()
        async for chunk in chunks:
            buf += chunk
            if len(buf) > size:
                res = await resumable_upload(
                    self._send, self._upload_path, key, buf, chunks, resource, params, mode, size
                )
                return self._from_resource(res)
        return await self._multipart(key, bytes(buf), resource, params, mode)

    async def _multipart(
        self, key: str, data: bytes, resource: dict[str, Any], params: dict[str, str], mode: WriteMode
    ) -> ObjectInfo:
        body, content_type = multipart_body(resource, data)
        r = await self._send(
            "POST",
            self._upload_path,
            "put",
            key,
            params={"uploadType": "multipart", "fields": INFO_FIELDS, **params},
            content=body,
            headers={"Content-Type": content_type},
        )
        if r.status_code != 200:
            raise_for(r, "put", key, mode)
        return self._from_resource(json_of(r, "put", key))

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        params = {}
        if if_match is not None and if_match != "*":
            params["ifGenerationMatch"] = if_match.strip('"')
            if not params["ifGenerationMatch"].isdigit():
                precondition_failed(key, "delete")
        elif if_match == "*":
            try:
                params["ifGenerationMatch"] = (await self.head(key)).etag
            except NotFoundError:
                params["ifGenerationMatch"] = "0"
        r = await self._send("DELETE", self._object_url(key), "delete", key, params=params)
        if r.status_code in (200, 204):
            return True
        if r.status_code == 404:
            if if_match is not None:
                precondition_failed(key, "delete")
            return False
        raise_for(r, "delete", key)

    async def _pages(self, prefix: str, start_after: str | None, fields: str) -> AsyncIterator[list[dict[str, Any]]]:
        check_listing_args(prefix, start_after)
        params = {
            "prefix": self._name(prefix),
            "maxResults": str(self.settings.page_size),
            "fields": f"items({fields}),nextPageToken",
        }
        if start_after is not None and start_after > prefix:
            params["startOffset"] = self._name(start_after)
        skip = self._name(start_after) if start_after is not None else None
        while True:
            r = await self._send("GET", f"{self._bucket_path}/o", "list", prefix, params=params)
            if r.status_code != 200:
                raise_for(r, "list", prefix)
            page = json_of(r, "list", prefix)
            items = [i for i in page.get("items") or () if i["name"] != skip]
            if items:
                yield items
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for items in self._pages(prefix, start_after, INFO_FIELDS):
            for item in items:
                yield self._from_resource(item)

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        check_listing_args(prefix, start_after)
        if not isinstance(delimiter, str) or not delimiter:
            raise InvalidArgumentError("delimiter must be a non-empty str")
        params = {
            "prefix": self._name(prefix),
            "delimiter": delimiter,
            "maxResults": str(self.settings.page_size),
            "fields": f"items({INFO_FIELDS}),prefixes,nextPageToken",
        }
        if start_after is not None and start_after > prefix:
            params["startOffset"] = self._name(start_after)
        cut = len(self.settings.prefix)
        while True:
            r = await self._send("GET", f"{self._bucket_path}/o", "list", prefix, params=params)
            if r.status_code != 200:
                raise_for(r, "list", prefix)
            page = json_of(r, "list", prefix)
            entries: list[tuple[str, ObjectInfo | CommonPrefix]] = []
            for item in page.get("items") or ():
                info = self._from_resource(item)
                entries.append((info.key, info))
            for folder in page.get("prefixes") or ():
                entries.append((folder[cut:], CommonPrefix(folder[cut:])))
            for name, entry in sorted(entries, key=lambda pair: pair[0]):
                if start_after is None or name > start_after:  # a folder the cursor is inside comes again
                    yield entry
            token = page.get("nextPageToken")
            if not token:
                return
            params["pageToken"] = token

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        cut = len(self.settings.prefix)
        async for items in self._pages(prefix, start_after, "name"):
            for item in items:
                yield item["name"][cut:]

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        validate_key(key)
        method = method.upper()
        if method not in ("GET", "PUT", "HEAD", "DELETE"):
            raise InvalidArgumentError(f"cannot sign a {method} URL for GCS")
        extra = {}
        if download:
            name = key.rpartition("/")[2]
            extra["response-content-disposition"] = f"attachment; filename*=UTF-8''{quote(name, safe='')}"
        try:
            email, sign = await self._creds.signer(self._client, self.settings.iam_endpoint)
            return await v4_signed_url(
                email,
                sign,
                scheme=self._sign_scheme,
                host=self._sign_host,
                bucket=self.settings.bucket,
                name=self._name(key),
                method=method,
                expires_in=self.default_expires_in if expires_in is None else expires_in,
                extra_query=extra,
            )
        except Exception as exc:
            raise translate(exc, "sign_url", key) from exc

    def unsigned_url(self, key: str) -> str:
        """The object's plain URL (``https://storage.googleapis.com/bucket/name``): it serves public
        objects, and is what ``put`` returns when no signed URL can be made."""
        validate_key(key)
        return f"{self._sign_scheme}://{self._sign_host}/{self.settings.bucket}/{quote(self._name(key), safe='/-_.~')}"

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        validate_key(src)
        validate_key(dst)
        generation = None
        if isinstance(mode, IfMatch) and mode.etag == "*":
            generation = await self._current_generation(dst, "copy")
        params = {**write_conditions(mode, generation), "fields": f"done,rewriteToken,resource({INFO_FIELDS})"}
        url = f"{self._object_url(src)}/rewriteTo/b/{quote(self.settings.bucket, safe='')}/o/" + quote(
            self._name(dst), safe=""
        )
        while True:
            r = await self._send("POST", url, "copy", src, params=params, json={})
            if r.status_code != 200:
                raise_for(r, "copy", dst if r.status_code == 412 else src, mode)
            body = json_of(r, "copy", src)
            if body.get("done"):
                return self._from_resource(body["resource"])
            params["rewriteToken"] = body["rewriteToken"]  # large or cross-class copies take several calls

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Native: ``objects.patch`` of the metadata (names no longer wanted set to null),
        with ``ifGenerationMatch`` (the body read) and ``ifMetagenerationMatch`` (the metadata
        read). The generation, hence the etag, stays the same."""
        validate_key(key)
        meta = normalize_metadata(metadata)
        r = await self._send(
            "GET",
            self._object_url(key),
            "replace_metadata",
            key,
            params={"fields": "generation,metageneration,metadata"},
        )
        if r.status_code != 200:
            raise_for(r, "replace_metadata", key)
        res = json_of(r, "replace_metadata", key)
        generation = str(res["generation"])
        if if_match is not None and if_match != "*" and if_match.strip('"') != generation:
            precondition_failed(key, "replace_metadata")
        patch: dict[str, Any] = {name: None for name in res.get("metadata") or {}}
        patch.update(meta)
        params = {
            "ifGenerationMatch": generation,
            "ifMetagenerationMatch": str(res["metageneration"]),
            "fields": INFO_FIELDS,
        }
        r = await self._send(
            "PATCH", self._object_url(key), "replace_metadata", key, params=params, json={"metadata": patch}
        )
        if r.status_code != 200:
            raise_for(r, "replace_metadata", key, IfMatch(generation))
        return self._from_resource(json_of(r, "replace_metadata", key))

    async def ping(self) -> None:
        r = await self._send("GET", self._bucket_path, "ping", None, params={"fields": "name"})
        if r.status_code != 200:
            raise_for(r, "ping", None)

    async def aclose(self) -> None:
        await self._client.aclose()
        self._creds.close()
