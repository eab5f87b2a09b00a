"""Observability: Prometheus metrics, OpenTelemetry spans, JSON logs and hot-key detection.

``prometheus_client`` and ``opentelemetry-api`` are optional (``pip install
'unistore[observe]'``) and imported only when enabled; with both off and the
log level above INFO an operation costs two clock reads and a hot-key count.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeVar

from .._base import StorageBackend, signing_for_put, url_after_put
from .._errors import ConfigurationError, NotFoundError, NotModifiedError, StorageError
from .._types import Body, CommonPrefix, Download, ObjectInfo, Range
from ._layer import Layer, in_memory, rewrap
from ._metrics import KEY_LABELS, Metrics, metrics_for
from ._retry import Retry, RetryEvent

if TYPE_CHECKING:
    from ..cost import Usage

__all__ = ["HotKeys", "Observe", "request_context", "tag_request"]

T = TypeVar("T")

_CONTEXT: ContextVar[tuple[str | None, str | None]] = ContextVar("unistore_request", default=(None, None))
LOGGER = logging.getLogger("unistore.ops")


@contextlib.contextmanager
def request_context(*, request_id: str | None = None, client_id: str | None = None) -> Iterator[None]:
    """Tag the storage operations in this block with the caller's request id and client id (logs, spans)."""
    token = _CONTEXT.set((request_id, client_id))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def tag_request(*, request_id: str | None = None, client_id: str | None = None) -> None:
    """What :func:`request_context` does, for the rest of the current :class:`contextvars.Context`
    (nothing to undo): for a caller that serves each request in a context of its own."""
    _CONTEXT.set((request_id, client_id))


def _outcome(exc: BaseException) -> str:
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, NotModifiedError):
        return "not_modified"
    return type(exc).__name__


class HotKeys:
    """Requests per key over a sliding window of ``window`` seconds, in ``buckets`` slices.

    Counting is exact while a slice sees at most ``max_keys`` distinct keys;
    past that, new keys in the slice are not counted (already-counted keys
    still are), which keeps memory bounded and leaves real hot keys visible.
    Thread-safe, so a metrics exporter thread may read :meth:`top`.
    """

    def __init__(self, window: float = 60.0, buckets: int = 6, max_keys: int = 10_000) -> None:
        self.width = window / buckets
        self.window = window
        self.max_keys = max_keys
        self._slices: list[dict[str, int]] = [{} for _ in range(buckets)]
        self._index = 0
        self._totals: dict[str, int] = {}
        self._lock = threading.Lock()

    def _rotate(self, now: float) -> dict[str, int]:
        index = int(now / self.width)
        if index != self._index:
            steps = min(index - self._index, len(self._slices)) if index > self._index else len(self._slices)
            for i in range(1, steps + 1):
                expired = self._slices[(self._index + i) % len(self._slices)]
                for k, n in expired.items():
                    left = self._totals[k] - n
                    if left:
                        self._totals[k] = left
                    else:
                        del self._totals[k]
                expired.clear()
            self._index = index
        return self._slices[index % len(self._slices)]

    def hit(self, key: str, now: float) -> int:
        """Count one request for ``key``; its count over the window."""
        with self._lock:
            current = self._rotate(now)
            n = current.get(key)
            if n is None:
                if len(current) >= self.max_keys:
                    return self._totals.get(key, 0)
                current[key] = 1
            else:
                current[key] = n + 1
            total = self._totals.get(key, 0) + 1
            self._totals[key] = total
            return total

    def top(self, n: int, now: float | None = None) -> list[tuple[str, int]]:
        """The ``n`` keys with the most requests in the window, most first."""
        with self._lock:
            self._rotate(time.perf_counter() if now is None else now)
            return heapq.nlargest(n, self._totals.items(), key=lambda kv: kv[1])


