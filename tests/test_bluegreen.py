"""BlueGreen: versions under ``vN/`` and a pointer switched by conditional writes, on memory,
local files, SeaweedFS (S3) and fake-gcs-server (GCS)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from unistore import (
    BlueGreen,
    GCSBackend,
    InvalidKeyError,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    PreconditionFailedError,
    Release,
    StorageBackend,
)


@pytest.fixture(params=["memory", "local", "s3", "gcs"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    backend: StorageBackend
    if request.param == "memory":
        backend = MemoryBackend()
    elif request.param == "local":
        backend = LocalBackend(base_path=str(tmp_path / "store"), fsync=False)
    elif request.param == "s3":
        backend = request.getfixturevalue("seaweed").backend()
    else:
        gcs = request.getfixturevalue("fake_gcs")
        backend = GCSBackend(bucket=gcs["bucket"], emulator_host=gcs["url"], credentials=gcs["credentials"])
    yield backend
    await backend.aclose()


@pytest.fixture
def root() -> str:
    return f"site-{uuid.uuid4().hex[:8]}/"


async def _publish(bg: BlueGreen, version: str, pages: dict[str, bytes]) -> None:
    stage = bg.stage(version)
    for key, body in pages.items():
        await stage.put(key, body)


async def test_switch_and_rollback(store: StorageBackend, root: str) -> None:
    bg = BlueGreen(store, root)
    assert await bg.current() is None
    with pytest.raises(NotFoundError):
        await bg.view()
    await _publish(bg, "v1", {"index.html": b"one", "about.html": b"about one"})
    first = await bg.switch("v1")
    assert (first.version, first.prefix, first.previous) == ("v1", root + "v1/", None)
    assert await bg.current() == first

    await _publish(bg, "v2", {"index.html": b"two"})
    release, view = await bg.view()
    assert release.version == "v1" and await view.get("index.html") == b"one"  # staging is invisible

    second = await bg.switch("v2")
    assert (second.version, second.previous) == ("v2", "v1")
    release, view = await bg.view()
    assert release == second and await view.get("index.html") == b"two"
    assert not await view.exists("about.html")  # nothing of v1 leaks into v2

    back = await bg.rollback()
    assert (back.version, back.previous) == ("v1", "v2")
    assert await (await bg.view())[1].get("index.html") == b"one"
    again = await bg.rollback()  # rolling back a rollback goes forward again
    assert (again.version, again.previous) == ("v2", "v1")
    keys = ["CURRENT", "v1/about.html", "v1/index.html", "v2/index.html"]
    assert await store.list_keys(root) == [root + k for k in keys]


async def test_concurrent_switches_one_wins(store: StorageBackend, root: str) -> None:
    """Two operators decide from the same release; both write at once: exactly one switch
    lands, the other raises PreconditionFailedError, and the pointer is the winner's."""
    bg = BlueGreen(store, root)
    for version in ("v1", "v2", "v3"):
        await _publish(bg, version, {"index.html": version.encode()})

    async def race(before: Release | None) -> Release:
        results = await asyncio.gather(
            BlueGreen(store, root).switch("v2", expected=before),
            BlueGreen(store, root).switch("v3", expected=before),
            return_exceptions=True,
        )
        won = [r for r in results if isinstance(r, Release)]
        lost = [r for r in results if isinstance(r, BaseException)]
        assert len(won) == 1 and len(lost) == 1, results
        assert isinstance(lost[0], PreconditionFailedError)
        assert await bg.current() == won[0]
        return won[0]

    first = await race(None)  # the very first switch: create-only
    assert first.previous is None
    second = await race(first)
    assert second.previous == first.version


async def test_a_switch_from_a_stale_read_is_refused(store: StorageBackend, root: str) -> None:
    bg = BlueGreen(store, root)
    for version in ("v1", "v2"):
        await _publish(bg, version, {"a": version.encode()})
    stale = await bg.switch("v1")
    await bg.switch("v2")
    with pytest.raises(PreconditionFailedError, match="changed since it was read"):
        await bg.rollback(expected=Release(stale.version, stale.prefix, "v2", stale.etag))
    with pytest.raises(PreconditionFailedError):
        await bg.switch("v1", expected=stale)
    with pytest.raises(PreconditionFailedError):
        await bg.switch("v1", expected=None)  # create-only: a pointer exists
    now = await bg.current()
    assert now is not None and now.version == "v2"


async def test_a_reader_keeps_its_version_through_a_switch(store: StorageBackend, root: str) -> None:
    """A request reads the pointer once: a switch during the request does not mix versions."""
    bg = BlueGreen(store, root)
    await _publish(bg, "v1", {"a": b"a1", "b": b"b1"})
    await _publish(bg, "v2", {"a": b"a2", "b": b"b2"})
    await bg.switch("v1")
    _, view = await bg.view()
    first = await view.get("a")
    await bg.switch("v2")
    assert (first, await view.get("b")) == (b"a1", b"b1")
    _, view = await bg.view()
    assert (await view.get("a"), await view.get("b")) == (b"a2", b"b2")


async def test_refusals(root: str) -> None:
    store = MemoryBackend()
    bg = BlueGreen(store, root)
    with pytest.raises(NotFoundError, match="has no objects"):
        await bg.switch("v9")  # a typo never takes the site down
    assert await bg.current() is None
    with pytest.raises(NotFoundError, match="no previous"):
        await bg.rollback()
    await _publish(bg, "v1", {"a": b"1"})
    await bg.switch("v1")
    with pytest.raises(NotFoundError, match="no previous"):
        await bg.rollback()
    for bad in ("", "a/b", "..", "CURRENT", ".unistore"):
        with pytest.raises(InvalidKeyError):
            bg.prefix(bad)
    with pytest.raises(InvalidKeyError):
        BlueGreen(store, "no-slash")
    await store.put(root + "CURRENT", b"not json")
    with pytest.raises(Exception, match="unreadable blue-green pointer"):
        await bg.current()
