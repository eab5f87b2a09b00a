"""The object routes' fast path answers exactly as the FastAPI routes do; the hot path's caches keep their rules."""

from __future__ import annotations

import asyncio
import base64
import contextvars
import hashlib
import re
from collections.abc import Iterator
from datetime import UTC
from typing import Any

import httpx
import pytest

from unistore import MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, UnauthorizedError, _auth, _fast, create_app
from unistore.service._fast import ObjectFastPath
from unistore.service._ops import InContext, RequestIdMiddleware, new_request_id
from unistore.testing import running_server

SECRET = b"hot-path-secret-0123456789abcdef"
AUTHORITY = TokenAuthority(SECRET)
ADMIN = AUTHORITY.issue(["admin"], expires_in=3600, subject="root")
READER = AUTHORITY.issue(["read"], expires_in=3600, subject="reader")
SCOPED = AUTHORITY.issue(["read", "write"], prefix="mine/", expires_in=3600, subject="scoped")
MD5_OF_X = base64.b64encode(hashlib.md5(b"x").digest()).decode()


def _routed_only(app: Any) -> Any:
    """The same app with the fast path taken out: every request goes through FastAPI's routing."""
    app.user_middleware = [m for m in app.user_middleware if m.cls is not ObjectFastPath]
    app._traced = True  # ServiceApp: never the direct path either
    return app


@pytest.fixture(scope="module")
def urls() -> Iterator[tuple[str, str]]:
    backend = MemoryBackend()
    settings = ServiceSettings(secret=SECRET, max_body_size=1000)
    with (
        running_server(create_app(backend, settings=settings)) as fast,
        running_server(_routed_only(create_app(backend, settings=settings))) as routed,
    ):
        with httpx.Client(base_url=fast, headers={"authorization": f"Bearer {ADMIN}"}) as c:
            assert c.put("/v1/objects/o/plain.txt", content=b"0123456789" * 10).status_code == 201
            page = b"<script>alert(1)</script>"
            assert c.put("/v1/objects/o/page", content=page, headers={"content-type": "text/html"}).status_code == 201
            meta = {"x-meta-owner": "J%C3%BCrgen", "cache-control": "max-age=60", "content-disposition": "inline"}
            assert c.put("/v1/objects/o/meta.bin", content=b"m", headers=meta).status_code == 201
        yield fast, routed


def _etag(base: str) -> str:
    r = httpx.head(base + "/v1/objects/o/plain.txt", headers={"authorization": f"Bearer {ADMIN}"})
    return str(r.headers["etag"])


_READS: list[tuple[str, str, str | None, dict[str, str]]] = [
    ("GET", "o/plain.txt", ADMIN, {}),
    ("HEAD", "o/plain.txt", ADMIN, {}),
    ("GET", "o/plain.txt", READER, {"range": "bytes=10-19"}),
    ("GET", "o/plain.txt", READER, {"range": "bytes=500-600"}),
    ("GET", "o/plain.txt", READER, {"range": "bytes=0-1", "if-range": '"stale"'}),
    ("GET", "o/plain.txt", READER, {"if-none-match": "ETAG"}),
    ("GET", "o/plain.txt", READER, {"if-match": '"other"'}),
    ("GET", "o/page", READER, {}),
    ("GET", "o/meta.bin", READER, {"x-request-id": "mine-1"}),
    ("GET", "o/missing", READER, {}),
    ("GET", "o/plain.txt", None, {}),
    ("GET", "o/plain.txt", "ust2.forged.token.here", {}),
    ("GET", "o/plain.txt", SCOPED, {}),
    ("HEAD", "o/../x", READER, {}),
    ("GET", ".unistore/service/x", ADMIN, {}),
    ("GET", "", ADMIN, {}),
]


