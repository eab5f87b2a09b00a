"""``replace_metadata``: which backends do it without moving the body, and the S3 servers' If-Match on CopyObject.

The shared behaviour (body kept, IfMatch decided atomically, a newer version never overwritten)
is in the conformance suite; these tests pin the native paths and the server gaps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from unistore import InvalidMetadataError, LocalBackend, MemoryBackend, PreconditionFailedError
from unistore.encryption import Encrypt, LocalKeyring
from unistore.testing._s3servers import S3Server


def no_reads(backend: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a native replace_metadata read the body")

    monkeypatch.setattr(backend, "open", refuse)


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if ".unistore.tmp" in p.name]


async def test_memory_keeps_the_body_and_makes_a_new_version(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryBackend()
    old = await store.put_object("k", b"body", metadata={"a": "1"})
    no_reads(store, monkeypatch)
    new = await store.replace_metadata("k", {"a": "2"}, if_match=old.etag)
    assert new.etag != old.etag and dict(new.metadata) == {"a": "2"}
    with pytest.raises(PreconditionFailedError):
        await store.replace_metadata("k", {"a": "3"}, if_match=old.etag)


async def test_local_copies_in_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalBackend(base_path=str(tmp_path), fsync=False)
    body = os.urandom(3 * 1024 * 1024 + 7)
    old = await store.put_object("d/big.bin", body, content_type="application/x-thing")
    no_reads(store, monkeypatch)
    new = await store.replace_metadata("d/big.bin", {"owner": "ann"}, if_match=old.etag)
    assert new.etag != old.etag and new.size == len(body)
    monkeypatch.undo()
    got = await store.head("d/big.bin")
    assert (dict(got.metadata), got.content_type) == ({"owner": "ann"}, "application/x-thing")
    assert await store.get("d/big.bin") == body
    await store.replace_metadata("d/big.bin", {})  # back to a version without a record
    assert dict((await store.head("d/big.bin")).metadata) == {} and await store.get("d/big.bin") == body
    empty = await store.put_object("d/empty", b"")
    await store.replace_metadata("d/empty", {"x": "y"}, if_match=empty.etag)
    assert await store.get("d/empty") == b""
    assert not temp_files(tmp_path)
    await store.aclose()


async def test_encrypt_reencrypts_with_the_new_metadata() -> None:
    raw = MemoryBackend()
    store = Encrypt(raw, LocalKeyring({"k": os.urandom(32)}))
    old = await store.put_object("doc", b"plain text", metadata={"a": "1"})
    new = await store.replace_metadata("doc", {"a": "2"}, if_match=old.etag)
    assert dict(new.metadata) == {"a": "2"} and await store.get("doc") == b"plain text"
    assert (await raw.head("doc")).metadata["a"] == "2"
    with pytest.raises(InvalidMetadataError):
        await store.replace_metadata("doc", {"x-storage-key-id": "forged"})
    # writing the raw metadata under Encrypt's back breaks the binding: detected, never decrypted wrongly
    await raw.replace_metadata("doc", {**(await raw.head("doc")).metadata, "a": "3"})
    from unistore import IntegrityError

    with pytest.raises(IntegrityError):
        await store.get("doc")


async def test_cache_layer_drops_its_copy() -> None:
    from unistore.layers import Cache

    inner = MemoryBackend()
    store = Cache(inner)
    await store.put_object("k", b"v", metadata={"a": "1"})
    assert dict((await store.head("k")).metadata) == {"a": "1"}
    await store.replace_metadata("k", {"a": "2"})
    assert dict((await store.head("k")).metadata) == {"a": "2"}


# --- S3: CopyObject onto itself only where the server honours If-Match on it ---------------------


@pytest.fixture
async def seaweed_native(seaweed: S3Server) -> AsyncIterator[Any]:
    backend = seaweed.backend(copy_if_match=True)
    yield backend
    await backend.aclose()


async def test_s3_native_copy_moves_no_body(seaweed_native: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    key = f"rm-{os.urandom(4).hex()}"
    body = os.urandom(200_000)
    old = await seaweed_native.put_object(key, body, content_type="text/csv", metadata={"a": "1"})
    no_reads(seaweed_native, monkeypatch)
    new = await seaweed_native.replace_metadata(key, {"a": "2", "b": "x y"}, if_match=old.etag)
    monkeypatch.undo()
    got = await seaweed_native.head(key)
    assert dict(got.metadata) == {"a": "2", "b": "x y"} and got.content_type == "text/csv"
    assert new.etag == got.etag and await seaweed_native.get(key) == body
    with pytest.raises(PreconditionFailedError):
        await seaweed_native.replace_metadata(key, {"a": "3"}, if_match="0" * 32)


def test_s3_copy_if_match_defaults() -> None:
    from unistore.backends.s3 import S3Backend

    assert S3Backend(bucket="b").settings.copy_if_match is None  # resolved per call: AWS on, others off


def _copy_with_stale_destination_etag(server: S3Server) -> None:
    client = server.client()
    try:
        client.put_object(Bucket="unistore-tests", Key="copy-src", Body=b"source")
        client.put_object(Bucket="unistore-tests", Key="copy-dst", Body=b"destination")
        with pytest.raises(client.exceptions.ClientError) as exc:
            client.copy_object(
                Bucket="unistore-tests",
                Key="copy-dst",
                CopySource={"Bucket": "unistore-tests", "Key": "copy-src"},
                IfMatch='"00000000000000000000000000000000"',
            )
        assert exc.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    finally:
        client.close()


def test_seaweedfs_checks_if_match_on_copy(seaweed: S3Server) -> None:
    """SeaweedFS checks it, but not atomically with the copy: a write landing during a copy onto
    the same key can be overwritten (seen in about 1 race in 75), so copy_if_match stays off for it."""
    _copy_with_stale_destination_etag(seaweed)


@pytest.mark.xfail(strict=True, reason="moto ignores If-Match (the destination's etag) on CopyObject")
def test_moto_honours_if_match_on_copy(moto: S3Server) -> None:
    _copy_with_stale_destination_etag(moto)


async def test_s3_default_path_never_loses_a_racing_write(seaweed: S3Server) -> None:
    """Without If-Match on CopyObject, the conditional PUT keeps every racing write (SeaweedFS)."""
    backend = seaweed.backend()
    key = f"race-{os.urandom(4).hex()}"
    try:
        await backend.put_object(key, b"v0")
        for n in range(1, 60):
            etag = (await backend.head(key)).etag
            body = f"v{n}".encode()

            async def update(etag: str = etag) -> None:
                with contextlib.suppress(PreconditionFailedError):
                    await backend.replace_metadata(key, {"t": "y"}, if_match=etag)

            async def write(n: int = n, body: bytes = body) -> None:
                await asyncio.sleep(0.001 * (n % 4))
                await backend.put_object(key, body)

            await asyncio.gather(update(), write())
            assert await backend.get(key) == body
    finally:
        await backend.aclose()


# --- GCS: objects.patch keeps the generation (the etag) -----------------------------------------------


async def test_gcs_patch_keeps_the_generation(fake_gcs: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from unistore.backends.gcs import GCSBackend

    backend = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"])
    try:
        key = f"rm-{os.urandom(4).hex()}"
        old = await backend.put_object(key, b"body", metadata={"a": "1"})
        no_reads(backend, monkeypatch)
        new = await backend.replace_metadata(key, {"a": "2"}, if_match=old.etag)
        monkeypatch.undo()
        assert new.etag == old.etag and dict((await backend.head(key)).metadata) == {"a": "2"}
        with pytest.raises(PreconditionFailedError):
            await backend.replace_metadata(key, {"a": "3"}, if_match=str(int(old.etag) + 1))
    finally:
        await backend.aclose()
