"""AwsKmsKeyring against moto's KMS (its server speaks the real KMS protocol), and Encrypt over it."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from unistore import IntegrityError, LocalBackend, MemoryBackend, TransientError
from unistore._errors import ConfigurationError, PermissionDeniedError
from unistore.encryption import AwsKmsKeyring, AwsKmsKeyringSettings, Encrypt, WrappedKey
from unistore.testing import BackendConformance, free_port
from unistore.testing._s3servers import S3Server

pytestmark = pytest.mark.xdist_group("moto")


def kms_client(server: S3Server) -> Any:
    import botocore.session

    return botocore.session.get_session().create_client(
        "kms",
        endpoint_url=server.endpoint,
        region_name=server.region,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
    )


@pytest.fixture(scope="module")
def kms_keys(moto: S3Server) -> Iterator[dict[str, str]]:
    """Two fresh KMS keys (by ARN) and an alias of the first."""
    client = kms_client(moto)
    old = client.create_key(Description="unistore old")["KeyMetadata"]["Arn"]
    new = client.create_key(Description="unistore new")["KeyMetadata"]["Arn"]
    alias = f"alias/unistore-{os.urandom(4).hex()}"
    client.create_alias(AliasName=alias, TargetKeyId=old)
    yield {"old": old, "new": new, "alias": alias}
    client.close()


def keyring(moto: S3Server, keys: tuple[str, ...], primary: str | None = None) -> AwsKmsKeyring:
    return AwsKmsKeyring(
        keys=keys,
        primary=primary,
        endpoint=moto.endpoint,
        region=moto.region,
        access_key=moto.access_key,
        secret_key=moto.secret_key,
    )


@pytest.fixture
async def ring(moto: S3Server, kms_keys: dict[str, str]) -> AsyncIterator[AwsKmsKeyring]:
    k = keyring(moto, (kms_keys["old"], kms_keys["new"]), primary=kms_keys["new"])
    yield k
    await k.aclose()


async def test_wrap_unwrap_round_trip(ring: AwsKmsKeyring, kms_keys: dict[str, str]) -> None:
    dek = os.urandom(32)
    wrapped = await ring.wrap(dek, {"object": "a/b.txt"})
    assert wrapped.key_id == kms_keys["new"] == ring.primary_id
    assert dek not in wrapped.blob
    assert await ring.unwrap(wrapped, {"object": "a/b.txt"}) == dek
    assert ring.key_ids() == {kms_keys["old"], kms_keys["new"]}


async def test_old_key_still_unwraps(moto: S3Server, kms_keys: dict[str, str], ring: AwsKmsKeyring) -> None:
    old_ring = keyring(moto, (kms_keys["old"],))
    dek = os.urandom(32)
    wrapped = await old_ring.wrap(dek, {"object": "k"})
    await old_ring.aclose()
    assert wrapped.key_id == kms_keys["old"]
    assert await ring.unwrap(wrapped, {"object": "k"}) == dek


async def test_alias_as_key_id(moto: S3Server, kms_keys: dict[str, str]) -> None:
    ring = keyring(moto, (kms_keys["alias"],))
    try:
        dek = os.urandom(32)
        wrapped = await ring.wrap(dek, {"object": "k"})
        assert wrapped.key_id == kms_keys["alias"]
        assert await ring.unwrap(wrapped, {"object": "k"}) == dek
    finally:
        await ring.aclose()


async def test_wrong_context_is_integrity_error(ring: AwsKmsKeyring) -> None:
    wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
    with pytest.raises(IntegrityError):
        await ring.unwrap(wrapped, {"object": "b"})


async def test_tampered_blob_is_integrity_error(ring: AwsKmsKeyring) -> None:
    wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
    blob = bytearray(wrapped.blob)
    blob[-5] ^= 1
    with pytest.raises(IntegrityError):
        await ring.unwrap(WrappedKey(wrapped.key_id, bytes(blob)), {"object": "a"})


async def test_unknown_key_is_integrity_error(ring: AwsKmsKeyring, kms_keys: dict[str, str]) -> None:
    wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
    with pytest.raises(IntegrityError, match="no KMS key"):
        await ring.unwrap(WrappedKey("arn:aws:kms:us-east-1:123456789012:key/unknown", wrapped.blob), {"object": "a"})


@pytest.mark.xfail(strict=True, reason="moto answers AccessDeniedException where AWS KMS answers IncorrectKeyException")
async def test_blob_of_another_key_is_integrity_error(ring: AwsKmsKeyring, kms_keys: dict[str, str]) -> None:
    wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
    with pytest.raises(IntegrityError):
        await ring.unwrap(WrappedKey(kms_keys["old"], wrapped.blob), {"object": "a"})


async def test_key_missing_in_kms_is_integrity_error(moto: S3Server) -> None:
    ghost = "arn:aws:kms:us-east-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    ring = keyring(moto, (ghost,))
    try:
        with pytest.raises((IntegrityError, PermissionDeniedError)):
            await ring.wrap(os.urandom(32), {"object": "a"})
    finally:
        await ring.aclose()


@pytest.mark.xfail(strict=True, reason="moto still encrypts under a disabled key (AWS answers DisabledException)")
async def test_disabled_key_is_permission_denied(moto: S3Server) -> None:
    client = kms_client(moto)
    arn = client.create_key()["KeyMetadata"]["Arn"]
    ring = keyring(moto, (arn,))
    try:
        wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
        client.disable_key(KeyId=arn.rsplit("/", 1)[1])
        with pytest.raises(PermissionDeniedError):
            await ring.wrap(os.urandom(32), {"object": "a"})
        client.enable_key(KeyId=arn.rsplit("/", 1)[1])
        assert len(await ring.unwrap(wrapped, {"object": "a"})) == 32
    finally:
        client.close()
        await ring.aclose()


async def test_unreachable_kms_is_transient() -> None:
    ring = AwsKmsKeyring(
        keys=("alias/k",),
        endpoint=f"http://127.0.0.1:{free_port()}",
        region="us-east-1",
        access_key="a",
        secret_key="b",
        timeout=2,
    )
    try:
        with pytest.raises(TransientError):
            await ring.wrap(os.urandom(32), {"object": "a"})
    finally:
        await ring.aclose()


async def test_encrypt_layer_over_kms(ring: AwsKmsKeyring, kms_keys: dict[str, str]) -> None:
    raw = MemoryBackend()
    store = Encrypt(raw, ring)
    await store.put("doc.txt", b"secret text" * 1000, metadata={"owner": "ann"})
    assert await store.get("doc.txt") == b"secret text" * 1000
    meta = (await raw.head("doc.txt")).metadata
    assert meta["x-storage-key-id"] == kms_keys["new"]
    swapped = dict(meta)
    await raw.put_object("other.txt", await raw.get("doc.txt"), metadata=swapped)
    with pytest.raises(IntegrityError):  # the data key is bound to its object's key
        await store.get("other.txt")


def test_settings() -> None:
    s = AwsKmsKeyringSettings.from_env(
        {"UNISTORE_AWS_KMS_KEYS": "alias/a, alias/b", "UNISTORE_AWS_KMS_PRIMARY": "alias/b"}
    )
    assert s.keys == ("alias/a", "alias/b") and AwsKmsKeyring(s).primary_id == "alias/b"
    assert AwsKmsKeyring.from_env({"UNISTORE_AWS_KMS_KEYS": "alias/a alias/b"}).primary_id == "alias/a"
    for env in (
        {},
        {"UNISTORE_AWS_KMS_KEYS": "alias/a", "UNISTORE_AWS_KMS_PRIMARY": "alias/z"},
        {"UNISTORE_AWS_KMS_KEYS": "alias/a,alias/a"},
        {"UNISTORE_AWS_KMS_KEYS": "alias/a", "UNISTORE_AWS_KMS_ACCESS_KEY": "x"},
        {"UNISTORE_AWS_KMS_KEYS": "alias/a", "UNISTORE_AWS_KMS_TIMEOUT": "soon"},
    ):
        with pytest.raises(ConfigurationError):
            AwsKmsKeyringSettings.from_env(env)
    assert "secret" not in repr(AwsKmsKeyringSettings(keys=("k",), access_key="a", secret_key="secret"))


class TestEncryptOverAwsKmsConformance(BackendConformance):
    """The conformance suite over Encrypt(memory) with every data key wrapped by moto's KMS."""

    list_count = 120
    race_writers = 5
    race_increments = 4

    @pytest.fixture
    async def backend(self, moto: S3Server, kms_keys: dict[str, str]) -> AsyncIterator[Encrypt]:
        ring = keyring(moto, (kms_keys["new"], kms_keys["old"]))
        yield Encrypt(MemoryBackend(), ring)
        await ring.aclose()


class TestEncryptOverAwsKmsLocalConformance(TestEncryptOverAwsKmsConformance):
    """The same on a local directory (no signer: its own URLs would serve ciphertext, so they are refused)."""

    @pytest.fixture
    async def backend(self, moto: S3Server, kms_keys: dict[str, str], tmp_path: Any) -> AsyncIterator[Encrypt]:
        ring = keyring(moto, (kms_keys["new"], kms_keys["old"]))
        raw = LocalBackend(base_path=str(tmp_path / "store"), fsync=False)
        yield Encrypt(raw, ring)
        await raw.aclose()
        await ring.aclose()
