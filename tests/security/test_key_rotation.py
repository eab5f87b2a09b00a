"""Key rotation cannot be used to hide, move or unlock data.

- a forged or stale checkpoint can make a job skip objects, never make a KEK look unused:
  ``retire_key`` reads every object's metadata, not the checkpoint;
- a rewrapped data key stays bound to its object: swapping wrapped keys or whole metadata
  between objects after a rewrap is still an IntegrityError;
- the checkpoint kept in the store holds no key material;
- a job never writes an object it could not unwrap (a tampered wrapped key stays as it was).
"""

from __future__ import annotations

import base64
import json
import os

import pytest

from unistore import IntegrityError, MemoryBackend
from unistore.encryption import (
    META_KEY_ID,
    META_WRAPPED_KEY,
    Encrypt,
    KeyInUseError,
    LocalKeyring,
    key_usage,
    retire_key,
    rewrap,
)
from unistore.encryption._rotation_state import Checkpoint, CheckpointStore

OLD, NEW = os.urandom(32), os.urandom(32)


async def filled(n: int = 6) -> tuple[MemoryBackend, Encrypt]:
    raw = MemoryBackend()
    writer = Encrypt(raw, LocalKeyring({"old": OLD}))
    for i in range(n):
        await writer.put_object(f"f/{i}", f"secret {i}".encode())
    return raw, Encrypt(raw, LocalKeyring({"old": OLD, "new": NEW}, primary="new"))


async def test_forged_checkpoint_cannot_make_a_kek_look_unused() -> None:
    raw, store = await filled()
    state = CheckpointStore(raw, "rewrap", "")
    forged = Checkpoint("rewrap", "", "new", "2000-01-01T00:00:00+00:00", cursor="f/\U0010ffff")
    await state.save(forged)
    report = await rewrap(store, metrics=False)
    assert report.rotated == 0  # the forged cursor made the job skip everything...
    with pytest.raises(KeyInUseError) as exc:  # ...but retiring still sees every object
        await retire_key(store, "old")
    assert exc.value.count == 6


async def test_rewrapped_keys_stay_bound_to_their_objects() -> None:
    raw, store = await filled(2)
    await rewrap(store, metrics=False)
    a, b = (await raw.head("f/0")).metadata, (await raw.head("f/1")).metadata
    assert a[META_KEY_ID] == b[META_KEY_ID] == "new"
    swapped = {**a, META_WRAPPED_KEY: b[META_WRAPPED_KEY]}
    await raw.replace_metadata("f/0", swapped)
    with pytest.raises(IntegrityError):
        await store.get("f/0")
    await raw.put_object("f/moved", await raw.get("f/1"), metadata=b)  # body and metadata moved together
    with pytest.raises(IntegrityError):
        await store.get("f/moved")
    assert await store.get("f/1") == b"secret 1"


async def test_checkpoint_holds_no_key_material() -> None:
    raw, store = await filled(30)

    class Stop(Exception):
        pass

    seen = 0

    def progress(_: object) -> None:
        nonlocal seen
        seen += 1
        if seen == 10:
            raise Stop

    with pytest.raises(Stop):
        await rewrap(store, progress=progress, checkpoint_every=0, metrics=False)
    state = CheckpointStore(raw, "rewrap", "")
    text = await raw.get(state.key)
    doc = json.loads(text)
    assert set(doc) == {"v", "kind", "prefix", "target", "started", "cursor", "counts", "runs"}
    for secret in (OLD, NEW):
        assert base64.b64encode(secret) not in text and secret.hex().encode() not in text
    for i in range(30):
        assert (await raw.head(f"f/{i}")).metadata[META_WRAPPED_KEY].encode() not in text


async def test_a_tampered_wrapped_key_is_never_rewritten() -> None:
    raw, store = await filled(2)
    meta = dict((await raw.head("f/0")).metadata)
    meta[META_WRAPPED_KEY] = base64.b64encode(b"\x01" + os.urandom(60)).decode()
    await raw.replace_metadata("f/0", meta)
    before = await raw.head("f/0")
    report = await rewrap(store, metrics=False)
    assert report.counts == {"failed": 1, "rewrapped": 1}
    after = await raw.head("f/0")
    assert (after.etag, dict(after.metadata)) == (before.etag, dict(before.metadata))
    assert (await key_usage(store)).counts == {"old": 1, "new": 1}
