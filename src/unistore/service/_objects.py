"""The object routes: ``/v1/objects``, ``/v1/upload``, ``/v1/urls``."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal
from urllib.parse import unquote

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Message, Receive

from .._errors import InvalidArgumentError, QuotaExceededError
from .._keys import validate_key, validate_prefix
from .._request_limits import declared_length
from .._types import CommonPrefix, IfMatch, ObjectInfo, WriteMode, check_content_type
from ..fastapi import serve_object
from ..layers import idempotency_key
from ._access import ServiceContext
from ._auth import Grant
from ._digests import check_digests, expected_digests, verified_body
from ._guard import admitted_route
from ._state import is_internal

__all__ = [
    "CreatedResponse",
    "check_length",
    "content_type_header",
    "get_response",
    "info_json",
    "objects_router",
    "put_response",
    "request_body",
    "small_body",
]

_BODY = {"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}
_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}, "key": {"type": "string"}},
                }
            }
        },
    }
}


def _bounded_receive(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises 413 once more than ``limit`` body bytes have arrived (chunked bodies too)."""
    seen = 0

    async def bounded() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise QuotaExceededError(f"request body is larger than {limit} bytes", operation="put")
        return message

    return bounded


def info_json(info: ObjectInfo) -> dict[str, Any]:
    """The JSON form of an object's info, as every route returns it."""
    return {
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        "content_type": info.content_type,
        "last_modified": info.last_modified.isoformat(),
        "metadata": dict(info.metadata),
    }


class CreatedResponse(JSONResponse):
    """``201 Created`` with the stored object's info (:func:`info_json`) and its ``ETag``: the bytes
    ``JSONResponse(info_json(info), 201, headers={"ETag": ...})`` sends, with its three headers
    written out directly instead of through the generic header building (every PUT answers one)."""

    def __init__(self, info: ObjectInfo) -> None:
        self.status_code = 201
        self.background = None
        self.body = self.render(info_json(info))
        self.raw_headers = [
            (b"etag", f'"{info.etag}"'.encode("latin-1")),
            (b"content-length", str(len(self.body)).encode("latin-1")),
            (b"content-type", b"application/json"),
        ]


def write_mode(request: Request) -> WriteMode:
    """``If-None-Match: *`` → create-only; ``If-Match: "etag"`` → conditional; else overwrite."""
    if request.headers.get("if-none-match", "").strip() == "*":
        return "create"
    if_match = request.headers.get("if-match")
    return IfMatch(if_match.strip()) if if_match else "overwrite"


def metadata_from_headers(request: Request) -> dict[str, str]:
    """``X-Meta-<name>: <percent-encoded UTF-8>`` headers as metadata."""
    out = {}
    for name, value in request.headers.items():
        if name.lower().startswith("x-meta-"):
            try:
                out[name[7:].lower()] = unquote(value, errors="strict")
            except UnicodeDecodeError:
                raise InvalidArgumentError(f"header {name} is not percent-encoded UTF-8") from None
    return out


def encode_cursor(key: str) -> str:
    """An opaque listing cursor for "after ``key``"."""
    return base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The key a cursor continues after (400 if it is not one of ours)."""
    try:
        return base64.b64decode(cursor + "=" * (-len(cursor) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, ValueError):
        raise InvalidArgumentError("invalid cursor") from None


def content_type_header(request: Request) -> str | None:
    """The request's one ``Content-Type``, checked before the body is read (400 for a list or junk)."""
    values = request.headers.getlist("content-type")
    if len(values) > 1:
        raise InvalidArgumentError("send one Content-Type header, not several", operation="put")
    return check_content_type(values[0]) if values else None


def check_length(request: Request, limit: int, key: str) -> None:
    """413 from ``Content-Length`` alone, before a byte of the body is read."""
    length = declared_length(request)
    if length is not None and length > limit:
        raise QuotaExceededError(f"request body is larger than {limit} bytes", key=key, operation="put")


def idempotency_scope(grant: Grant, *, authenticated: bool) -> str:
    """Whose ``Idempotency-Key`` values these are: the verified token's subject and prefix, or
    ``anonymous`` with auth off. Tokens for different subjects or prefixes never share a key."""
    if not authenticated:
        return "anonymous"
    return "token:" + json.dumps([grant.subject, grant.prefix])