@pytest.mark.parametrize(("method", "key", "token", "headers"), _READS)
def test_reads_answer_as_the_routes_do(
    urls: tuple[str, str], method: str, key: str, token: str | None, headers: dict[str, str]
) -> None:
    answers = []
    for base in urls:
        sent = {k: v.replace("ETAG", _etag(base)) for k, v in headers.items()}
        if token:
            sent["authorization"] = f"Bearer {token}"
        r = httpx.request(method, f"{base}/v1/objects/{key}", headers=sent)
        got = dict(r.headers)
        got.pop("date")
        rid = got.pop("x-request-id")
        assert rid == headers.get("x-request-id", rid) and re.fullmatch(r"[A-Za-z0-9._:\-]{1,128}", rid)
        answers.append((r.status_code, got, r.content))
    assert answers[0] == answers[1]


_WRITES: list[tuple[str, str | None, dict[str, str], bytes]] = [
    ("w/a.txt+", ADMIN, {"content-type": "text/plain", "x-meta-a": "b", "cache-control": "no-store"}, b"hello"),
    ("w/a.txt", READER, {}, b"x"),
    ("w/b", None, {}, b"x"),
    ("other/b", SCOPED, {}, b"x"),
    ("w/big", ADMIN, {}, b"x" * 1001),
    ("w/md5", ADMIN, {"content-md5": MD5_OF_X}, b"y"),
    ("w/md5", ADMIN, {"content-md5": "not base64!"}, b"x"),
    ("w/ct", ADMIN, {"content-type": "text/plain, text/html"}, b"x"),
    ("w/meta", ADMIN, {"x-meta-bad": "%FF"}, b"x"),
    ("w/idem", ADMIN, {"idempotency-key": "k" * 201}, b"x"),
    ("o/plain.txt", ADMIN, {"if-none-match": "*"}, b"x"),
    ("o/plain.txt", ADMIN, {"if-match": '"nope"'}, b"x"),
    ("bad//key", ADMIN, {}, b"x"),
]


@pytest.mark.parametrize(("key", "token", "headers", "body"), _WRITES)
def test_writes_answer_as_the_routes_do(
    urls: tuple[str, str], key: str, token: str | None, headers: dict[str, str], body: bytes
) -> None:
    answers = []
    for n, base in enumerate(urls):
        sent = dict(headers, authorization=f"Bearer {token}") if token else dict(headers)
        name = key.replace("+", str(n))  # "+": a key of each app's own (both are written)
        r = httpx.put(f"{base}/v1/objects/{name}", content=body, headers=sent)
        got = dict(r.headers)
        for volatile in ("date", "x-request-id", "etag", "content-length"):
            got.pop(volatile, None)
        data = r.json()
        if r.status_code == 201:  # another key, another time: compare the shape and the stored fields
            assert data.pop("key") == name and data.pop("etag") and data.pop("last_modified")
        answers.append((r.status_code, got, data))
    assert answers[0] == answers[1]
    assert answers[0][0] != 500


