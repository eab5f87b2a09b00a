"""``unistore migrate SRC DST [PREFIX]`` over file stores."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from unistore import LocalBackend
from unistore.cli import app

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def _fill(root: Path, items: dict[str, bytes], **kw: object) -> None:
    async def go() -> None:
        store = LocalBackend(base_path=str(root), fsync=False)
        for k, v in items.items():
            await store.put_object(k, v, **kw)  # type: ignore[arg-type]

    asyncio.run(go())


def _read(root: Path, key: str) -> tuple[bytes, dict[str, str], str | None]:
    async def go() -> tuple[bytes, dict[str, str], str | None]:
        store = LocalBackend(base_path=str(root), fsync=False)
        info = await store.head(key)
        return await store.get(key), dict(info.metadata), info.cache_control

    return asyncio.run(go())


@pytest.fixture
def stores(tmp_path: Path) -> tuple[Path, Path]:
    src, dst = tmp_path / "src", tmp_path / "dst"
    _fill(src, {f"p/{i}.txt": f"object {i}".encode() for i in range(6)}, metadata={"m": "1"}, cache_control="no-store")
    _fill(src, {"q/outside": b"x"})
    dst.mkdir()
    return src, dst


def test_migrate_copies_then_skips_and_reports_json(stores: tuple[Path, Path], tmp_path: Path) -> None:
    src, dst = stores
    metrics = tmp_path / "metrics.prom"
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--metrics-file", str(metrics))
    assert code == 0, out
    assert out.startswith("copied 6, skipped 0, missing 0, differing 0, failed 0")
    assert _read(dst, "p/3.txt") == (b"object 3", {"m": "1"}, "no-store")
    assert not (dst / "q").exists()
    assert 'unistore_migrate_objects_total{outcome="copied"} 6.0' in metrics.read_text()
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--json")
    doc = json.loads(out)
    assert (code, doc["copied"], doc["skipped"], doc["ok"]) == (0, 0, 6, True)


def test_dry_run_and_verify_only(stores: tuple[Path, Path]) -> None:
    src, dst = stores
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--dry-run")
    assert (code, out.splitlines()[0].split(",")[0]) == (0, "would copy 6")
    assert [p.name for p in dst.iterdir() if p.name != ".unistore"] == []
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--verify-only", "--json")
    assert (code, len(json.loads(out)["missing"])) == (9, 6)
    cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q")
    _fill(dst, {"p/2.txt": b"planted"}, metadata={"m": "1"}, cache_control="no-store")
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--verify-only")
    assert code == 9
    assert "differing: p/2.txt: content differs (SHA-256)" in out
    assert _read(dst, "p/2.txt")[0] == b"planted"  # never overwritten


def test_upgrade_function_from_a_module(
    stores: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src, dst = stores
    (tmp_path / "my_upgrades.py").write_text("def v1_to_v2(data, info, version):\n    return data.upper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, _ = cli(
        "migrate",
        f"file://{src}",
        f"file://{dst}",
        "p/",
        "-q",
        "--schema-version",
        "2",
        "--upgrade",
        "my_upgrades:v1_to_v2",
    )
    assert code == 0, out
    assert _read(dst, "p/0.txt")[:2] == (b"OBJECT 0", {"m": "1", "schema_version": "2"})
    code, _, err = cli("migrate", f"file://{src}", f"file://{dst}", "--schema-version", "2", "--upgrade", "nocolon")
    assert code == 2 and "MODULE:FUNCTION" in err


def test_worker_mode_shares_the_job_through_leases(stores: tuple[Path, Path]) -> None:
    src, dst = stores
    code, out, _ = cli(
        "migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--worker", "--range-size", "2", "--json"
    )
    doc = json.loads(out)
    # a worker claims ranges in a random order, so that workers started together spread out
    assert (code, doc["copied"], sorted(doc["ranges"]), doc["ok"]) == (0, 6, [0, 1, 2, 3], True)
    assert _read(dst, "p/5.txt")[0] == b"object 5"
    code, out, _ = cli("migrate", f"file://{src}", f"file://{dst}", "p/", "-q", "--worker", "--json")
    assert (code, json.loads(out)["copied"], json.loads(out)["ranges"]) == (0, 0, [])  # the job is done
    code, _, err = cli("migrate", f"file://{src}", f"file://{dst}", "--worker", "--dry-run")
    assert code == 2 and "--worker" in err


def test_a_file_source_is_never_written(tmp_path: Path) -> None:
    """A plain folder as the source: the migration reads it and leaves no file (no URL secret,
    no lock directory) behind in it."""
    src, dst = tmp_path / "plain", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_bytes(b"a")
    (src / "sub" / "b.bin").write_bytes(b"b" * 1000)
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    code, out, err = cli("migrate", f"file://{src}", f"file://{dst}", "--json")
    assert code == 0, err
    assert json.loads(out)["copied"] == 2
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before
    assert _read(dst, "sub/b.bin")[0] == b"b" * 1000
