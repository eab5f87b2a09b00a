"""Per-object storage classes: ``with storage_class(...)`` through any stack, native on S3 and
GCS, refused (never ignored) by stores without classes, reported back in ``ObjectInfo``."""

from __future__ import annotations

import os
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from unistore import (
    InvalidArgumentError,
    LocalBackend,
    MemoryBackend,
    UnsupportedError,
    storage_class,
)
from unistore.backends.gcs import GCSBackend
from unistore.layers import Observe, Retry, stack
from unistore.testing._s3servers import S3Server


async def test_s3_writes_the_class_and_reports_it(moto: S3Server) -> None:
    store = moto.backend(prefix=f"sc-{os.urandom(4).hex()}/")
    layered = stack(store, partial(Observe, metrics=False), Retry)
    with storage_class("GLACIER_IR"):
        await layered.put_object("archive/a.bin", b"x" * 1000)
    with storage_class("INTELLIGENT_TIERING"):
        await layered.put_object("big.bin", os.urandom(6 << 20))  # streamed: one multipart upload
    await layered.put_object("plain.bin", b"y")
    assert (await store.head("archive/a.bin")).storage_class == "GLACIER_IR"
    assert (await store.head("big.bin")).storage_class == "INTELLIGENT_TIERING"
    assert (await store.head("plain.bin")).storage_class == "STANDARD"
    listed = {i.key: i.storage_class async for i in store.iter_objects()}
    assert listed == {"archive/a.bin": "GLACIER_IR", "big.bin": "INTELLIGENT_TIERING", "plain.bin": "STANDARD"}
    raw = moto.client().head_object(Bucket="unistore-tests", Key=store.settings.prefix + "archive/a.bin")
    assert raw["StorageClass"] == "GLACIER_IR"


async def test_s3_refuses_an_unknown_class_before_writing(moto: S3Server) -> None:
    store = moto.backend(prefix=f"sc-{os.urandom(4).hex()}/")
    with storage_class("COLDLINE"), pytest.raises(InvalidArgumentError, match="no storage class"):
        await store.put_object("k", b"data")
    assert not await store.exists("k")


async def test_gcs_writes_the_class_and_reports_it(fake_gcs: dict[str, str]) -> None:
    store = GCSBackend(
        bucket=fake_gcs["bucket"],
        emulator_host=fake_gcs["url"],
        credentials=fake_gcs["credentials"],
        prefix=f"sc-{os.urandom(4).hex()}/",
    )
    async with store:
        with storage_class("NEARLINE"):
            await store.put_object("n.txt", b"nearline")
            await store.put_object("big.bin", os.urandom(3 << 20))
        assert (await store.head("n.txt")).storage_class == "NEARLINE"
        assert (await store.head("big.bin")).storage_class == "NEARLINE"
        with storage_class("GLACIER_IR"), pytest.raises(InvalidArgumentError):
            await store.put_object("x", b"x")


@pytest.mark.parametrize("make", [MemoryBackend, "local"])
async def test_stores_without_classes_refuse_rather_than_ignore(make: Any, tmp_path: Path) -> None:
    store = LocalBackend(base_path=str(tmp_path)) if make == "local" else make()
    with storage_class("STANDARD_IA"), pytest.raises(UnsupportedError, match="no storage classes"):
        await store.put_object("k", b"data")
    assert not await store.exists("k")
    await store.put_object("k", b"data")  # outside the block: the default again
    assert (await store.head("k")).storage_class is None


def test_class_names_are_checked() -> None:
    for bad in ("standard", "", "X" * 60, "A-B", 3):
        with pytest.raises(InvalidArgumentError), storage_class(bad):  # type: ignore[arg-type]
            pass
