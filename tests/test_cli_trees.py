"""Tree verbs of the CLI (cp -r, sync, mv, rm -r, du, ls folders, cat, named stores) on real stores and processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from unistore import MemoryBackend
from unistore.cli import app
from unistore.service import ServiceSettings, create_app
from unistore.testing import S3Server, running_server

SECRET = "cli-trees-0123456789abcdef"
runner = CliRunner()


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def make_tree(root: Path, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".unistore")
    }


FILES = {"a.txt": b"alpha", "b/c.jpg": b"\xff\xd8jpeg", "b/d/e.jpg": b"x" * 3000, "z": b"", "b-x.txt": b"bx"}


@pytest.fixture
def store(tmp_path: Path) -> str:
    (tmp_path / "store").mkdir()
    return f"file://{tmp_path / 'store'}"


def test_cp_recursive_up_and_down_skips_unchanged_on_rerun(store: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    code, _, err = cli("cp", "-r", str(tmp_path / "src"), f"{store}#up")
    assert code == 0 and "copied 5" in err
    assert sorted(cli("ls", "-r", "up/", "-s", store)[1].split()) == sorted(f"up/{k}" for k in FILES)
    code, _, err = cli("cp", "-r", str(tmp_path / "src"), f"{store}#up")
    assert code == 0 and "copied 0" in err and "skipped 5 unchanged" in err
    code, _, err = cli("cp", "-r", f"{store}#up", str(tmp_path / "down"))
    assert code == 0 and read_tree(tmp_path / "down") == FILES
    code, _, err = cli("cp", "-r", f"{store}#up/", str(tmp_path / "down"))
    assert code == 0 and "skipped 5 unchanged" in err  # downloaded files carry the object's time


def test_sync_delete_dry_run_filters_and_checksum(store: str, tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, FILES)
    assert cli("sync", str(src), f"{store}#s")[0] == 0
    (src / "a.txt").write_bytes(b"ALPHA!")  # changed (size)
    (src / "z").unlink()  # gone
    (src / "new.txt").write_bytes(b"new")
    code, out, _ = cli("sync", str(src), f"{store}#s", "--delete", "--dry-run")
    assert code == 0
    assert sorted(line.split()[0:2] == ["would", "copy"] for line in out.splitlines()).count(True) == 2
    assert any(line.startswith("would delete") and line.endswith("s/z") for line in out.splitlines())
    assert sorted(cli("ls", "-r", "s/", "-s", store)[1].split()) == sorted(f"s/{k}" for k in FILES)  # unchanged
    code, _, err = cli("sync", str(src), f"{store}#s", "--delete", "--exclude", "*.jpg")
    assert code == 0 and "copied 2" in err and "deleted 1" in err
    assert cli("cat", "s/a.txt", "-s", store)[1] == "ALPHA!"
    down = tmp_path / "down"
    assert cli("sync", f"{store}#s", str(down), "--include", "b/*")[0] == 0
    assert read_tree(down) == {"b/c.jpg": FILES["b/c.jpg"], "b/d/e.jpg": FILES["b/d/e.jpg"]}
    # same size, newer source: by time it is copied; by checksum it is unchanged
    os.utime(src / "b-x.txt", (time.time() + 100, time.time() + 100))
    code, _, err = cli("sync", str(src), f"{store}#s", "--checksum", "--include", "b-x.txt")
    assert code == 0 and "skipped 1 unchanged" in err
    (src / "b-x.txt").write_bytes(b"BX")  # same size, other bytes
    code, _, err = cli("sync", str(src), f"{store}#s", "--checksum", "--include", "b-x.txt")
    assert code == 0 and "copied 1" in err
    assert json.loads(cli("stat", "s/b-x.txt", "-s", store)[1])["sha256"]  # recorded for the next compare


def test_ignore_existing_never_overwrites(store: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {"k": b"new"})
    (tmp_path / "old").write_bytes(b"old")
    assert cli("put", "t/k", str(tmp_path / "old"), "-s", store)[0] == 0
    code, _, err = cli("cp", "-r", "--ignore-existing", str(tmp_path / "src"), f"{store}#t")
    assert code == 0 and "skipped 1 existing" in err
    assert cli("cat", "t/k", "-s", store)[1] == "old"
    assert cli("put", "t/k", str(tmp_path / "src" / "k"), "-s", store, "-n")[0] == 5  # create-only: exists


def test_ls_folders_json_du_rm_recursive(store: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    assert cli("cp", "-r", str(tmp_path / "src"), f"{store}#t", "-q")[0] == 0
    assert cli("ls", "t/", "-s", store)[1].split() == ["t/a.txt", "t/b-x.txt", "t/b/", "t/z"]
    rows = [json.loads(line) for line in cli("ls", "t/", "-s", store, "--jsonl")[1].splitlines()]
    assert rows[2] == {"prefix": "t/b/"} and rows[0]["size"] == 5
    listing = json.loads(cli("ls", "t/b/", "-s", store, "--json")[1])
    assert [e.get("prefix") or e["key"] for e in listing] == ["t/b/c.jpg", "t/b/d/"]
    assert (listing[0]["size"], listing[0]["content_type"]) == (6, "image/jpeg")
    du = json.loads(cli("du", "t/", "-s", store, "--json")[1])
    assert (du["objects"], du["bytes"]) == (5, sum(map(len, FILES.values())))
    assert {e["prefix"]: e["objects"] for e in du["entries"]}["t/b/"] == 2
    code, out, _ = cli("du", "t/", "-s", store, "--summarize")
    assert code == 0 and len(out.splitlines()) == 1 and f"({du['bytes']} bytes)" in out
    code, out, _ = cli("rm", "-r", "t/b/", "-s", store, "--dry-run")
    assert code == 0 and "would delete 2 under t/b/" in out
    assert cli("rm", "-r", "t/b/", "-s", store)[1].strip() == "deleted 2 under t/b/"
    assert cli("ls", "-r", "t/", "-s", store)[1].split() == ["t/a.txt", "t/b-x.txt", "t/z"]


def test_rm_recursive_asks_before_deleting_over_1000(store: str, tmp_path: Path) -> None:
    root = tmp_path / "store" / "many"
    root.mkdir(parents=True)
    for i in range(1001):
        (root / f"{i:04d}").write_bytes(b"")
    code, out, err = cli("rm", "-r", "many/", "-s", store)  # no terminal to ask on: refused
    assert code == 0 and "deleted 0" in out and "--yes" in err
    assert len(list(root.iterdir())) == 1001
    assert cli("rm", "-r", "many/", "-s", store, "--yes")[1].strip() == "deleted 1001 under many/"


def test_mv_object_and_tree(store: str, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", {"one": b"1", "sub/two": b"22"})
    assert cli("cp", "-r", str(tmp_path / "src"), f"{store}#m", "-q")[0] == 0
    assert cli("mv", f"{store}#m/one", f"{store}#n/one", "-q")[0] == 0
    assert cli("ls", "-r", "", "-s", store)[1].split() == ["m/sub/two", "n/one"]
    assert cli("mv", "-r", f"{store}#m", str(tmp_path / "out"), "-q")[0] == 0
    assert read_tree(tmp_path / "out") == {"sub/two": b"22"}
    assert cli("ls", "-r", "m/", "-s", store)[1] == ""


def test_named_stores_reserved_metadata_and_version(store: str, tmp_path: Path) -> None:
    env = {"UNISTORE_CONFIG": str(tmp_path / "conf" / "stores.toml")}
    assert cli("store", "add", "home", store, env=env)[0] == 0
    assert oct((tmp_path / "conf" / "stores.toml").stat().st_mode & 0o777) == "0o600"
    assert cli("store", "list", env=env)[1].split() == ["home", store]
    (tmp_path / "f").write_bytes(b"named")
    assert cli("cp", str(tmp_path / "f"), "home:docs/f", "-q", env=env)[0] == 0
    assert cli("cat", "docs/f", "-s", "home", env=env)[1] == "named"
    assert cli("ls", "docs/", "-s", "nope", env=env)[0] == 8
    assert cli("store", "add", "s3", "file:///x", env=env)[0] == 6  # a scheme is not a name
    code, _, err = cli("put", "k", str(tmp_path / "f"), "-s", store, "-m", "size=1")
    assert code == 6 and "reserved" in err
    assert cli("store", "rm", "home", env=env)[0] == 0 and cli("store", "list", env=env)[1] == ""
    code, out, _ = cli("--version")
    assert code == 0 and out.startswith("unistore ")


def test_read_only_verbs_never_create_a_typo_directory(tmp_path: Path) -> None:
    typo = tmp_path / "typo-dir"
    code, _, err = cli("ls", "-s", f"file://{typo}")
    assert code == 3 and "no such directory" in err and not typo.exists()
    assert cli("get", "k", "-s", f"file://{typo}")[0] == 3 and not typo.exists()
    env = {"STORAGE_BACKEND": "local", "STORAGE_BASE_PATH": str(typo)}
    assert cli("stat", "k", env=env)[0] == 3 and not typo.exists()


def test_tree_transfers_to_s3_and_a_service(seaweed: S3Server, tmp_path: Path) -> None:
    files = {k: v for k, v in FILES.items() if k != "b-x.txt"}  # SeaweedFS lists 'b/…' before 'b-x.txt'
    make_tree(tmp_path / "src", files)
    prefix = f"cli-tree-{uuid.uuid4().hex[:8]}"
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    s3 = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    code, _, err = cli("sync", str(tmp_path / "src"), s3, "-q", env=env)
    assert code == 0
    code, _, err = cli("sync", str(tmp_path / "src"), s3, env=env)
    assert code == 0 and "skipped 4 unchanged" in err  # S3's whole-second times still compare equal
    settings = ServiceSettings(secret=SECRET.encode())
    with running_server(create_app(MemoryBackend(), settings=settings)) as url:
        admin = cli("token", "--actions", "admin", env={"UNISTORE_SECRET": SECRET})[1].strip()
        code, _, err = cli("cp", "-r", s3, f"{url}/v1/objects/mirror/", "--dst-token", admin, env=env)
        assert code == 0 and "copied 4" in err
        code, _, _ = cli("cp", "-r", f"{url}/v1/objects/mirror/", str(tmp_path / "back"), "--token", admin, "-q")
        assert code == 0 and read_tree(tmp_path / "back") == files


def test_killed_tree_copy_resumes_and_says_so(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {f"d{i % 7}/f{i:04d}": os.urandom(2048) for i in range(400)})
    store = f"file://{tmp_path / 'store'}?fsync=true"
    (tmp_path / "store").mkdir()
    cmd = [sys.executable, "-c", "from unistore.cli import main; main()", "cp", "-r", str(src), f"{store}#t", "-j", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and len(list((tmp_path / "store").rglob("f*"))) < 40:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    done_before = len(list((tmp_path / "store").rglob("f*")))
    assert 0 < done_before < 400
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    skipped = int(rerun.stderr.split("skipped ")[1].split()[0])
    assert done_before - 2 <= skipped <= done_before  # the files in flight at the kill are sent again
    assert read_tree(tmp_path / "store" / "t") == read_tree(src)


def test_a_listing_out_of_key_order_stops_a_sync_before_it_deletes(seaweed: S3Server, tmp_path: Path) -> None:
    make_tree(tmp_path / "src", FILES)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    prefix = f"cli-order-{uuid.uuid4().hex[:8]}"
    s3 = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    assert cli("sync", str(tmp_path / "src"), s3, "-q", env=env)[0] == 0
    (tmp_path / "src" / "a.txt").unlink()
    code, _, err = cli("sync", str(tmp_path / "src"), s3, "--delete", "-q", env=env)  # SeaweedFS: 'b/…' < 'b-x.txt'
    assert code == 9 and "not in key order" in err, err
    assert sorted(
        o["Key"] for o in seaweed.client().list_objects_v2(Bucket="unistore-tests", Prefix=prefix + "/")["Contents"]
    ) == sorted(f"{prefix}/{k}" for k in FILES)  # nothing deleted


def _pty_run(
    cmd: list[str], *, interrupt_when: Callable[[], bool] | None = None, timeout: float = 60
) -> tuple[int, str]:
    """Run ``cmd`` on a pseudo-terminal (so progress is drawn); optionally send SIGINT once
    ``interrupt_when()`` holds. The exit code and everything it drew."""
    import pty
    import select

    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "120", "TERM": "xterm"}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    seen, interrupted, deadline = b"", False, time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
            if interrupt_when and not interrupted and interrupt_when():
                proc.send_signal(signal.SIGINT)
                interrupted = True
            if proc.poll() is not None and not ready:
                break
        return proc.wait(timeout=10), seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


def test_progress_display_on_a_terminal_and_ctrl_c_then_rerun(tmp_path: Path) -> None:
    src = tmp_path / "src"
    make_tree(src, {f"d{i % 5}/f{i:04d}": os.urandom(4096) for i in range(300)} | {"big.bin": os.urandom(40 << 20)})
    (tmp_path / "store").mkdir()
    store = f"file://{tmp_path / 'store'}?fsync=true"
    cmd = [sys.executable, "-c", "from unistore.cli import main; main()", "cp", "-r", str(src), f"{store}#t", "-j", "2"]
    code, screen = _pty_run(cmd, interrupt_when=lambda: len(list((tmp_path / "store").rglob("f*"))) >= 60)
    assert code == 130, screen[-500:]  # Ctrl-C: interrupted, no traceback
    assert "Traceback" not in screen and re.search(r"\d+/\d+ files", screen)  # the aggregate display
    assert "put t/big.bin" in screen  # a large file gets a bar of its own
    code, screen = _pty_run(cmd)
    assert code == 0, screen[-800:]
    assert re.search(r"copied \d+ .*, skipped (\d+) unchanged", screen)  # the rerun resumed
    assert read_tree(tmp_path / "store" / "t") == read_tree(src)


@pytest.fixture(params=["local", "s3", "service"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A store URL and the environment the CLI needs for it (memory:// lives for one command only)."""
    if request.param == "local":
        (tmp_path / "store").mkdir()
        yield f"file://{tmp_path / 'store'}", {}
    elif request.param == "s3":
        seaweed: S3Server = request.getfixturevalue("seaweed")
        env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
        yield f"s3://unistore-tests/verbs-{uuid.uuid4().hex[:8]}?endpoint={seaweed.endpoint}", env
    else:
        settings = ServiceSettings(secret=SECRET.encode())
        with running_server(create_app(MemoryBackend(), settings=settings)) as url:
            admin = cli("token", "--actions", "admin", env={"UNISTORE_SECRET": SECRET})[1].strip()
            yield url, {"UNISTORE_TOKEN": admin}


