"""How LocalBackend records versions: records only where needed, the mtime mark, xattrs or sidecars."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from unistore import LocalBackend
from unistore.backends.local._fs import meta_path
from unistore.backends.local._meta import XATTR, sidecar_path

SECRET = "test-secret-0123456789abcdef"


@pytest.fixture
def store(tmp_path: Path) -> LocalBackend:
    return LocalBackend(base_path=str(tmp_path / "s"), fsync=False, url_secret=SECRET)


class NoXattrLocal(LocalBackend):
    """A LocalBackend as on a file system without user extended attributes: records go to sidecars."""

    def _probe_xattr(self) -> bool:
        return False


@pytest.fixture
def sidecar_store(tmp_path: Path) -> LocalBackend:
    return NoXattrLocal(base_path=str(tmp_path / "n"), fsync=False, url_secret=SECRET)


def legacy(store: LocalBackend, key: str) -> Path:
    """The one-per-key sidecar earlier releases wrote."""
    return Path(meta_path(str(store.root / key)))


def versioned(store: LocalBackend, key: str) -> Path:
    path = store.root / key
    return Path(sidecar_path(str(path), path.stat().st_ino))


def store_files(store: LocalBackend) -> list[str]:
    """The store's own files outside ``ROOT/.unistore/`` (sidecars, temp files)."""
    rels = (str(p.relative_to(store.root)) for p in store.root.rglob(".unistore*") if p.is_file())
    return sorted(r for r in rels if not r.startswith(".unistore/"))


async def test_plain_objects_have_no_record_and_metadata_objects_carry_one(store: LocalBackend) -> None:
    if not store._xattr:
        pytest.skip("this file system keeps no user xattrs (the sidecar mode is tested below)")
    assert store._exact  # ext4, xfs, btrfs, tmpfs keep ns mtimes
    await store.put_object("a/plain.bin", b"x")
    assert XATTR not in os.listxattr(store.root / "a/plain.bin")
    assert (store.root / "a/plain.bin").stat().st_mtime_ns % 1000 != 777
    await store.put_object("a/meta.bin", b"x", metadata={"k": "v"})
    assert json.loads(os.getxattr(store.root / "a/meta.bin", XATTR))["meta"] == {"k": "v"}
    assert (store.root / "a/meta.bin").stat().st_mtime_ns % 1000 == 777
    await store.put_object("a/typed", b"x", content_type="image/png")  # not guessable from the name
    assert XATTR in os.listxattr(store.root / "a/typed")
    await store.put_object("a/guessed.png", b"x", content_type="image/png")  # guessable: no record
    assert XATTR not in os.listxattr(store.root / "a/guessed.png")
    assert (await store.head("a/guessed.png")).content_type == "image/png"
    assert store_files(store) == []  # no sidecar anywhere


async def test_without_xattrs_sidecars_are_named_by_the_data_inode(sidecar_store: LocalBackend) -> None:
    store = sidecar_store
    await store.put_object("d/k", b"1", metadata={"v": "1"})
    first = versioned(store, "d/k")
    assert first.exists() and json.loads(first.read_bytes())["meta"] == {"v": "1"}
    await store.put_object("d/k", b"2", metadata={"v": "2"})
    second = versioned(store, "d/k")
    assert second != first and not first.exists()  # the replaced version's sidecar goes after the commit
    assert (await store.head("d/k")).metadata == {"v": "2"}
    await store.put_object("d/k", b"3")
    assert not second.exists() and (await store.head("d/k")).metadata == {}
    await store.put_object("d/k", b"4", cache_control="no-store")
    assert await store.delete("d/k")
    assert store_files(store) == [] and not (store.root / "d").exists()


async def test_a_record_too_large_for_xattrs_goes_to_a_sidecar(store: LocalBackend) -> None:
    cd = "attachment; filename=" + "x" * 70_000 + ".txt"  # over 64 KiB: too large for any file system's xattr
    await store.put_object("big", b"data", metadata={"m": "1"}, content_disposition=cd)
    info = await store.head("big")
    assert (info.content_disposition, info.metadata) == (cd, {"m": "1"})
    assert versioned(store, "big").exists()
    await store.put_object("big", b"data 2", metadata={"m": "2"})
    assert store_files(store) == []
    assert (await store.head("big")).metadata == {"m": "2"}