def objects_router(ctx: ServiceContext) -> APIRouter:
    """The routes over ``ctx.storage``."""
    router = APIRouter(prefix="/v1", route_class=admitted_route(ctx))

    @router.put("/objects/{key:path}", status_code=201, openapi_extra=_BODY, operation_id="put_object")
    async def put_object(key: str, request: Request) -> JSONResponse:
        """Store the streamed body; see the module docstring for the headers it honours."""
        return await put_response(ctx, ctx.check(request, "write", key), key, request)

    @router.get("/objects/{key:path}", operation_id="get_object")
    @router.head("/objects/{key:path}", operation_id="head_object")
    async def get_object(key: str, request: Request) -> Response:
        """The object's bytes (streamed) with ``Range``, ``ETag`` and conditional requests (RFC 9110)."""
        return await get_response(ctx, ctx.check(request, "read", key), key, request)

    @router.delete("/objects/{key:path}", operation_id="delete_object")
    async def delete_object(key: str, request: Request) -> dict[str, bool]:
        """Delete the object (``If-Match`` honoured); ``deleted`` tells whether it existed."""
        grant = ctx.check(request, "delete", key)
        return {"deleted": await ctx.store(grant).remove(key, if_match=request.headers.get("if-match"))}

    @router.get("/objects", operation_id="list_objects")
    async def list_objects(
        request: Request,
        prefix: str = "",
        limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
        cursor: str | None = None,
        start_after: str | None = None,
        delimiter: Annotated[str | None, Query(min_length=1, max_length=16)] = None,
    ) -> dict[str, Any]:
        """A page of objects under ``prefix`` in key order, after ``cursor`` (a previous page's
        ``next_cursor``) or after the key ``start_after``. With ``delimiter`` (``/``), one
        level: the objects directly under ``prefix`` and, in ``prefixes``, one entry per
        folder below it; ``limit`` counts both, and the cursor pages across both."""
        store = ctx.store(ctx.check(request, "read", prefix))
        validate_prefix(prefix)
        limit = min(limit, ctx.settings.max_list_limit)
        after = decode_cursor(cursor) if cursor else start_after
        objects: list[dict[str, Any]] = []
        prefixes: list[str] = []
        last = None
        entries = (
            store.iter_objects(prefix, start_after=after)
            if delimiter is None
            else store.iter_entries(prefix, delimiter=delimiter, start_after=after)
        )
        async for entry in entries:
            last = entry.prefix if isinstance(entry, CommonPrefix) else entry.key
            if is_internal(last):
                continue
            if isinstance(entry, CommonPrefix):
                prefixes.append(entry.prefix)
            else:
                objects.append(info_json(entry))
            if len(objects) + len(prefixes) >= limit:
                break
        more = len(objects) + len(prefixes) >= limit and last is not None
        page: dict[str, Any] = {"objects": objects, "next_cursor": encode_cursor(last) if more and last else None}
        if delimiter is not None:
            page["prefixes"] = prefixes
        return page

    @router.post("/upload", status_code=201, operation_id="upload_form", openapi_extra=_FORM)
    async def upload(request: Request) -> JSONResponse:
        """A browser form upload (``file`` field, optional ``key``).

        The token (401/429), ``Content-Length`` (413) and the type (400 unless
        ``multipart/form-data``) are checked before the form is parsed, and the body
        is cut off at ``max_body_size`` even when it is chunked.
        """
        grant = ctx.admit(request)
        limit = ctx.settings.max_body_size
        check_length(request, limit, "upload")
        if request.headers.get("content-type", "").split(";", 1)[0].strip().lower() != "multipart/form-data":
            raise InvalidArgumentError("the upload must be multipart/form-data", operation="put")
        form_request = Request(request.scope, _bounded_receive(request.receive, limit))
        try:
            form = await form_request.form(max_files=1, max_fields=8)
        except ClientDisconnect:
            raise InvalidArgumentError("the client disconnected before the body ended", operation="put") from None
        except HTTPException as exc:  # starlette's own refusal of a malformed form
            raise InvalidArgumentError(f"malformed form: {exc.detail}", operation="put") from None
        try:
            file, key = form.get("file"), form.get("key")
            if not isinstance(file, UploadFile):
                raise InvalidArgumentError("the form needs a file field named 'file'", operation="put")
            if key is not None and not isinstance(key, str):
                raise InvalidArgumentError("the form's key field must be text", operation="put")
            name = key or file.filename or "upload"
            grant.require("write", name)
            store = ctx.store(grant)
            info = await store.put_object(name, file, content_type=check_content_type(file.content_type))
        finally:
            await form.close()
        url = await store.sign_url(name, expires_in=ctx.url_lifetime(grant, 3600))
        return JSONResponse(dict(info_json(info), url=url), status_code=201)

    @router.get("/urls/{key:path}", operation_id="signed_url")
    async def signed_url(
        key: str,
        request: Request,
        expires_in: Annotated[int, Query(ge=1, le=7 * 24 * 3600)] = 3600,
        download: bool = False,
        method: Literal["GET", "HEAD"] = "GET",
    ) -> dict[str, Any]:
        """A signed URL sharing one existing object without a token, for ``GET`` or ``HEAD`` (a
        store such as S3 signs the method); it expires no later than the token."""
        grant = ctx.check(request, "read", key)
        expires_in = ctx.url_lifetime(grant, expires_in)
        store = ctx.store(grant)
        if method == "GET":
            url = await store.get_url(key, expires_in=expires_in, download=download)
        else:
            await store.head(key)  # as get_url: a URL only for an object that exists
            url = await store.sign_url(key, expires_in=expires_in, download=download, method=method)
        return {"url": url, "expires_in": expires_in}

    return router


