"""The upload-session routes: ``/v1/uploads`` (see :mod:`._uploads` for the semantics)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field

from ._access import ServiceContext
from ._digests import expected_digests
from ._objects import check_length, info_json, request_body
from ._uploads import MAX_PARTS, UploadSessions

__all__ = ["uploads_router"]

_BODY = {"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class ManifestEntry(BaseModel):
    """One part of a completion manifest."""

    number: int = Field(ge=1, le=MAX_PARTS)
    sha256: str = Field(min_length=1, max_length=100, description="base64 SHA-256 of the part")


def uploads_router(ctx: ServiceContext, sessions: UploadSessions) -> APIRouter:
    """The routes over ``sessions``; every step needs ``write`` on the session's key."""
    router = APIRouter(prefix="/v1/uploads", tags=["uploads"])

    @router.post("", status_code=201, operation_id="create_upload")
    async def create_upload(
        request: Request,
        key: Annotated[str, Body()],
        content_type: Annotated[str | None, Body()] = None,
        metadata: Annotated[dict[str, str] | None, Body()] = None,
        part_size: Annotated[int | None, Body(ge=1)] = None,
    ) -> dict[str, Any]:
        """Start a session for ``key``."""
        ctx.check(request, "write", key)
        session = await sessions.create(key, content_type=content_type, metadata=metadata, part_size=part_size)
        return session.as_json()

    @router.put("/{upload_id}/parts/{number}", operation_id="upload_part", openapi_extra=_BODY)
    async def upload_part(
        upload_id: str, number: Annotated[int, Path(ge=1, le=MAX_PARTS)], request: Request
    ) -> dict[str, Any]:
        """Store one part (``Content-MD5`` / ``Repr-Digest`` verified); answers its SHA-256 for the manifest."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        check_length(request, session.part_size, session.key)
        part = await sessions.upload_part(
            session, number, request_body(request), expected=expected_digests(request.headers)
        )
        return part.as_json()

    @router.get("/{upload_id}/parts", operation_id="list_parts")
    async def list_parts(upload_id: str, request: Request) -> dict[str, Any]:
        """The parts stored so far (to resume an interrupted upload)."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        return {**session.as_json(), "parts": [p.as_json() for p in await sessions.list_parts(session)]}

    @router.post("/{upload_id}/complete", status_code=201, operation_id="complete_upload")
    async def complete_upload(
        upload_id: str, request: Request, parts: Annotated[list[ManifestEntry], Body(embed=True, min_length=1)]
    ) -> dict[str, Any]:
        """Verify the manifest against the stored parts and write the object."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        info = await sessions.complete(session, [(p.number, p.sha256) for p in parts])
        return info_json(info)

    @router.delete("/{upload_id}", operation_id="abort_upload")
    async def abort_upload(upload_id: str, request: Request) -> dict[str, bool]:
        """Drop the session and its parts."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        await sessions.abort(session)
        return {"aborted": True}

    return router
