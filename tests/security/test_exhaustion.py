"""Resource exhaustion over real HTTP: unbounded or unauthenticated bodies, slow clients.

A real service process (``python -m unistore.service`` over a local store) is
attacked through sockets and httpx: JSON bodies must be refused before they are
read (401 without a token, 413 past ``max_json_size``), and a client that stops
sending headers or a body must lose its connection after the configured
timeouts, without leaving anything behind. Timeouts are set short here (1 s).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest
from fastapi import FastAPI, Request
from starlette.applications import Starlette
from starlette.requests import Request as StarletteRequest
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from unistore import MemoryBackend, UnavailableError
from unistore.backends.http._wire import error_from_response
from unistore.fastapi import BodyTimeouts, Storage, add_storage
from unistore.service import ServiceSettings, TokenAuthority, Webhook, create_app
from unistore.service._uploads import MAX_PARTS
from unistore.testing import free_port, running_server

pytestmark = pytest.mark.xdist_group("exhaustion")

SECRET = "exhaustion-secret-0123456789abcdef"
MiB = 1024 * 1024
TIMEOUT = 1.0  # header and body timeouts of the service under test


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    pid: int
    store: Path
    auth: dict[str, str]


def _start(port: int, store: Path, log: Path, *args: str, **settings: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_"))}
    env |= {
        "STORAGE_BACKEND": "local",
        "STORAGE_BASE_PATH": str(store),
        "STORAGE_URL_SECRET": SECRET,
        "STORAGE_FSYNC": "false",
        "UNISTORE_SECRET": SECRET,
        **{f"UNISTORE_{k.upper()}": v for k, v in settings.items()},
    }
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unistore.service", "--port", str(port), *args],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, log.read_text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"http://127.0.0.1:{port}/_ops/health").status_code == 200:
                return proc
        assert time.monotonic() < deadline, "service did not start"
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("exhaustion")
    port = free_port()
    proc = _start(
        port,
        root / "store",
        root / "service.log",
        header_timeout=str(TIMEOUT),
        body_timeout=str(TIMEOUT),
        max_json_size=str(MiB),
    )
    token = TokenAuthority(SECRET.encode()).issue(["admin"])
    try:
        yield Service(f"http://127.0.0.1:{port}", port, proc.pid, root / "store", {"authorization": f"Bearer {token}"})
    finally:
        _stop(proc)


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes, and how long that took (fails after ``limit`` s)."""
    started = time.monotonic()
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        raise AssertionError(f"connection still open after {limit} s; got {data[:200]!r}") from None
    except ConnectionResetError:
        pass
    return data, time.monotonic() - started


def _response(sock: socket.socket, limit: float = 5.0) -> bytes:
    """One whole response (head and ``Content-Length`` body), without waiting for the connection to close."""
    sock.settimeout(limit)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(v) for k, _, v in (h.partition(b": ") for h in head.split(b"\r\n")) if k.lower() == b"content-length"
    )
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed mid-response: {data!r}"
        body += chunk
    return head + b"\r\n\r\n" + body


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def _temp_files(store: Path) -> list[Path]:
    return [p for p in store.rglob("*") if ".tmp." in p.name]


# --- JSON bodies: authenticate first, bound, then parse ---------------------------------------

JSON_ROUTES = ["/v1/tokens", "/v1/uploads", "/v1/uploads/none/complete", "/v1/uploads/none/part-urls"]


@pytest.mark.parametrize("path", JSON_ROUTES)
def test_anonymous_64_mib_json_gets_401_at_once_without_memory_or_stall(service: Service, path: str) -> None:
    body = b'{"parts": [' + b'{"number": 1},' * (64 * MiB // 14) + b'{"number": 1}]}'
    server = psutil.Process(service.pid)
    with httpx.Client(base_url=service.url, timeout=30) as warm:  # the code paths loaded once
        warm.post(path, json={"parts": [{"number": 1}]})
        warm.get("/_ops/health")
    baseline = peak = server.memory_info().rss
    worst_ping = 0.0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.memory_info().rss)
            time.sleep(0.005)

    def ping() -> None:
        nonlocal worst_ping
        with httpx.Client(base_url=service.url, timeout=60) as other:
            while not done.is_set():
                started = time.monotonic()
                assert other.get("/_ops/health").status_code == 200
                worst_ping = max(worst_ping, time.monotonic() - started)
                time.sleep(0.01)

    watchers = [threading.Thread(target=sample, daemon=True), threading.Thread(target=ping, daemon=True)]
    for watcher in watchers:
        watcher.start()
    try:
        started = time.monotonic()
        with httpx.Client(base_url=service.url, timeout=60) as c:
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        elapsed = time.monotonic() - started
    finally:
        done.set()
        for watcher in watchers:
            watcher.join(60)
    growth = (peak - baseline) / MiB
    print(f"{path}: {r.status_code} in {elapsed:.2f} s, server RSS +{growth:.1f} MiB, other client {worst_ping:.3f} s")
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "UnauthorizedError"
    assert elapsed < 5.0
    assert growth < 32, f"server RSS grew by {growth:.0f} MiB for a body it should not read"
    assert worst_ping < 1.5, f"another client waited {worst_ping:.2f} s"


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/uploads"])
def test_declared_oversized_json_gets_413_before_a_byte_is_read(service: Service, path: str) -> None:
    token = service.auth["authorization"]
    with _connect(service.port) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: {token}\r\nContent-Type: application/json\r\n"
        sock.sendall(head.encode() + f"Content-Length: {2 * 1024**3}\r\n\r\n".encode())
        answer = _response(sock)  # no body sent: the answer must not wait for one
    assert _status(answer) == 413, answer
    assert b'"QuotaExceededError"' in answer


