"""Key rotation: rewrap and reencrypt jobs, checkpoints, live writers, key usage and retiring a KEK."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from unistore import LocalBackend, MemoryBackend, PreconditionFailedError
from unistore._base import StorageBackend
from unistore._errors import ConfigurationError
from unistore._types import IfMatch, ObjectInfo, WriteMode
from unistore.encryption import (
    META_KEY_ID,
    META_WRAPPED_KEY,
    Encrypt,
    KeyInUseError,
    LocalKeyring,
    RotationConflictError,
    RotationProgress,
    key_usage,
    keyring_from_env,
    reencrypt,
    retire_key,
    rewrap,
    rotate,
)
from unistore.encryption._rotation_state import CHECKPOINT_PREFIX, CheckpointStore
from unistore.layers import Layer

OLD, NEW = os.urandom(32), os.urandom(32)


def old_ring() -> LocalKeyring:
    return LocalKeyring({"old": OLD})


def new_ring() -> LocalKeyring:
    return LocalKeyring({"old": OLD, "new": NEW}, primary="new")


class CountingWrites(Layer):
    """Counts writes (puts and metadata replacements) per key."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.writes: dict[str, int] = {}

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        self.writes[key] = self.writes.get(key, 0) + 1
        return await self.inner.put_object(key, body, **kw)

    async def replace_metadata(self, key: str, metadata: Any, *, if_match: str | None = None) -> ObjectInfo:
        self.writes[key] = self.writes.get(key, 0) + 1
        return await self.inner.replace_metadata(key, metadata, if_match=if_match)


@pytest.fixture(params=["memory", "local"])
async def raw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StorageBackend]:
    store: StorageBackend = (
        MemoryBackend() if request.param == "memory" else LocalBackend(base_path=str(tmp_path), fsync=False)
    )
    yield store
    await store.aclose()


async def fill(raw: StorageBackend, n: int, prefix: str = "docs/") -> dict[str, bytes]:
    writer = Encrypt(raw, old_ring())
    bodies = {f"{prefix}{i:04d}.txt": os.urandom(100 + i) for i in range(n)}
    for key, body in bodies.items():
        await writer.put_object(key, body, metadata={"n": key[-8:-4]}, content_type="text/plain")
    return bodies


async def test_rewrap_moves_every_object_to_the_new_kek_without_touching_bodies(raw: StorageBackend) -> None:
    bodies = await fill(raw, 30)
    ciphertexts = {k: await raw.get(k) for k in bodies}
    seen: list[RotationProgress] = []
    report = await rewrap(Encrypt(raw, new_ring()), progress=seen.append, metrics=False)
    assert report.counts == {"rewrapped": 30} and report.rotated == 30 and report.target == "new"
    assert len(seen) == 30 and seen[-1].counts == {"rewrapped": 30}
    reader = Encrypt(raw, LocalKeyring({"new": NEW}))  # the old KEK is no longer needed
    for key, body in bodies.items():
        assert await raw.get(key) == ciphertexts[key]  # bodies untouched
        assert await reader.get(key) == body
        info = await reader.head(key)
        assert info.metadata == {"n": key[-8:-4]} and info.content_type == "text/plain"
    assert (await key_usage(reader)).counts == {"new": 30}
    assert not [k async for k in raw.iter_keys(CHECKPOINT_PREFIX)]  # the finished job left no checkpoint


async def test_rewrap_is_idempotent(raw: StorageBackend) -> None:
    await fill(raw, 10)
    counting = CountingWrites(raw)
    store = Encrypt(counting, new_ring())
    assert (await rewrap(store, metrics=False)).counts == {"rewrapped": 10}
    writes = dict(counting.writes)
    again = await rewrap(store, metrics=False)
    assert again.counts == {"current": 10} and again.rotated == 0
    assert {k: v for k, v in counting.writes.items() if not k.startswith(CHECKPOINT_PREFIX)} == {
        k: v for k, v in writes.items() if not k.startswith(CHECKPOINT_PREFIX)
    }


async def test_reencrypt_gives_new_data_keys_and_keeps_content(raw: StorageBackend) -> None:
    bodies = await fill(raw, 12)
    before = {k: (await raw.head(k)).metadata[META_WRAPPED_KEY] for k in bodies}
    store = Encrypt(raw, new_ring())
    report = await reencrypt(store, metrics=False)
    assert report.counts == {"reencrypted": 12}
    for key, body in bodies.items():
        meta = (await raw.head(key)).metadata
        assert meta[META_KEY_ID] == "new" and meta[META_WRAPPED_KEY] != before[key]
        assert await store.get(key) == body
        assert (await store.head(key)).metadata == {"n": key[-8:-4]}


