"""Observe: metrics scraped from a real /metrics endpoint, spans in the SDK's in-memory exporter, JSON logs."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, make_asgi_app
from prometheus_client.parser import text_string_to_metric_families

from unistore import MemoryBackend, NotFoundError
from unistore.layers import Faults, HotKeys, Observe, Retry, request_context
from unistore.testing import S3Server, free_port, no_sleep, running_server


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_scraped_over_http() -> None:
    registry = CollectorRegistry()
    memory = MemoryBackend(chunk_size=1024)
    faults = Faults(memory, error_rate={"head": 0.5}, seed=1, rate_limited_share=0.0)
    store = Observe(Retry(faults, attempts=20, sleep=no_sleep), metrics=registry, hot_keys=2, hot_key_labels="raw")
    await store.put_object("a", b"x" * 5000)
    for _ in range(10):
        await store.head("a")
    assert await store.get("a") == b"x" * 5000
    with pytest.raises(NotFoundError):
        await store.get("missing")
    app = FastAPI()
    app.mount("/metrics", make_asgi_app(registry))
    port = free_port()
    with running_server(app, port):
        async with httpx.AsyncClient() as client:
            r = await client.get(f"http://127.0.0.1:{port}/metrics/")
    assert r.status_code == 200
    got = samples(r.text)
    b = ("backend", "MemoryBackend")

    def value(name: str, **labels: str) -> float:
        return got[(name, frozenset({b, *labels.items()}))]

    assert value("unistore_requests_total", operation="head") == 10
    assert value("unistore_requests_total", operation="open") == 2
    assert value("unistore_errors_total", operation="open", error="not_found") == 1
    assert value("unistore_retries_total", operation="head") == faults.counts["error"] > 0
    assert value("unistore_request_duration_seconds_count", operation="put") == 1
    assert value("unistore_bytes_total", direction="in") == 5000
    assert value("unistore_bytes_total", direction="out") == 5000
    assert value("unistore_requests_in_flight") == 0
    assert value("unistore_hot_key_requests", key="a") == 12
    assert ("unistore_hot_key_requests", frozenset({b, ("key", "missing")})) in got


async def test_spans_with_attributes_and_parent() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    store = Observe(MemoryBackend(), metrics=False, tracer=tracer)
    with tracer.start_as_current_span("request handler"):
        info = await store.put_object("k", b"hello")
        with pytest.raises(NotFoundError):
            await store.head("nope")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    put, head, parent = spans["unistore.put"], spans["unistore.head"], spans["request handler"]
    assert put.attributes is not None and head.attributes is not None
    assert dict(put.attributes) == {
        "unistore.backend": "MemoryBackend",
        "unistore.operation": "put",
        "unistore.key": "k",
        "unistore.outcome": "ok",
        "unistore.size": 5,
        "unistore.etag": info.etag,
    }
    assert head.attributes["unistore.outcome"] == "not_found"
    assert put.parent is not None and put.parent.span_id == parent.context.span_id
    assert put.context.trace_id == parent.context.trace_id


async def test_json_logs_and_hot_key_warning(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("unistore.test.observe")
    store = Observe(MemoryBackend(), metrics=False, logger=logger, hot_threshold=3)
    with caplog.at_level(logging.INFO, logger="unistore.test.observe"):
        with request_context(request_id="req-1", client_id="tenant-9"):
            info = await store.put_object("k", b"abc")
            await store.head("k")
        await store.head("k")
        with pytest.raises(NotFoundError):
            await store.head("gone")
    records = [json.loads(r.getMessage()) for r in caplog.records]
    ops = [r for r in records if r["event"] == "storage_op"]
    assert ops[0] == {
        "event": "storage_op",
        "request_id": "req-1",
        "operation": "put",
        "key": "k",
        "backend": "MemoryBackend",
        "client_id": "tenant-9",
        "etag": info.etag,
        "size": 3,
        "duration_ms": ops[0]["duration_ms"],
        "outcome": "ok",
    }
    assert ops[2]["request_id"] not in ("req-1", None) and ops[2]["client_id"] is None
    assert ops[3]["outcome"] == "not_found"
    hot = [r for r in records if r["event"] == "hot_key"]
    assert hot == [{"event": "hot_key", "key": "k", "backend": "MemoryBackend", "requests": 3, "window_s": 60.0}]
    assert [r.levelno for r in caplog.records if "hot_key" in r.getMessage()] == [logging.WARNING]


def test_hot_keys_window_slides() -> None:
    hot = HotKeys(window=60.0, buckets=6)
    for _ in range(5):
        hot.hit("a", 0.0)
    hot.hit("b", 30.0)
    assert hot.top(2, now=30.0) == [("a", 5), ("b", 1)]
    assert hot.top(2, now=65.0) == [("b", 1)]
    assert hot.top(2, now=200.0) == []


async def test_costs_nothing_when_disabled() -> None:
    store = Observe(MemoryBackend(), metrics=False, tracer=False, hot_keys=0)
    assert store._children is None and store._tracer is None and store._hot is None
    await store.put_object("k", b"x")
    assert await store.get("k") == b"x"


async def test_multipart_part_failures_counted_from_s3(seaweed: S3Server, caplog: pytest.LogCaptureFixture) -> None:
    """A real part failure: SeaweedFS refuses a part for an upload that was aborted (NoSuchUpload)."""
    registry = CollectorRegistry()
    s3 = seaweed.backend(part_size=5 * 1024 * 1024)
    store = Observe(Retry(s3, sleep=no_sleep), metrics=registry)
    try:
        key = f"observe-{free_port()}/parts.bin"
        session = await s3.uploads.start(key)
        await s3.uploads.abort(session)
        with caplog.at_level(logging.WARNING, logger="unistore"), pytest.raises(NotFoundError):
            await s3.uploads.upload_part(session, 1, b"late part")
        await store.put_object(key, b"fine")  # ordinary traffic through the stack still counts as usual
        app = FastAPI()
        app.mount("/metrics", make_asgi_app(registry))
        port = free_port()
        with running_server(app, port):
            async with httpx.AsyncClient() as client:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics/")).text
        got = samples(text)
        assert got[("unistore_multipart_part_failures_total", frozenset({("backend", "S3Backend")}))] == 1
        events = [json.loads(r.getMessage()) for r in caplog.records if "multipart_part_failed" in r.getMessage()]
        assert events == [
            {"event": "multipart_part_failed", "backend": "S3Backend", "key": key, "part": 1, "error": "NotFoundError"}
        ]
    finally:
        await s3.aclose()
