"""The Encrypt layer: round trips, ranges, metadata, Tink interop, the local keyring and URLs."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from unistore import (
    ByteRange,
    ConfigurationError,
    IntegrityError,
    InvalidMetadataError,
    InvalidRangeError,
    LocalBackend,
    MemoryBackend,
    NotFoundError,
    SuffixRange,
    UnsupportedError,
)
from unistore._types import Download, Range
from unistore.encryption import (
    ALGORITHM,
    META_ALGORITHM,
    META_HEADER,
    META_KEY_ID,
    META_PLAINTEXT_SHA256,
    META_PLAINTEXT_SIZE,
    META_SEGMENT_SIZE,
    META_WRAPPED_KEY,
    Encrypt,
    EncryptedObjectInfo,
    Keyring,
    LocalKeyring,
    LocalKeyringSettings,
    WrappedKey,
    associated_data,
    wrap_context,
)
from unistore.layers import Layer

KEY_A = base64.b64encode(b"A" * 32).decode()
KEY_B = base64.b64encode(b"B" * 32).decode()


@pytest.fixture
def keyring() -> LocalKeyring:
    return LocalKeyring({"key-v1": os.urandom(32)})


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


class _Recording(Layer):
    """Records every range the layer above asks the store for."""

    def __init__(self, inner: MemoryBackend) -> None:
        super().__init__(inner)
        self.ranges: list[Range | None] = []

    async def open(self, key: str, *, range: Range | None = None, **kw: Any) -> Download:
        self.ranges.append(range)
        return await self.inner.open(key, range=range, **kw)


# --- round trips and ranges -------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 43, 44, 45, 127, 128, 129, 1000, 4133])
async def test_round_trip_around_segment_boundaries(keyring: LocalKeyring, size: int) -> None:
    """Segment size 100: 44 plaintext bytes in segment 0, 84 in the others."""
    store = Encrypt(MemoryBackend(), keyring, segment_size=100)
    data = os.urandom(size)
    info = await store.put_object("b", data)
    assert info.size == size and isinstance(info, EncryptedObjectInfo)
    assert (await store.inner.head("b")).size == store.layout.ciphertext_size(size)
    assert await store.get("b") == data
    await store.put_object("s", _chunks(data, 7))  # streamed: no plaintext size up front
    assert await store.get("s") == data
    assert (await store.head("s")).size == size
    assert [i.size async for i in store.iter_objects("")] == [size, size]
    raw = await store.inner.get("b")
    assert len(data) < 16 or data[:16] not in raw


async def test_every_range_of_a_small_object(keyring: LocalKeyring) -> None:
    store = Encrypt(MemoryBackend(), keyring, segment_size=100)
    data = os.urandom(400)
    await store.put_object("r", data)
    for start in range(0, 400, 3):
        for end in (*range(start + 1, 400, 29), 400, 450):
            async with await store.open("r", range=ByteRange(start, end)) as dl:
                assert (await dl.read(), dl.start, dl.end) == (data[start:end], start, min(end, 400))
        async with await store.open("r", range=ByteRange(start)) as dl:
            assert await dl.read() == data[start:]
    for length in (1, 44, 45, 128, 399, 400, 1000):
        async with await store.open("r", range=SuffixRange(length)) as dl:
            assert await dl.read() == data[-length:]
    for bad in (ByteRange(400), ByteRange(401, 500), ByteRange(10_000)):
        with pytest.raises(InvalidRangeError) as exc:
            await store.open("r", range=bad)
        assert exc.value.size == 400


async def test_range_reads_fetch_only_the_segments_they_touch(keyring: LocalKeyring) -> None:
    recording = _Recording(MemoryBackend())
    store = Encrypt(recording, keyring, segment_size=100)
    data = os.urandom(10_000)
    await store.put_object("r", data)
    async with await store.open("r", range=ByteRange(5_000, 5_010)) as dl:  # inside segment 60
        assert await dl.read() == data[5_000:5_010]
    assert recording.ranges == [ByteRange(6_000, 6_100)]
    async with await store.open("r", range=ByteRange(5_080, 5_100)) as dl:  # segments 60 and 61
        assert await dl.read() == data[5_080:5_100]
    assert recording.ranges[-1] == ByteRange(6_000, 6_200)
    async with await store.open("r", range=ByteRange(0, 10)) as dl:  # segment 0, with the header
        assert await dl.read() == data[:10]
    assert recording.ranges[-1] == ByteRange(0, 100)


async def test_a_foreign_segment_size_is_read_too(keyring: LocalKeyring) -> None:
    inner = MemoryBackend()
    await Encrypt(inner, keyring, segment_size=100).put_object("x", bytes(range(256)) * 10)
    other = Encrypt(inner, keyring, segment_size=4096)
    assert await other.get("x") == bytes(range(256)) * 10
    async with await other.open("x", range=ByteRange(1000, 1100)) as dl:
        assert await dl.read() == (bytes(range(256)) * 10)[1000:1100]


async def test_streamed_put_of_a_file_and_copy(keyring: LocalKeyring, tmp_path: Path) -> None:
    store = Encrypt(MemoryBackend(), keyring)
    data = os.urandom(300_000)
    (tmp_path / "f").write_bytes(data)
    await store.put_object("f", tmp_path / "f", metadata={"owner": "me"})
    copied = await store.copy("f", "g")
    assert copied.size == len(data) and copied.metadata == {"owner": "me"}
    assert await store.get("g") == data
    raw_f, raw_g = await store.inner.get("f"), await store.inner.get("g")
    assert raw_f != raw_g  # re-encrypted under its own data key, bound to its own name


# --- metadata ---------------------------------------------------------------------------------


class _Locked:
    """A keyring whose KMS is unreachable: nothing can be decrypted."""

    primary_id = "key-v1"

    def key_ids(self) -> frozenset[str]:
        return frozenset({"key-v1"})

    async def wrap(self, dek: bytes, context: Mapping[str, str]) -> WrappedKey:
        raise AssertionError("not used")

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        raise AssertionError("head and get_metadata must not unwrap")


async def test_encryption_metadata_is_readable_without_decrypting(keyring: LocalKeyring) -> None:
    inner = MemoryBackend()
    data = b"%PDF-1.7 secret"
    await Encrypt(inner, keyring).put_object("doc.pdf", data, metadata={"owner": "me"})
    locked = Encrypt(inner, _Locked())
    assert isinstance(locked.keyring, Keyring)
    info = await locked.head("doc.pdf")
    assert (info.size, info.content_type, dict(info.metadata)) == (len(data), "application/pdf", {"owner": "me"})
    assert isinstance(info, EncryptedObjectInfo) and info.encryption is not None
    assert (info.encryption.algorithm, info.encryption.key_id, info.encryption.segment_size) == (
        ALGORITHM,
        "key-v1",
        65536,
    )
    md = await locked.get_metadata("doc.pdf")
    assert md[META_KEY_ID] == "key-v1" and md[META_ALGORITHM] == ALGORITHM
    assert md[META_PLAINTEXT_SIZE] == str(len(data)) and md["size"] == len(data)
    assert md[META_PLAINTEXT_SHA256] == hashlib.sha256(data).hexdigest()
    assert {META_WRAPPED_KEY, META_HEADER, META_SEGMENT_SIZE} <= md.keys() and md["owner"] == "me"
    raw = await inner.head("doc.pdf")
    assert raw.metadata[META_KEY_ID] == "key-v1" and raw.content_type == "application/pdf"


async def test_reserved_metadata_names_are_refused(keyring: LocalKeyring) -> None:
    store = Encrypt(MemoryBackend(), keyring)
    with pytest.raises(InvalidMetadataError):
        await store.put_object("k", b"x", metadata={"X-Storage-Key-Id": "evil"})
    assert not await store.exists("k")


async def test_plain_objects_are_not_served_as_plaintext(keyring: LocalKeyring) -> None:
    inner = MemoryBackend()
    await inner.put_object("plain", b"not encrypted")
    store = Encrypt(inner, keyring)
    for call in (store.get("plain"), store.head("plain"), store.open("plain", range=ByteRange(0, 3))):
        with pytest.raises(IntegrityError):
            await call
    assert await store.exists("plain") and not await store.exists("missing")
    with pytest.raises(NotFoundError):
        await store.get("missing")


# --- Tink interop -----------------------------------------------------------------------------


def _tink(dek: bytes, segment_size: int) -> Any:
    tink = pytest.importorskip("tink")
    from tink import secret_key_access, streaming_aead
    from tink.proto import aes_gcm_hkdf_streaming_pb2, common_pb2, tink_pb2

    streaming_aead.register()
    key = aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingKey(
        version=0,
        key_value=dek,
        params=aes_gcm_hkdf_streaming_pb2.AesGcmHkdfStreamingParams(
            ciphertext_segment_size=segment_size, derived_key_size=32, hkdf_hash_type=common_pb2.SHA256
        ),
    )
    keyset = tink_pb2.Keyset(
        primary_key_id=1,
        key=[
            tink_pb2.Keyset.Key(
                key_data=tink_pb2.KeyData(
                    type_url="type.googleapis.com/google.crypto.tink.AesGcmHkdfStreamingKey",
                    value=key.SerializeToString(),
                    key_material_type=tink_pb2.KeyData.SYMMETRIC,
                ),
                status=tink_pb2.ENABLED,
                key_id=1,
                output_prefix_type=tink_pb2.RAW,
            )
        ],
    )
    handle = tink.proto_keyset_format.parse(keyset.SerializeToString(), secret_key_access.TOKEN)
    return handle.primitive(streaming_aead.StreamingAead)


class _Captured(io.BytesIO):
    value = b""

    def close(self) -> None:
        self.value = self.getvalue()
        super().close()


@pytest.mark.parametrize("size", [0, 1, 65_480, 65_481, 65_536 * 3, 1_000_003])
async def test_tink_decrypts_what_we_write(keyring: LocalKeyring, size: int) -> None:
    inner = MemoryBackend()
    store = Encrypt(inner, keyring)
    data = os.urandom(size)
    await store.put_object("dir/obj.bin", data, metadata={"owner": "me"})  # in one piece
    raw = await inner.head("dir/obj.bin")
    wrapped = WrappedKey(raw.metadata[META_KEY_ID], base64.b64decode(raw.metadata[META_WRAPPED_KEY]))
    dek = await keyring.unwrap(wrapped, wrap_context("dir/obj.bin"))
    with _tink(dek, 65536).new_decrypting_stream(
        io.BytesIO(await inner.get("dir/obj.bin")), associated_data("dir/obj.bin", raw.metadata)
    ) as r:
        assert r.read() == data
    await store.put_object("dir/obj.bin", _chunks(data, 100_000), metadata={"owner": "me"})  # streamed
    raw = await inner.head("dir/obj.bin")
    wrapped = WrappedKey(raw.metadata[META_KEY_ID], base64.b64decode(raw.metadata[META_WRAPPED_KEY]))
    dek = await keyring.unwrap(wrapped, wrap_context("dir/obj.bin"))
    ciphertext = await inner.get("dir/obj.bin")
    aead = _tink(dek, 65536)
    import tink

    with aead.new_decrypting_stream(io.BytesIO(ciphertext), associated_data("dir/obj.bin", raw.metadata)) as r:
        assert r.read() == data
    moved = associated_data("dir/other", raw.metadata)
    with aead.new_decrypting_stream(io.BytesIO(ciphertext), moved) as r, pytest.raises(tink.TinkError):
        r.read()


@pytest.mark.parametrize("size", [0, 44, 45, 10_000])
async def test_we_decrypt_what_tink_writes(keyring: LocalKeyring, size: int) -> None:
    inner = MemoryBackend()
    data = os.urandom(size)
    dek = os.urandom(32)
    wrapped = await keyring.wrap(dek, wrap_context("t"))
    stored = {"owner": "tink", META_ALGORITHM: ALGORITHM, META_SEGMENT_SIZE: "100"}
    sink = _Captured()
    with _tink(dek, 100).new_encrypting_stream(sink, associated_data("t", stored)) as w:
        w.write(data)
    stored |= {
        META_KEY_ID: wrapped.key_id,
        META_WRAPPED_KEY: base64.b64encode(wrapped.blob).decode(),
        META_HEADER: base64.b64encode(sink.value[:40]).decode(),
    }
    await inner.put_object("t", sink.value, metadata=stored)
    store = Encrypt(inner, keyring, segment_size=100)
    assert await store.get("t") == data
    if size > 50:
        async with await store.open("t", range=ByteRange(40, 50)) as dl:
            assert await dl.read() == data[40:50]


# --- the local keyring ------------------------------------------------------------------------


async def test_local_keyring_from_env_and_file(tmp_path: Path) -> None:
    ring = LocalKeyring.from_env({"UNISTORE_KEYRING": f"key-v2:{KEY_B}, key-v1:{KEY_A}"})
    assert (ring.primary_id, ring.key_ids()) == ("key-v2", frozenset({"key-v1", "key-v2"}))
    path = tmp_path / "keyring.json"
    path.write_text(json.dumps({"primary": "key-v1", "keys": {"key-v1": KEY_A}}))
    ring = LocalKeyring.from_env({"UNISTORE_KEYRING_FILE": str(path), "UNISTORE_KEYRING": f"key-v2:{KEY_B}"})
    assert (ring.primary_id, ring.key_ids()) == ("key-v1", frozenset({"key-v1", "key-v2"}))
    settings = LocalKeyringSettings(keys=f"a:{KEY_A} b:{KEY_B}", primary="b")
    assert LocalKeyring.from_settings(settings).primary_id == "b"
    assert "KEY" not in repr(settings) and KEY_A not in repr(settings)
    assert len(base64.b64decode(LocalKeyring.generate_key())) == 32
    url_safe = base64.urlsafe_b64encode(b"\xfb" * 32).decode().rstrip("=")
    assert LocalKeyring.from_env({"UNISTORE_KEYRING": f"u:{url_safe}"}).primary_id == "u"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"UNISTORE_KEYRING": "nocolon"},
        {"UNISTORE_KEYRING": "a:!!notbase64"},
        {"UNISTORE_KEYRING": "a:" + base64.b64encode(b"short").decode()},
        {"UNISTORE_KEYRING": f"a:{KEY_A},a:{KEY_B}"},
        {"UNISTORE_KEYRING": f"bad id:{KEY_A}"},
        {"UNISTORE_KEYRING": f"a:{KEY_A}", "UNISTORE_KEYRING_PRIMARY": "b"},
        {"UNISTORE_KEYRING_FILE": "/nonexistent/keyring.json"},
    ],
)
def test_local_keyring_refuses_bad_configuration(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError):
        LocalKeyring.from_env(env)


async def test_rotating_the_primary_keeps_old_objects_readable() -> None:
    inner = MemoryBackend()
    v1 = LocalKeyring.from_env({"UNISTORE_KEYRING": f"key-v1:{KEY_A}"})
    await Encrypt(inner, v1).put_object("old", b"under v1")
    v2 = LocalKeyring.from_env({"UNISTORE_KEYRING": f"key-v2:{KEY_B},key-v1:{KEY_A}"})
    store = Encrypt(inner, v2)
    await store.put_object("new", b"under v2")
    assert (await store.get("old"), await store.get("new")) == (b"under v1", b"under v2")
    infos = [await store.head(k) for k in ("old", "new")]
    assert [i.encryption.key_id for i in infos if isinstance(i, EncryptedObjectInfo) and i.encryption] == [
        "key-v1",
        "key-v2",
    ]
    with pytest.raises(IntegrityError, match="no key 'key-v2'"):
        await Encrypt(inner, v1).get("new")  # retired too early: refused, not garbage
    wrong = LocalKeyring({"key-v1": b"C" * 32})
    with pytest.raises(IntegrityError):
        await Encrypt(inner, wrong).get("old")


async def test_wrapped_keys_are_bound_to_their_context(keyring: LocalKeyring) -> None:
    wrapped = await keyring.wrap(b"k" * 32, {"object": "a"})
    assert await keyring.unwrap(wrapped, {"object": "a"}) == b"k" * 32
    for bad, context in (
        (wrapped, {"object": "b"}),
        (WrappedKey("key-v1", wrapped.blob[:-1] + bytes([wrapped.blob[-1] ^ 1])), {"object": "a"}),
        (WrappedKey("key-v1", b"\x01short"), {"object": "a"}),
        (WrappedKey("nope", wrapped.blob), {"object": "a"}),
    ):
        with pytest.raises(IntegrityError):
            await keyring.unwrap(bad, context)


# --- URLs -------------------------------------------------------------------------------------


async def test_urls_are_refused_without_a_signer(keyring: LocalKeyring) -> None:
    store = Encrypt(MemoryBackend(base_url="http://x/files", url_secret="s" * 20), keyring)
    assert not store.capabilities.signed_urls and store.capabilities.ranges
    assert await store.put("a b.txt", b"x") == "a%20b.txt"  # no URL could serve plaintext
    for call in (store.get_url("a b.txt"), store.sign_url("a b.txt")):
        with pytest.raises(UnsupportedError, match="ciphertext"):
            await call


async def test_concurrent_reads_and_writes(keyring: LocalKeyring) -> None:
    store = Encrypt(MemoryBackend(), keyring, segment_size=1000)
    bodies = {f"k{i}": os.urandom(5_000 + i) for i in range(20)}
    await asyncio.gather(*(store.put_object(k, _chunks(v, 333)) for k, v in bodies.items()))
    got = await asyncio.gather(*(store.get(k) for k in bodies))
    assert got == list(bodies.values())


def test_keyring_settings_are_documented_and_read() -> None:
    from dataclasses import fields

    from unistore._settings_doc import field_docs, keyring_rows

    docs = field_docs(LocalKeyringSettings)
    assert all(docs.get(f.name) for f in fields(LocalKeyringSettings))
    rows = keyring_rows()
    assert [r.setting for r in rows] == [f.name for f in fields(LocalKeyringSettings)]
    for row in rows:
        assert row.variable is not None
        assert getattr(LocalKeyringSettings.from_env({row.variable: "v"}), row.setting) == "v"
    assert LocalKeyringSettings.from_env({}) == LocalKeyringSettings()


@pytest.mark.parametrize("chunk", [1, 7, 83, 84, 85, 100, 101, 1000, 10_000])
async def test_any_chunking_of_plaintext_and_ciphertext(chunk: int) -> None:
    """Segments are cut the same way whatever chunks come in, on both sides."""
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    layout = Layout(100)
    for size in (0, 44, 45, 128, 129, 2_000):
        data = os.urandom(size)
        cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", layout)
        ciphertext = b"".join([c async for c in cipher.encrypt_stream(_chunks(data, chunk))])
        assert len(ciphertext) == layout.ciphertext_size(size)
        plain = [c async for c in cipher.decrypt_stream(_chunks(ciphertext, chunk), 0, None, skip_header=True)]
        assert b"".join(plain) == data
        assert all(len(p) == layout.plain_len(i) for i, p in enumerate(plain[:-1]))
        last = layout.segments(len(ciphertext)) - 1
        tail = ciphertext[layout.cipher_start(1) :] if last else b""
        if last:
            got = b"".join([c async for c in cipher.decrypt_stream(_chunks(tail, chunk), 1, last, skip_header=False)])
            assert got == data[layout.plain_start(1) :]
            with pytest.raises(IntegrityError):  # one byte too many after the last segment
                [c async for c in cipher.decrypt_stream(_chunks(tail + b"x", chunk), 1, last, skip_header=False)]


class _Counting(LocalKeyring):
    unwraps = 0

    async def unwrap(self, wrapped: WrappedKey, context: Mapping[str, str]) -> bytes:
        self.unwraps += 1
        return await super().unwrap(wrapped, context)


async def test_data_keys_are_cached_for_a_while() -> None:
    keyring, now = _Counting({"k": os.urandom(32)}), [0.0]
    store = Encrypt(MemoryBackend(), keyring, key_cache_size=2, key_cache_ttl=60, clock=lambda: now[0])
    for name in "abc":
        await store.put_object(name, name.encode() * 1000)
    for _ in range(3):
        assert await store.get("a") == b"a" * 1000
        assert await (await store.open("a", range=ByteRange(5, 10))).read() == b"aaaaa"
    assert keyring.unwraps == 1
    await store.get("b")
    await store.get("c")  # evicts a (size 2)
    await store.get("a")
    assert keyring.unwraps == 4
    now[0] = 61.0  # expired
    await store.get("a")
    assert keyring.unwraps == 5
    store.forget_keys()
    await store.get("a")
    assert keyring.unwraps == 6
    await store.put_object("a", b"new version")  # a new data key: never served from the old entry
    assert await store.get("a") == b"new version" and keyring.unwraps == 7
    uncached = Encrypt(store.inner, keyring, key_cache_size=0)
    await uncached.get("a")
    await uncached.get("a")
    assert keyring.unwraps == 9


async def test_read_ahead_keeps_order_bounds_memory_raises_and_closes() -> None:
    from unistore.encryption._stream import read_ahead

    pulled: list[int] = []
    closed: list[bool] = []

    async def source(fail_at: int | None = None) -> AsyncIterator[bytes]:
        try:
            for i in range(10):
                if i == fail_at:
                    raise ValueError("source broke")
                pulled.append(i)
                yield bytes([i])
        finally:
            closed.append(True)

    assert [c async for c in read_ahead(source())] == [bytes([i]) for i in range(10)]
    pulled.clear()
    ahead = read_ahead(source(), depth=1)
    assert await anext(ahead) == b"\x00"
    await asyncio.sleep(0.01)
    assert len(pulled) <= 3  # one yielded, one queued, one in the pump's hands
    await ahead.aclose()
    assert closed[-1] is True
    with pytest.raises(ValueError, match="source broke"):
        [c async for c in read_ahead(source(fail_at=4))]


async def test_lean_read_ahead_pulls_one_item_past_the_consumer() -> None:
    from unistore.encryption._stream import read_ahead

    pulled: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for i in range(10):
            pulled.append(i)
            yield bytes([i])

    ahead = read_ahead(source(), lean=True)
    got = [await anext(ahead)]
    for _ in range(3):
        await asyncio.sleep(0.01)  # the consumer waits (a store writing): the task may run ahead
        assert len(pulled) == len(got) + 1  # the consumer's item and the next, never two ahead
        got.append(await anext(ahead))
    got += [c async for c in ahead]
    assert got == [bytes([i]) for i in range(10)]


async def test_a_put_reads_back_without_parsing_its_own_metadata(
    keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    from unistore.encryption import EncryptionInfo

    parsed: list[str] = []
    original = EncryptionInfo.parse

    def counting(cls: type[EncryptionInfo], metadata: Mapping[str, str], key: str, backend: str) -> EncryptionInfo:
        parsed.append(key)
        return original(metadata, key, backend)

    monkeypatch.setattr(EncryptionInfo, "parse", classmethod(counting))
    store = Encrypt(MemoryBackend(), keyring)
    info = await store.put_object("p", b"payload", metadata={"a": "1"})
    assert await store.get("p") == b"payload"
    assert await store.head("p") == info
    info.metadata["a"] = "changed by the caller"  # type: ignore[index]  # a copy: what is remembered stays
    assert (await store.head("p")).metadata == {"a": "1"}
    assert parsed == []


async def test_configuration_and_metadata_budget_are_checked(keyring: LocalKeyring) -> None:
    for bad in ({"segment_size": 56}, {"segment_size": 2**31}, {"key_cache_size": -1}):
        with pytest.raises(ConfigurationError):
            Encrypt(MemoryBackend(), keyring, **bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        Encrypt(MemoryBackend(), object())  # type: ignore[arg-type]
    store = Encrypt(MemoryBackend(), keyring)
    with pytest.raises(InvalidMetadataError, match="bytes are left for yours"):
        await store.put_object("m", b"x", metadata={"note": "y" * 1800})
    assert not await store.exists("m")
    await store.put_object("m", b"x", metadata={"note": "y" * 1400})
    assert (await store.head("m")).metadata == {"note": "y" * 1400}


class _RefusesMidStream(Layer):
    """A store that reads the first chunk of a body and then refuses the write (a conditional PUT
    that failed on the server)."""

    async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
        await anext(aiter(body))
        from unistore import AlreadyExistsError

        raise AlreadyExistsError("refused", key=key)


async def test_a_refused_streamed_write_stops_reading_the_body(keyring: LocalKeyring) -> None:
    store = Encrypt(_RefusesMidStream(MemoryBackend()), keyring, segment_size=1000)
    pulled: list[int] = []

    async def endless() -> AsyncIterator[bytes]:
        while True:
            pulled.append(1)
            yield b"x" * 10_000

    from unistore import AlreadyExistsError

    with pytest.raises(AlreadyExistsError):
        await asyncio.wait_for(store.put_object("k", endless(), mode="create"), 10)
    await asyncio.sleep(0.01)
    assert len(pulled) <= 3
    assert [t for t in asyncio.all_tasks() if "pump" in repr(t)] == []  # nothing reads on


async def test_a_stack_over_encrypt_never_falls_back_to_a_ciphertext_url(keyring: LocalKeyring) -> None:
    from unistore.layers import Retry

    inner = MemoryBackend(base_url="http://x/files", url_secret="s" * 20)
    stacked = Retry(Encrypt(inner, keyring))
    url = await stacked.put("dir/a b.txt", b"x")
    assert url == "dir/a%20b.txt" and "signature" not in url
    with pytest.raises(UnsupportedError):
        await stacked.get_url("dir/a b.txt")


# --- cost of the streamed paths and of re-reads -------------------------------------------------


class _Writes(MemoryBackend):
    """Records the length of every body chunk a streamed put hands the store."""

    def __init__(self) -> None:
        super().__init__()
        self.chunks: list[int] = []

    async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
        if isinstance(body, bytes | bytearray | memoryview):
            return await super().put_object(key, body, **kw)

        async def recorded() -> AsyncIterator[bytes]:
            async for chunk in body:
                self.chunks.append(len(chunk))
                yield chunk

        return await super().put_object(key, recorded(), **kw)


class _LocalWrites(LocalBackend):
    """Records the length of every body chunk a streamed put hands the local store."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.chunks: list[int] = []

    async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
        if isinstance(body, bytes | bytearray | memoryview):
            return await super().put_object(key, body, **kw)

        async def recorded() -> AsyncIterator[bytes]:
            async for chunk in body:
                self.chunks.append(len(chunk))
                yield chunk

        return await super().put_object(key, recorded(), **kw)


