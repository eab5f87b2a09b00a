"""docs/cli.md as a new user runs it, against a local directory, a live unistore service and S3
(SeaweedFS): every documented verb behaves as the page says, on each."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import LocalBackend
from unistore.cli import app
from unistore.service import ServiceSettings, create_app
from unistore.testing import S3Server, running_server

runner = CliRunner()
SECRET = "cli-walkthrough-0123456789abcdef"


@pytest.fixture(params=["local", "service", "s3"])
def env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """The environment of a user with one saved store ``home`` of each kind."""
    env = {"UNISTORE_CONFIG": str(tmp_path / "stores.toml"), "UNISTORE_STORE": "", "STORAGE_BACKEND": ""}
    (tmp_path / "files").mkdir()
    if request.param == "local":
        assert _run(env, "store", "add", "home", f"file://{tmp_path / 'files'}")[0] == 0
        yield env
    elif request.param == "service":
        backend = LocalBackend(base_path=str(tmp_path / "files"))
        with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET.encode()))) as url:
            token = _run({"UNISTORE_SECRET": SECRET}, "token", "--actions", "admin")[1].strip()
            assert _run(env, "store", "add", "home", url, "--token", token)[0] == 0
            yield env
    else:
        seaweed: S3Server = request.getfixturevalue("seaweed")
        env.update(AWS_ACCESS_KEY_ID=seaweed.access_key, AWS_SECRET_ACCESS_KEY=seaweed.secret_key)
        url = f"s3://unistore-tests/walk-{uuid.uuid4().hex[:8]}?endpoint={seaweed.endpoint}"
        assert _run(env, "store", "add", "home", url)[0] == 0
        yield env


def _run(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_one_object(env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("hello.txt").write_text("hello\n")
    code, out, err = _run(env, "put", "docs/hello.txt", "hello.txt", "-s", "home", "-m", "owner=alice",
                          "--cache-control", "max-age=60")  # fmt: skip
    assert code == 0, err
    assert json.loads(out)["size"] == 6
    assert _run(env, "cat", "docs/hello.txt", "-s", "home")[:2] == (0, "hello\n")
    stat = json.loads(_run(env, "stat", "docs/hello.txt", "-s", "home")[1])
    assert (stat["size"], stat["owner"], stat["cache_control"]) == (6, "alice", "max-age=60")
    Path("out").mkdir()
    assert _run(env, "get", "docs/hello.txt", "out/", "-s", "home", "-q")[0] == 0
    assert Path("out/hello.txt").read_text() == "hello\n"
    code, out, _ = _run(env, "url", "docs/hello.txt", "-s", "home", "--expires-in", "600")
    assert code == 0 and out.startswith("http") and "hello.txt" in out
    assert _run(env, "put", "docs/hello.txt", "hello.txt", "-s", "home", "--ignore-existing")[0] == 5
    assert _run(env, "mv", "home:docs/hello.txt", "home:archive/hello.txt", "-q")[0] == 0
    assert _run(env, "ls", "-r", "-s", "home")[1].split() == ["archive/hello.txt"]
    assert _run(env, "rm", "archive/hello.txt", "-s", "home")[:2] == (0, "deleted archive/hello.txt\n")
    assert _run(env, "ls", "-r", "-s", "home")[:2] == (0, "")


def test_listing_and_sizes(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hello\n")
    for key in ("photos/2026/a.jpg", "photos/2026/b.jpg", "photos/index.html"):
        assert _run(env, "put", key, str(tmp_path / "hello.txt"), "-s", "home", "-q")[0] == 0
    assert _run(env, "ls", "photos/", "-s", "home")[1].split() == ["photos/2026/", "photos/index.html"]
    lines = _run(env, "ls", "photos/", "-s", "home", "-r", "-l")[1].splitlines()
    assert [line.split()[:2] + line.split()[-1:] for line in lines] == [
        ["6", "B", "photos/2026/a.jpg"], ["6", "B", "photos/2026/b.jpg"], ["6", "B", "photos/index.html"]
    ]  # fmt: skip
    rows = [json.loads(line) for line in _run(env, "ls", "photos/", "-s", "home", "--jsonl")[1].splitlines()]
    assert rows[0] == {"prefix": "photos/2026/"} and rows[1]["key"] == "photos/index.html"
    out = _run(env, "du", "photos/", "-s", "home")[1].splitlines()
    assert [line.split()[0] for line in out] == ["2", "1", "3"] and "photos/ total (18 bytes)" in out[-1]
    assert _run(env, "ls", "home:photos/2026/")[1].split() == ["photos/2026/a.jpg", "photos/2026/b.jpg"]
    assert _run(env, "du", "home:photos/", "--summarize")[1].split()[:1] == ["3"]


def test_trees(env: dict[str, str], tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "css").mkdir(parents=True)
    (site / "css" / "main.css").write_text("body{}\n")
    (site / "index.html").write_text("<h1>hi</h1>\n")
    assert _run(env, "cp", "-r", str(site), "home:www")[0] == 0
    assert "skipped 2 unchanged" in _run(env, "sync", str(site), "home:www")[2]
    (site / "index.html").unlink()
    (site / "css" / "print.css").write_text("p{}\n")
    code, out, err = _run(env, "sync", str(site), "home:www", "--delete", "--dry-run")
    assert code == 0 and "would delete www/index.html" in out
    assert "would copy 1" in err and "would delete 1" in err and "copied" not in err
    assert _run(env, "ls", "-r", "home:www/")[1].split() == ["www/css/main.css", "www/index.html"]
    code, _, err = _run(env, "sync", str(site), "home:www", "--delete", "--exclude", "*.tmp")
    assert code == 0 and "copied 1" in err and "deleted 1" in err
    assert _run(env, "cp", "-r", "home:www", str(tmp_path / "mirror"), "-q")[0] == 0
    assert sorted(p.relative_to(tmp_path / "mirror").as_posix() for p in (tmp_path / "mirror").rglob("*.css")) == [
        "css/main.css", "css/print.css"
    ]  # fmt: skip
    code, out, _ = _run(env, "rm", "-r", "www/", "-s", "home", "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "would delete 2 under www/"
    assert _run(env, "rm", "-r", "www/", "-s", "home", "--yes")[:2] == (0, "deleted 2 under www/\n")
    assert _run(env, "ls", "-r", "-s", "home")[:2] == (0, "")


def test_the_page_states_the_transfer_defaults_the_commands_use() -> None:
    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    stated = re.search(r"`-j N` \(`--transfers`\) runs N files at once \(default (\d+); (\d+) deletions", page)
    assert stated is not None
    for verb, default in (("cp", stated[1]), ("sync", stated[1]), ("mv", stated[1]), ("rm", stated[2])):
        help_text = runner.invoke(app, [verb, "--help"], env={"COLUMNS": "200"}).stdout
        line = next(line for line in help_text.splitlines() if "--transfers" in line)
        assert f"[default: {default}]" in line, (verb, line)


def test_a_local_stores_links_are_served_by_unistore_serve(tmp_path: Path) -> None:
    """The page says a local directory's links work once ``unistore serve`` serves that directory."""
    import httpx

    files = tmp_path / "files"
    files.mkdir()
    (tmp_path / "a.txt").write_text("hello\n")
    backend = LocalBackend(base_path=str(files))
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET.encode()))) as url:
        store = f"file://{files}?base_url={url}/files"
        assert _run({}, "put", "a.txt", str(tmp_path / "a.txt"), "-s", store, "-q")[0] == 0
        link = _run({}, "url", "a.txt", "-s", store)[1].strip()
        assert link.startswith(f"{url}/files/a.txt?")
        assert httpx.get(link).text == "hello\n"


def test_rm_r_deletes_the_folder_not_every_key_sharing_its_prefix(env: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "a").write_text("a")
    for key in ("www/a", "www/sub/b", "www-old/c", "www.html"):
        assert _run(env, "put", key, str(tmp_path / "a"), "-s", "home", "-q")[0] == 0
    code, out, _ = _run(env, "rm", "-r", "home:www", "--dry-run")
    assert code == 0 and out.splitlines()[-1] == "would delete 2 under www/"
    assert _run(env, "rm", "-r", "www", "-s", "home", "--yes")[:2] == (0, "deleted 2 under www/\n")
    assert _run(env, "ls", "-r", "home:")[1].split() == ["www-old/c", "www.html"]
