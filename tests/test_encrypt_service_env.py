"""`python -m unistore.service` encrypting from its environment alone: UNISTORE_ENCRYPT=on plus a keyring."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from unistore import ConfigurationError, LocalBackend
from unistore.encryption import META_KEY_ID, Encrypt, LocalKeyring
from unistore.service import ServiceSettings
from unistore.testing import free_port

KEK = os.urandom(32)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_"))}
    env.update(
        STORAGE_BACKEND="local",
        STORAGE_BASE_PATH=str(tmp_path / "files"),
        UNISTORE_AUTH="off",
        UNISTORE_ENCRYPT="on",
        UNISTORE_KEYRING=f"kek-1:{base64.b64encode(KEK).decode()}",
        **extra,
    )
    return env


def _wait(base: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the service exited"
        try:
            if httpx.get(f"{base}/_ops/health").status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "unistore.service", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait(base, proc)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_the_env_configured_service_stores_ciphertext_and_serves_plaintext(
    service: str, tmp_path: Path
) -> None:
    data = os.urandom(300_000)
    async with httpx.AsyncClient(base_url=service, timeout=30) as c:
        r = await c.put("/v1/objects/docs/a.bin", content=data)
        assert r.status_code == 201, r.text
        assert r.json()["size"] == len(data)
        assert (await c.get("/v1/objects/docs/a.bin")).content == data
        r = await c.get("/v1/objects/docs/a.bin", headers={"range": "bytes=150000-150099"})
        assert (r.status_code, r.content) == (206, data[150_000:150_100])
        url = (await c.get("/v1/urls/docs/a.bin")).json()["url"]
        assert url.startswith(service + "/files/")
        r = await c.get(url)
        assert (r.status_code, r.content) == (200, data)
        assert (await c.get(url.replace("signature=", "signature=x"))).status_code == 403
    # The files on disk are ciphertext under the env's KEK; that KEK alone decrypts them.
    raw = LocalBackend(base_path=str(tmp_path / "files"))
    stored = await raw.get("docs/a.bin")
    assert data[:64] not in stored and len(stored) > len(data)
    assert (await raw.head("docs/a.bin")).metadata[META_KEY_ID] == "kek-1"
    assert await Encrypt(raw, LocalKeyring({"kek-1": KEK})).get("docs/a.bin") == data


def test_encrypt_without_a_keyring_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = _env(tmp_path)
    del env["UNISTORE_KEYRING"]
    done = subprocess.run(
        [sys.executable, "-m", "unistore.service", "--port", str(free_port())],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "no keyring configured" in done.stderr and "Traceback" not in done.stderr


def test_unistore_encrypt_is_parsed_strictly() -> None:
    assert ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_ENCRYPT": "on"}).encrypt
    assert not ServiceSettings.from_env({"UNISTORE_AUTH": "off"}).encrypt
    with pytest.raises(ConfigurationError, match="UNISTORE_ENCRYPT must be on or off"):
        ServiceSettings.from_env({"UNISTORE_AUTH": "off", "UNISTORE_ENCRYPT": "maybe"})
