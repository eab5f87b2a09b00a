"""``unistore keys rotate|usage|retire`` on a local store encrypted with a local keyring."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import LocalBackend
from unistore.cli import app
from unistore.encryption import META_KEY_ID, META_WRAPPED_KEY, Encrypt, LocalKeyring
from unistore.testing._s3servers import S3Server

runner = CliRunner()
OLD = base64.b64encode(os.urandom(32)).decode()
NEW = base64.b64encode(os.urandom(32)).decode()
OLD_ENV = {"UNISTORE_KEYRING": f"old:{OLD}"}
NEW_ENV = {"UNISTORE_KEYRING": f"old:{OLD},new:{NEW}", "UNISTORE_KEYRING_PRIMARY": "new"}


def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, Path]:
    root = tmp_path / "store"

    async def fill() -> None:
        raw = LocalBackend(base_path=str(root), fsync=False)
        enc = Encrypt(raw, LocalKeyring.from_env(OLD_ENV))
        for i in range(12):
            await enc.put_object(f"a/{i:02d}", f"body {i}".encode())
        for i in range(3):
            await enc.put_object(f"b/{i:02d}", f"other {i}".encode())
        await raw.put_object("plain.txt", b"not encrypted")
        await raw.aclose()

    asyncio.run(fill())
    return f"file://{root}", root


def read_all(root: Path, env: dict[str, str]) -> dict[str, bytes]:
    async def go() -> dict[str, bytes]:
        raw = LocalBackend(base_path=str(root), fsync=False)
        enc = Encrypt(raw, LocalKeyring.from_env(env))
        out = {k: await enc.get(k) async for k in raw.iter_keys() if k != "plain.txt"}
        await raw.aclose()
        return out

    return asyncio.run(go())


def test_usage_rotate_retire(store: tuple[str, Path]) -> None:
    url, root = store
    code, out, _ = cli("keys", "usage", url, env=NEW_ENV)
    assert code == 0 and out.split("\n")[:2] == ["15\told", "1\t(not encrypted)"]
    code, out, err = cli("keys", "retire", "old", url, env=NEW_ENV)
    assert code == 5 and "15 object(s)" in err and "'a/00'" in err
    code, out, _ = cli("keys", "rotate", "--rewrap", url, "a/", "--quiet", env=NEW_ENV)
    assert code == 0 and "rewrap to KEK 'new': 12 rewrapped" in out
    doc = json.loads(cli("keys", "usage", url, "--json", env=NEW_ENV)[1])
    assert (
        doc["keys"] == {"new": 12, "old": 3} and doc["plain"] == 1 and doc["samples"]["old"] == ["b/00", "b/01", "b/02"]
    )
    code, out, _ = cli("keys", "rotate", "--reencrypt", url, env=NEW_ENV)
    assert code == 0 and "15 reencrypted" in out
    code, out, _ = cli("keys", "retire", "old", url, env=NEW_ENV)
    assert code == 0 and "no object uses KEK 'old'" in out
    bodies = read_all(root, {"UNISTORE_KEYRING": f"new:{NEW}"})  # the old KEK is gone from the keyring
    assert bodies["a/03"] == b"body 3" and bodies["b/02"] == b"other 2" and len(bodies) == 15


def test_rotate_is_idempotent_and_reports_failures(store: tuple[str, Path]) -> None:
    url, root = store
    assert cli("keys", "rotate", "--rewrap", url, env=NEW_ENV)[0] == 0
    code, out, _ = cli("keys", "rotate", "--rewrap", url, env=NEW_ENV)
    assert code == 0 and "15 current, 1 plain" in out

    async def corrupt() -> None:
        raw = LocalBackend(base_path=str(root), fsync=False)
        meta = dict((await raw.head("a/05")).metadata)
        meta[META_KEY_ID] = "old"
        meta[META_WRAPPED_KEY] = base64.b64encode(b"\x01" + os.urandom(60)).decode()
        await raw.replace_metadata("a/05", meta)
        await raw.aclose()

    asyncio.run(corrupt())
    code, out, err = cli("keys", "rotate", "--rewrap", url, env=NEW_ENV)
    assert code == 9 and "1 failed" in out and "'a/05'" in err


def test_usage_errors(store: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = store
    code, _, err = cli("keys", "rotate", url, env=NEW_ENV)
    assert code == 2 and "exactly one of --rewrap and --reencrypt" in err
    code, _, err = cli("keys", "rotate", "--rewrap", "--reencrypt", url, env=NEW_ENV)
    assert code == 2
    code, _, err = cli("keys", "rotate", "--rewrap", url, env={})
    assert code == 8 and "no keyring configured" in err and "Traceback" not in err
    code, _, err = cli("keys", "retire", "new", url, env=NEW_ENV)
    assert code == 8 and "primary" in err
    code, _, err = cli("keys", "usage", f"file://{tmp_path / 'nowhere'}", env=NEW_ENV)
    assert code == 3


def test_rotate_an_s3_store(seaweed: S3Server) -> None:
    """The same commands on SeaweedFS, the store given as an s3:// URL (credentials from STORAGE_S3_*)."""
    prefix = f"cli-keys-{os.urandom(4).hex()}"

    async def fill() -> None:
        raw = seaweed.backend(prefix=f"{prefix}/")
        enc = Encrypt(raw, LocalKeyring.from_env(OLD_ENV))
        for i in range(5):
            await enc.put_object(f"r/{i}", f"report {i}".encode())
        await raw.aclose()

    asyncio.run(fill())
    env = {**NEW_ENV, "STORAGE_S3_ACCESS_KEY": seaweed.access_key, "STORAGE_S3_SECRET_KEY": seaweed.secret_key}
    url = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}&region={seaweed.region}"
    assert cli("keys", "usage", url, env=env)[1].split("\n")[0] == "5\told"
    code, out, _ = cli("keys", "rotate", "--rewrap", url, "--quiet", env=env)
    assert code == 0 and "5 rewrapped" in out
    code, out, _ = cli("keys", "retire", "old", url, env=env)
    assert code == 0 and "(5 encrypted objects checked)" in out


def test_reencrypt_written_before(store: tuple[str, Path]) -> None:
    url, _ = store
    code, out, _ = cli("keys", "rotate", "--reencrypt", url, "--written-before", "2000-01-01T00:00:00Z", env=NEW_ENV)
    assert code == 0 and "15 reencrypted" in out  # nothing was written under the primary before 2000
    code, out, _ = cli("keys", "rotate", "--reencrypt", url, "--written-before", "2000-01-01T00:00:00Z", env=NEW_ENV)
    assert code == 0 and "15 current" in out
    code, _, err = cli("keys", "rotate", "--reencrypt", url, "--written-before", "yesterday", env=NEW_ENV)
    assert code == 6 and "ISO 8601" in err