async def test_reencrypt_twice_rewrites_nothing_the_second_time_within_a_job(raw: StorageBackend) -> None:
    await fill(raw, 8)
    counting = CountingWrites(raw)
    store = Encrypt(counting, new_ring())
    state = CheckpointStore(raw, "reencrypt", "")
    cp = await state.begin("new")  # a job that was killed before it saved any progress
    await state.save(cp)
    report = await reencrypt(store, metrics=False)
    assert report.counts == {"reencrypted": 8} and report.runs == 2
    objects = {k: v for k, v in counting.writes.items() if not k.startswith(CHECKPOINT_PREFIX)}
    assert objects and set(objects.values()) == {1}


async def test_prefix_limits_the_job(raw: StorageBackend) -> None:
    await fill(raw, 5, "a/")
    await fill(raw, 5, "b/")
    store = Encrypt(raw, new_ring())
    assert (await rewrap(store, "a/", metrics=False)).counts == {"rewrapped": 5}
    usage = await key_usage(store)
    assert usage.counts == {"new": 5, "old": 5}
    assert all(k.startswith("b/") for k in usage.samples["old"])


async def test_plain_and_tampered_objects_are_reported_not_fatal(raw: StorageBackend) -> None:
    await fill(raw, 3)
    await raw.put_object("docs/plain.txt", b"not encrypted")
    bad = dict((await raw.head("docs/0001.txt")).metadata)
    bad[META_WRAPPED_KEY] = base64.b64encode(b"\x01" + os.urandom(60)).decode()
    await raw.put_object("docs/broken.txt", await raw.get("docs/0001.txt"), metadata=bad)
    store = Encrypt(raw, new_ring())
    report = await rewrap(store, metrics=False)
    assert report.counts == {"rewrapped": 3, "plain": 1, "failed": 1}
    assert [k for k, _ in report.failed] == ["docs/broken.txt"]
    usage = await key_usage(store)
    assert usage.counts == {"new": 3, "old": 1} and usage.plain == 1
    with pytest.raises(KeyInUseError) as exc:
        await retire_key(store, "old")
    assert exc.value.count == 1 and exc.value.keys == ("docs/broken.txt",) and "docs/broken.txt" in str(exc.value)
    assert exc.value.status == 409


async def test_retire_after_rotation(raw: StorageBackend) -> None:
    await fill(raw, 4)
    store = Encrypt(raw, new_ring())
    with pytest.raises(KeyInUseError, match="4 object"):
        await retire_key(store, "old")
    await rewrap(store, metrics=False)
    usage = await retire_key(store, "old")
    assert usage.counts == {"new": 4}
    with pytest.raises(ConfigurationError, match="primary"):
        await retire_key(store, "new")


class Crash(Exception):
    pass


class KillAfter(Layer):
    """Fails the job after ``n`` metadata updates (a crash mid-run)."""

    def __init__(self, inner: StorageBackend, n: int) -> None:
        super().__init__(inner)
        self.left = n

    async def replace_metadata(self, key: str, metadata: Any, *, if_match: str | None = None) -> ObjectInfo:
        if self.left <= 0:
            raise Crash
        self.left -= 1
        return await self.inner.replace_metadata(key, metadata, if_match=if_match)


async def test_interrupted_job_resumes_from_its_checkpoint(raw: StorageBackend) -> None:
    await fill(raw, 40)
    counting = CountingWrites(raw)
    with pytest.raises(Crash):
        await rewrap(Encrypt(KillAfter(counting, 15), new_ring()), concurrency=4, metrics=False)
    cp = await CheckpointStore(raw, "rewrap", "").load()
    assert cp is not None and cp.cursor is not None and cp.cursor <= "docs/0015.txt"
    report = await rewrap(Encrypt(counting, new_ring()), concurrency=4, metrics=False)
    assert report.runs == 2
    assert report.counts.get("rewrapped", 0) + report.counts.get("current", 0) >= 40 - 15
    objects = {k: v for k, v in counting.writes.items() if not k.startswith(CHECKPOINT_PREFIX)}
    assert len(objects) == 40 and set(objects.values()) == {1}  # no object rewritten twice
    assert (await key_usage(Encrypt(raw, new_ring()))).counts == {"new": 40}


