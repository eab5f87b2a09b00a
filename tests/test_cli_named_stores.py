"""Store paths as users write them: local directories on both sides, ``NAME:path`` for every verb."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore.cli import app

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
