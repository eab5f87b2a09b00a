"""The unistore file service: an HTTP object API over any backend (``make serve``).

Routes (all JSON unless serving bytes):

- ``PUT /v1/objects/{key}``: store the request body (streamed); ``Content-Type``,
  ``X-Meta-<name>`` headers become content type and metadata; ``If-None-Match: *``
  makes it create-only, ``If-Match: "etag"`` conditional. 201 with the object info.
- ``POST /v1/upload``: a browser form upload (``file`` field, optional ``key``).
- ``GET``/``HEAD /v1/objects/{key}``: the object, with ``Range``, ``ETag``,
  ``If-None-Match`` (304), ``If-Match`` (412).
- ``DELETE /v1/objects/{key}``: ``{"deleted": true|false}``; honours ``If-Match``.
- ``GET /v1/objects?prefix=&limit=&start_after=``: a page of objects and the
  ``next_start_after`` cursor.
- ``GET /v1/urls/{key}?expires_in=&download=``: a signed URL.
- ``GET /files/{key}?...signature``: signed URLs (local and memory backends).
- ``GET /_ops/health``.

The service keeps no state of its own: everything lives in the backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from .._base import StorageBackend
from .._config import easy_storage
from .._types import IfMatch, ObjectInfo, WriteMode
from ..fastapi import add_storage, get_storage, serve_object

__all__ = ["create_app"]


def _info_json(info: ObjectInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        "content_type": info.content_type,
        "last_modified": info.last_modified.isoformat(),
        "metadata": dict(info.metadata),
    }


def _write_mode(request: Request) -> WriteMode:
    if request.headers.get("if-none-match", "").strip() == "*":
        return "create"
    if_match = request.headers.get("if-match")
    return IfMatch(if_match.strip()) if if_match else "overwrite"


def create_app(backend: StorageBackend | None = None, *, title: str = "unistore") -> FastAPI:
    """The file service app over ``backend`` (auto-detected from the environment when ``None``)."""
    app = FastAPI(title=title, version="1")
    storage = backend if backend is not None else easy_storage()
    # Stores that sign their own URLs (local, memory) get the route that serves them.
    add_storage(app, storage, serve_files=getattr(storage, "signer", None) is not None)

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"service": "unistore", "backend": storage.name, "docs": "/docs", "health": "/_ops/health"}

    @app.put("/v1/objects/{key:path}", status_code=201)
    async def put_object(key: str, request: Request) -> JSONResponse:
        metadata = {k[7:]: v for k, v in request.headers.items() if k.lower().startswith("x-meta-")}

        async def body() -> AsyncIterator[bytes]:
            async for chunk in request.stream():
                if chunk:
                    yield chunk

        info = await storage.put_object(
            key,
            body(),
            content_type=request.headers.get("content-type"),
            metadata=metadata,
            mode=_write_mode(request),
            cache_control=request.headers.get("cache-control"),
        )
        return JSONResponse(_info_json(info), status_code=201, headers={"ETag": f'"{info.etag}"'})

    @app.post("/v1/upload", status_code=201)
    async def upload(file: Annotated[UploadFile, File()], key: Annotated[str | None, Form()] = None) -> JSONResponse:
        name = key or file.filename or "upload"
        info = await storage.put_object(name, file, content_type=file.content_type)
        url = await storage.sign_url(name)
        return JSONResponse(dict(_info_json(info), url=url), status_code=201)

    @app.api_route("/v1/objects/{key:path}", methods=["GET", "HEAD"])
    async def get_object(key: str, request: Request) -> Response:
        return await serve_object(get_storage(request), key, request, download=False)

    @app.delete("/v1/objects/{key:path}")
    async def delete_object(key: str, request: Request) -> dict[str, bool]:
        return {"deleted": await storage.remove(key, if_match=request.headers.get("if-match"))}

    @app.get("/v1/objects")
    async def list_objects(
        prefix: str = "",
        limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
        start_after: str | None = None,
    ) -> dict[str, Any]:
        objects = []
        async for info in storage.iter_objects(prefix, start_after=start_after):
            objects.append(_info_json(info))
            if len(objects) >= limit:
                break
        more = len(objects) == limit
        return {"objects": objects, "next_start_after": objects[-1]["key"] if more else None}

    @app.get("/v1/urls/{key:path}")
    async def signed_url(
        key: str,
        expires_in: Annotated[int, Query(ge=1, le=7 * 24 * 3600)] = 3600,
        download: bool = False,
    ) -> dict[str, Any]:
        return {"url": await storage.get_url(key, expires_in=expires_in, download=download), "expires_in": expires_in}

    return app