@pytest.mark.parametrize("path", ["/v1/tokens", "/v1/uploads"])
def test_chunked_oversized_json_gets_413_at_the_bound(service: Service, path: str) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"key": "'
        for _ in range(64):  # 64 MiB offered, chunked (no Content-Length)
            sent += MiB
            yield b"a" * MiB
        yield b'"}'

    with httpx.Client(base_url=service.url, headers=service.auth, timeout=30) as c:
        r = c.post(path, content=body(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    assert r.json()["error"]["type"] == "QuotaExceededError"


def test_a_json_body_near_the_bound_still_works(service: Service) -> None:
    actions = ["read"] * 120_000  # about 0.9 MiB of JSON
    with httpx.Client(base_url=service.url, headers=service.auth, timeout=30) as c:
        r = c.post("/v1/tokens", json={"actions": actions, "prefix": "ok/", "expires_in": 60})
    assert len(r.request.content) > 0.8 * MiB
    assert r.status_code == 201, r.text
    assert r.json()["actions"] == ["read"]


BAD_BODIES = [
    (b'{"actions": ["read"', "application/json"),  # truncated
    (b"[" * 200_000 + b"]" * 200_000, "application/json"),  # nested past the parser's recursion limit
    (b'{"actions": "read"}', "application/json"),  # wrong shape
    (b'{"actions": [1, {"a": null}]}', "application/json"),  # wrong item types
    (b"\xff\xfe not utf-8", "application/json"),
    (b'{"actions": ["read"]}', "text/plain"),  # not declared as JSON
    (b"", "application/json"),
]


@pytest.mark.parametrize(("body", "ctype"), BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_malformed_json_is_a_typed_400(service: Service, body: bytes, ctype: str) -> None:
    with httpx.Client(base_url=service.url, headers=service.auth, timeout=30) as c:
        r = c.post("/v1/tokens", content=body, headers={"content-type": ctype})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "InvalidArgumentError"


def test_a_json_route_admits_once_per_request() -> None:
    """The body is read after admission; the route's own check must not spend a second token."""
    settings = ServiceSettings(secret=SECRET.encode(), token_rate=0.01, token_burst=2)
    token = TokenAuthority(SECRET.encode()).issue(["admin"])
    auth = {"authorization": f"Bearer {token}"}
    with (
        running_server(create_app(MemoryBackend(), settings=settings)) as url,
        httpx.Client(base_url=url, headers=auth) as c,
    ):
        assert c.post("/v1/uploads", json={"key": "a.bin"}).status_code == 201
        assert c.post("/v1/uploads", json={"key": "b.bin"}).status_code == 201
        assert c.post("/v1/uploads", json={"key": "c.bin"}).status_code == 429


def test_the_default_json_bound_fits_the_largest_manifest() -> None:
    """10,000 parts with SHA-256 checksums, as HttpBackend sends them, stay under the default bound."""
    entry = {"number": MAX_PARTS, "sha256": base64.b64encode(bytes(32)).decode()}
    manifest = json.dumps({"parts": [entry] * MAX_PARTS}).encode()
    assert len(manifest) < ServiceSettings(auth=False).max_json_size


def test_form_upload_must_be_multipart_before_it_is_read(service: Service) -> None:
    with _connect(service.port) as sock:
        head = (
            f"POST /v1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: {service.auth['authorization']}\r\n"
            f"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {1024**3}\r\n\r\n"
        )
        sock.sendall(head.encode())
        answer = _response(sock)
    assert _status(answer) == 400, answer


# --- slow clients: header and body timeouts ---------------------------------------------------


def test_half_sent_headers_are_closed_after_the_header_timeout(service: Service) -> None:
    with _connect(service.port) as sock:
        sock.sendall(b"GET /_ops/health HTTP/1.1\r\nHost: x\r\n")
        _, elapsed = _read_until_closed(sock, TIMEOUT + 4)
    assert TIMEOUT * 0.8 <= elapsed <= TIMEOUT + 3


def test_trickled_headers_do_not_keep_a_connection(service: Service) -> None:
    """Slow loris: a byte every 0.2 s resets uvicorn's keep-alive timer, never the header deadline."""
    request = b"GET /_ops/health HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    started = time.monotonic()
    closed = False
    with _connect(service.port) as sock:
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                closed = True
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                closed = sock.recv(1024) == b""
            except BlockingIOError:
                pass
            except ConnectionResetError:
                closed = True
            finally:
                sock.setblocking(True)
            if closed:
                break
    elapsed = time.monotonic() - started
    assert closed, "the trickling client kept its connection"
    assert elapsed <= TIMEOUT + 3


def test_the_unread_rest_of_a_refused_body_is_not_drained_forever(service: Service) -> None:
    """After an early answer (401 here) the server drains what the client still sends, for a bounded time."""
    with _connect(service.port) as sock:
        sock.sendall(f"PUT /v1/objects/x HTTP/1.1\r\nHost: x\r\nContent-Length: {1024**3}\r\n\r\n".encode())
        answer = _response(sock)
        assert _status(answer) == 401, answer
        started = time.monotonic()
        closed = False
        while not closed and time.monotonic() - started < TIMEOUT + 5:
            try:
                sock.sendall(b"x")  # a trickle that would reset uvicorn's own keep-alive timer
            except OSError:
                break
            sock.settimeout(0.2)
            try:
                closed = sock.recv(1024) == b""
            except TimeoutError:
                pass
            except ConnectionResetError:
                closed = True
        elapsed = time.monotonic() - started
    assert elapsed <= TIMEOUT + 3, f"still draining after {elapsed:.1f} s"


def test_an_idle_connection_is_closed_and_others_are_served(service: Service) -> None:
    socks = [_connect(service.port) for _ in range(20)]
    try:
        assert httpx.get(service.url + "/_ops/health", timeout=5).status_code == 200
        for sock in socks:
            _, elapsed = _read_until_closed(sock, TIMEOUT + 4)
            assert elapsed <= TIMEOUT + 3
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.parametrize("sent", [0, 100_000], ids=["nothing", "a-little"])
def test_a_stalled_put_gets_408_and_leaves_nothing(service: Service, sent: int) -> None:
    key = f"stalled/{sent}.bin"
    with _connect(service.port) as sock:
        head = (
            f"PUT /v1/objects/{key} HTTP/1.1\r\nHost: x\r\nAuthorization: {service.auth['authorization']}\r\n"
            f"Content-Length: {2 * 1024**3}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * sent)
        answer, elapsed = _read_until_closed(sock, TIMEOUT + 5)
    assert _status(answer) == 408, answer
    assert b'"RequestTimeoutError"' in answer
    assert elapsed <= TIMEOUT + 3
    with httpx.Client(base_url=service.url, headers=service.auth) as c:
        assert c.head(f"/v1/objects/{key}").status_code == 404
    assert _temp_files(service.store) == []


def test_a_stalled_form_upload_gets_408(service: Service) -> None:
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="f.bin"\r\n\r\n'
    with _connect(service.port) as sock:
        head = (
            f"POST /v1/upload HTTP/1.1\r\nHost: x\r\nAuthorization: {service.auth['authorization']}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {1024**3}\r\n\r\n"
        )
        sock.sendall(head.encode() + part.encode() + b"x" * 100_000)
        answer, _ = _read_until_closed(sock, TIMEOUT + 5)
    assert _status(answer) == 408, answer
    assert _temp_files(service.store) == []


def test_a_stalled_json_body_gets_408(service: Service) -> None:
    with _connect(service.port) as sock:
        head = (
            f"POST /v1/uploads HTTP/1.1\r\nHost: x\r\nAuthorization: {service.auth['authorization']}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"key": ')
        answer, _ = _read_until_closed(sock, TIMEOUT + 5)
    assert _status(answer) == 408, answer


def test_a_slow_but_steady_upload_succeeds(service: Service) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(5)]

    def body() -> Iterator[bytes]:
        for chunk in chunks:  # 5 pauses of half the idle timeout: 2.5 timeouts in all
            time.sleep(TIMEOUT / 2)
            yield chunk

    with httpx.Client(base_url=service.url, headers=service.auth, timeout=30) as c:
        r = c.put("/v1/objects/slow/steady.bin", content=body())
        assert r.status_code == 201, r.text
        assert c.get("/v1/objects/slow/steady.bin").content == b"".join(chunks)


def test_the_body_deadline_bounds_a_steady_trickle() -> None:
    settings = ServiceSettings(auth=False, body_timeout=5, body_deadline=1)
    backend = MemoryBackend()
    with running_server(create_app(backend, settings=settings)) as url, _connect(int(url.rsplit(":", 1)[1])) as sock:
        sock.sendall(b"PUT /v1/objects/trickle HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
        started = time.monotonic()
        answer = b""
        for _ in range(20):  # a byte every 0.2 s: never idle, never done
            with contextlib.suppress(OSError):
                sock.sendall(b"x")
            sock.settimeout(0.2)
            with contextlib.suppress(TimeoutError):
                answer += sock.recv(65536)
            if answer:
                break
        elapsed = time.monotonic() - started
    assert _status(answer) == 408, answer
    assert 0.8 <= elapsed <= 3
    with pytest.raises(FileNotFoundError):
        asyncio.run(backend.head("trickle"))


def test_the_command_sets_the_header_timeout(tmp_path: Path) -> None:
    port = free_port()
    proc = _start(port, tmp_path / "store", tmp_path / "log", "--header-timeout", "0.5")
    try:
        with _connect(port) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\n")
            _, elapsed = _read_until_closed(sock, 5)
        assert 0.4 <= elapsed <= 2.5
    finally:
        _stop(proc)


def test_settings_read_the_limits_from_the_environment() -> None:
    env = {
        "UNISTORE_AUTH": "off",
        "UNISTORE_MAX_JSON_SIZE": "2048",
        "UNISTORE_HEADER_TIMEOUT": "2.5",
        "UNISTORE_BODY_TIMEOUT": "7",
        "UNISTORE_BODY_DEADLINE": "60",
    }
    s = ServiceSettings.from_env(env)
    assert (s.max_json_size, s.header_timeout, s.body_timeout, s.body_deadline) == (2048, 2.5, 7.0, 60.0)
    defaults = ServiceSettings(auth=False)
    assert (defaults.max_json_size, defaults.header_timeout, defaults.body_timeout) == (MiB, 10.0, 30.0)
    assert defaults.body_deadline is None
    with pytest.raises(ValueError, match="timeout"):
        ServiceSettings(auth=False, body_timeout=0)


# --- the same bound for apps built with add_storage ----------------------------------------------


def test_an_add_storage_app_with_body_timeouts_answers_a_stalled_upload_with_408() -> None:
    backend = MemoryBackend()
    app = FastAPI()
    add_storage(app, backend)
    app.add_middleware(BodyTimeouts, idle=0.5)

    @app.put("/upload/{name}")
    async def upload(name: str, request: Request, storage: Storage) -> dict[str, int]:
        info = await storage.put_object(name, request.stream())
        return {"size": info.size}

    with running_server(app) as url, _connect(int(url.rsplit(":", 1)[1])) as sock:
        sock.sendall(b"PUT /upload/stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 1000)
        answer, elapsed = _read_until_closed(sock, 5)
    assert _status(answer) == 408, answer
    assert b'"RequestTimeoutError"' in answer
    assert elapsed < 3
    with pytest.raises(FileNotFoundError):
        asyncio.run(backend.head("stalled"))


def test_a_client_sees_the_408_of_a_service_as_retryable() -> None:
    response = httpx.Response(408, json={"error": {"type": "RequestTimeoutError", "message": "stalled", "key": "k"}})
    error = error_from_response(response, response.content, key="k", backend="http", operation="put")
    assert isinstance(error, UnavailableError)


async def test_a_webhook_receiver_can_neither_flood_nor_hold_a_delivery() -> None:
    async def endless(request: StarletteRequest) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            while True:
                yield b"x" * 65536
                await asyncio.sleep(0)

        return StreamingResponse(chunks())

    async def silent(request: StarletteRequest) -> Response:
        await asyncio.sleep(1.5)
        return Response()

    routes = [Route("/endless", endless, methods=["POST"]), Route("/silent", silent, methods=["POST"])]
    with running_server(Starlette(routes=routes)) as url:
        flooding = Webhook(url + "/endless", attempts=1, timeout=2)
        holding = Webhook(url + "/silent", attempts=1, timeout=0.5)
        try:
            flooding({"event": "upload.completed"})
            holding({"event": "upload.completed"})
            await asyncio.wait_for(asyncio.gather(flooding.drain(), holding.drain()), 5)
        finally:
            await flooding.aclose()
            await holding.aclose()
    assert (flooding.delivered, holding.failed) == (1, 1)