def test_the_fast_path_answers_the_object_routes(urls: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_get, real_put = _fast.get_response, _fast.put_response

    async def counted_get(*args: Any) -> Any:
        calls.append("get")
        return await real_get(*args)

    async def counted_put(*args: Any) -> Any:
        calls.append("put")
        return await real_put(*args)

    monkeypatch.setattr(_fast, "get_response", counted_get)
    monkeypatch.setattr(_fast, "put_response", counted_put)
    fast, routed = urls
    auth = {"authorization": f"Bearer {ADMIN}"}
    for base in (fast, routed):
        assert httpx.put(base + "/v1/objects/c/x", content=b"x", headers=auth).status_code == 201
        assert httpx.get(base + "/v1/objects/c/x", headers=auth).content == b"x"
        assert httpx.head(base + "/v1/objects/c/x", headers=auth).status_code == 200
        assert httpx.get(base + "/v1/objects", params={"prefix": "c/"}, headers=auth).status_code == 200
    assert calls == ["put", "get", "get"]  # the routed app and the listing never took it


def test_verified_tokens_are_remembered_until_they_expire(monkeypatch: pytest.MonkeyPatch) -> None:
    authority = TokenAuthority(SECRET)
    now = [1_000_000.0]
    monkeypatch.setattr(_auth.time, "time", lambda: now[0])
    token = authority.issue(["read"], expires_in=60)
    grant = authority.verify(token)
    macs: list[str] = []
    real_mac = TokenAuthority._mac

    def counted_mac(self: TokenAuthority, kid: str, payload: str) -> str:
        macs.append(kid)
        return real_mac(self, kid, payload)

    monkeypatch.setattr(TokenAuthority, "_mac", counted_mac)
    assert authority.verify(token) is grant and macs == []  # remembered: no signature check again
    now[0] += 59
    assert authority.verify(token) is grant
    now[0] += 1
    with pytest.raises(UnauthorizedError, match="expired"):
        authority.verify(token)
    with pytest.raises(UnauthorizedError, match="expired"):
        authority.verify(token)
    fresh = authority.issue(["read"], expires_in=600)
    assert authority.verify(fresh).expires == int(now[0]) + 600
    authority.max_lifetime = 10  # a lower server-wide lifetime shortens remembered tokens too
    assert authority.verify(fresh).expires == int(now[0]) + 10
    assert authority.verify(fresh, now=now[0] + 5).expires == int(now[0]) + 10


def test_the_token_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    authority = TokenAuthority(SECRET)
    monkeypatch.setattr(TokenAuthority, "cache_size", 3)
    tokens = [authority.issue(["read"], subject=f"s{i}") for i in range(5)]
    for token in tokens:
        authority.verify(token)
    authority.verify(tokens[2])  # used most recently: kept
    authority.verify(tokens[0])  # forgotten, verified again: evicts the least recently used (tokens[3])
    assert list(authority._verified) == [tokens[4], tokens[2], tokens[0]]


def test_request_ids_are_unique_hex() -> None:
    ids = {new_request_id() for _ in range(10_000)}
    assert len(ids) == 10_000 and all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


_SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("hotpath_seen", default="unset")


async def test_each_request_runs_in_a_fresh_context_of_its_own() -> None:
    seen: list[str] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(_SEEN.get())
        _SEEN.set(scope["path"])
        await asyncio.sleep(0)
        seen.append(_SEEN.get())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def send(message: Any) -> None:
        pass

    middleware = RequestIdMiddleware(app)
    _SEEN.set("caller")
    for path in ("/a", "/b"):
        await middleware({"type": "http", "method": "GET", "path": path, "headers": []}, None, send)
    assert seen == ["unset", "/a", "unset", "/b"] and _SEEN.get() == "caller"


async def test_in_context_returns_raises_and_passes_cancellation_on() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    async def fail() -> None:
        await asyncio.sleep(0)
        raise KeyError("x")

    assert await InContext(answer(), contextvars.Context()) == 42
    with pytest.raises(KeyError):
        await InContext(fail(), contextvars.Context())
    cleaned: list[bool] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            cleaned.append(_SEEN.get() == "unset")

    async def outer() -> None:
        await InContext(slow(), contextvars.Context())

    _SEEN.set("caller")
    task = asyncio.create_task(outer())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned == [True]


def test_a_put_answers_the_bytes_json_response_would() -> None:
    """The PUT's ``CreatedResponse`` sends what ``JSONResponse(info, 201, headers={"ETag": ...})`` sent."""
    from datetime import datetime

    from starlette.responses import JSONResponse

    from unistore import ObjectInfo
    from unistore.service._objects import CreatedResponse, info_json

    when = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    info = ObjectInfo(
        key="a/ü b.txt", size=3, etag="0123abcd", content_type="text/plain", last_modified=when, metadata={"o": "Jü"}
    )
    old = JSONResponse(info_json(info), status_code=201, headers={"ETag": f'"{info.etag}"'})
    new = CreatedResponse(info)
    assert (new.status_code, new.body, new.raw_headers, new.background) == (201, old.body, old.raw_headers, None)
    assert isinstance(new, JSONResponse) and new.headers["etag"] == '"0123abcd"'


async def test_a_put_without_an_idempotency_key_works_out_no_scope(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idempotency scope (a JSON of the token's subject and prefix) is only made for a request with a key."""
    from unistore.service import _objects

    scopes: list[str] = []
    real = _objects.idempotency_scope

    def counted(grant: Any, *, authenticated: bool) -> str:
        scopes.append(real(grant, authenticated=authenticated))
        return scopes[-1]

    monkeypatch.setattr(_objects, "idempotency_scope", counted)
    app = create_app(MemoryBackend(), settings=ServiceSettings(secret=SECRET))
    auth = {"authorization": f"Bearer {SCOPED}"}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        assert (await c.put("/v1/objects/mine/a", content=b"x", headers=auth)).status_code == 201
        assert scopes == []
        first = await c.put("/v1/objects/mine/b", content=b"y", headers={**auth, "idempotency-key": "op-1"})
        again = await c.put("/v1/objects/mine/b", content=b"y", headers={**auth, "idempotency-key": "op-1"})
        assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert scopes == ['token:["scoped", "mine/"]'] * 2


_SMALL_WRITES: list[tuple[dict[str, str], bytes]] = [
    ({}, b"0123456789"),
    ({}, b""),
    ({"content-md5": MD5_OF_X}, b"x"),
    ({"content-md5": MD5_OF_X}, b"y"),
    ({"repr-digest": "sha-256=:" + base64.b64encode(hashlib.sha256(b"z").digest()).decode() + ":"}, b"z"),
    ({"repr-digest": "sha-256=:" + base64.b64encode(hashlib.sha256(b"z").digest()).decode() + ":"}, b"q"),
    ({"repr-digest": "sha-256=:bad"}, b"z"),
    ({}, b"x" * 1001),
    ({"if-none-match": "*"}, b"x"),
    ({"content-type": "text/plain"}, b"x"),
]


@pytest.mark.parametrize(("headers", "body"), _SMALL_WRITES)
def test_a_small_body_read_whole_answers_and_stores_as_a_streamed_one(
    monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], body: bytes
) -> None:
    """A body under ``SMALL_BODY`` is read whole and stored as bytes: the same answer, the same object
    (or none), as the streamed body every larger one still is."""
    from unistore.service import _objects

    answers = []
    for small in (_objects.SMALL_BODY, -1):  # -1: every body streams, as before
        monkeypatch.setattr(_objects, "SMALL_BODY", small)
        backend = MemoryBackend()
        app = create_app(backend, settings=ServiceSettings(secret=SECRET, max_body_size=1000))
        with running_server(app) as base, httpx.Client(base_url=base) as c:
            auth = {"authorization": f"Bearer {ADMIN}"}
            assert c.put("/v1/objects/o/taken", content=b"old", headers=auth).status_code == 201
            key = "o/taken" if "if-none-match" in headers else "o/new"
            r = c.put(f"/v1/objects/{key}", content=body, headers={**headers, **auth})
            stored = c.get(f"/v1/objects/{key}", headers=auth)
            answer = r.json()
            if r.status_code == 201:
                answer = {k: v for k, v in answer.items() if k not in ("etag", "last_modified")}
            answers.append((r.status_code, answer, stored.status_code, stored.content))
    assert answers[0] == answers[1]
    assert answers[0][0] < 500


async def test_a_client_gone_mid_small_body_is_a_400() -> None:
    """A small body whose client hangs up before its end is a 400, as a streamed body's is, and nothing is stored."""
    backend = MemoryBackend()
    app = create_app(backend, settings=ServiceSettings(secret=SECRET))
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": b"half", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    headers = [(b"authorization", f"Bearer {ADMIN}".encode()), (b"content-length", b"8")]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "PUT",
        "scheme": "http",
        "path": "/v1/objects/o/cut",
        "raw_path": b"/v1/objects/o/cut",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "state": {},
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400
    assert b"disconnected before the body ended" in sent[1]["body"]
    assert not await backend.exists("o/cut")


def test_the_line_formatter_writes_what_the_standard_one_does() -> None:
    """``LineFormatter`` (the serve command's) gives every line the text ``logging.Formatter`` gives it."""
    import logging
    import sys

    from unistore.service.__main__ import LOG_FORMAT, LineFormatter

    standard, line = logging.Formatter(LOG_FORMAT), LineFormatter(LOG_FORMAT)
    records = []
    for when in (1_700_000_000.0, 1_700_000_000.999, 1_700_000_001.5, 1_800_000_123.25):
        record = logging.LogRecord("unistore.service", logging.INFO, __file__, 1, "%s %s %d", ("GET", "/a", 200), None)
        record.created, record.msecs, record.request_id = when, (when - int(when)) * 1000, "rid"
        records.append(record)
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    failed.request_id = "-"
    records.append(failed)
    for record in records:
        assert line.format(record) == standard.format(record)
    lacking = logging.LogRecord("x", logging.INFO, __file__, 1, "no request id", None, None)
    with pytest.raises(ValueError, match="request_id"):
        line.format(lacking)
    dated = LineFormatter(LOG_FORMAT, datefmt="%H:%M")
    assert dated.format(records[0]) == logging.Formatter(LOG_FORMAT, datefmt="%H:%M").format(records[0])


def test_accepted_content_types_are_remembered_and_refusals_are_not() -> None:
    from unistore import InvalidArgumentError
    from unistore._mime import _CHECKED, _CHECKED_MAX, check_content_type

    assert check_content_type(" text/plain ") == "text/plain"
    assert _CHECKED[" text/plain "] == "text/plain"
    assert check_content_type(" text/plain ") == "text/plain"
    assert check_content_type("  ") is None and check_content_type(None) is None
    for bad in ("text/plain, text/html", "*/*", "text/\x01", "nope"):
        for _ in range(2):
            with pytest.raises(InvalidArgumentError):
                check_content_type(bad)
        assert bad not in _CHECKED
    with pytest.raises(InvalidArgumentError):
        check_content_type(b"text/plain")  # type: ignore[arg-type]
    for n in range(_CHECKED_MAX + 10):
        assert check_content_type(f"application/x-n{n}") == f"application/x-n{n}"
    assert len(_CHECKED) <= _CHECKED_MAX
    assert check_content_type("text/" + "a" * 300) == "text/" + "a" * 300
    assert "text/" + "a" * 300 not in _CHECKED


def test_serving_freezes_the_start_up_heap_and_collects_young_objects_less_often() -> None:
    import gc

    from unistore.service.__main__ import GC_THRESHOLD, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == (GC_THRESHOLD, before[1], before[2])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_the_access_record_is_the_record_make_record_makes() -> None:
    """The access line's record, copied from a first one, has every field ``makeRecord`` gives it
    (only the time differs); a custom record factory still makes every record."""
    import logging

    from unistore.service._ops import _ACCESS, LOGGER, access_record

    args = ("GET", "/v1/objects/a", 200, 1.5)
    access_record(("PUT", "/first", 201, 2.0))  # the first one of this thread
    made = LOGGER.makeRecord(LOGGER.name, logging.INFO, _ops_file(), 0, _ACCESS, args, None)
    copied = access_record(args)
    assert type(copied) is logging.LogRecord
    timed = ("created", "msecs", "relativeCreated")
    assert {k: v for k, v in copied.__dict__.items() if k not in timed} == {
        k: v for k, v in made.__dict__.items() if k not in timed
    }
    assert abs(copied.created - made.created) < 5 and 0 <= copied.msecs < 1000
    assert abs((copied.relativeCreated - made.relativeCreated) - (copied.created - made.created) * 1000) < 1
    assert copied.getMessage() == "GET /v1/objects/a 200 1.5ms"

    class Tagged(logging.LogRecord):
        pass

    real = logging.getLogRecordFactory()
    logging.setLogRecordFactory(Tagged)
    try:
        assert type(access_record(args)) is Tagged
    finally:
        logging.setLogRecordFactory(real)


def _ops_file() -> str:
    from unistore.service import _ops

    return _ops.__file__
