"""fsspec's own abstract test suite (copy, get, put, pipe, open) over UnistoreFileSystem on a
memory store, a local directory and S3 (SeaweedFS)."""

from __future__ import annotations

import functools
import posixpath
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fsspec.tests.abstract import (
    AbstractCopyTests,
    AbstractFixtures,
    AbstractGetTests,
    AbstractOpenTests,
    AbstractPipeTests,
    AbstractPutTests,
)

from unistore import LocalBackend, MemoryBackend
from unistore.fsspec import UnistoreFileSystem
from unistore.testing._s3servers import S3Server


class _Fixtures(AbstractFixtures):  # type: ignore[misc]
    @pytest.fixture
    def fs_join(self) -> Callable[..., str]:
        return posixpath.join

    @pytest.fixture
    def fs_path(self) -> str:
        return f"fsspec-{uuid.uuid4().hex[:8]}"

    @pytest.fixture
    def supports_empty_directories(self) -> bool:
        return False  # folders exist while a key is below them


class _Suites(AbstractCopyTests, AbstractGetTests, AbstractPutTests, AbstractPipeTests, AbstractOpenTests):  # type: ignore[misc]
    pass


class MemoryFixtures(_Fixtures):
    @pytest.fixture
    def fs(self) -> UnistoreFileSystem:
        return UnistoreFileSystem(MemoryBackend())


class LocalFixtures(_Fixtures):
    @pytest.fixture
    def fs(self, tmp_path: Path) -> UnistoreFileSystem:
        root = tmp_path / "store"
        root.mkdir()
        return UnistoreFileSystem(LocalBackend(base_path=str(root)))


class S3Fixtures(_Fixtures):
    @pytest.fixture
    def fs(self, seaweed: S3Server) -> Iterator[UnistoreFileSystem]:
        fs = UnistoreFileSystem(seaweed.backend())
        yield fs
        from fsspec.asyn import sync

        sync(fs.loop, fs.backend.aclose)


class TestMemory(MemoryFixtures, _Suites):
    pass


class TestLocal(LocalFixtures, _Suites):
    pass


class TestS3(S3Fixtures, _Suites):
    pass


# SeaweedFS keeps a folder after its last key is deleted and lists it as a common prefix
# (AWS S3 does not), so these suites' "the emptied target lists as missing" checks fail there.
_SEAWEED_EMPTY_FOLDERS = (
    "test_put_directory_to_existing_directory",
    "test_put_directory_to_new_directory",
    "test_put_glob_to_existing_directory",
    "test_copy_directory_to_new_directory",
    "test_copy_directory_to_existing_directory",
    "test_copy_glob_to_existing_directory",
)


def _xfail(name: str) -> Callable[..., None]:
    original = getattr(_Suites, name)

    @functools.wraps(original)
    def test(*args: object, **kwargs: object) -> None:
        original(*args, **kwargs)

    reason = "SeaweedFS lists emptied folders as common prefixes"
    return pytest.mark.xfail(strict=True, reason=reason)(test)  # type: ignore[no-any-return]


for _name in _SEAWEED_EMPTY_FOLDERS:
    setattr(TestS3, _name, _xfail(_name))