def test_every_verb_on_every_kind_of_store(any_store: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    store, env = any_store
    (tmp_path / "f.txt").write_bytes(b"hello")
    assert cli("put", "v/f.txt", str(tmp_path / "f.txt"), "-s", store, "-m", "who=me", "-q", env=env)[0] == 0
    assert cli("cat", "v/f.txt", "-s", store, env=env)[1] == "hello"
    meta = json.loads(cli("stat", "v/f.txt", "-s", store, env=env)[1])
    assert (meta["who"], meta["size"], meta["content_type"]) == ("me", 5, "text/plain")
    assert cli("get", "v/f.txt", str(tmp_path) + "/", "-s", store, "-q", env=env)[0] == 0
    assert cli("url", "v/f.txt", "-s", store, env=env)[1].startswith("http")
    make_tree(tmp_path / "tree", {"a": b"1", "b/c": b"22"})
    assert cli("cp", "-r", str(tmp_path / "tree"), _obj(store, "v/t/"), "-q", env=env)[0] == 0
    assert cli("ls", "v/", "-s", store, env=env)[1].split() == ["v/f.txt", "v/t/"]
    assert cli("ls", "v/", "-r", "-s", store, env=env)[1].split() == ["v/f.txt", "v/t/a", "v/t/b/c"]
    assert json.loads(cli("du", "v/", "-s", store, "--json", env=env)[1])["bytes"] == 8
    assert cli("mv", _obj(store, "v/f.txt"), _obj(store, "v/g.txt"), "-q", env=env)[0] == 0
    (tmp_path / "tree" / "a").unlink()
    code, _, err = cli("sync", str(tmp_path / "tree"), _obj(store, "v/t/"), "--delete", env=env)
    assert code == 0 and "deleted 1" in err and "skipped 1 unchanged" in err
    assert cli("sync", _obj(store, "v/t/"), str(tmp_path / "back"), "-q", env=env)[0] == 0
    assert read_tree(tmp_path / "back") == {"b/c": b"22"}
    assert cli("rm", "-r", "v/", "-s", store, "-y", env=env)[1].strip() == "deleted 2 under v/"
    assert cli("ls", "-r", "v/", "-s", store, env=env)[1] == ""


def _obj(store: str, key: str) -> str:
    return f"{store}#{key}"


def test_tree_download_writes_small_files_in_one_go_and_resumes_large_ones(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small file costs no lock, record or fsync (10,000 x 4 KiB ran 5x slower than rclone);
    a file from ``RESUME_AT`` up still resumes from its ``.part``."""
    from unistore import LocalBackend
    from unistore.cli import _tree

    files = {"big.bin": os.urandom(6000), "s/a.bin": os.urandom(3000), "s/b.bin": b"b"}
    make_tree(tmp_path / "src", files)
    assert cli("cp", "-r", str(tmp_path / "src"), f"{store}#t", "-q")[0] == 0
    etag = asyncio.run(LocalBackend(base_path=str(tmp_path / "store")).head("t/big.bin")).etag
    down = tmp_path / "down"
    down.mkdir()
    (down / "big.bin.part").write_bytes(files["big.bin"][:1000])  # what an interrupted run leaves
    (down / "big.bin.part.json").write_text(json.dumps({"key": "t/big.bin", "etag": etag, "size": 6000}))
    monkeypatch.setattr(_tree, "RESUME_AT", 4096, raising=False)
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    code, _, err = cli("cp", "-r", f"{store}#t", str(down))
    assert code == 0 and "resuming t/big.bin at" in err
    assert read_tree(down) == files and not list(down.rglob("*.part*"))
    assert len(synced) == 1  # the resumed large file only


def test_tree_upload_bounds_the_s3_parts_in_flight_across_files(
    seaweed: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each large file used to run its own 8 parts, so 4 x 256 MiB at -j 4 peaked over 400 MiB.
    The real part upload is wrapped (not replaced) to count the parts in flight."""
    from unistore.backends.s3 import _multipart as _s3multipart
    from unistore.cli import _tree

    files = {f"big{i}.bin": os.urandom(8 * 1024 * 1024 + 1) for i in range(4)}  # 2 parts each
    make_tree(tmp_path / "src", files)
    monkeypatch.setattr(_tree, "UPLOAD_PARTS", 3, raising=False)
    now = peak = 0
    real = _s3multipart._put_part

    async def counted(*args: Any, **kwargs: Any) -> Any:
        nonlocal now, peak
        now += 1
        peak = max(peak, now)
        try:
            return await real(*args, **kwargs)
        finally:
            now -= 1

    monkeypatch.setattr(_s3multipart, "_put_part", counted)
    env = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    prefix = f"cli-parts-{uuid.uuid4().hex[:8]}"
    s3 = f"s3://unistore-tests/{prefix}?endpoint={seaweed.endpoint}"
    code, _, err = cli("cp", "-r", str(tmp_path / "src"), s3, "-j", "4", "-q", env=env)
    assert code == 0, err
    assert 1 <= peak <= 3
    assert cli("cp", "-r", s3, str(tmp_path / "back"), "-q", env=env)[0] == 0
    assert read_tree(tmp_path / "back") == files
