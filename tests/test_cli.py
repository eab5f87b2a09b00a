"""The ``unistore`` command line: transfers, listing, errors and exit codes (a file store and a live service)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import MemoryBackend
from unistore.cli import app
from unistore.service import ServiceSettings, create_app
from unistore.testing import running_server

SECRET = "cli-secret-0123456789abcdef"
runner = CliRunner()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def cli(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_put_get_ls_stat_url_rm_on_a_file_store(store: str, tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    (tmp_path / "in.bin").write_bytes(data)
    code, out, _ = cli("put", "docs/in.bin", str(tmp_path / "in.bin"), "--store", store, "-m", "owner=me")
    assert code == 0 and json.loads(out)["size"] == len(data)
    assert cli("put", "docs/note.txt", "-", "-s", store, "-t", "text/plain", stdin=b"hello")[0] == 0
    assert cli("get", "docs/in.bin", str(tmp_path / "out.bin"), "-s", store)[0] == 0
    assert (tmp_path / "out.bin").read_bytes() == data
    assert cli("get", "docs/note.txt", "-s", store)[1] == "hello"
    assert cli("ls", "docs/", "-s", store)[1].split() == ["docs/in.bin", "docs/note.txt"]
    assert "text/plain" in cli("ls", "-l", "-r", "-s", store)[1]
    assert cli("ls", "-s", store)[1].split() == ["docs/"]
    meta = json.loads(cli("stat", "docs/in.bin", "-s", store)[1])
    assert (meta["owner"], meta["size"]) == ("me", len(data))
    assert cli("url", "docs/note.txt", "-s", store)[1].startswith("http")
    assert cli("rm", "docs/note.txt", "docs/none", "-s", store)[1].split("\n")[:2] == [
        "deleted docs/note.txt",
        "absent docs/none",
    ]


def test_expected_failures_are_one_line_with_distinct_exit_codes(store: str, tmp_path: Path) -> None:
    code, _, errout = cli("get", "missing", "-s", store)
    assert code == 3 and errout.count("\n") == 1 and "NotFoundError" in errout and "Traceback" not in errout
    (tmp_path / "f").write_bytes(b"x")
    assert cli("put", "../x", str(tmp_path / "f"), "-s", store)[0] == 6
    assert cli("put", "k", str(tmp_path / "absent"), "-s", store)[0] == 3
    assert cli("ls", "-s", "nope://x")[0] == 8
    assert cli("put", "k", str(tmp_path / "f"), "-s", store, "-m", "novalue")[0] == 6
    assert cli("token", env={"UNISTORE_SECRET": ""})[0] == 8


def test_cp_between_stores_files_and_a_live_service(store: str, tmp_path: Path) -> None:
    settings = ServiceSettings(secret=SECRET.encode())
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        code, admin, _ = cli("token", "--actions", "admin", env={"UNISTORE_SECRET": SECRET})
        assert code == 0
        env = {"UNISTORE_TOKEN": admin.strip()}
        (tmp_path / "a.txt").write_bytes(b"alpha")
        assert cli("put", "a.txt", str(tmp_path / "a.txt"), "-s", store, "-t", "text/plain", "-m", "k=v")[0] == 0
        assert cli("cp", f"{store}#a.txt", f"{url}#copied/a.txt", env=env)[0] == 0
        assert cli("stat", "copied/a.txt", "-s", url, env=env)[0] == 0
        meta = json.loads(cli("stat", "copied/a.txt", "-s", url, env=env)[1])
        assert (meta["k"], meta["content_type"], meta["size"]) == ("v", "text/plain", 5)
        assert cli("cp", f"{url}#copied/a.txt", str(tmp_path / "back.txt"), env=env)[0] == 0
        assert (tmp_path / "back.txt").read_bytes() == b"alpha"
        assert cli("cp", str(tmp_path / "back.txt"), f"{url}#from-file", env=env)[0] == 0
        assert cli("get", "from-file", "-s", url, env=env)[1] == "alpha"
        reader = cli("token", "--actions", "read", "--prefix", "copied/", env={"UNISTORE_SECRET": SECRET})[1].strip()
        code, _, errout = cli("put", "x", str(tmp_path / "a.txt"), "-s", url, "--token", reader)
        assert code == 4 and "PermissionDeniedError" in errout
        assert cli("get", "x", "-s", url, "--token", "forged")[0] == 4


@pytest.fixture(autouse=True)
def _no_store_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("UNISTORE_STORE", "UNISTORE_TOKEN", "UNISTORE_SECRET"):
        monkeypatch.delenv(var, raising=False)