async def test_sidecars_of_earlier_releases_are_still_read(store: LocalBackend) -> None:
    path = store.root / "old.bin"
    path.write_bytes(b"written by 0.x")
    st = path.stat()
    mt = st.st_mtime_ns - st.st_mtime_ns % 1000 + 777
    os.utime(path, ns=(mt, mt))
    record = {"v": 2, "etag": "e0", "ct": "text/x-old", "meta": {"a": "1"}, "cc": None, "cd": None}
    record.update(ino=st.st_ino, size=st.st_size, mt=mt)
    legacy(store, "old.bin").write_text(json.dumps(record))
    info = await store.head("old.bin")
    assert (info.etag, info.content_type, info.metadata) == ("e0", "text/x-old", {"a": "1"})
    # a leftover of the old two-rename commit (naming another inode) is ignored
    record.update(ino=st.st_ino + 12345, etag="from-the-crashed-write", meta={"v": "2"})
    legacy(store, "old.bin").write_text(json.dumps(record))
    assert (await store.head("old.bin")).metadata == {} and await store.get("old.bin") == b"written by 0.x"
    await store.put_object("old.bin", b"new", metadata={"v": "3"})  # the next write replaces it
    assert (await store.head("old.bin")).metadata == {"v": "3"}
    assert await store.delete("old.bin") and not legacy(store, "old.bin").exists()


async def test_a_file_edited_in_place_by_hand_loses_its_record(store: LocalBackend) -> None:
    await store.put_object("e.txt", b"managed", metadata={"owner": "alice"})
    etag = (await store.head("e.txt")).etag
    with open(store.root / "e.txt", "ab") as f:  # noqa: ASYNC230 - editing the file by hand
        f.write(b" + appended by hand")
    os.utime(store.root / "e.txt")
    info = await store.head("e.txt")
    assert info.metadata == {} and info.etag != etag and info.size == len(b"managed + appended by hand")


async def test_a_marked_file_without_record_is_served(store: LocalBackend) -> None:
    # A hand-placed file whose mtime happens to carry the mark: slow path, never a failure.
    path = store.root / "hand.txt"
    path.write_bytes(b"by hand")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - st.st_mtime_ns % 1000 + 777))
    info = await store.head("hand.txt")
    assert (info.size, info.content_type, info.metadata) == (7, "text/plain", {})
    assert await store.get("hand.txt") == b"by hand"


async def test_stale_sidecar_of_an_unmarked_file_is_ignored(sidecar_store: LocalBackend) -> None:
    store = sidecar_store
    await store.put_object("s", b"v1", metadata={"old": "yes"})
    old = versioned(store, "s").read_bytes()
    await store.put_object("s", b"v2")
    versioned(store, "s").write_bytes(old)  # a sidecar that happens to bear the new inode
    legacy(store, "s").write_bytes(old)
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


async def test_a_sidecar_removed_by_a_writer_that_freed_our_inode_is_written_again(
    sidecar_store: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new temp file can take the inode of the version another writer has just replaced; that
    writer then removes the replaced version's sidecar, which has our sidecar's name. The commit
    notices under the key's lock and writes its sidecar again, so the metadata is never lost."""
    import unistore.backends.local as local

    await sidecar_store.put_object("k", b"old", metadata={"writer": "0"})

    from unistore.backends.local._meta import SIDECAR_SUFFIX

    current = versioned(sidecar_store, "k").name
    removed: list[str] = []

    def other_writer_removes_it(step: str, key: str) -> None:
        if step == "sidecar-written" and key == "k":  # ours, just written: removed as the other writer would
            (ours,) = [p for p in sidecar_store.root.iterdir() if p.name.endswith(SIDECAR_SUFFIX) and p.name != current]
            ours.unlink()
            removed.append(ours.name)

    monkeypatch.setattr(local, "_crash_hook", other_writer_removes_it)
    await sidecar_store.put_object("k", b"new", metadata={"writer": "1"})
    monkeypatch.setattr(local, "_crash_hook", None)
    assert removed == [versioned(sidecar_store, "k").name]
    info = await sidecar_store.head("k")
    assert (await sidecar_store.get("k"), info.metadata) == (b"new", {"writer": "1"})
    assert versioned(sidecar_store, "k").exists()