async def put_response(ctx: ServiceContext, grant: Grant, key: str, request: Request) -> JSONResponse:
    """``PUT /v1/objects/{key}`` for a caller holding ``grant`` (already checked for ``write`` on ``key``)."""
    validate_key(key)
    headers = request.headers
    limit = ctx.settings.max_body_size
    check_length(request, limit, key)
    content_type = content_type_header(request)
    if ctx.upload_policy is not None:  # what can be refused before the body: name, length, declared type
        ctx.upload_policy.check_declared(key, size=declared_length(request), content_type=content_type)
    expected = expected_digests(headers)
    length = declared_length(request)
    options: dict[str, Any] = dict(
        content_type=content_type,
        metadata=metadata_from_headers(request),
        mode=write_mode(request),
        cache_control=headers.get("cache-control"),
        content_disposition=headers.get("content-disposition"),
    )
    op_id = headers.get("idempotency-key")
    if op_id is not None and not 0 < len(op_id) <= 200:
        raise InvalidArgumentError("Idempotency-Key must be 1..200 characters")
    # Set for every request, with or without a key: a write must never inherit a key
    # from an enclosing context (see RequestIdMiddleware on contexts leaking in uvicorn).
    # The scope only matters for a key.
    scope = "" if op_id is None else idempotency_scope(grant, authenticated=ctx.authority is not None)
    body: bytes | AsyncIterator[bytes]
    if length is not None and length <= SMALL_BODY:  # read whole, checked, then stored as bytes
        body = await small_body(request.receive, limit, key)
        check_digests(body, expected=expected, key=key)
    else:
        body = verified_body(request_body(request), expected=expected, max_size=limit, key=key)
    with idempotency_key(op_id, scope=scope):
        info = await ctx.store(grant).put_object(key, body, **options)
    return CreatedResponse(info)


async def get_response(ctx: ServiceContext, grant: Grant, key: str, request: Request) -> Response:
    """``GET``/``HEAD /v1/objects/{key}`` for a caller holding ``grant`` (already checked for ``read``)."""
    validate_key(key)
    return await serve_object(ctx.store(grant), key, request, download=False, meta_headers=True)


SMALL_BODY = 64 * 1024
"""A ``PUT`` body declared (``Content-Length``) at most this long is read whole before it is stored, and
given to the store as bytes: the same checks and errors, without a chain of body streams per request."""


async def small_body(receive: Receive, limit: int, key: str) -> bytes:
    """The whole request body from ``receive``: 413 as soon as more than ``limit`` bytes arrived, and a
    client that hangs up mid-body is a 400, as with :func:`request_body` and :func:`verified_body`."""
    chunks: list[bytes] = []
    size = 0
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect
            raise InvalidArgumentError("the client disconnected before the body ended", operation="put")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise QuotaExceededError(f"request body is larger than {limit} bytes", key=key, operation="put")
            chunks.append(chunk)
        more = message.get("more_body", False)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def request_body(request: Request) -> AsyncIterator[bytes]:
    """The request body as it streams in; a client that hangs up mid-body is a 400, not a 500."""
    try:
        async for chunk in request.stream():
            if chunk:
                yield chunk
    except ClientDisconnect:
        raise InvalidArgumentError("the client disconnected before the body ended", operation="put") from None
