"""How LocalBackend records versions: sidecars only where needed, the mtime mark, the commit order."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from unistore import LocalBackend
from unistore.backends._localfs import meta_path

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture
def store(tmp_path: Path) -> LocalBackend:
    return LocalBackend(base_path=str(tmp_path / "s"), fsync=False, url_secret=SECRET)


def sidecar(store: LocalBackend, key: str) -> Path:
    return Path(meta_path(str(store.root / key)))


async def test_plain_objects_have_no_sidecar_and_metadata_objects_do(store: LocalBackend) -> None:
    assert store._exact  # this machine's file system keeps ns mtimes (ext4/tmpfs)
    await store.put_object("a/plain.bin", b"x")
    assert not sidecar(store, "a/plain.bin").exists()
    assert (store.root / "a/plain.bin").stat().st_mtime_ns % 1000 != 777
    await store.put_object("a/meta.bin", b"x", metadata={"k": "v"})
    assert sidecar(store, "a/meta.bin").exists()
    assert (store.root / "a/meta.bin").stat().st_mtime_ns % 1000 == 777
    await store.put_object("a/typed", b"x", content_type="image/png")  # not guessable from the name
    assert sidecar(store, "a/typed").exists()
    await store.put_object("a/guessed.png", b"x", content_type="image/png")  # guessable: no sidecar
    assert not sidecar(store, "a/guessed.png").exists()
    assert (await store.head("a/guessed.png")).content_type == "image/png"


async def test_overwrite_without_metadata_ignores_the_old_sidecar(store: LocalBackend) -> None:
    await store.put_object("k", b"1", metadata={"k": "v"}, cache_control="no-store")
    await store.put_object("k", b"2")
    info = await store.head("k")
    assert (info.metadata, info.cache_control, await store.get("k")) == ({}, None, b"2")
    await store.delete("k")
    assert not sidecar(store, "k").exists()  # deleting removes whatever sidecar is left


async def test_etags_are_distinct_for_rapid_same_size_rewrites(store: LocalBackend) -> None:
    etags = {(await store.put_object("r", b"same size")).etag for _ in range(500)}
    assert len(etags) == 500
    assert (await store.head("r")).etag in etags


async def test_crash_between_sidecar_and_data_renames_keeps_the_old_version(store: LocalBackend) -> None:
    # The sidecar of a new version is renamed first; a crash before the data rename leaves the
    # old data with a sidecar that names another inode. The old data must still be served.
    await store.put_object("c", b"old data", metadata={"v": "1"})
    record = json.loads(sidecar(store, "c").read_bytes())
    record.update(ino=record["ino"] + 12345, etag="from-the-crashed-write", meta={"v": "2"})
    sidecar(store, "c").write_text(json.dumps(record))
    assert await store.get("c") == b"old data"
    info = await store.head("c")
    assert info.etag != "from-the-crashed-write" and info.metadata == {}
    assert [k async for k in store.iter_keys("")] == ["c"]
    # the next write heals it
    await store.put_object("c", b"new", metadata={"v": "3"})
    assert (await store.head("c")).metadata == {"v": "3"}


async def test_a_marked_file_without_sidecar_is_served(store: LocalBackend) -> None:
    # A hand-placed file whose mtime happens to carry the mark: slow path, never a failure.
    path = store.root / "hand.txt"
    path.write_bytes(b"by hand")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - st.st_mtime_ns % 1000 + 777))
    info = await store.head("hand.txt")
    assert (info.size, info.content_type, info.metadata) == (7, "text/plain", {})
    assert await store.get("hand.txt") == b"by hand"


async def test_stale_sidecar_of_an_unmarked_file_is_ignored(store: LocalBackend) -> None:
    await store.put_object("s", b"v1", metadata={"old": "yes"})
    old = sidecar(store, "s").read_bytes()
    await store.put_object("s", b"v2")
    sidecar(store, "s").write_bytes(old)  # e.g. left behind by a crash after the data rename
    assert (await store.head("s")).metadata == {}


async def test_file_bodies_are_copied_from_their_current_position(store: LocalBackend, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    src.write_bytes(data)
    assert (await store.put_object("from-path", src)).size == len(data)
    assert await store.get("from-path") == data
    with open(src, "rb") as f:  # noqa: ASYNC230 - a sync file object is the body under test
        f.read(1000)  # a caller that already consumed a header
        assert (await store.put_object("from-file", f)).size == len(data) - 1000
        assert f.read() == b""  # left at the end, as a read would
    assert await store.get("from-file") == data[1000:]
    assert (await store.put_object("from-bytesio", io.BytesIO(data))).size == len(data)
    assert await store.get("from-bytesio") == data


async def test_file_body_over_max_object_size_stores_nothing(tmp_path: Path) -> None:
    from unistore import QuotaExceededError

    store = LocalBackend(base_path=str(tmp_path / "q"), fsync=False, url_secret=SECRET, max_object_size=1 << 20)
    src = tmp_path / "big.bin"
    src.write_bytes(b"x" * (20 << 20))
    await store.put_object("k", b"old")
    with pytest.raises(QuotaExceededError):
        await store.put_object("k", src)
    assert await store.get("k") == b"old"
    assert [p.name for p in (tmp_path / "q").iterdir() if p.name.startswith(".unistore.tmp")] == []
