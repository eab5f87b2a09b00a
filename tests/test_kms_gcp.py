"""GcpKmsKeyring against the local fake of the Cloud KMS REST API (OAuth tokens via google-auth)."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from unistore import IntegrityError, MemoryBackend, TransientError
from unistore._errors import ConfigurationError, PermissionDeniedError
from unistore.encryption import Encrypt, GcpKmsKeyring, GcpKmsKeyringSettings, WrappedKey
from unistore.testing import BackendConformance, free_port, running_server
from unistore.testing._gcp_kms_fake import FakeCloudKms

OLD = "projects/p/locations/global/keyRings/ring/cryptoKeys/old"
NEW = "projects/p/locations/global/keyRings/ring/cryptoKeys/new"


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FakeCloudKms, Path]]:
    fake = FakeCloudKms()
    port = free_port()
    fake.url = f"http://127.0.0.1:{port}"
    fake.create_key(OLD)
    fake.create_key(NEW)
    creds = fake.service_account(tmp_path_factory.mktemp("kms") / "sa.json")
    with running_server(fake.app, port):
        yield fake, creds


def make(cloud: tuple[FakeCloudKms, Path], keys: tuple[str, ...] = (OLD, NEW), **kw: object) -> GcpKmsKeyring:
    fake, creds = cloud
    return GcpKmsKeyring(keys=keys, credentials=str(creds), endpoint=fake.url, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def ring(cloud: tuple[FakeCloudKms, Path]) -> AsyncIterator[GcpKmsKeyring]:
    k = make(cloud, primary=NEW)
    yield k
    await k.aclose()


async def test_round_trip_and_old_key(cloud: tuple[FakeCloudKms, Path], ring: GcpKmsKeyring) -> None:
    dek = os.urandom(32)
    wrapped = await ring.wrap(dek, {"object": "a.txt"})
    assert wrapped.key_id == NEW and dek not in wrapped.blob
    assert await ring.unwrap(wrapped, {"object": "a.txt"}) == dek
    old_ring = make(cloud, keys=(OLD,))
    old = await old_ring.wrap(dek, {"object": "a.txt"})
    await old_ring.aclose()
    assert old.key_id == OLD and await ring.unwrap(old, {"object": "a.txt"}) == dek


async def test_version_rotation_inside_kms_needs_no_rewrap(cloud: tuple[FakeCloudKms, Path]) -> None:
    fake, _ = cloud
    name = fake.create_key("projects/p/locations/global/keyRings/ring/cryptoKeys/rotating")
    ring = make(cloud, keys=(name,))
    try:
        before = await ring.wrap(b"k" * 32, {"object": "x"})
        fake.rotate(name)
        after = await ring.wrap(b"k" * 32, {"object": "x"})
        assert before.blob[:4] != after.blob[:4]  # the fake's ciphertext names its version
        assert await ring.unwrap(before, {"object": "x"}) == await ring.unwrap(after, {"object": "x"}) == b"k" * 32
        fake.set_state(name, 1, "DISABLED")
        with pytest.raises(PermissionDeniedError, match="DISABLED"):
            await ring.unwrap(before, {"object": "x"})
        assert await ring.unwrap(after, {"object": "x"}) == b"k" * 32
        fake.set_state(name, 2, "DISABLED")
        with pytest.raises(PermissionDeniedError):
            await ring.wrap(b"k" * 32, {"object": "x"})
    finally:
        await ring.aclose()


async def test_wrong_context_tamper_and_other_key_are_integrity_errors(ring: GcpKmsKeyring) -> None:
    wrapped = await ring.wrap(os.urandom(32), {"object": "a"})
    with pytest.raises(IntegrityError):
        await ring.unwrap(wrapped, {"object": "b"})
    blob = bytearray(wrapped.blob)
    blob[-1] ^= 1
    with pytest.raises(IntegrityError):
        await ring.unwrap(WrappedKey(NEW, bytes(blob)), {"object": "a"})
    with pytest.raises(IntegrityError):  # one key's ciphertext presented as another's
        await ring.unwrap(WrappedKey(OLD, wrapped.blob), {"object": "a"})
    with pytest.raises(IntegrityError, match="no crypto key"):
        await ring.unwrap(WrappedKey(NEW.replace("new", "other"), wrapped.blob), {"object": "a"})


async def test_key_missing_in_kms_is_integrity_error(cloud: tuple[FakeCloudKms, Path]) -> None:
    ghost = "projects/p/locations/global/keyRings/ring/cryptoKeys/ghost"
    ring = make(cloud, keys=(ghost,))
    try:
        with pytest.raises(IntegrityError):
            await ring.wrap(os.urandom(32), {"object": "a"})
    finally:
        await ring.aclose()


async def test_denied_key_and_bad_credentials(cloud: tuple[FakeCloudKms, Path], tmp_path: Path) -> None:
    fake, creds = cloud
    name = fake.create_key("projects/p/locations/global/keyRings/ring/cryptoKeys/denied")
    fake.denied.add(name)
    ring = make(cloud, keys=(name,))
    try:
        with pytest.raises(PermissionDeniedError, match="PERMISSION_DENIED"):
            await ring.wrap(os.urandom(32), {"object": "a"})
    finally:
        await ring.aclose()
    forged = json.loads(creds.read_text())
    other = FakeCloudKms(url=fake.url).service_account(tmp_path / "other.json")  # a key the fake never issued
    forged["private_key"] = json.loads(other.read_text())["private_key"]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    ring = GcpKmsKeyring(keys=(NEW,), credentials=str(tmp_path / "forged.json"), endpoint=fake.url)
    try:
        with pytest.raises(PermissionDeniedError):
            await ring.wrap(os.urandom(32), {"object": "a"})
    finally:
        await ring.aclose()


async def test_missing_token_is_refused(cloud: tuple[FakeCloudKms, Path]) -> None:
    import httpx

    fake, _ = cloud
    async with httpx.AsyncClient() as client:
        r = await client.post(f"{fake.url}/v1/{NEW}:encrypt", json={"plaintext": "AAAA"})
        assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
        r = await client.post(
            f"{fake.url}/v1/{NEW}:encrypt", json={"plaintext": "AAAA"}, headers={"Authorization": "Bearer made-up"}
        )
        assert r.status_code == 401


async def test_unreachable_kms_is_transient(cloud: tuple[FakeCloudKms, Path]) -> None:
    _, creds = cloud
    ring = GcpKmsKeyring(keys=(NEW,), credentials=str(creds), endpoint=f"http://127.0.0.1:{free_port()}", timeout=2)
    with pytest.raises(TransientError):
        await ring.wrap(os.urandom(32), {"object": "a"})
    await ring.aclose()


async def test_encrypt_layer_over_cloud_kms(ring: GcpKmsKeyring) -> None:
    raw = MemoryBackend()
    store = Encrypt(raw, ring)
    await store.put("doc.txt", b"secret" * 5000)
    assert await store.get("doc.txt") == b"secret" * 5000
    assert (await raw.head("doc.txt")).metadata["x-storage-key-id"] == NEW
    await raw.put_object("moved.txt", await raw.get("doc.txt"), metadata=(await raw.head("doc.txt")).metadata)
    with pytest.raises(IntegrityError):
        await store.get("moved.txt")


def test_settings() -> None:
    s = GcpKmsKeyringSettings.from_env({"UNISTORE_GCP_KMS_KEYS": f"{OLD},{NEW}", "UNISTORE_GCP_KMS_PRIMARY": NEW})
    assert s.keys == (OLD, NEW) and GcpKmsKeyring(s).primary_id == NEW
    assert s.endpoint == "https://cloudkms.googleapis.com"
    for env in (
        {},
        {"UNISTORE_GCP_KMS_KEYS": "not-a-key"},
        {"UNISTORE_GCP_KMS_KEYS": OLD, "UNISTORE_GCP_KMS_PRIMARY": NEW},
        {"UNISTORE_GCP_KMS_KEYS": OLD, "UNISTORE_GCP_KMS_ENDPOINT": "ftp://x"},
        {"UNISTORE_GCP_KMS_KEYS": OLD, "UNISTORE_GCP_KMS_TIMEOUT": "x"},
    ):
        with pytest.raises(ConfigurationError):
            GcpKmsKeyringSettings.from_env(env)


class TestEncryptOverCloudKmsConformance(BackendConformance):
    """The conformance suite over Encrypt(memory) with every data key wrapped by the Cloud KMS fake."""

    list_count = 120
    race_writers = 5
    race_increments = 4

    @pytest.fixture
    async def backend(self, cloud: tuple[FakeCloudKms, Path]) -> AsyncIterator[Encrypt]:
        ring = make(cloud, primary=NEW)
        yield Encrypt(MemoryBackend(), ring)
        await ring.aclose()
