"""Routes a browser client needs beside the object API: ``GET /v1/whoami`` and ``POST /v1/copy``."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from .._base import StorageBackend
from .._errors import InvalidArgumentError, PreconditionFailedError, StorageError
from .._keys import validate_key
from .._types import ObjectInfo, WriteMode
from ._access import ServiceContext
from ._auth import ACTIONS, FULL_ACCESS, Grant
from ._guard import admitted_route
from ._objects import info_json
from ._uploads import UploadSessions

__all__ = ["ui_api_router"]


def granted_actions(grant: Grant) -> list[str]:
    """The actions ``grant`` allows, sorted, with ``admin`` expanded to every action."""
    return sorted(ACTIONS if "admin" in grant.actions else grant.actions)


def _server_side_copy(store: StorageBackend) -> bool:
    """Whether the store copies without streaming the bytes through this process."""
    return bool(getattr(store.capabilities, "server_side_copy", False))


async def copy_object(
    store: StorageBackend, source: str, dest: str, *, if_match: str | None, mode: WriteMode, pinned: bool
) -> tuple[ObjectInfo, str | None]:
    """Copy ``source`` to ``dest``: the destination's info, and the etag of the source version copied
    when ``pinned``.

    ``pinned`` (a move, or ``if_match`` given) copies exactly one version: the
    source's current etag, which must equal ``if_match`` if given (412). The copy
    streams from a read pinned to that etag or, where the store copies natively,
    the source's etag is read again after the copy (412 if it changed meanwhile).
    """
    if not pinned:
        return await store.copy(source, dest, mode=mode), None
    etag = (await store.head(source)).etag
    if if_match is not None and if_match.strip('"') != etag:
        raise PreconditionFailedError("if_match does not match the source's etag", key=source, operation="copy")
    if not _server_side_copy(store):
        async with await store.open(source, if_match=etag) as dl:
            info = dl.info
            copied = await store.put_object(
                dest,
                dl,
                content_type=info.content_type,
                metadata=info.metadata,
                mode=mode,
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )
        return copied, etag
    copied = await store.copy(source, dest, mode=mode)
    if (await store.head(source)).etag != etag:
        if mode == "create":  # the destination is ours: take back a copy of an unknown version
            with contextlib.suppress(StorageError):
                await store.remove(dest, if_match=copied.etag)
        raise PreconditionFailedError(
            "the source changed while it was copied; the source was kept", key=source, operation="copy"
        )
    return copied, etag


def ui_api_router(ctx: ServiceContext, sessions: UploadSessions, backend: str) -> APIRouter:
    """``/v1/whoami`` and ``/v1/copy`` over ``ctx.storage``; ``backend`` is the store's name."""
    router = APIRouter(prefix="/v1", route_class=admitted_route(ctx))

    @router.get("/whoami", operation_id="whoami")
    async def whoami(request: Request) -> dict[str, Any]:
        """What the presented token may do (401 for a missing or bad token when auth is on)."""
        grant = ctx.admit(request)
        auth = ctx.authority is not None
        native = sessions.native
        return {
            "auth": auth,
            "subject": grant.subject,
            "actions": granted_actions(grant),
            "prefix": grant.prefix,
            "expires": grant.expires if auth and grant is not FULL_ACCESS else None,
            "expires_in": grant.lifetime_left() if auth and grant is not FULL_ACCESS else None,
            "backend": backend,
            "direct_uploads": native is not None and native.can_presign_parts,
        }

    @router.post("/copy", status_code=201, operation_id="copy_object")
    async def copy(
        request: Request,
        source: Annotated[str, Body(min_length=1, max_length=4096)],
        dest: Annotated[str, Body(min_length=1, max_length=4096)],
        if_match: Annotated[str | None, Body(min_length=1, max_length=200)] = None,
        mode: Annotated[Literal["overwrite", "create"], Body()] = "overwrite",
        delete_source: Annotated[bool, Body()] = False,
    ) -> JSONResponse:
        """Copy ``source`` to ``dest`` (server-side where the store can); with ``delete_source``, a move.

        Needs ``read`` on the source, ``write`` on the destination and, for a move,
        ``delete`` on the source. ``if_match`` is a precondition on the source's
        etag; ``mode="create"`` refuses an existing destination (412). A move deletes
        the source only if it still is the version copied, so a concurrent write to
        the source is never lost (412, and the source stays).
        """
        validate_key(source)
        validate_key(dest)
        grant = ctx.check(request, "read", source)
        grant.require("write", dest)
        if delete_source:
            grant.require("delete", source)
        if delete_source and source == dest:
            raise PreconditionFailedError("a move onto itself would delete the object", key=source, operation="copy")
        store = ctx.store(grant)
        if delete_source and not store.capabilities.conditional_delete:
            raise InvalidArgumentError(
                "this store cannot delete only an unchanged source (no conditional delete), so it cannot move"
                " without risking a concurrent write: copy, then delete",
                key=source,
                operation="copy",
            )
        info, etag = await copy_object(
            store, source, dest, if_match=if_match, mode=mode, pinned=delete_source or if_match is not None
        )
        if delete_source and etag is not None:
            try:
                await store.remove(source, if_match=etag)
            except PreconditionFailedError:
                raise PreconditionFailedError(
                    "the source changed during the move: it was copied but kept", key=source, operation="copy"
                ) from None
        return JSONResponse(info_json(info), status_code=201, headers={"ETag": f'"{info.etag}"'})

    return router
