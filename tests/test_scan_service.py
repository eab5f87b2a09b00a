"""Malware scanning in the service, over real HTTP and a real clamd: 422 with the signature, 503 + Retry-After
when the scanner is down (fail-closed), counted writes when fail-open; nothing infected is ever stored."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from unistore import ConfigurationError, LocalBackend, MemoryBackend, StorageBackend
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server
from unistore.testing._clamd import (
    EICAR,
    EICAR_HASH_SIGNATURE,
    EICAR_STRING_SIGNATURE,
    TEST_MARKER,
    ClamdServer,
    clamd_server,
)
from unistore.testing._s3servers import S3Server


def serve(backend: StorageBackend, **env: str) -> Iterator[httpx.Client]:
    settings = ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_METRICS": "open", **env})
    with running_server(create_app(backend, settings=settings)) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


@pytest.fixture(params=["memory", "local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> StorageBackend:
    if request.param == "memory":
        return MemoryBackend()
    if request.param == "local":
        return LocalBackend(base_path=str(tmp_path / "store"), fsync=False)
    seaweed: S3Server = request.getfixturevalue("seaweed")
    return seaweed.backend()


def key(name: str) -> str:
    return f"svc-{uuid.uuid4().hex[:8]}/{name}"


def assert_malware(r: httpx.Response) -> None:
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "MalwareFoundError"
    assert EICAR_HASH_SIGNATURE in error["message"] or EICAR_STRING_SIGNATURE in error["message"]


@pytest.mark.parametrize("mode", ["reject", "quarantine"])
def test_eicar_is_422_with_its_signature_and_never_stored(
    clamd: ClamdServer, backend: StorageBackend, mode: str
) -> None:
    for c in serve(backend, UNISTORE_SCAN_URL=clamd.unix_url, UNISTORE_SCAN_MODE=mode):
        k = key("eicar.txt")
        assert_malware(c.put(f"/v1/objects/{k}", content=EICAR))
        assert c.get(f"/v1/objects/{k}").status_code == 404
        assert k not in [o["key"] for o in c.get("/v1/objects", params={"prefix": k.split("/")[0]}).json()["objects"]]
        clean = key("clean.txt")
        assert c.put(f"/v1/objects/{clean}", content=b"nothing to see").status_code == 201
        assert c.get(f"/v1/objects/{clean}").content == b"nothing to see"
        # A chunked body (no Content-Length) is scanned as it streams.
        chunked = key("chunked.bin")
        assert_malware(c.put(f"/v1/objects/{chunked}", content=iter([b"a" * 70_000, EICAR, b"b" * 70_000])))
        assert c.get(f"/v1/objects/{chunked}").status_code == 404


def test_scanner_down_is_503_with_retry_after_and_nothing_stored(tmp_path: Path) -> None:
    backend = MemoryBackend()
    for c in serve(backend, UNISTORE_SCAN_URL=f"unix://{tmp_path / 'gone.sock'}"):
        r = c.put("/v1/objects/a.txt", content=b"data")
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1, r.text
        assert r.json()["error"]["type"] == "ScannerUnavailableError"
        assert c.get("/v1/objects/a.txt").status_code == 404


@pytest.mark.parametrize("mode", ["reject", "quarantine"])
def test_scanner_killed_mid_upload_is_503_and_nothing_stored(tmp_path: Path, mode: str) -> None:
    backend = LocalBackend(base_path=str(tmp_path / "store"), fsync=False)
    with clamd_server() as doomed:
        for c in serve(backend, UNISTORE_SCAN_URL=doomed.tcp_url, UNISTORE_SCAN_MODE=mode):

            def body() -> Iterator[bytes]:
                for i in range(12):
                    if i == 10:
                        doomed.kill()
                        time.sleep(0.5)
                    yield b"m" * (64 * 1024)

            r = c.put("/v1/objects/doc.bin", content=body())
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert c.get("/v1/objects/doc.bin").status_code == 404
    assert [p for p in (tmp_path / "store").rglob("doc.bin*")] == []


def test_fail_open_stores_and_counts_unscanned_writes(tmp_path: Path) -> None:
    backend = MemoryBackend()
    env = {"UNISTORE_SCAN_URL": f"unix://{tmp_path / 'gone.sock'}", "UNISTORE_SCAN_FAIL_OPEN": "on"}
    for c in serve(backend, **env):
        assert c.put("/v1/objects/a.txt", content=b"one").status_code == 201
        assert c.put("/v1/objects/b.txt", content=b"two").status_code == 201
        metrics = c.get("/metrics").text
        assert "unistore_scan_unscanned_writes_total 2.0" in metrics


def test_upload_sessions_are_scanned_at_completion(clamd: ClamdServer) -> None:
    backend = MemoryBackend()
    for c in serve(backend, UNISTORE_SCAN_URL=clamd.unix_url):
        k = key("split.bin")
        # The signature straddles the two parts: only the whole body shows it.
        half = len(TEST_MARKER) // 2
        parts = [b"p" * 5000 + TEST_MARKER[:half], TEST_MARKER[half:] + b"q" * 5000]
        sid = c.post("/v1/uploads", json={"key": k}).json()["upload_id"]
        for n, data in enumerate(parts, 1):
            assert c.put(f"/v1/uploads/{sid}/parts/{n}", content=data).status_code == 200
        sums = [base64.b64encode(hashlib.sha256(p).digest()).decode() for p in parts]
        manifest = {"parts": [{"number": n, "sha256": s} for n, s in enumerate(sums, 1)]}
        r = c.post(f"/v1/uploads/{sid}/complete", json=manifest)
        assert r.status_code == 422 and r.json()["error"]["type"] == "MalwareFoundError", r.text
        assert c.get(f"/v1/objects/{k}").status_code == 404
        # Direct sessions would send the parts past the scanner.
        r = c.post("/v1/uploads", json={"key": key("direct.bin"), "direct": True})
        assert r.status_code == 400 and "scanning" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "env",
    [
        {"UNISTORE_SCAN_URL": "http://clamd:3310"},
        {"UNISTORE_SCAN_MODE": "delete"},
        {"UNISTORE_SCAN_FAIL_OPEN": "maybe"},
        {"UNISTORE_SCAN_TIMEOUT": "0"},
    ],
)
def test_bad_scan_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        ServiceSettings.from_env({"UNISTORE_AUTH": "off", **env})


def test_scan_settings_from_env() -> None:
    s = ServiceSettings.from_env(
        {
            "UNISTORE_AUTH": "off",
            "UNISTORE_SCAN_URL": "tcp://127.0.0.1:3310",
            "UNISTORE_SCAN_MODE": "quarantine",
            "UNISTORE_SCAN_FAIL_OPEN": "on",
            "UNISTORE_SCAN_TIMEOUT": "5",
        }
    )
    assert (s.scan_url, s.scan_mode, s.scan_fail_open, s.scan_timeout) == (
        "tcp://127.0.0.1:3310",
        "quarantine",
        True,
        5,
    )


def test_a_503_is_not_replayed_once_the_scanner_is_back(tmp_path: Path) -> None:
    """Scan sits above Idempotency: a write refused because clamd hung leaves no record to replay."""
    backend = MemoryBackend()
    with clamd_server() as clamd:
        for c in serve(backend, UNISTORE_SCAN_URL=clamd.unix_url, UNISTORE_SCAN_TIMEOUT="1"):
            assert c.put("/v1/objects/warm.txt", content=b"warm").status_code == 201
            op = {"idempotency-key": "upload-42"}
            os.kill(clamd.pid, signal.SIGSTOP)
            try:
                r = c.put("/v1/objects/doc.txt", content=b"report", headers=op)
                assert r.status_code == 503 and r.headers["retry-after"], r.text
            finally:
                os.kill(clamd.pid, signal.SIGCONT)
            assert c.get("/v1/objects/doc.txt").status_code == 404
            r = c.put("/v1/objects/doc.txt", content=b"report", headers=op)
            assert r.status_code == 201, r.text
            assert c.get("/v1/objects/doc.txt").content == b"report"


def test_longer_than_clamd_accepts_is_413_even_fail_open() -> None:
    """A body clamd refuses to scan is never stored unscanned: the scanner is up, the body is the problem."""
    backend = MemoryBackend()
    with clamd_server(stream_max_length=1024 * 1024) as small:
        for c in serve(backend, UNISTORE_SCAN_URL=small.unix_url, UNISTORE_SCAN_FAIL_OPEN="on"):
            r = c.put("/v1/objects/huge.bin", content=b"h" * (3 * 1024 * 1024))
            assert r.status_code == 413 and r.json()["error"]["type"] == "ScanTooLargeError", r.text
            assert c.get("/v1/objects/huge.bin").status_code == 404
            assert "unistore_scan_unscanned_writes_total 0.0" in c.get("/metrics").text


def test_validation_refuses_before_the_scanner_sees_the_body(clamd: ClamdServer) -> None:
    rules = '[{"prefix": "docs/", "max_size": 32}, {"prefix": "files/", "max_size": 1000}]'
    for c in serve(MemoryBackend(), UNISTORE_SCAN_URL=clamd.unix_url, UNISTORE_UPLOAD_RULES=rules):
        r = c.put("/v1/objects/docs/eicar.txt", content=EICAR)  # 68 bytes: too large before it is malware
        assert r.status_code == 413 and r.json()["error"]["type"] == "FileTooLargeError", r.text
        assert_malware(c.put("/v1/objects/files/eicar.txt", content=EICAR))
        assert c.put("/v1/objects/files/ok.txt", content=b"fine").status_code == 201