class RacingWriter(Layer):
    """Before each metadata update, a live writer overwrites the object (with the new keyring)."""

    def __init__(self, inner: StorageBackend, writer: Encrypt, bodies: dict[str, bytes]) -> None:
        super().__init__(inner)
        self.writer = writer
        self.bodies = bodies

    async def replace_metadata(self, key: str, metadata: Any, *, if_match: str | None = None) -> ObjectInfo:
        body = b"newer " + key.encode()
        self.bodies[key] = body
        await self.writer.put_object(key, body)
        return await self.inner.replace_metadata(key, metadata, if_match=if_match)


async def test_live_writer_wins_every_race(raw: StorageBackend) -> None:
    bodies = await fill(raw, 10)
    writer = Encrypt(raw, new_ring())
    report = await rewrap(Encrypt(RacingWriter(raw, writer, bodies), new_ring()), metrics=False)
    assert report.counts == {"current": 10}  # each lost its IfMatch race, then found the writer's new version
    for key, body in bodies.items():
        assert await writer.get(key) == body == b"newer " + key.encode()


async def test_two_jobs_at_once_conflict(raw: StorageBackend) -> None:
    await fill(raw, 50)
    store = Encrypt(raw, new_ring())
    results = await asyncio.gather(
        rewrap(store, rate=200, checkpoint_every=0, metrics=False),
        rewrap(store, rate=200, checkpoint_every=0, metrics=False),
        return_exceptions=True,
    )
    assert sum(isinstance(r, RotationConflictError) for r in results) >= 1
    await rewrap(store, metrics=False)  # the survivor's or a fresh run finishes the job
    assert (await key_usage(store)).counts == {"new": 50}


async def test_rate_limit(raw: StorageBackend) -> None:
    await fill(raw, 10)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await rewrap(Encrypt(raw, new_ring()), rate=20, metrics=False)
    assert loop.time() - start >= 9 / 20 * 0.9


async def test_prometheus_metrics() -> None:
    from prometheus_client import CollectorRegistry

    raw = MemoryBackend()
    await fill(raw, 3)
    registry = CollectorRegistry()
    await rewrap(Encrypt(raw, new_ring()), metrics=registry)
    assert registry.get_sample_value("unistore_rotation_objects_total", {"mode": "rewrap", "outcome": "rewrapped"}) == 3
    assert registry.get_sample_value("unistore_rotation_running", {"mode": "rewrap"}) == 0


async def test_needs_an_encrypt_layer_and_valid_options() -> None:
    with pytest.raises(ConfigurationError, match="Encrypt"):
        await rewrap(MemoryBackend())
    store = Encrypt(MemoryBackend(), new_ring())
    with pytest.raises(ConfigurationError):
        await rotate(store, "rewrap", rate=0)
    with pytest.raises(ConfigurationError):
        await rotate(store, "shuffle")  # type: ignore[arg-type]


def test_keyring_from_env() -> None:
    env = {"UNISTORE_KEYRING": f"a:{LocalKeyring.generate_key()},b:{LocalKeyring.generate_key()}"}
    ring = keyring_from_env({**env, "UNISTORE_KEYRING_PRIMARY": "b"})
    assert isinstance(ring, LocalKeyring) and ring.primary_id == "b"
    aws = keyring_from_env({"UNISTORE_AWS_KMS_KEYS": "alias/a"})
    assert type(aws).__name__ == "AwsKmsKeyring" and aws.primary_id == "alias/a"
    name = "projects/p/locations/l/keyRings/r/cryptoKeys/k"
    gcp = keyring_from_env({"UNISTORE_GCP_KMS_KEYS": name, "UNISTORE_KEYRING_KIND": "gcp-kms"})
    assert type(gcp).__name__ == "GcpKmsKeyring" and gcp.primary_id == name
    with pytest.raises(ConfigurationError, match="no keyring"):
        keyring_from_env({})
    with pytest.raises(ConfigurationError):
        keyring_from_env({"UNISTORE_KEYRING_KIND": "vault"})


async def test_writes_through_if_match_are_still_refused_for_stale_etags() -> None:
    raw = MemoryBackend()
    store = Encrypt(raw, new_ring())
    info = await store.put_object("k", b"one")
    await store.put_object("k", b"two")
    mode: WriteMode = IfMatch(info.etag)
    with pytest.raises(PreconditionFailedError):
        await store.put_object("k", b"three", mode=mode)


