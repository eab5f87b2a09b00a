"""``GET``/``HEAD``/``PUT /v1/objects/{key}`` served straight from ASGI, past FastAPI's routing.

These three routes carry nearly every request of a busy service, and FastAPI spent
more on matching the path against every route, solving the dependencies and
running its exception middleware than the routes spend themselves.
:class:`ObjectFastPath` answers them before routing with the very functions the
routes call (:func:`~._objects.get_response`, :func:`~._objects.put_response`),
after the same grant check, and answers a storage error as the app's handler does.
The FastAPI routes stay registered: they document the API (``/openapi.json``) and
serve what this path leaves alone (a ``root_path``; a key with a line break, which
their pattern does not match).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from .._errors import StorageError
from ._access import ServiceContext
from ._auth import Action, Grant
from ._limits import GRANT_STATE
from ._objects import get_response, put_response
from ._ops import storage_error_answer

__all__ = ["ObjectFastPath"]

_PREFIX = "/v1/objects/"
_SKIP = len(_PREFIX)
_ACTIONS: dict[str, Action] = {"GET": "read", "HEAD": "read", "PUT": "write"}


class ObjectFastPath:
    """ASGI middleware answering ``GET``/``HEAD``/``PUT /v1/objects/{key}`` as the routes of
    :func:`~._objects.objects_router` do; every other request goes on to ``app``.

    It sits inside the rate limiter (whose verified grant it takes from the request
    state) and :class:`~unistore._request_limits.BodyTimeouts` (whose ``receive`` it reads).
    """

    def __init__(self, app: ASGIApp, *, ctx: ServiceContext) -> None:
        self.app = app
        self.ctx = ctx

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        action = _ACTIONS.get(scope.get("method", ""))
        if (
            action is None
            or scope["type"] != "http"
            or not path.startswith(_PREFIX)
            or scope.get("root_path")
            or "\n" in path
        ):
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        key = path[_SKIP:]
        response: Response
        try:
            state = scope.get("state")
            grant = state.get(GRANT_STATE) if state is not None else None
            if not isinstance(grant, Grant):
                grant = self.ctx.grant(request)
            grant.require(action, key)
            if action == "write":
                response = await put_response(self.ctx, grant, key, request)
            else:
                response = await get_response(self.ctx, grant, key, request)
        except StorageError as exc:
            response = storage_error_answer(exc)
        await response(scope, receive, send)