async def test_a_streamed_put_hands_the_store_pieces_of_whole_segments(
    tmp_path: Path, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store gets the ciphertext in pieces of whole segments (the first one led by the
    header), each sealed into one reused buffer: a few pieces per MiB, not one per segment."""
    from unistore.encryption import _stream

    monkeypatch.setattr(_stream, "PIECE", 3_500)  # 3 segments of 1000 bytes per piece
    inner = _LocalWrites(base_path=str(tmp_path), fsync=False)
    store = Encrypt(inner, keyring, segment_size=1000)
    data = os.urandom(10_000)
    await store.put_object("s", _chunks(data, 3000))
    layout = store.layout
    # per 3000-byte input chunk: the whole segments it completes, in pieces of at most 3
    assert inner.chunks == [3000, 3000, 3000, 1000, 216]
    assert sum(inner.chunks) == layout.ciphertext_size(len(data))
    assert await store.get("s") == data
    monkeypatch.setattr(_stream, "PIECE", 10)  # smaller than a segment: one segment per piece
    inner.chunks.clear()
    await store.put_object("s", _chunks(data, 3000))
    assert inner.chunks[0] == 1000 and set(inner.chunks[:-1]) == {1000}
    assert await store.get("s") == data


async def test_a_default_streamed_put_of_1_mib_chunks_hands_the_local_store_4_pieces_per_mib(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    """The local store gets 256 KiB pieces (4 segments each); any other store one segment at a
    time, as soon as it is sealed (fewer sealed bytes held by a network upload)."""
    data = os.urandom(4 << 20)
    local = _LocalWrites(base_path=str(tmp_path), fsync=False)
    store = Encrypt(local, keyring)
    await store.put_object("s", _chunks(data, 1 << 20))
    assert len(local.chunks) == 17 and set(local.chunks[:-1]) == {256 << 10}
    assert local.chunks[-1] == store.layout.ciphertext_size(len(data)) - 16 * (256 << 10)
    assert await store.get("s") == data
    memory = _Writes()
    store = Encrypt(memory, keyring)
    await store.put_object("s", _chunks(data, 1 << 20))
    assert len(memory.chunks) == 65 and set(memory.chunks[:-1]) == {64 << 10}
    assert await store.get("s") == data


@pytest.mark.parametrize("segment_size", [100, 1000, 64 * 1024])
async def test_sealed_pieces_are_the_ciphertext_of_every_other_way_of_sealing(segment_size: int) -> None:
    """The same ciphertext, byte for byte, whatever the chunking and the piece size: the format is
    the one objects written before had (they read as ever)."""
    from unistore.encryption import _stream
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    layout = Layout(segment_size)
    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", layout)
    first, plain = layout.first_plain, layout.plain
    for size in (0, 1, first - 1, first, first + 1, first + plain, first + plain + 1, 5 * plain + 3, 300_001):
        data = os.urandom(size)
        whole = cipher.encrypt_all(data)
        for chunk in {1 if size < 3_000 else 997, first, plain, plain + 1, 65_536, max(size, 1)}:
            for piece in (1, segment_size, 3 * segment_size + 5, 256 * 1024):
                for per_chunk in (True, False):
                    _stream.PIECE, saved = piece, _stream.PIECE
                    try:
                        batches = [b async for b in cipher.seal(_chunks(data, chunk), per_chunk=per_chunk)]
                    finally:
                        _stream.PIECE = saved
                    pieces = [p for b in batches for p in b]
                    assert b"".join(pieces) == whole
                    assert all(len(p) % segment_size == 0 for p in pieces[:-1])
                    assert all(batches) and (per_chunk or {len(b) for b in batches} == {1})
            batches = [p async for b in cipher.encrypt_batches(_chunks(data, chunk)) for p in b]
            assert b"".join(batches) == whole


GOLDEN_SHA256 = "efda2add84482676d4b1c18e0755d96ba3587d8489ae24dd908c2d04aca29d70"
"""SHA-256 of the ciphertext below, as the code of 2026-12-06 (before pieces) wrote it."""


async def test_the_stream_format_is_unchanged() -> None:
    """A fixed key, header and plaintext give the ciphertext they always gave, in one piece or streamed."""
    from unistore.encryption._stream import Layout, SegmentCipher

    header = bytes([40]) + bytes(range(1, 40))
    cipher = SegmentCipher(b"K" * 32, header, b"associated", Layout(100))
    data = bytes(range(256)) * 4
    assert hashlib.sha256(cipher.encrypt_all(data)).hexdigest() == GOLDEN_SHA256
    streamed = b"".join([p async for b in cipher.seal(_chunks(data, 77)) for p in b])
    assert hashlib.sha256(streamed).hexdigest() == GOLDEN_SHA256
    plain = [c async for c in cipher.decrypt_stream(_chunks(streamed, 333), 0, None, skip_header=True)]
    assert b"".join(plain) == data


async def test_encrypt_batches_are_the_stream_unjoined() -> None:
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", Layout(100))
    data = os.urandom(1_000)
    for chunk in (1, 50, 84, 300, 1_000):
        batches = [b async for b in cipher.encrypt_batches(_chunks(data, chunk))]
        assert batches[0] == [cipher.header] and all(batches)
        pieces = [p for b in batches for p in b]
        assert len(pieces[1]) == 60 and {len(p) for p in pieces[2:-1]} <= {100}
        joined = b"".join([c async for c in cipher.encrypt_stream(_chunks(data, chunk))])
        assert b"".join(pieces) == joined
        plain = [c async for c in cipher.decrypt_stream(_chunks(joined, 7), 0, None, skip_header=True)]
        assert b"".join(plain) == data


async def test_a_streamed_get_decrypts_each_segment_only_when_asked_for_it() -> None:
    """The segments of a read chunk are decrypted one at a time, as the reader takes them: the
    plaintext of a whole chunk is never held at once."""
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    opened: list[bytes] = []

    class Counting:
        def __init__(self, aead: Any) -> None:
            self.aead = aead

        def decrypt(self, nonce: bytes, data: Any, ad: Any) -> bytes:
            opened.append(nonce[-5:])
            out: bytes = self.aead.decrypt(nonce, data, ad)
            return out

    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", Layout(100))
    data = os.urandom(2_000)
    ciphertext = cipher.encrypt_all(data)
    cipher._aead = Counting(cipher._aead)  # type: ignore[assignment]
    stream = cipher.decrypt_stream(_chunks(ciphertext, len(ciphertext)), 0, None, skip_header=True)
    assert await anext(stream) == data[:44]
    assert opened == [bytes(5)]
    assert await anext(stream) == data[44:128]
    assert opened == [bytes(5), bytes([0, 0, 0, 1, 0])]
    await stream.aclose()


async def test_decrypt_span_returns_exactly_the_window_asked_for() -> None:
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    layout = Layout(100)
    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", layout)
    for size in (0, 44, 45, 300, 1_000):
        data = os.urandom(size)
        ciphertext = cipher.encrypt_all(data)
        last = layout.segments(len(ciphertext)) - 1
        assert cipher.decrypt_span(ciphertext, 0, last, skip_header=True) == data
        for first in range(last + 1):
            span = ciphertext[layout.cipher_start(first) if first else 0 :]
            base = layout.plain_start(first)
            for skip in range(0, size - base, 13):
                for length in (1, 44, 84, 85, 200, size - base - skip):
                    length = min(length, size - base - skip)
                    got = cipher.decrypt_span(span, first, last, skip_header=first == 0, skip=skip, length=length)
                    assert got == data[base + skip : base + skip + length]
        if last:
            broken = bytearray(ciphertext)
            broken[-1] ^= 1
            with pytest.raises(IntegrityError):
                cipher.decrypt_span(bytes(broken), 0, last, skip_header=True, skip=0, length=1)


async def test_remembered_metadata_never_hides_a_change(keyring: LocalKeyring) -> None:
    """Re-reads skip parsing the metadata only while it is exactly what was read before: a changed
    value under the same key and size is parsed and authenticated again."""
    inner = MemoryBackend()
    store = Encrypt(inner, keyring)
    data = os.urandom(200_000)
    await store.put_object("k", data, metadata={"owner": "alice"})
    assert await (await store.open("k", range=ByteRange(70_000, 70_010))).read() == data[70_000:70_010]
    assert "k" in store._envelopes
    stored = dict((await inner.head("k")).metadata)
    await inner.replace_metadata("k", {**stored, "owner": "mallory"})
    with pytest.raises(IntegrityError):
        await (await store.open("k", range=ByteRange(70_000, 70_010))).read()
    with pytest.raises(IntegrityError):
        await store.get("k")
    await inner.replace_metadata("k", stored)
    assert await store.get("k") == data
    store.forget_keys()
    assert not store._envelopes
    assert [info.size async for info in store.iter_objects()] == [len(data)]
    assert not store._envelopes  # a listing does not fill the cache
    uncached = Encrypt(inner, keyring, key_cache_size=0)
    assert await uncached.get("k") == data and not uncached._envelopes


async def test_a_streamed_local_get_leaves_the_read_ahead_to_the_store(tmp_path: Path, keyring: LocalKeyring) -> None:
    """The local store reads its next chunk while the caller decrypts this one: the layer adds no
    read-ahead task of its own there (one more hop and one more chunk alive per chunk), elsewhere it does."""

    data = os.urandom(3 << 20)
    for inner, pumps in ((LocalBackend(base_path=str(tmp_path), fsync=False), False), (MemoryBackend(), True)):
        store = Encrypt(inner, keyring)
        await store.put_object("big", _chunks(data, 1 << 20))
        got, seen = [], set()
        async with await store.open("big") as dl:
            async for chunk in dl:
                got.append(chunk)
                seen.add(any("pump" in repr(t) for t in asyncio.all_tasks()))
        assert b"".join(got) == data
        assert (True in seen) is pumps
        await store.aclose()


async def test_a_streamed_put_seals_in_a_thread_only_over_the_local_store(
    tmp_path: Path, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local store writes in a worker thread while the loop waits, so the next chunks are
    sealed meanwhile in another thread (one chunk at a time, from the second on); any other
    store is handed each chunk's ciphertext as it pulls it, sealed on the loop (one sealed chunk
    less held, which is what an S3 upload's memory needs)."""
    import threading

    from unistore.encryption import _stream

    seen: list[bool] = []
    seal_into = _stream._seal_into

    def watched(*args: Any) -> list[bytes]:
        seen.append(threading.current_thread() is not threading.main_thread())
        return seal_into(*args)

    monkeypatch.setattr(_stream, "_seal_into", watched)
    data = os.urandom(3 << 20)
    for inner, threaded in (
        (LocalBackend(base_path=str(tmp_path), fsync=False), [False, True, True]),
        (MemoryBackend(), []),
    ):
        seen.clear()
        store = Encrypt(inner, keyring)
        await store.put_object("big", _chunks(data, 1 << 20))
        assert seen == threaded
        assert await store.get("big") == data
        await store.aclose()


def _late(delay: float, calls: list[int]) -> Any:
    """An offload that runs each job in a thread after ``delay`` seconds (the loop races ahead)."""
    import time

    def run(fn: Any, *args: Any) -> Any:
        calls.append(1)

        def later() -> Any:
            time.sleep(delay)
            return fn(*args)

        return asyncio.get_running_loop().run_in_executor(None, later)

    return run


async def _reused(data: bytes, size: int) -> AsyncIterator[bytes]:
    """``data`` in chunks of ``size``, each in the same bytearray, overwritten once the next is asked for."""
    buf = bytearray(size)
    for i in range(0, len(data), size):
        piece = data[i : i + size]
        buf[: len(piece)] = piece
        yield memoryview(buf)[: len(piece)]  # type: ignore[misc]
        buf[:] = b"\xee" * size


@pytest.mark.parametrize("segment_size", [100, 1000, 64 * 1024])
async def test_sealing_in_threads_yields_what_sealing_on_the_loop_does(
    segment_size: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sealed by slow threads, with buffers in reuse, the same pieces as :meth:`seal`, byte for
    byte; every piece handed out stays as it was after the put (no buffer is reused while the
    caller still holds it, none handed out while a thread writes it); a source that overwrites
    its chunk once the next one is asked for is sealed on the loop."""
    from unistore.encryption import _stream
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    monkeypatch.setattr(_stream, "OFFLOAD", 1)
    layout = Layout(segment_size)
    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", layout)
    for size in (0, 1, layout.first_plain + 1, 5 * layout.plain + 3, 300_001, 1_100_000):
        data = os.urandom(size)
        whole = cipher.encrypt_all(data)
        for chunk in {997, layout.plain + 1, 65_536, 256 * 1024, max(size, 1)}:
            calls: list[int] = []
            expected = [b async for b in cipher.seal(_chunks(data, chunk))]
            batches = [b async for b in cipher.seal_offloaded(_chunks(data, chunk), _late(0.002, calls))]
            kept = [(piece, bytes(piece)) for batch in batches for piece in batch]
            await asyncio.sleep(0.01)  # any thread still writing a handed-out buffer would show here
            assert batches == expected
            assert all(isinstance(piece, bytes) and piece == copy for piece, copy in kept)
            assert b"".join(p for p, _ in kept) == whole
            assert calls or len(expected) <= 2  # every chunk but the first is sealed in a thread
            calls = []
            mutable = [b async for b in cipher.seal_offloaded(_reused(data, chunk), _late(0.002, calls))]
            assert b"".join(p for b in mutable for p in b) == whole
            assert calls == []


async def test_a_local_put_hands_the_store_pieces_it_may_keep(tmp_path: Path, keyring: LocalKeyring) -> None:
    """A store that keeps every chunk it was handed finds them unchanged after the put (sealing
    in threads reuses buffers, never one the store was given) and they are the stored bytes."""
    kept: list[tuple[bytes, bytes]] = []

    class Keeping(LocalBackend):
        async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
            async def keep() -> AsyncIterator[bytes]:
                async for chunk in body:
                    kept.append((chunk, bytes(chunk)))
                    yield chunk

            return await super().put_object(key, keep(), **kw)

    inner = Keeping(base_path=str(tmp_path), fsync=False)
    store = Encrypt(inner, keyring)
    data = os.urandom((5 << 20) + 12345)
    await store.put_object("k", _chunks(data, 1 << 20))
    assert len(kept) > 8 and all(chunk == copy for chunk, copy in kept)
    assert b"".join(chunk for chunk, _ in kept) == (tmp_path / "k").read_bytes()
    assert await store.get("k") == data
    await store.aclose()


async def _collect(stream: AsyncIterator[bytes], into: bytearray) -> None:
    async for segment in stream:
        into += segment


async def test_opening_in_threads_releases_nothing_unauthenticated(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks opened in slow threads yield the plaintext, in order; a tampered segment raises
    before any byte of its chunk is yielded, and a cut ciphertext raises at its end."""
    from unistore.encryption import _stream
    from unistore.encryption._stream import Layout, SegmentCipher, new_header

    monkeypatch.setattr(_stream, "OFFLOAD", 1)
    layout = Layout(1000)
    cipher = SegmentCipher(os.urandom(32), new_header(), b"ad", layout)
    data = os.urandom(50_000)
    ciphertext = cipher.encrypt_all(data)
    for chunk in (997, 3000, 10_000):
        calls: list[int] = []
        stream = cipher.decrypt_stream(
            _chunks(ciphertext, chunk), 0, None, skip_header=True, offload=_late(0.002, calls)
        )
        assert b"".join([s async for s in stream]) == data
        assert calls
        bad = bytearray(ciphertext)
        bad[30_500] ^= 1  # in segment 30, plaintext from 29_356 on
        got = bytearray()
        stream = cipher.decrypt_stream(_chunks(bytes(bad), chunk), 0, None, skip_header=True, offload=_late(0.002, []))
        with pytest.raises(IntegrityError):
            await _collect(stream, got)
        assert data.startswith(got) and len(got) <= layout.plain_start(30)
        cut = ciphertext[: 40 * layout.segment_size]
        stream = cipher.decrypt_stream(_chunks(cut, chunk), 0, None, skip_header=True, offload=_late(0.002, []))
        with pytest.raises(IntegrityError):
            [s async for s in stream]


async def test_a_local_get_opens_chunks_in_a_thread_from_the_second_on(
    tmp_path: Path, keyring: LocalKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Opted in, a whole local get opens each chunk after the first in a worker thread; a range
    read and a small object stay on the loop. By default every get opens on the loop."""
    from unistore.encryption import _encrypt

    calls: list[int] = []
    real = _encrypt.run_in_thread

    def counted(fn: Any, *args: Any) -> Any:
        calls.append(1)
        return real(fn, *args)

    monkeypatch.setattr(_encrypt, "run_in_thread", counted)
    store = Encrypt(LocalBackend(base_path=str(tmp_path), fsync=False), keyring)
    data = os.urandom(4 << 20)
    await store.put_object("big", _chunks(data, 1 << 20))
    await store.put_object("small", _chunks(data[:5000], 1 << 20))
    calls.clear()
    assert await store.get("big") == data
    assert calls == []
    store._open_in_thread = True
    assert await store.get("big") == data
    assert len(calls) >= 2
    calls.clear()
    assert await store.get("small") == data[:5000]
    async with await store.open("big", range=ByteRange(1 << 20, (1 << 20) + 65536)) as dl:
        assert await dl.read() == data[1 << 20 : (1 << 20) + 65536]
    assert calls == []
    await store.aclose()


async def test_a_local_put_the_store_stops_reading_leaves_no_sealing_behind(
    tmp_path: Path, keyring: LocalKeyring
) -> None:
    """A store that fails after a few chunks of a long put: the error reaches the caller, the
    source is read no further, and no object is written (a chunk still sealing in a thread is
    dropped)."""
    pulled: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        for i in range(64):
            pulled.append(i)
            yield os.urandom(1 << 20)

    class Failing(LocalBackend):
        async def put_object(self, key: str, body: Any, **kw: Any) -> Any:
            async def some() -> AsyncIterator[bytes]:
                count = 0
                async for chunk in body:
                    count += 1
                    if count > 10:
                        raise OSError("disk full")
                    yield chunk

            return await super().put_object(key, some(), **kw)

    store = Encrypt(Failing(base_path=str(tmp_path), fsync=False), keyring)
    with pytest.raises(Exception, match="disk full"):
        await store.put_object("k", source())
    assert len(pulled) <= 14  # the 10 written, the one refused and at most 3 sealed ahead
    assert not await store.exists("k")
    await store.aclose()
