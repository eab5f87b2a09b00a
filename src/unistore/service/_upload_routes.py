"""The upload-session routes: ``/v1/uploads`` (see :mod:`._uploads` for the semantics)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from pydantic import BaseModel, Field

from .._errors import InvalidArgumentError
from .._request_limits import declared_length
from ..backends.s3._wire import md5_of_etag  # stdlib only: no S3 extra needed
from ._access import ServiceContext
from ._digests import expected_digests
from ._guard import admitted_route
from ._objects import check_length, info_json, request_body
from ._uploads import MAX_PARTS, Session, UploadSessions

__all__ = ["uploads_router"]

_BODY = {"requestBody": {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


class ManifestEntry(BaseModel):
    """One part of a completion manifest: its number and its checksum in the session's algorithm."""

    number: int = Field(ge=1, le=MAX_PARTS)
    sha256: str | None = Field(None, min_length=1, max_length=100, description="base64 SHA-256 of the part")
    md5: str | None = Field(None, min_length=1, max_length=100, description="base64 MD5 (direct MD5 sessions)")
    etag: str | None = Field(None, min_length=1, max_length=100, description="the store's part ETag (instead of md5)")

    def checksum(self, session: Session) -> str | None:
        """This entry's checksum in ``session``'s algorithm; ``None`` for an entry with none (the
        stored part is taken as it is); 400 for a checksum in another algorithm only."""
        if session.checksum == "sha256" and self.sha256:
            return self.sha256
        if session.checksum == "md5" and self.md5:
            return self.md5
        if session.checksum == "md5" and self.etag:
            md5 = md5_of_etag(self.etag)
            if md5 is not None:
                return md5
        if self.sha256 is None and self.md5 is None and self.etag is None:
            return None
        raise InvalidArgumentError(f"manifest part {self.number} needs its {session.checksum}", key=session.key)


class PartUrlRequest(BaseModel):
    """A part to presign, optionally pinned to its checksum (needed by SHA-256 sessions)."""

    number: int = Field(ge=1, le=MAX_PARTS)
    checksum: str | None = Field(None, min_length=1, max_length=100, description="base64, the session's algorithm")


def uploads_router(ctx: ServiceContext, sessions: UploadSessions) -> APIRouter:
    """The routes over ``sessions``; every step needs ``write`` on the session's key."""
    router = APIRouter(prefix="/v1/uploads", tags=["uploads"], route_class=admitted_route(ctx))

    @router.post("", status_code=201, operation_id="create_upload")
    async def create_upload(
        request: Request,
        key: Annotated[str, Body()],
        content_type: Annotated[str | None, Body()] = None,
        metadata: Annotated[dict[str, str] | None, Body()] = None,
        part_size: Annotated[int | None, Body(ge=1)] = None,
        direct: Annotated[bool, Body()] = False,
    ) -> dict[str, Any]:
        """Start a session for ``key``; ``direct`` keeps the parts in the store (presigned part URLs)."""
        ctx.check(request, "write", key)
        if direct and ctx.settings.scan_url is not None:
            raise InvalidArgumentError(
                "direct uploads would skip malware scanning; send the parts through this service", key=key
            )
        if ctx.upload_policy is not None:  # the name and declared type are refused now, not after every part
            if direct:
                raise InvalidArgumentError(
                    "direct uploads would skip upload validation; send the parts through this service", key=key
                )
            ctx.upload_policy.check_declared(key, content_type=content_type)
        session = await sessions.create(
            key, content_type=content_type, metadata=metadata, part_size=part_size, direct=direct
        )
        return session.as_json()

    @router.put("/{upload_id}/parts/{number}", operation_id="upload_part", openapi_extra=_BODY)
    async def upload_part(
        upload_id: str, number: Annotated[int, Path(ge=1, le=MAX_PARTS)], request: Request
    ) -> dict[str, Any]:
        """Store one part (``Content-MD5`` / ``Repr-Digest`` verified); answers its SHA-256 for the manifest."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        check_length(request, min(session.part_size, sessions.max_part_size), session.key)
        if ctx.upload_policy is not None:  # a part larger than the whole object may be is refused now
            ctx.upload_policy.check_declared(session.key, size=declared_length(request))
        part = await sessions.upload_part(
            session, number, request_body(request), expected=expected_digests(request.headers)
        )
        return part.as_json()

    @router.post("/{upload_id}/part-urls", operation_id="part_urls")
    async def part_urls(
        upload_id: str,
        request: Request,
        parts: Annotated[list[PartUrlRequest], Body(min_length=1, max_length=1000)],
        expires_in: Annotated[int, Body(ge=1, le=7 * 24 * 3600)] = 3600,
    ) -> dict[str, Any]:
        """Presigned ``PUT`` URLs that send parts of a direct session straight to the store.

        Each answer lists the headers the uploader must send; the part's ETag (or
        checksum) goes in the completion manifest like any other part.
        """
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        expires_in = ctx.url_lifetime(grant, expires_in)
        out = []
        for part in parts:
            url, headers = await sessions.part_url(session, part.number, expires_in=expires_in, checksum=part.checksum)
            out.append({"number": part.number, "method": "PUT", "url": url, "headers": headers})
        return {"upload_id": session.id, "expires": min(session.expires, int(time.time()) + expires_in), "parts": out}

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
        """Verify the manifest against the stored parts and write the object.

        An entry with only its ``number`` takes the stored part as it is (a browser
        cannot always read a direct part's ``ETag``); each part was verified when it
        arrived if it was sent with its checksum."""
        grant = ctx.admit(request)
        session = await sessions.get(upload_id)
        grant.require("write", session.key)
        info = await sessions.complete(session, [(p.number, p.checksum(session)) for p in parts])
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
