"""The app factory: the backend wrapped in the service's layers, the routes, the middleware."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Body, FastAPI, Request
from fastapi.responses import Response

from .._base import StorageBackend
from .._config import easy_storage
from .._errors import InvalidArgumentError, NotFoundError, UnsupportedError
from .._request_limits import BodyTimeouts
from ..fastapi import add_storage
from ..layers import Idempotency, Layer, Observe
from ._access import ServiceContext
from ._auth import ACTIONS
from ._guard import admitted_route
from ._hooks import Hook, Webhook
from ._objects import objects_router
from ._ops import RequestIdMiddleware, install_error_handlers
from ._settings import ServiceSettings
from ._state import StateStore
from ._upload_routes import uploads_router
from ._uploads import UploadSessions

__all__ = ["create_app"]

LOGGER = logging.getLogger("unistore.service")


def _registry() -> Any:
    try:
        from prometheus_client import CollectorRegistry
    except ImportError:
        return None
    return CollectorRegistry()


async def _sweep_every(sessions: UploadSessions, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sessions.sweep(limit=1000)
        except Exception:  # a store hiccup must not end the timer
            LOGGER.exception("sweeping expired upload sessions failed")


def _native_uploads(backend: StorageBackend) -> Any:
    """The backend's own resumable session API (``S3Backend.uploads``), if it has one."""
    while isinstance(backend, Layer):
        backend = backend.inner
    try:
        from ..backends._s3sessions import S3Uploads
    except ImportError:  # the S3 extra is not installed, so the backend is not S3
        return None
    uploads = getattr(backend, "uploads", None)
    return uploads if isinstance(uploads, S3Uploads) else None


def create_app(
    backend: StorageBackend | None = None,
    *,
    settings: ServiceSettings | None = None,
    hooks: Sequence[Hook] = (),
    title: str = "unistore",
) -> FastAPI:
    """The storage service over ``backend`` (auto-detected from ``STORAGE_*`` when ``None``).

    ``settings`` default to :meth:`ServiceSettings.from_env`. The backend is
    wrapped as ``Observe → Idempotency → backend``; idempotency records live in
    the backend itself (``.unistore/service/``), so replicas share them, as do
    upload sessions. ``hooks`` (and a :class:`Webhook` per ``settings.webhooks``)
    are called with an event when an upload completes.
    """
    settings = settings if settings is not None else ServiceSettings.from_env()
    raw = backend if backend is not None else easy_storage()
    registry = _registry()
    state = StateStore(raw)
    storage: StorageBackend = Observe(
        Idempotency(raw, store=state, ttl=settings.idempotency_ttl),
        metrics=registry if registry is not None else False,
    )
    ctx = ServiceContext.build(storage, settings)

    app = FastAPI(title=title, version="1", summary="An HTTP object store over any unistore backend.")
    install_error_handlers(app)
    # Stores that sign their own URLs (local, memory) get the route that serves them.
    add_storage(app, raw, serve_files=getattr(raw, "signer", None) is not None)
    app.state.service = ctx
    counter = histogram = None
    if registry is not None:
        from prometheus_client import Counter, Histogram

        counter = Counter(
            "unistore_http_requests", "HTTP requests by method and status.", ["method", "status"], registry=registry
        )
        histogram = Histogram(
            "unistore_http_request_duration_seconds", "HTTP request latency.", ["method"], registry=registry
        )
    app.add_middleware(BodyTimeouts, idle=settings.body_timeout, total=settings.body_deadline)
    app.add_middleware(RequestIdMiddleware, counter=counter, histogram=histogram)
    app.include_router(objects_router(ctx))
    webhooks = [Webhook(url, secret=settings.webhook_secret or settings.secret) for url in settings.webhooks]
    sessions = UploadSessions(
        storage,
        state,
        ttl=settings.upload_ttl,
        max_part_size=settings.max_body_size,
        hooks=[*hooks, *webhooks],
        native=_native_uploads(raw),
    )
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        # Expired sessions are swept on a timer too, so stale store-side uploads go even when none are created.
        sweeper = asyncio.create_task(_sweep_every(sessions, settings.upload_sweep_interval))
        try:
            async with original(a) as state_:
                yield state_
        finally:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
            for hook in webhooks:
                await hook.aclose()

    app.router.lifespan_context = lifespan
    app.state.uploads = sessions
    app.include_router(uploads_router(ctx, sessions))

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"service": "unistore", "backend": raw.name, "docs": "/docs", "health": "/_ops/health"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        if registry is None:
            raise UnsupportedError("metrics need prometheus_client: pip install 'unistore[observe]'")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    tokens = APIRouter(route_class=admitted_route(ctx))

    @tokens.post("/v1/tokens", status_code=201)
    async def issue_token(
        request: Request,
        actions: Annotated[list[str], Body(min_length=1)],
        prefix: Annotated[str, Body()] = "",
        expires_in: Annotated[int, Body(ge=1)] = 3600,
        subject: Annotated[str, Body(min_length=1, max_length=200)] = "client",
    ) -> dict[str, Any]:
        """Issue a token within the caller's own scope (needs ``admin``)."""
        grant = ctx.check(request, "admin", prefix)
        if ctx.authority is None:
            # 404, not 501: with auth off the route has nothing behind it, and a 5xx would say the server failed
            raise NotFoundError("auth is off: this service issues no tokens")
        if any(a not in ACTIONS for a in actions):
            raise InvalidArgumentError(f"actions must be among {', '.join(ACTIONS)}")
        if expires_in > ctx.settings.max_token_lifetime:
            raise InvalidArgumentError(f"expires_in must be at most {ctx.settings.max_token_lifetime}")
        token = ctx.authority.issue(actions, prefix=prefix, expires_in=expires_in, subject=subject)
        granted = ctx.authority.verify(token)
        LOGGER.info("token issued by %s for %s on %r: %s", grant.subject, subject, prefix, ",".join(sorted(actions)))
        return {"token": token, "expires": granted.expires, "prefix": prefix, "actions": sorted(granted.actions)}

    app.include_router(tokens)
    return app
