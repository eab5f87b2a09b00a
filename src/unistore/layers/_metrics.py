"""The Prometheus metric families of :class:`Observe`, created once per registry."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .._errors import ConfigurationError

if TYPE_CHECKING:
    from ._observe import HotKeys

__all__ = ["BoundMetrics", "KEY_LABELS", "Metrics", "key_label", "metrics_for", "registry_for"]

KEY_LABELS = ("hash", "prefix", "raw")


def key_label(key: str, mode: str) -> str:
    """How a hot key appears as a label value.

    ``hash``: ``sha256:`` and the first 16 hex digits of the SHA-256 of the
    key's UTF-8 (reveals no key name; hash a key you know to find it).
    ``prefix``: the key's first segment and ``/`` (``(top level)`` for a key
    without one), so the label set is bounded by the top-level prefixes.
    ``raw``: the key itself.
    """
    if mode == "raw":
        return key
    if mode == "prefix":
        head, sep, _ = key.partition("/")
        return head + "/" if sep else "(top level)"
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]


LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_BY_REGISTRY: weakref.WeakKeyDictionary[Any, Metrics] = weakref.WeakKeyDictionary()


def registry_for(option: Any) -> Any:
    """The registry ``option`` names: a registry, ``True`` (the global one), ``None`` (the global
    one if prometheus_client is installed, else none), ``False`` (none)."""
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    return prometheus_client.REGISTRY if option is None or option is True else option


def metrics_for(option: Any) -> Metrics | None:
    """The metrics for ``option``: a registry, ``True`` (global registry), ``None`` (global if installed), ``False``."""
    registry = registry_for(option)
    if registry is None:
        return None
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = _BY_REGISTRY[registry] = Metrics(registry)
    return metrics


class Metrics:
    """The unistore metric families in one registry, shared by every Observe layer using it."""

    def __init__(self, registry: Any) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter(
            "unistore_requests",
            "Storage operations by backend and operation.",
            ["backend", "operation"],
            registry=registry,
        )
        self.errors = Counter(
            "unistore_errors",
            "Failed storage operations by error type.",
            ["backend", "operation", "error"],
            registry=registry,
        )
        self.retries = Counter(
            "unistore_retries",
            "Retries made by Retry layers below Observe.",
            ["backend", "operation"],
            registry=registry,
        )
        self.duration = Histogram(
            "unistore_request_duration_seconds",
            "Storage operation latency (a download: time to open).",
            ["backend", "operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.bytes = Counter(
            "unistore_bytes", "Bytes written (in) and read (out).", ["backend", "direction"], registry=registry
        )
        self.part_failures = Counter(
            "unistore_multipart_part_failures",
            "Multipart upload parts that failed (a retried part counts each failure).",
            ["backend"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "unistore_requests_in_flight", "Storage operations running now.", ["backend"], registry=registry
        )
        self.stored_bytes = Gauge(
            "unistore_stored_bytes", "Bytes stored, as of the last usage scan.", ["backend"], registry=registry
        )
        self.stored_objects = Gauge(
            "unistore_stored_objects", "Objects stored, as of the last usage scan.", ["backend"], registry=registry
        )
        self._hot: list[tuple[str, weakref.ref[HotKeys], int, str]] = []
        registry.register(_HotKeyCollector(self))

    def bind(self, backend: str) -> BoundMetrics:
        return BoundMetrics(self, backend)

    def add_hot_keys(self, backend: str, tracker: HotKeys, n: int, labels: str = "hash") -> None:
        self._hot.append((backend, weakref.ref(tracker), n, labels))

    def hot_samples(self) -> Iterator[tuple[str, str, int]]:
        """``(backend, label, count)`` of each tracker's top keys, counts summed per label."""
        alive = []
        for entry in self._hot:
            backend, ref, n, labels = entry
            tracker = ref()
            if tracker is None:
                continue
            alive.append(entry)
            summed: dict[str, int] = {}
            for key, count in tracker.top(n):
                label = key_label(key, labels)
                summed[label] = summed.get(label, 0) + count
            for label, count in summed.items():
                yield backend, label, count
        self._hot = alive


class BoundMetrics:
    """The children of :class:`Metrics` for one backend, bound once so an operation does no label lookups."""

    __slots__ = ("_backend", "_by_op", "_metrics", "bytes_in", "bytes_out", "in_flight")

    def __init__(self, metrics: Metrics, backend: str) -> None:
        self._metrics = metrics
        self._backend = backend
        self._by_op: dict[str, tuple[Any, Any]] = {}
        self.in_flight = metrics.in_flight.labels(backend)
        self.bytes_in = metrics.bytes.labels(backend, "in")
        self.bytes_out = metrics.bytes.labels(backend, "out")

    def done(self, operation: str, duration: float, error: str | None) -> None:
        pair = self._by_op.get(operation)
        if pair is None:
            m = self._metrics
            pair = self._by_op[operation] = (
                m.requests.labels(self._backend, operation),
                m.duration.labels(self._backend, operation),
            )
        self.in_flight.dec()
        pair[0].inc()
        pair[1].observe(duration)
        if error is not None:
            self._metrics.errors.labels(self._backend, operation, error).inc()

    def retry(self, operation: str) -> None:
        self._metrics.retries.labels(self._backend, operation).inc()

    def part_failure(self) -> None:
        self._metrics.part_failures.labels(self._backend).inc()

    def stored(self, size: float, objects: float) -> None:
        self._metrics.stored_bytes.labels(self._backend).set(size)
        self._metrics.stored_objects.labels(self._backend).set(objects)


class _HotKeyCollector:
    """Exports the top keys of every hot-key tracker as ``unistore_hot_key_requests``."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = weakref.ref(metrics)

    def _family(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        return GaugeMetricFamily(
            "unistore_hot_key_requests",
            "Requests in the sliding window for the hottest keys (top N per backend).",
            labels=["backend", "key"],
        )

    def describe(self) -> Iterator[Any]:
        yield self._family()

    def collect(self) -> Iterator[Any]:
        family = self._family()
        metrics = self._metrics()
        if metrics is not None:
            for backend, key, count in metrics.hot_samples():
                family.add_metric([backend, key], count)
        yield family
