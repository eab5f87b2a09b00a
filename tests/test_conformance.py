"""The conformance suite over every backend built so far."""

from __future__ import annotations

import pytest

from unistore import LocalBackend, MemoryBackend
from unistore.testing import BackendConformance


class TestMemory(BackendConformance):
    @pytest.fixture
    def backend(self, served_memory: MemoryBackend) -> MemoryBackend:
        return served_memory


class TestLocal(BackendConformance):
    @pytest.fixture
    def backend(self, served_local: LocalBackend) -> LocalBackend:
        return served_local


class TestLocalFsync(BackendConformance):
    """fsync on (the default): the same contract, durably."""

    list_count = 300

    @pytest.fixture
    def backend(self, served_local: LocalBackend) -> LocalBackend:
        return LocalBackend(base_path=str(served_local.root), base_url=served_local.settings.base_url, fsync=True)


class _AlwaysSidecarLocal(LocalBackend):
    """A LocalBackend that behaves as on a file system that truncates nanosecond mtimes
    (HFS+, FAT, some network mounts): every version then carries a sidecar."""

    def _probe_exact_mtime(self) -> bool:
        return False


class TestLocalAlwaysRecord(BackendConformance):
    """Every version carries a record (here in an extended attribute)."""

    list_count = 600

    @pytest.fixture
    def backend(self, served_local: LocalBackend) -> LocalBackend:
        b = _AlwaysSidecarLocal(base_path=str(served_local.root), base_url=served_local.settings.base_url, fsync=False)
        assert b._exact is False
        return b


class _NoXattrLocal(LocalBackend):
    """A LocalBackend as on a file system without user extended attributes (tmpfs before
    Linux 6.6, some network mounts): records go to sidecars named by the data inode."""

    def _probe_xattr(self) -> bool:
        return False


class TestLocalSidecars(BackendConformance):
    list_count = 300

    @pytest.fixture
    def backend(self, served_local: LocalBackend) -> LocalBackend:
        b = _NoXattrLocal(base_path=str(served_local.root), base_url=served_local.settings.base_url, fsync=True)
        assert b._xattr is False and b._exact is True
        return b


class _NoXattrNoExactLocal(_NoXattrLocal, _AlwaysSidecarLocal):
    """Neither: every version gets a sidecar (FAT, HFS+, some network mounts)."""


class TestLocalAlwaysSidecarFile(BackendConformance):
    list_count = 300

    @pytest.fixture
    def backend(self, served_local: LocalBackend) -> LocalBackend:
        b = _NoXattrNoExactLocal(base_path=str(served_local.root), base_url=served_local.settings.base_url, fsync=False)
        assert b._xattr is False and b._exact is False
        return b


async def test_memory_folder_listing_skips_removed_keys_still_in_the_index() -> None:
    from unistore import MemoryBackend

    m = MemoryBackend()
    for i in range(200):
        await m.put_object(f"f{i % 3}/k{i:03d}", b"")
    await m.put_object("top", b"")
    assert [e async for e in m.iter_keys()]  # builds the sorted index
    for i in range(0, 200, 3):
        await m.remove(f"f0/k{i:03d}")  # f0/ now empty; its keys linger in the index until a rebuild
    names = [getattr(e, "prefix", None) or getattr(e, "key", "") async for e in m.iter_entries("")]
    assert names == ["f1/", "f2/", "top"]
