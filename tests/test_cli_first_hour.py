"""What a new user hits first with the CLI: install, no store, directory destinations, long listings, object URLs."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import MemoryBackend
from unistore.cli import app
from unistore.service import ServiceSettings, create_app
from unistore.testing import S3Server, running_server

ROOT = Path(__file__).resolve().parents[1]
SECRET = "cli-first-hour-0123456789abcdef"
runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def _requirements(extras: set[str], table: dict[str, list[str]]) -> set[str]:
    """Distribution names an install of ``.[extras]`` pulls in (self-references followed)."""
    names: set[str] = set()
    todo = list(extras)
    while todo:
        for req in table[todo.pop()]:
            name = re.split(r"[\[<>=!~ ;]", req, maxsplit=1)[0].lower()
            if name == "unistore":
                todo.extend(req[req.index("[") + 1 : req.index("]")].split(","))
            else:
                names.add(name)
    return names


def test_make_serve_installs_the_cli_and_metrics_the_readme_uses() -> None:
    dry = subprocess.run(["make", "-n", "-B", "serve"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    installs = [line for line in dry.splitlines() if "pip install" in line and "-e" in line]
    extras = {e for line in installs for m in re.findall(r"\.\[([^\]]+)\]", line) for e in m.split(",")}
    table = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    needed = _requirements(extras, table)
    assert {"typer", "rich", "prometheus-client", "fastapi", "uvicorn", "httpx"} <= needed, needed


def test_no_store_configured_fails_with_exit_8_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "h.txt").write_bytes(b"hello")
    clean = {k: "" for k in os.environ if k.startswith(("STORAGE_", "UNISTORE_", "AWS_", "CLOUDINARY", "RAILWAY"))}
    clean["GOOGLE_APPLICATION_CREDENTIALS"] = ""
    code, out, err = cli("put", "k", str(tmp_path / "h.txt"), env=clean)
    assert (code, out) == (8, "")
    assert "no store configured" in err and "--store" in err and "Traceback" not in err
    assert cli("ls", env=clean)[0] == 8
    # asking for memory by name still works
    assert cli("ls", env={**clean, "STORAGE_BACKEND": "memory"})[0] == 0


def test_get_into_a_directory_writes_dir_basename(store: str, tmp_path: Path) -> None:
    (tmp_path / "src.bin").write_bytes(b"x" * 1000)
    assert cli("put", "a/b/report.bin", str(tmp_path / "src.bin"), "-s", store, "-q")[0] == 0
    out = tmp_path / "dl"
    out.mkdir()
    for dest in (str(out), str(out) + "/"):
        assert cli("get", "a/b/report.bin", dest, "-s", store, "-q")[0] == 0
        assert (out / "report.bin").read_bytes() == b"x" * 1000
        (out / "report.bin").unlink()
    assert cli("cp", f"{store}#a/b/report.bin", str(out) + "/", "-q")[0] == 0
    assert (out / "report.bin").read_bytes() == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dl", "src.bin", "store"]  # no dl.part / dl.part.json


def test_a_destination_that_cannot_work_fails_before_a_byte_moves(store: str, tmp_path: Path) -> None:
    (tmp_path / "src.bin").write_bytes(b"y" * 10)
    assert cli("put", "r.bin", str(tmp_path / "src.bin"), "-s", store, "-q")[0] == 0
    code, _, err = cli("get", "r.bin", str(tmp_path / "missing-dir") + "/", "-s", store, "-q")
    assert code == 3 and "no such local directory" in err
    code, _, err = cli("cp", f"{store}#r.bin", "bucket/r.bin", "-q")  # meant a store, wrote a path
    assert code == 3 and "s3://bucket/key" in err
    assert not list(tmp_path.glob("**/*.part*"))


def test_ls_lists_everything_streamed_and_max_caps_with_a_note(store: str, tmp_path: Path) -> None:
    root = tmp_path / "store" / "many"
    root.mkdir(parents=True)
    for i in range(1005):
        (root / f"{i:05d}").write_bytes(b"")
    code, out, _ = cli("ls", "many/", "-s", store)
    assert code == 0 and out.split() == [f"many/{i:05d}" for i in range(1005)]
    code, out, err = cli("ls", "many/", "-s", store, "--max", "3")
    assert (code, out.split()) == (0, ["many/00000", "many/00001", "many/00002"])
    assert "--max 3" in err
    assert cli("ls", "many/", "-s", store, "--max", "1005")[2] == ""  # nothing more: no note


def test_cp_accepts_object_urls_s3_file_and_service(seaweed: S3Server, tmp_path: Path) -> None:
    prefix = f"cli-urls-{uuid.uuid4().hex[:8]}"
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    s3 = f"s3://unistore-tests/{prefix}/a%20b.txt?endpoint={seaweed.endpoint}"
    (tmp_path / "a.txt").write_bytes(b"alpha")
    assert cli("cp", f"file://{tmp_path / 'a.txt'}", s3, "-q", env=env)[0] == 0
    stored = seaweed.client().get_object(Bucket="unistore-tests", Key=f"{prefix}/a b.txt")["Body"].read()
    assert stored == b"alpha"
    assert cli("cp", s3, f"file://{tmp_path}/back.txt", "-q", env=env)[0] == 0
    assert (tmp_path / "back.txt").read_bytes() == b"alpha"
    settings = ServiceSettings(secret=SECRET.encode())
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        admin = cli("token", "--actions", "admin", env={"UNISTORE_SECRET": SECRET})[1].strip()
        env = {**env, "UNISTORE_TOKEN": admin}
        assert cli("cp", s3, f"{url}/v1/objects/copied/a.txt", "-q", env=env)[0] == 0
        assert cli("get", "copied/a.txt", "-s", url, env=env)[1] == "alpha"
        code, _, err = cli("cp", f"{url}/elsewhere/a.txt", str(tmp_path / "x"), "-q", env=env)
        assert code == 6 and "/v1/objects/KEY" in err
    code, _, err = cli("cp", "s3://bucket-only", str(tmp_path / "x"), "-q")
    assert code == 6 and "names no object" in err
    code, _, err = cli("cp", "minio://b/k", str(tmp_path / "x"), "-q")
    assert code == 6 and "unknown URL scheme" in err
