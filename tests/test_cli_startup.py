"""What the ``unistore`` command imports: ``--version`` answers before typer and the commands
are imported, ``import unistore`` imports none of its modules, and a tree download from S3
never imports aiohttp (its ranges go over ``http.client`` on threads). Real processes."""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import subprocess
import sys
import uuid
from pathlib import Path

import unistore
from unistore.testing import S3Server

SRC = str(Path(unistore.__file__).parents[1])
WATCHED = ("aiohttp", "asyncio", "rich", "typer", "unistore._base", "unistore.cli._common")
RUN = f"""
import atexit, sys
atexit.register(lambda: print("imported:", [m for m in {WATCHED!r} if m in sys.modules], file=sys.stderr))
from unistore.cli import main
sys.argv[0] = "unistore"
main()
"""


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTORE_", "STORAGE_"))}
    environ.update(env or {}, PYTHONPATH=SRC)
    return subprocess.run([sys.executable, "-c", RUN, *args], env=environ, capture_output=True, text=True, timeout=120)


def imported(proc: subprocess.CompletedProcess[str]) -> list[str]:
    line = next(line for line in proc.stderr.splitlines() if line.startswith("imported: "))
    return eval(line.removeprefix("imported: "))  # type: ignore[no-any-return]


def test_version_is_the_installed_distributions_and_needs_neither_typer_nor_the_commands() -> None:
    proc = run("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"unistore {importlib.metadata.version('unistore')}\n"
    assert unistore.__version__ == importlib.metadata.version("unistore")
    assert imported(proc) == []


def test_importing_the_package_imports_none_of_its_modules() -> None:
    code = "import sys, unistore; print([m for m in sys.modules if m.startswith('unistore.')])"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": SRC}, capture_output=True)
    assert out.stdout.strip() == b"[]", out.stderr
    assert unistore.FileNotFoundError is unistore.NotFoundError and "LocalBackend" in dir(unistore)


def test_help_still_lists_every_command() -> None:
    proc = run("--help")
    assert proc.returncode == 0, proc.stderr
    for command in ("cp", "sync", "ls", "get", "put", "serve", "store", "migrate", "lifecycle", "cost"):
        assert f" {command} " in proc.stdout, command


def test_an_s3_tree_download_imports_no_aiohttp(seaweed: S3Server, tmp_path: Path) -> None:
    from unistore import S3Backend

    prefix = f"cli-startup-{uuid.uuid4().hex[:8]}"
    files = {"big.bin": os.urandom(33 * 1024 * 1024), "small.txt": b"small"}

    async def put() -> None:
        s3 = S3Backend(
            bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        try:
            for name, data in files.items():
                await s3.put_object(f"{prefix}/{name}", data)
        finally:
            await s3.aclose()

    asyncio.run(put())
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    src = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    proc = run("cp", "-r", src, str(tmp_path / "down"), "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in (tmp_path / "down").iterdir()} == files
    assert "aiohttp" not in imported(proc)


def test_an_s3_tree_upload_sends_its_parts_without_aiohttp(seaweed: S3Server, tmp_path: Path) -> None:
    """The parts of a large file go from the file to the socket by ``sendfile`` on the lean pool."""
    from unistore import S3Backend

    prefix = f"cli-startup-up-{uuid.uuid4().hex[:8]}"
    files = {"big.bin": os.urandom(21 * 1024 * 1024 + 5), "small.txt": b"small"}
    (tmp_path / "up").mkdir()
    for name, data in files.items():
        (tmp_path / "up" / name).write_bytes(data)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    dst = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    proc = run("cp", "-r", str(tmp_path / "up"), dst, "-q", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "aiohttp" not in imported(proc)

    async def get() -> dict[str, bytes]:
        s3 = S3Backend(
            bucket="unistore-tests", endpoint=seaweed.endpoint, access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
        )
        try:
            return {name: await s3.get(f"{prefix}/{name}") for name in files}
        finally:
            await s3.aclose()

    assert asyncio.run(get()) == files
