"""JSON bodies are read after authentication and only up to ``max_json_size`` bytes.

FastAPI reads and parses a route's body before it runs the route or its
dependencies, so an anonymous client could make the service buffer and parse
any amount of JSON before its 401. The routes of the service use
:func:`admitted_route`, which admits the caller first (401, 429), then reads the
body with a bound (413 from ``Content-Length`` at once, or as soon as a chunked
body passes it), and only then hands it to FastAPI to parse and validate (400).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from .._request_limits import read_limited, replay
from ._access import ServiceContext

__all__ = ["admitted_route"]


def admitted_route(ctx: ServiceContext) -> type[APIRoute]:
    """A route class whose JSON body (if it has one) is read only after ``ctx.admit``, bounded."""

    class AdmittedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()
            if self.body_field is None:  # no JSON body: the route reads its own stream, after admitting
                return handler

            async def admit_then_read(request: Request) -> Response:
                ctx.admit(request)
                body = await read_limited(request, ctx.settings.max_json_size)
                return await handler(Request(request.scope, replay(body, request.receive)))

            return admit_then_read

    return AdmittedRoute