class Observe(Layer):
    """Measures every operation of the store below: metrics, spans, logs, hot keys.

    Where it belongs: outermost, so it sees what the caller sees (one operation
    however many retries below; Retry layers below report their retries to it).

    ``metrics``: a ``prometheus_client.CollectorRegistry``, ``True`` (the global
    registry), ``False``, or ``None`` (the global registry if prometheus_client
    is installed). Families: ``unistore_requests_total``,
    ``unistore_request_duration_seconds`` (histogram, per operation and
    backend), ``unistore_errors_total`` (by error type),
    ``unistore_retries_total``, ``unistore_bytes_total`` (direction in/out),
    ``unistore_requests_in_flight``, ``unistore_multipart_part_failures_total``
    (parts of multipart uploads that failed, from stores that report them), ``unistore_stored_bytes`` and
    ``unistore_stored_objects`` (as of the last :meth:`measure_usage`), ``unistore_hot_key_requests`` (top
    ``hot_keys`` keys over ``hot_window`` seconds, labelled as ``hot_key_labels`` says: ``"hash"`` by
    default, so no key name is exported, else ``"prefix"`` or ``"raw"``; see
    :func:`~unistore.layers._metrics.key_label`). ``hot_tracker`` replaces the
    in-process :class:`HotKeys` (e.g. one shared by replicas). ``tracer``: an OpenTelemetry
    ``Tracer``, ``True`` (the global one), or ``False``/``None`` (off). A span
    per operation, current while it runs, so spans below are its children.
    ``logger`` gets one JSON line per operation at ``log_level`` (when enabled)
    and a WARNING when a key reaches ``hot_threshold`` requests in the window.
    A download's latency is the time to open it; its bytes count as they stream.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        metrics: Any = None,
        tracer: Any = None,
        logger: logging.Logger | None = None,
        log_level: int = logging.INFO,
        hot_keys: int = 10,
        hot_window: float = 60.0,
        hot_threshold: int | None = None,
        hot_key_labels: str = "hash",
        hot_tracker: HotKeys | None = None,
    ) -> None:
        super().__init__(inner)
        if hot_key_labels not in KEY_LABELS:
            raise ConfigurationError(f"hot_key_labels must be one of {', '.join(KEY_LABELS)}")
        self._backend = inner.name
        self._metrics: Metrics | None = metrics_for(metrics)
        self._tracer = _tracer(tracer)
        self._logger = logger or LOGGER
        self._level = log_level
        self._hot = (hot_tracker or HotKeys(hot_window)) if hot_keys > 0 else None
        self.hot_keys = hot_keys
        self.hot_threshold = hot_threshold
        self._children = self._metrics.bind(self._backend) if self._metrics is not None else None
        if self._metrics is not None and self._hot is not None:
            self._metrics.add_hot_keys(self._backend, self._hot, hot_keys, hot_key_labels)
        for layer in self.layers()[1:]:
            if isinstance(layer, Retry):
                layer.add_listener(self._on_retry)
            part_hook = getattr(layer, "add_part_listener", None)  # stores with multipart (S3)
            if callable(part_hook):
                part_hook(self._on_part_failure)

    def _on_part_failure(self, failure: Any) -> None:
        if self._children is not None:
            self._children.part_failure()
        self._logger.warning(
            json.dumps(
                {
                    "event": "multipart_part_failed",
                    "backend": self._backend,
                    "key": failure.key,
                    "part": failure.number,
                    "error": type(failure.error).__name__,
                }
            )
        )

    def _on_retry(self, event: RetryEvent) -> None:
        if self._children is not None:
            self._children.retry(event.operation)
        if self._tracer is not None:
            from opentelemetry import trace

            trace.get_current_span().add_event(
                "retry", {"attempt": event.attempt, "delay": event.delay, "error": type(event.error).__name__}
            )

    async def _around(self, operation: str, key: str | None, call: Callable[[], Awaitable[T]]) -> T:
        start = time.perf_counter()
        if self._hot is not None and key is not None:
            self._count_hot(key, start)
        children = self._children
        if children is not None:
            children.in_flight.inc()
        span_cm = None
        span = None
        if self._tracer is not None:
            span_cm = self._tracer.start_as_current_span(
                f"unistore.{operation}",
                kind=_client_kind(),
                attributes={
                    "unistore.backend": self._backend,
                    "unistore.operation": operation,
                    "unistore.key": key or "",
                },
                record_exception=False,
                set_status_on_exception=False,
            )
            span = span_cm.__enter__()
        try:
            result = await call()
        except BaseException as exc:
            self._finish(operation, key, start, _outcome(exc), None, exc, span)
            if span_cm is not None:
                span_cm.__exit__(None, None, None)
            raise
        self._finish(operation, key, start, "ok", result, None, span)
        if span_cm is not None:
            span_cm.__exit__(None, None, None)
        return result

    def _count_hot(self, key: str, now: float) -> None:
        assert self._hot is not None
        n = self._hot.hit(key, now)
        if n == self.hot_threshold and self._logger.isEnabledFor(logging.WARNING):
            self._logger.warning(
                json.dumps(
                    {
                        "event": "hot_key",
                        "key": key,
                        "backend": self._backend,
                        "requests": n,
                        "window_s": self._hot.window,
                    }
                )
            )

    def _finish(
        self,
        operation: str,
        key: str | None,
        start: float,
        outcome: str,
        result: object,
        exc: BaseException | None,
        span: Any,
    ) -> None:
        duration = time.perf_counter() - start
        size = etag = None
        if isinstance(result, ObjectInfo):
            size, etag = result.size, result.etag
        elif isinstance(result, Download):
            size, etag = result.content_length, result.info.etag
        children = self._children
        if children is not None:
            children.done(operation, duration, outcome if exc is not None else None)
            if size is not None and operation in ("put", "copy"):
                children.bytes_in.inc(size)
        if span is not None:
            span.set_attribute("unistore.outcome", outcome)
            if size is not None:
                span.set_attribute("unistore.size", size)
            if etag is not None:
                span.set_attribute("unistore.etag", etag)
            if exc is not None and outcome not in ("not_found", "not_modified"):
                from opentelemetry.trace import Status, StatusCode

                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        level = self._level
        if exc is not None and (not isinstance(exc, StorageError) or exc.status >= 500):
            level = max(level, logging.WARNING)
        if self._logger.isEnabledFor(level):
            request_id, client_id = _CONTEXT.get()
            record = {
                "event": "storage_op",
                "request_id": request_id or uuid.uuid4().hex,
                "operation": operation,
                "key": key,
                "backend": self._backend,
                "client_id": client_id,
                "etag": etag,
                "size": size,
                "duration_ms": round(duration * 1000, 3),
                "outcome": outcome,
            }
            if span is not None:
                record["trace_id"] = format(span.get_span_context().trace_id, "032x")
            self._logger.log(level, json.dumps(record))

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """One ``put`` in the metrics, log and trace: the URL signing it ends with is part of it,
        not an operation of its own."""
        url = ""

        async def stored_and_signed() -> ObjectInfo:
            nonlocal url
            info = await self.inner.put_object(key, data, content_type=content_type, metadata=metadata)
            url = await url_after_put(self.inner, key)
            return info

        await self._around("put", key, stored_and_signed)
        return url

    async def measure_usage(self) -> Usage:
        """List the whole store below (a ``list`` request per page) and set ``unistore_stored_bytes``
        and ``unistore_stored_objects`` to what it holds; the usage found."""
        from ..cost import scan_usage

        usage = await scan_usage(self)
        if self._children is not None:
            self._children.stored(usage.stored_bytes, usage.objects)
        return usage

    # --- primitives ------------------------------------------------------------------

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        dl = await self._around(
            "open", key, lambda: self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)
        )
        children = self._children
        if children is None:
            return dl
        if in_memory(dl) is not None:
            children.bytes_out.inc(dl.content_length)
            return dl
        counter = children.bytes_out

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in dl:
                counter.inc(len(chunk))
                yield chunk

        return rewrap(dl, counted(), dl.aclose)

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        def call() -> Awaitable[str]:
            return self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)

        if signing_for_put():  # the URL a put above returns: that put is the operation
            return await call()
        return await self._around("sign_url", key, call)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for item in self._listing(prefix, self.inner.iter_objects(prefix, start_after=start_after)):
            yield item

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for item in self._listing(prefix, self.inner.iter_keys(prefix, start_after=start_after)):
            yield item

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """The inner store's folder listing (native where it has one), measured as a ``list``."""
        entries = self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after)
        async for item in self._listing(prefix, entries):
            yield item

    async def _listing(self, prefix: str, items: AsyncIterator[T]) -> AsyncIterator[T]:
        """A listing is measured up to its first item (the first page's latency)."""
        sentinel = object()
        first = await self._around("list", prefix, lambda: anext(items, sentinel))
        if first is sentinel:
            return
        yield first  # type: ignore[misc]
        async for item in items:
            yield item


def _tracer(tracer: Any) -> Any:
    if tracer is None or tracer is False:
        return None
    try:
        from opentelemetry import trace
    except ImportError as exc:
        raise ConfigurationError("tracing needs OpenTelemetry: pip install 'unistore[observe]'") from exc
    return trace.get_tracer("unistore") if tracer is True else tracer


_KIND: list[Any] = []


def _client_kind() -> Any:
    if not _KIND:
        from opentelemetry.trace import SpanKind

        _KIND.append(SpanKind.CLIENT)
    return _KIND[0]
