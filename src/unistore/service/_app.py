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
from .._errors import NotFoundError, UnsupportedError
from .._request_limits import BodyTimeouts
from ..fastapi import add_storage
from ..layers import Idempotency, Layer, Observe, Scan, Validate
from ._access import ServiceContext
from ._fast import ObjectFastPath
from ._guard import admitted_route
from ._hooks import Hook, Webhook
from ._limits import LimitMiddleware
from ._objects import objects_router
from ._ops import RequestIdMiddleware, install_error_handlers
from ._redis import RedisHotKeys
from ._settings import ServiceSettings, metrics_bind
from ._state import StateStore
from ._ui import mount_ui
from ._ui_api import ui_api_router
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


async def _sweep_every(sessions: UploadSessions, records: Idempotency, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await sessions.sweep(limit=1000)
        except Exception:  # a store hiccup must not end the timer
            LOGGER.exception("sweeping expired upload sessions failed")
        try:
            await records.sweep(limit=1000)
        except Exception:
            LOGGER.exception("sweeping expired idempotency records failed")


async def _measure_every(storage: Observe, interval: float) -> None:
    """The stored-bytes and stored-objects gauges, refreshed by a listing every ``interval`` seconds."""
    while True:
        try:
            await storage.measure_usage()
        except Exception:  # a store hiccup must not end the timer
            LOGGER.exception("measuring the store's usage failed")
        await asyncio.sleep(interval)


async def _sync_every(hot: RedisHotKeys, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await hot.sync()
        except Exception:  # a Redis hiccup must not end the timer
            LOGGER.exception("syncing hot-key counts with Redis failed")


def _start_exporter(option: str, registry: Any) -> Any:
    """Serve ``registry`` on its own listener when ``UNISTORE_METRICS`` is ``HOST:PORT``; the server or ``None``."""
    if option in ("token", "open", "off") or registry is None:
        return None
    from prometheus_client import start_http_server

    host, port = metrics_bind(option)
    server, _thread = start_http_server(port, host, registry=registry)
    LOGGER.info("metrics served on http://%s:%d/metrics", host, port)
    return server


DOCS_ASSETS = "/_ops/docs-assets"


def _self_hosted_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` from the assets the ``fastapi-offline`` wheel ships (a current
    Swagger UI, which reads OpenAPI 3.1), so the page works offline and loads nothing from a CDN."""
    from pathlib import Path

    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
        )


def _native_uploads(backend: StorageBackend) -> Any:
    """The backend's own resumable session API (``S3Backend.uploads``), if it has one and no layer
    above it must see every body (Encrypt: parts sent straight to the store would skip it)."""
    while isinstance(backend, Layer):
        if getattr(backend, "transforms_bodies", False):
            return None
        backend = backend.inner
    try:
        from ..backends.s3._sessions import S3Uploads
    except ImportError:  # the S3 extra is not installed, so the backend is not S3
        return None
    uploads = getattr(backend, "uploads", None)
    return uploads if isinstance(uploads, S3Uploads) else None


def _scan(inner: StorageBackend, settings: ServiceSettings, registry: Any) -> Scan:
    from ..scanners import ClamdClient

    client = ClamdClient(settings.scan_url, timeout=settings.scan_timeout)
    return Scan(
        inner,
        scanner=client,
        mode=settings.scan_mode,
        fail_open=settings.scan_fail_open,
        metrics=registry if registry is not None else False,
    )


def _service_signer(raw: StorageBackend) -> Any:
    """The signer of this service's ``/files`` URLs for a layer that must serve its objects itself: the
    store's own signer when it has one (local, memory), else one keyed by ``STORAGE_URL_SECRET`` (a random
    key when unset: URLs then last as long as the process) for ``STORAGE_BASE_URL``; ``None`` without a
    base URL (the layer then signs no URLs of its own)."""
    import os
    import secrets

    from .._signing import UrlSigner

    signer = getattr(raw, "signer", None)
    if not isinstance(signer, UrlSigner):
        base_url = os.environ.get("STORAGE_BASE_URL", "").strip()
        secret = os.environ.get("STORAGE_URL_SECRET", "").encode() or secrets.token_bytes(32)
        signer = UrlSigner(secret, base_url) if base_url else None
    return signer


def _encrypted(raw: StorageBackend) -> StorageBackend:
    """``raw`` wrapped in :class:`Encrypt` with the keyring the environment configures and the service's
    signer (:func:`_service_signer`)."""
    from ..encryption import Encrypt, keyring_from_env

    if isinstance(raw, Encrypt):  # already encrypted by the caller
        return raw
    return Encrypt(raw, keyring_from_env(), signer=_service_signer(raw))


def create_app(
    backend: StorageBackend | None = None,
    *,
    settings: ServiceSettings | None = None,
    hooks: Sequence[Hook] = (),
    title: str = "unistore",
) -> FastAPI:
    """The storage service over ``backend`` (auto-detected from ``STORAGE_*`` when ``None``).

    ``settings`` default to :meth:`ServiceSettings.from_env`. The backend is
    wrapped as ``Observe → [Validate] → [Scan] → Idempotency → [Compress] → [Encrypt] → backend`` (Validate
    when ``settings.upload_rules`` is set, Scan when ``settings.scan_url`` is, Compress when
    ``settings.compress`` is not ``off``, Encrypt when
    ``settings.encrypt`` is, with the keyring :func:`~unistore.encryption.keyring_from_env` builds and
    the service's own signer for ``/files`` URLs); idempotency records live in
    the backend itself (``.unistore/service/``), so replicas share them, as do
    upload sessions; expired ones are swept on the upload sweep timer too.
    ``hooks`` (and a :class:`Webhook` per ``settings.webhooks``) are called with
    an event when an upload completes.
    """
    settings = settings if settings is not None else ServiceSettings.from_env()
    raw = backend if backend is not None else easy_storage()
    registry = _registry()
    if settings.encrypt:
        raw = _encrypted(raw)
    if settings.compress != "off":  # compressed before it is encrypted: ciphertext does not compress
        from ..layers import Compress

        counters = registry if registry is not None else False
        raw = Compress(raw, encoding=settings.compress, metrics=counters, signer=_service_signer(raw))
    state = StateStore(raw)
    ctx = ServiceContext.build(raw, settings)
    labels = settings.metrics_key_labels
    hot = RedisHotKeys(ctx.redis, raw.name) if ctx.redis is not None and labels != "off" else None
    records = Idempotency(raw, store=state, ttl=settings.idempotency_ttl, lease=settings.idempotency_lease)
    # Validation sits above Idempotency, which spools a keyed body to hash it: the size limit cuts the stream first.
    # Scanning sits between them: it sees only bodies validation let through, streams each to clamd as it
    # arrives, and fails the write before Idempotency or the store below commit anything.
    scanned = records if settings.scan_url is None else _scan(records, settings, registry)
    checked = scanned if ctx.upload_policy is None else Validate(scanned, policy=ctx.upload_policy)
    storage: Observe = Observe(
        checked,
        metrics=registry if registry is not None else False,
        hot_keys=0 if labels == "off" else 10,
        hot_key_labels="hash" if labels == "off" else labels,
        hot_tracker=hot,
        # One line per request at INFO, the access line: storage operations log at DEBUG (failures at WARNING).
        log_level=logging.DEBUG,
    )
    ctx.storage = storage

    app = FastAPI(title=title, version="1", summary="An HTTP object store over any unistore backend.", docs_url=None)
    _self_hosted_docs(app)
    install_error_handlers(app)
    # Stores that sign their own URLs (local, memory) get the route that serves them.
    add_storage(app, raw, serve_files=getattr(raw, "signer", None) is not None)
    app.state.service = ctx
    app.state.report_worker = True  # /_ops/health names the worker process (``serve --workers N``)
    counter = histogram = None
    if registry is not None:
        from prometheus_client import Counter, Histogram

        counter = Counter(
            "unistore_http_requests", "HTTP requests by method and status.", ["method", "status"], registry=registry
        )
        histogram = Histogram(
            "unistore_http_request_duration_seconds", "HTTP request latency.", ["method"], registry=registry
        )
    app.add_middleware(ObjectFastPath, ctx=ctx)  # innermost: after the limits, reading the timed body
    app.add_middleware(BodyTimeouts, idle=settings.body_timeout, total=settings.body_deadline)
    app.add_middleware(LimitMiddleware, identify=ctx.identify, per_client=ctx.per_client, overall=ctx.overall)
    app.add_middleware(RequestIdMiddleware, counter=counter, histogram=histogram)
    app.include_router(objects_router(ctx))
    webhooks = [Webhook(url, secret=settings.webhook_secret or settings.secret) for url in settings.webhooks]
    sessions = UploadSessions(
        storage,
        state,
        ttl=settings.upload_ttl,
        max_part_size=settings.max_body_size,
        hooks=[*hooks, *webhooks],
        # Direct sessions send bytes straight to the store, past validation and scanning: only without either.
        native=_native_uploads(raw) if ctx.upload_policy is None and settings.scan_url is None else None,
    )
    original = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        # Expired sessions are swept on a timer too, so stale store-side uploads go even when none are created.
        timers = [asyncio.create_task(_sweep_every(sessions, records, settings.upload_sweep_interval))]
        if hot is not None:
            timers.append(asyncio.create_task(_sync_every(hot, 1.0)))
        if settings.usage_scan_interval is not None and registry is not None:
            timers.append(asyncio.create_task(_measure_every(storage, settings.usage_scan_interval)))
        exporter = _start_exporter(settings.metrics, registry)
        try:
            async with original(a) as state_:
                yield state_
        finally:
            for timer in timers:
                timer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await timer
            if exporter is not None:
                exporter.shutdown()
                exporter.server_close()
            for hook in webhooks:
                await hook.aclose()
            if ctx.redis is not None:
                await ctx.redis.aclose()

    app.router.lifespan_context = lifespan
    app.state.uploads = sessions
    app.include_router(uploads_router(ctx, sessions))
    app.include_router(ui_api_router(ctx, sessions, raw.name))

    @app.get("/", include_in_schema=False)
    async def index() -> dict[str, Any]:
        return {"service": "unistore", "backend": raw.name, "docs": "/docs", "health": "/_ops/health"}

    @app.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        """Prometheus metrics: needs the ``metrics`` action over all keys unless ``UNISTORE_METRICS=open``."""
        if settings.metrics not in ("token", "open"):
            raise NotFoundError("metrics are not served here (UNISTORE_METRICS)")
        if settings.metrics == "token":
            ctx.check(request, "metrics", "")
        if registry is None:
            raise UnsupportedError("metrics need prometheus_client: pip install 'unistore[observe]'")
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        if hot is not None:
            await hot.sync(max_age=0.5)  # scrapes cost Redis at most two syncs a second
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    tokens = APIRouter(route_class=admitted_route(ctx))

    @tokens.post("/v1/tokens", status_code=201)
    async def issue_token(
        request: Request,
        actions: Annotated[list[str], Body(min_length=1)],
        prefix: Annotated[str, Body()] = "",
        expires_in: Annotated[int, Body(ge=1)] = 3600,
        subject: Annotated[str | None, Body(min_length=1, max_length=200)] = None,
    ) -> dict[str, Any]:
        """Issue a token within the caller's own scope (needs ``admin``).

        The token expires no later than the caller's, grants no more than the
        caller's actions and prefix, and its subject is the caller's
        (``caller/subject`` when ``subject`` is given).
        """
        grant = ctx.check(request, "admin", prefix)
        if ctx.authority is None:
            # 404, not 501: with auth off the route has nothing behind it, and a 5xx would say the server failed
            raise NotFoundError("auth is off: this service issues no tokens")
        token = ctx.authority.issue(actions, prefix=prefix, expires_in=expires_in, subject=subject, parent=grant)
        granted = ctx.authority.verify(token)
        LOGGER.info(
            "token issued by %s for %s on %r: %s", grant.subject, granted.subject, prefix, ",".join(sorted(actions))
        )
        return {
            "token": token,
            "expires": granted.expires,
            "expires_in": granted.lifetime_left(),
            "subject": granted.subject,
            "prefix": prefix,
            "actions": sorted(granted.actions),
        }

    app.include_router(tokens)
    mount_ui(app, raw)
    return app
