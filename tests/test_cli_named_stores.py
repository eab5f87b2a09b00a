"""Store paths as users write them: local directories on both sides, ``NAME:path`` for every verb."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import MemoryBackend
from unistore.cli import app
from unistore.service import ServiceSettings, create_app
from unistore.testing import S3Server, running_server

runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def site(tmp_path: Path) -> Path:
    (tmp_path / "site" / "css").mkdir(parents=True)
    (tmp_path / "site" / "index.html").write_bytes(b"<h1>hi</h1>")
    (tmp_path / "site" / "css" / "main.css").write_bytes(b"body{}")
    return tmp_path / "site"


@pytest.mark.parametrize("verb", [["sync"], ["cp", "-r"]])
def test_local_to_local_tree_transfers_work_with_paths_and_file_urls(verb: list[str], site: Path) -> None:
    dest = site.parent / "copy"
    code, _, err = cli(*verb, str(site), f"file://{dest}", "-q")
    assert code == 0, err
    assert _tree(dest) == _tree(site)
    (site / "new.txt").write_bytes(b"new")
    code, _, err = cli(*verb, f"file://{site}", str(dest), "-q")
    assert code == 0, err
    assert _tree(dest) == _tree(site)


def test_local_sync_delete_and_overlap_refused(site: Path) -> None:
    dest = site.parent / "mirror"
    assert cli("sync", str(site), str(dest), "-q")[0] == 0
    (dest / "extra.txt").write_bytes(b"x")
    code, _, err = cli("sync", str(site), str(dest), "--delete")
    assert code == 0 and "deleted 1" in err and "skipped 2 unchanged" in err
    assert _tree(dest) == _tree(site)
    for inner in (site, site / "css", site.parent):
        code, _, err = cli("sync", str(site), str(inner), "-q")
        assert code == 6 and "overlap" in err
    assert _tree(site) == {"index.html": b"<h1>hi</h1>", "css/main.css": b"body{}"}


@pytest.fixture
def named(tmp_path: Path) -> dict[str, str]:
    """A saved store ``home`` (a local directory) and the environment that finds it."""
    env = {"UNISTORE_CONFIG": str(tmp_path / "stores.toml"), "UNISTORE_STORE": "", "STORAGE_BACKEND": ""}
    (tmp_path / "home").mkdir()
    assert cli("store", "add", "home", f"file://{tmp_path / 'home'}", env=env)[0] == 0
    return env


def test_every_verb_takes_name_colon_path(named: dict[str, str], tmp_path: Path) -> None:
    env = named
    (tmp_path / "a.txt").write_bytes(b"alpha")
    assert cli("put", "home:docs/a.txt", str(tmp_path / "a.txt"), "-q", env=env)[0] == 0
    assert (tmp_path / "home" / "docs" / "a.txt").read_bytes() == b"alpha"
    assert cli("ls", "home:", env=env)[:2] == (0, "docs/\n")
    assert cli("ls", "home:docs/", env=env)[:2] == (0, "docs/a.txt\n")
    assert cli("cat", "home:docs/a.txt", env=env)[:2] == (0, "alpha")
    code, out, _ = cli("stat", "home:docs/a.txt", env=env)
    assert code == 0 and '"size": 5' in out
    code, out, _ = cli("url", "home:docs/a.txt", env=env)
    assert code == 0 and "docs/a.txt" in out
    code, out, _ = cli("du", "home:docs/", "--summarize", env=env)
    assert code == 0 and out.split()[:1] == ["1"] and "docs/ total (5 bytes)" in out
    assert cli("get", "home:docs/a.txt", str(tmp_path / "got.txt"), "-q", env=env)[0] == 0
    assert (tmp_path / "got.txt").read_bytes() == b"alpha"
    assert cli("cp", "home:docs/a.txt", "home:docs/b.txt", "-q", env=env)[0] == 0
    assert cli("mv", "home:docs/b.txt", "home:c.txt", "-q", env=env)[0] == 0
    assert cli("ls", "home:", "-r", env=env)[1].split() == ["c.txt", "docs/a.txt"]
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "i.html").write_bytes(b"<p>")
    assert cli("sync", str(tmp_path / "site"), "home:www", "-q", env=env)[0] == 0
    assert cli("rm", "home:c.txt", env=env)[:2] == (0, "deleted c.txt\n")
    assert cli("rm", "-r", "home:www/", "--yes", env=env)[:2] == (0, "deleted 1 under www/\n")
    assert cli("ls", "home:", "-r", env=env)[1].split() == ["docs/a.txt"]


def test_unknown_name_is_a_clear_configuration_error(named: dict[str, str], tmp_path: Path) -> None:
    code, _, err = cli("ls", "nope:photos/", env=named)
    assert code == 8 and "no store named 'nope'" in err and "unistore store add nope URL" in err
    (tmp_path / "a.txt").write_bytes(b"alpha")
    code, _, err = cli("cp", str(tmp_path / "a.txt"), "nope:a.txt", "-q", env=named)
    assert code == 8 and "ambiguous" in err and "./nope:a.txt" in err
    assert not Path("nope:a.txt").exists()


def test_with_a_default_store_an_unsaved_name_is_a_key(named: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    env = {**named, "UNISTORE_STORE": f"file://{tmp_path / 'other'}"}
    (tmp_path / "a.txt").write_bytes(b"alpha")
    assert cli("put", "notes:2026.txt", str(tmp_path / "a.txt"), "-q", env=env)[0] == 0
    assert cli("ls", env=env)[1].split() == ["notes:2026.txt"]
    assert cli("ls", "home:", env=env)[:2] == (0, "")  # a saved name still names its store
    assert cli("cp", str(tmp_path / "a.txt"), str(tmp_path / "nope:a.txt"), "-q", env=env)[0] == 0
    assert (tmp_path / "nope:a.txt").read_bytes() == b"alpha"  # a path with a folder is local


def test_a_saved_service_store_with_its_token(named: dict[str, str], tmp_path: Path) -> None:
    secret = "cli-named-stores-0123456789abcdef"
    backend = MemoryBackend()
    with running_server(create_app(backend, settings=ServiceSettings(secret=secret.encode()))) as url:
        admin = cli("token", "--actions", "admin", env={"UNISTORE_SECRET": secret})[1].strip()
        assert cli("store", "add", "svc", url, "--token", admin, env=named)[0] == 0
        (tmp_path / "a.txt").write_bytes(b"alpha")
        assert cli("put", "svc:in/a.txt", str(tmp_path / "a.txt"), "-q", env=named)[0] == 0
        assert cli("ls", "svc:in/", env=named)[:2] == (0, "in/a.txt\n")
        assert cli("cat", "svc:in/a.txt", env=named)[:2] == (0, "alpha")
        assert cli("cp", "svc:in/a.txt", "home:from-svc.txt", "-q", env=named)[0] == 0
        assert (tmp_path / "home" / "from-svc.txt").read_bytes() == b"alpha"


def test_object_urls_as_key_arguments(seaweed: S3Server, tmp_path: Path) -> None:
    prefix = f"cli-named-{uuid.uuid4().hex[:8]}"
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key, "UNISTORE_STORE": ""}
    query = f"?endpoint={seaweed.endpoint}"
    (tmp_path / "a.txt").write_bytes(b"alpha")
    assert cli("put", f"s3://unistore-tests/{prefix}/d/a.txt{query}", str(tmp_path / "a.txt"), "-q", env=env)[0] == 0
    assert cli("ls", f"s3://unistore-tests/{prefix}/{query}", env=env)[:2] == (0, f"{prefix}/d/\n")
    assert cli("cat", f"s3://unistore-tests/{prefix}/d/a.txt{query}", env=env)[:2] == (0, "alpha")
    assert cli("ls", f"file://{tmp_path}", env=env)[1].split() == ["a.txt"]


def test_urls_missing_their_slashes_and_drive_letters(named: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_bytes(b"alpha")
    code, _, err = cli("cp", str(tmp_path / "a.txt"), "s3:bucket/a.txt", "-q", env=named)
    assert code == 6 and "did you mean s3://bucket/a.txt?" in err
    code, _, err = cli("ls", "gs:bucket/photos/", env=named)
    assert code == 6 and "did you mean gs://bucket/photos/?" in err
    code, _, err = cli("cp", str(tmp_path / "a.txt"), "C:/x.txt", "-q", env=named)  # a drive letter is local
    assert code == 3 and "no such local directory" in err and "'C:'" in err


def test_an_empty_listing_of_an_unsaved_name_says_so(named: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    env = {**named, "UNISTORE_STORE": f"file://{tmp_path / 'other'}"}
    code, out, err = cli("ls", "hmoe:photos/", env=env)
    assert (code, out) == (0, "") and "no store named 'hmoe' is saved" in err
    assert cli("ls", "home:photos/", env=env)[2] == ""  # a saved store's empty folder: nothing to say


def test_cp_of_a_directory_without_r_says_to_use_r(named: dict[str, str], site: Path) -> None:
    for dest in (str(site.parent / "copy"), "home:copy"):
        code, _, err = cli("cp", str(site), dest, "-q", env=named)
        assert code == 6 and "is a directory: copy it with cp -r" in err
    assert not (site.parent / "copy").exists()