class RacingRewrite(Layer):
    """Before each of the job's conditional rewrites, a live writer overwrites the object."""

    def __init__(self, inner: StorageBackend, writer: Encrypt, bodies: dict[str, bytes]) -> None:
        super().__init__(inner)
        self.writer = writer
        self.bodies = bodies

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        if isinstance(kw.get("mode"), IfMatch) and not key.startswith(CHECKPOINT_PREFIX):
            new = b"newer " + key.encode()
            self.bodies[key] = new
            await self.writer.put_object(key, new)
        return await self.inner.put_object(key, body, **kw)


async def test_reencrypt_never_overwrites_a_live_write(raw: StorageBackend) -> None:
    bodies = await fill(raw, 6)
    writer = Encrypt(raw, new_ring())
    report = await reencrypt(Encrypt(RacingRewrite(raw, writer, bodies), new_ring()), metrics=False)
    assert report.counts == {"current": 6}
    for key, body in bodies.items():
        assert await writer.get(key) == body == b"newer " + key.encode()


async def test_a_new_primary_restarts_an_unfinished_job(raw: StorageBackend) -> None:
    await fill(raw, 10)
    state = CheckpointStore(raw, "rewrap", "")
    stale = await state.begin("some-older-primary")
    stale.cursor = "docs/0008.txt"
    await state.save(stale)
    report = await rewrap(Encrypt(raw, new_ring()), metrics=False)  # the target changed: every object again
    assert report.counts == {"rewrapped": 10}
    assert (await key_usage(Encrypt(raw, new_ring()))).counts == {"new": 10}


async def test_rewrap_on_gcs_patches_metadata_only(fake_gcs: dict[str, str]) -> None:
    from unistore.backends.gcs import GCSBackend

    raw = GCSBackend(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"])
    try:
        prefix = f"rot-{os.urandom(4).hex()}/"
        bodies = await fill(raw, 8, prefix)
        generations = {k: (await raw.head(k)).etag for k in bodies}
        store = Encrypt(raw, new_ring())
        assert (await rewrap(store, prefix, metrics=False)).counts == {"rewrapped": 8}
        for key, body in bodies.items():
            assert (await raw.head(key)).etag == generations[key]  # same generation: the body was not rewritten
            assert await store.get(key) == body
        assert (await key_usage(store, prefix)).counts == {"new": 8}
    finally:
        await raw.aclose()


class SlowFirst(Layer):
    """The first object's head is slow; counts the heads in flight."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.now = self.peak = 0

    async def head(self, key: str) -> ObjectInfo:
        self.now += 1
        self.peak = max(self.peak, self.now)
        try:
            await asyncio.sleep(0.3 if key.endswith("0000.txt") else 0.001)
            return await self.inner.head(key)
        finally:
            self.now -= 1


async def test_concurrency_stays_bounded_behind_a_slow_object(raw: StorageBackend) -> None:
    await fill(raw, 60)
    slow = SlowFirst(raw)
    report = await rewrap(Encrypt(slow, new_ring()), concurrency=4, metrics=False)
    assert report.counts == {"rewrapped": 60} and slow.peak <= 4


class Flaky(Layer):
    """Each object's first two metadata updates fail as if the store were briefly unreachable."""

    def __init__(self, inner: StorageBackend) -> None:
        super().__init__(inner)
        self.failures: dict[str, int] = {}

    async def replace_metadata(self, key: str, metadata: Any, *, if_match: str | None = None) -> ObjectInfo:
        if self.failures.get(key, 0) < 2:
            self.failures[key] = self.failures.get(key, 0) + 1
            from unistore import UnavailableError

            raise UnavailableError("blip", key=key)
        return await self.inner.replace_metadata(key, metadata, if_match=if_match)


async def test_transient_errors_are_retried(raw: StorageBackend) -> None:
    await fill(raw, 3)
    report = await rewrap(Encrypt(Flaky(raw), new_ring()), metrics=False)
    assert report.counts == {"rewrapped": 3}


async def test_reencrypt_with_a_fixed_cutoff_is_idempotent(raw: StorageBackend) -> None:
    from datetime import UTC, datetime

    await fill(raw, 6)
    await asyncio.sleep(0.01)
    cutoff = datetime.now(UTC)
    counting = CountingWrites(raw)
    store = Encrypt(counting, new_ring())
    assert (await reencrypt(store, written_before=cutoff, metrics=False)).counts == {"reencrypted": 6}
    again = await reencrypt(store, written_before=cutoff, metrics=False)
    assert again.counts == {"current": 6}
    assert {k: v for k, v in counting.writes.items() if not k.startswith(CHECKPOINT_PREFIX)} == {
        f"docs/{i:04d}.txt": 1 for i in range(6)
    }
