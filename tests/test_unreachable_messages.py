"""An unreachable service is named with its reason, and a settings object of the wrong type is refused
at construction (regression tests: these said "service unreachable: ConnectError (All connection attempts
failed)" and raised AttributeError)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from unistore import ConfigurationError, UnavailableError
from unistore.backends.http import HttpBackend

UNISTORE = str(Path(sys.executable).with_name("unistore"))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_service_names_origin_and_reason() -> None:
    port = _closed_port()
    store = HttpBackend(url=f"http://127.0.0.1:{port}")
    try:
        with pytest.raises(UnavailableError) as caught:
            await store.get("a/b")
    finally:
        await store.aclose()
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in str(caught.value)


def test_cli_says_cannot_reach_without_traceback() -> None:
    port = _closed_port()
    done = subprocess.run(
        [UNISTORE, "cat", "-s", f"http://127.0.0.1:{port}", "a/b"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "UNISTORE_STORE": ""},
    )
    assert done.returncode == 7, done.stderr
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in done.stderr
    assert "All connection attempts failed" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_url_in_place_of_settings_is_refused_with_a_hint() -> None:
    with pytest.raises(ConfigurationError, match=r"url='http://x'"):
        HttpBackend("http://x")  # type: ignore[arg-type]
