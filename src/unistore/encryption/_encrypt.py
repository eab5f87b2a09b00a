"""The :class:`Encrypt` layer: client-side envelope encryption of every object body."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import os
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import quote

from .._base import BaseBackend, StorageBackend, check_read_conditions, iter_body, url_after_put
from .._errors import (
    ConfigurationError,
    IntegrityError,
    InvalidMetadataError,
    InvalidRangeError,
    PreconditionFailedError,
    StorageError,
    UnsupportedError,
)
from .._signing import UrlSigner
from .._types import (
    MAX_METADATA_BYTES,
    Body,
    ByteRange,
    Capabilities,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    normalize_metadata,
)
from ..backends.local import LocalBackend
from ..backends.local._pool import run_in_thread
from ..layers._layer import Layer, in_memory
from ._keyring import Keyring, WrappedKey
from ._stream import (
    HEADER_SIZE,
    KEY_SIZE,
    TAG_SIZE,
    Layout,
    SegmentCipher,
    close,
    flatten,
    new_header,
    read_ahead,
)

__all__ = [
    "ALGORITHM",
    "DEFAULT_SEGMENT_SIZE",
    "Encrypt",
    "EncryptedObjectInfo",
    "EncryptionInfo",
    "META_ALGORITHM",
    "META_HEADER",
    "META_KEY_ID",
    "META_PLAINTEXT_SHA256",
    "META_PLAINTEXT_SIZE",
    "META_SEGMENT_SIZE",
    "META_WRAPPED_KEY",
    "associated_data",
    "wrap_context",
]

ALGORITHM: Final = "AES256_GCM_HKDF_SHA256_STREAMING"
"""Tink's AES-GCM-HKDF streaming AEAD: AES-256-GCM segments, HKDF-SHA256 key derivation."""
DEFAULT_SEGMENT_SIZE: Final = 64 * 1024

META_ALGORITHM: Final = "x-storage-encryption-alg"
META_SEGMENT_SIZE: Final = "x-storage-encryption-segment-size"
META_HEADER: Final = "x-storage-encryption-header"
META_KEY_ID: Final = "x-storage-key-id"
META_WRAPPED_KEY: Final = "x-storage-wrapped-key"
META_PLAINTEXT_SIZE: Final = "x-storage-plaintext-size"
META_PLAINTEXT_SHA256: Final = "x-storage-plaintext-sha256"
RESERVED_PREFIX: Final = "x-storage-"
_UNBOUND = frozenset({META_KEY_ID, META_WRAPPED_KEY, META_HEADER})  # rewrapping changes them; the header keys itself
_READ_RETRIES = 3
IN_MEMORY_LIMIT: Final = 1024 * 1024
"""Bodies given as bytes up to this size are encrypted in one piece (they are in memory anyway)."""


def wrap_context(key: str) -> dict[str, str]:
    """The context an object's data key is wrapped with: the object's key (a moved body does not unwrap)."""
    return {"object": key}


def associated_data(key: str, metadata: Mapping[str, str]) -> bytes:
    """What a body's segment key is bound to: the object key and its stored metadata (user metadata,
    algorithm, segment size, plaintext size and digest), except the KEK id, the wrapped key and the
    header, which rewrapping may change."""
    bound = {name: value for name, value in metadata.items() if name not in _UNBOUND}
    doc = {"v": 1, "key": key, "metadata": bound}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class EncryptionInfo:
    """How one object is encrypted, as its metadata says (readable without decrypting)."""

    algorithm: str
    key_id: str
    wrapped_key: bytes
    segment_size: int
    header: bytes
    plaintext_size: int | None = None
    plaintext_sha256: str | None = None

    def metadata(self) -> dict[str, str]:
        """The stored metadata names and values."""
        out = {
            META_ALGORITHM: self.algorithm,
            META_SEGMENT_SIZE: str(self.segment_size),
            META_KEY_ID: self.key_id,
            META_WRAPPED_KEY: base64.b64encode(self.wrapped_key).decode(),
            META_HEADER: base64.b64encode(self.header).decode(),
        }
        if self.plaintext_size is not None:
            out[META_PLAINTEXT_SIZE] = str(self.plaintext_size)
        if self.plaintext_sha256 is not None:
            out[META_PLAINTEXT_SHA256] = self.plaintext_sha256
        return out

    @classmethod
    def parse(cls, metadata: Mapping[str, str], key: str, backend: str) -> EncryptionInfo:
        """The encryption fields of stored ``metadata``; IntegrityError if missing or malformed."""

        def bad(why: str) -> IntegrityError:
            return IntegrityError(f"not an encrypted object: {why}", key=key, backend=backend, operation="decrypt")

        try:
            algorithm = metadata[META_ALGORITHM]
            key_id = metadata[META_KEY_ID]
            wrapped = base64.b64decode(metadata[META_WRAPPED_KEY], validate=True)
            header = base64.b64decode(metadata[META_HEADER], validate=True)
            segment_size = int(metadata[META_SEGMENT_SIZE])
            size_text = metadata.get(META_PLAINTEXT_SIZE)
            plaintext_size = int(size_text) if size_text is not None else None
        except KeyError as exc:
            raise bad(f"metadata {exc.args[0]} is missing") from None
        except (ValueError, binascii.Error):
            raise bad("its encryption metadata is malformed") from None
        if algorithm != ALGORITHM:
            raise bad(f"unknown algorithm {algorithm!r}")
        if len(header) != HEADER_SIZE or not HEADER_SIZE + TAG_SIZE < segment_size < 2**31:
            raise bad("its encryption metadata is malformed")
        digest = metadata.get(META_PLAINTEXT_SHA256)
        return cls(algorithm, key_id, wrapped, segment_size, header, plaintext_size, digest)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """One stored object's parsed encryption metadata, remembered with the metadata and size it came from."""

    metadata: dict[str, str]
    size: int
    env: EncryptionInfo
    plaintext_size: int
    associated_data: bytes
    user: dict[str, str]
    """The caller's metadata (without the encryption metadata); copied into every info handed out."""
    layout: Layout


@dataclass(frozen=True, slots=True)
class EncryptedObjectInfo(ObjectInfo):
    """An :class:`ObjectInfo` of an encrypted object: ``size`` is the plaintext size, ``metadata``
    the caller's, and ``encryption`` how it is encrypted; :meth:`as_dict` (``get_metadata``) shows
    the encryption metadata names too."""

    encryption: EncryptionInfo | None = None

    def as_dict(self) -> dict[str, object]:
        """The custom metadata, the encryption metadata, then the system fields."""
        out: dict[str, object] = dict(self.metadata)
        if self.encryption is not None:
            out.update(self.encryption.metadata())
        out.update(ObjectInfo.as_dict(self))
        return out


class Encrypt(Layer):
    """Encrypts every body written through it and decrypts every read (envelope encryption).

    Each object gets a fresh 256-bit data key (DEK), wrapped by ``keyring``'s primary KEK;
    the body is Tink's AES256-GCM-HKDF streaming AEAD in segments of ``segment_size`` ciphertext
    bytes, bound to the object's key and metadata. Puts and gets stream at bounded memory; a
    range read fetches and decrypts only the segments it touches. A tampered, truncated,
    reordered, swapped or wrongly keyed body raises :class:`IntegrityError` before any of its
    bytes is returned.

    Where it belongs: below Observe, Idempotency, RateLimit and any compression (ciphertext does
    not compress); above Cache and Retry, which then hold and move only ciphertext (a cache may
    live anywhere; a retried read resumes inside the ciphertext and is authenticated as usual).

    URLs: with ``signer`` (a :class:`UrlSigner` whose ``base_url`` is the ``/files`` route of an
    app serving *this* layer, such as the unistore service), ``sign_url`` signs URLs there;
    without one it raises :class:`UnsupportedError`, since the store's own URLs would hand out
    ciphertext, and ``put`` returns the key as a relative URL. ``digest`` stores the plaintext's
    SHA-256 for bodies given as bytes.

    Reads keep the data keys of the last ``key_cache_size`` objects read for ``key_cache_ttl``
    seconds, so re-reading an object (a range read, a cached page) asks the keyring (a KMS)
    once; ``forget_keys()`` empties that cache, ``key_cache_size=0`` turns it off.

    ``threads`` > 1 seals and opens the segments of streamed puts and gets on that many threads,
    up to ``threads`` chunks at once (AES-GCM runs outside the GIL). With the default, 1, the
    cipher runs on the event loop's thread, except over the local store, where a streamed put
    seals each chunk after the first in a worker thread while the store writes the last one
    (bench/encrypt.py); small objects stay inline.
    """

    transforms_bodies: ClassVar[bool] = True
    """Every body must pass through this layer: nothing may write to the store below it directly."""

    def __init__(
        self,
        inner: StorageBackend,
        keyring: Keyring,
        *,
        segment_size: int = DEFAULT_SEGMENT_SIZE,
        signer: UrlSigner | None = None,
        digest: bool = True,
        key_cache_size: int = 256,
        key_cache_ttl: float = 300.0,
        threads: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(inner)
        if not isinstance(keyring, Keyring):
            raise ConfigurationError(f"keyring must provide the Keyring protocol, not {type(keyring).__name__}")
        if key_cache_size < 0 or key_cache_ttl < 0:
            raise ConfigurationError("key_cache_size and key_cache_ttl must be >= 0")
        if threads < 1:
            raise ConfigurationError("threads must be >= 1")
        self.keyring = keyring
        self.layout = Layout(segment_size)
        self.signer = signer
        self.digest = digest
        self.key_cache_size = key_cache_size
        self.key_cache_ttl = key_cache_ttl
        self.threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._open_in_thread = False
        """Whether a whole streamed get over the local store opens each chunk after the first in a
        worker thread (``threads=1``). Off: on a loaded 2-core machine it took 25 % more CPU (the
        hop and a copy out of the thread's buffer) and read slower (bench/encrypt.py
        ``--open-in-thread``)."""
        self._clock = clock
        self._ciphers: OrderedDict[tuple[str, bytes, bytes, bytes], tuple[float, SegmentCipher]] = OrderedDict()
        self._envelopes: OrderedDict[str, _Envelope] = OrderedDict()

    @property
    def capabilities(self) -> Capabilities:  # type: ignore[override]
        """The inner store's, with ranges, without presigned writes or server-side copy; signed URLs with a signer."""
        caps = self.inner.capabilities
        limit = caps.max_object_size
        if limit is not None:
            limit = max(0, limit * self.layout.plain // self.layout.segment_size - HEADER_SIZE)
        return dataclasses.replace(
            caps,
            ranges=True,
            signed_urls=self.signer is not None,
            presigned_put=False,
            server_side_copy=False,
            max_object_size=limit,
        )

    def __repr__(self) -> str:
        return f"Encrypt({self.inner!r}, {self.keyring!r})"

    def _workers(self) -> ThreadPoolExecutor | None:
        """The threads the cipher runs on (started on first use), or None with ``threads=1``."""
        if self.threads < 2:
            return None
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="unistore-encrypt")
        return self._pool

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        await super().aclose()

    # --- helpers ----------------------------------------------------------------------

    def _envelope(self, key: str, info: ObjectInfo, remember: bool = True) -> _Envelope:
        """How the stored ciphertext ``info`` of ``key`` is encrypted, its plaintext size and the
        associated data its body is bound to; IntegrityError if its metadata is not that of an
        encrypted object. Remembered for the objects last read (while their metadata and size
        stay exactly the same), so a re-read skips the parsing and the associated data."""
        hit = self._envelopes.get(key)
        if hit is not None and hit.size == info.size and hit.metadata == info.metadata:
            self._envelopes.move_to_end(key)
            return hit
        env = EncryptionInfo.parse(info.metadata, info.key, self.name)
        layout = self.layout if env.segment_size == self.layout.segment_size else Layout(env.segment_size)
        size = layout.plaintext_size(info.size)
        if env.plaintext_size is not None and env.plaintext_size != size:
            raise IntegrityError(
                "the stored plaintext size does not match the ciphertext", key=info.key, backend=self.name
            )
        found = _Envelope(
            dict(info.metadata),
            info.size,
            env,
            size,
            associated_data(key, info.metadata),
            _user(info.metadata),
            layout,
        )
        if remember:
            self._remember(key, found)
        return found

    def _remember(self, key: str, found: _Envelope) -> None:
        """Keep ``found`` as the envelope of ``key`` (the ``key_cache_size`` last ones are kept)."""
        if self.key_cache_size:
            self._envelopes[key] = found
            self._envelopes.move_to_end(key)
            while len(self._envelopes) > self.key_cache_size:
                self._envelopes.popitem(last=False)

    def _written_size(self, key: str, info: ObjectInfo, env: EncryptionInfo) -> int:
        """The plaintext size of the ciphertext ``info`` just written; IntegrityError if the store
        kept another size than the body's."""
        size = self.layout.plaintext_size(info.size)
        if env.plaintext_size is not None and env.plaintext_size != size:
            raise IntegrityError("the stored plaintext size does not match the ciphertext", key=key, backend=self.name)
        return size

    def _plain(self, info: ObjectInfo, remember: bool = True, found: _Envelope | None = None) -> EncryptedObjectInfo:
        """``info`` of the stored ciphertext as the caller sees it (``found``: its envelope, if known)."""
        if found is None:
            found = self._envelope(info.key, info, remember)
        return EncryptedObjectInfo(
            info.key,
            found.plaintext_size,
            info.etag,
            info.last_modified,
            info.content_type,
            dict(found.user),
            info.cache_control,
            info.content_disposition,
            None,
            found.env,
        )

    async def _cipher(self, key: str, stored: ObjectInfo, found: _Envelope | None = None) -> SegmentCipher:
        """The segment cipher of one stored object (``found``: its envelope, if known): from the
        cache (same wrapped key, header and associated data, within ``key_cache_ttl``), else
        unwrapped by the keyring."""
        if found is None:
            found = self._envelope(key, stored)
        env, ad = found.env, found.associated_data
        slot = (env.key_id, env.wrapped_key, env.header, ad)
        now = self._clock()
        hit = self._ciphers.get(slot)
        if hit is not None and hit[0] > now and hit[1].layout.segment_size == env.segment_size:
            self._ciphers.move_to_end(slot)
            return hit[1]
        dek = await self.keyring.unwrap(WrappedKey(env.key_id, env.wrapped_key), wrap_context(key))
        try:
            cipher = SegmentCipher(dek, env.header, ad, found.layout)
        except StorageError as exc:
            exc.key, exc.backend = key, self.name
            raise
        if self.key_cache_size and self.key_cache_ttl:
            self._ciphers[slot] = (now + self.key_cache_ttl, cipher)
            self._ciphers.move_to_end(slot)
            while len(self._ciphers) > self.key_cache_size:
                self._ciphers.popitem(last=False)
        return cipher

    def forget_keys(self) -> None:
        """Drop every cached data key (e.g. after retiring a KEK): the next reads unwrap again."""
        self._ciphers.clear()
        self._envelopes.clear()

    # --- primitives -------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        return self._plain(await self.inner.head(key))

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists (encrypted or not: nothing is decrypted)."""
        return await self.inner.exists(key)

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        if isinstance(body, str):
            raise TypeError("body must be bytes, not str: encode it first")
        user = normalize_metadata(metadata)
        for name in user:
            if name.startswith(RESERVED_PREFIX):
                raise InvalidMetadataError(f"metadata names starting with {RESERVED_PREFIX!r} belong to Encrypt")
        stored = dict(user)
        stored[META_ALGORITHM] = ALGORITHM
        stored[META_SEGMENT_SIZE] = str(self.layout.segment_size)
        if isinstance(body, bytes | bytearray | memoryview):
            body = bytes(body)
            stored[META_PLAINTEXT_SIZE] = str(len(body))
            if self.digest:
                stored[META_PLAINTEXT_SHA256] = hashlib.sha256(body).hexdigest()
        dek, header = os.urandom(KEY_SIZE), new_header()
        ad = associated_data(key, stored)
        cipher = SegmentCipher(dek, header, ad, self.layout)
        wrapped = await self.keyring.wrap(dek, wrap_context(key))
        stored[META_KEY_ID] = wrapped.key_id
        stored[META_WRAPPED_KEY] = base64.b64encode(wrapped.blob).decode()
        stored[META_HEADER] = base64.b64encode(header).decode()
        total = sum(len(n.encode()) + len(v.encode("utf-8", "surrogatepass")) for n, v in stored.items())
        if total > MAX_METADATA_BYTES:
            mine = total - sum(len(n.encode()) + len(v.encode("utf-8", "surrogatepass")) for n, v in user.items())
            raise InvalidMetadataError(
                f"metadata is {total} bytes with the {mine} bytes of encryption metadata; the limit is "
                f"{MAX_METADATA_BYTES}, so {MAX_METADATA_BYTES - mine} bytes are left for yours",
                key=key,
                backend=self.name,
                operation="put",
            )
        sealed: bytes | AsyncGenerator[bytes, None]
        if isinstance(body, bytes) and len(body) <= IN_MEMORY_LIMIT:
            sealed = cipher.encrypt_all(body)
        elif self.threads < 2 and _local(self.inner):
            # The local store writes in a worker thread while the loop waits: the next input chunk
            # is sealed meanwhile, in another thread. Elsewhere (a network store sends on its own)
            # that would only hold more sealed bytes, so each segment is handed on once sealed.
            sealed = flatten(cipher.seal_offloaded(iter_body(body), run_in_thread))
        elif self.threads < 2:
            sealed = flatten(cipher.seal(iter_body(body), per_chunk=False, piece=0))
        else:  # one hand-off per input chunk: the next one is sealed while the store writes this one
            batches = cipher.encrypt_batches(iter_body(body), pool=self._workers(), threads=self.threads)
            sealed = flatten(read_ahead(batches, lean=True))
        try:
            info = await self.inner.put_object(
                key,
                sealed,
                content_type=content_type,
                metadata=stored,
                mode=mode,
                cache_control=cache_control,
                content_disposition=content_disposition,
            )
        finally:
            await close(sealed)  # a store that stopped reading (a refused write) leaves no reader behind
        if not info.metadata:
            info = dataclasses.replace(info, metadata=stored)
        if info.metadata == stored:  # what was just written: no need to parse it back
            size_text = stored.get(META_PLAINTEXT_SIZE)
            env = EncryptionInfo(
                ALGORITHM,
                wrapped.key_id,
                wrapped.blob,
                self.layout.segment_size,
                header,
                None if size_text is None else int(size_text),
                stored.get(META_PLAINTEXT_SHA256),
            )
            size = self._written_size(key, info, env)
            self._remember(key, _Envelope(stored, info.size, env, size, ad, user, self.layout))
        return self._plain(info)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        if range is None:
            return await self._open_whole(key, if_match, if_none_match)
        if isinstance(range, ByteRange) and self.inner.capabilities.ranges:
            opened = await self._open_range_direct(key, range, if_match, if_none_match)
            if opened is not None:
                return opened
        for _attempt in range_attempts():
            info = await self.inner.head(key)
            check_read_conditions(info, if_match, if_none_match, self.name)
            plain = self._plain(info)
            try:
                return await self._open_span(key, range, plain, info.etag)
            except PreconditionFailedError:
                continue  # overwritten between head and open: read the new version
        raise PreconditionFailedError("the object kept changing while being read", key=key, backend=self.name)

    async def _open_whole(self, key: str, if_match: str | None, if_none_match: str | None) -> Download:
        dl = await self.inner.open(key, if_match=if_match, if_none_match=if_none_match)
        try:
            found = self._envelope(key, dl.info)
            plain = self._plain(dl.info, found=found)
            cipher = await self._cipher(key, dl.info, found)
        except BaseException:
            await dl.aclose()
            raise
        whole = in_memory(dl)
        if whole is not None and plain.size <= IN_MEMORY_LIMIT:  # a small object the store already read
            last = found.layout.segments(len(whole)) - 1
            return Download(plain, cipher.decrypt_span(whole, 0, last, skip_header=True))
        local = _local(self.inner)
        segments = cipher.decrypt_stream(
            aiter(dl) if local else read_ahead(aiter(dl)),  # the local store reads ahead itself
            0,
            None,
            skip_header=True,
            pool=self._workers(),
            threads=self.threads,
            offload=run_in_thread if local and self._open_in_thread else None,
        )
        chunks = _checked(segments, plain.size, key, self.name)
        return Download(plain, chunks, close=dl.aclose)

    async def _open_range_direct(
        self, key: str, rng: ByteRange, if_match: str | None, if_none_match: str | None
    ) -> Download | None:
        """One ranged request for the segments ``rng`` touches, assuming this layer's segment size;
        ``None`` if the object has another one (the caller then reads its size first)."""
        layout = self.layout
        first = layout.segment_of(rng.start)
        end = None if rng.end is None else (layout.segment_of(rng.end - 1) + 1) * layout.segment_size
        start = 0 if first == 0 else first * layout.segment_size
        try:
            dl = await self.inner.open(key, range=ByteRange(start, end), if_match=if_match, if_none_match=if_none_match)
        except InvalidRangeError as exc:
            if exc.size is None:
                raise
            size = layout.plaintext_size(exc.size)
            raise InvalidRangeError(
                f"range start {rng.start} is past the end ({size} bytes)", size=size, key=key, backend=self.name
            ) from None
        try:
            found = self._envelope(key, dl.info)
            if found.layout.segment_size != layout.segment_size:
                await dl.aclose()
                return None
            plain = self._plain(dl.info, found=found)
            lo, hi = rng.resolve(plain.size)
            if dl.start != start or dl.end != (dl.info.size if end is None else min(end, dl.info.size)):
                raise IntegrityError("the store served another span than asked", key=key, backend=self.name)
            return await self._decrypting(key, dl, plain, lo, hi, found)
        except BaseException:
            await dl.aclose()
            raise

    async def _open_span(self, key: str, rng: Range, plain: EncryptedObjectInfo, etag: str) -> Download:
        """Read ``rng`` of the version ``plain`` describes (``etag``)."""
        assert plain.encryption is not None
        layout = Layout(plain.encryption.segment_size)
        lo, hi = rng.resolve(plain.size)
        first, last = layout.segment_of(lo), layout.segment_of(hi - 1)
        start = 0 if first == 0 else first * layout.segment_size
        end = (last + 1) * layout.segment_size
        if self.inner.capabilities.ranges:
            dl = await self.inner.open(key, range=ByteRange(start, end), if_match=etag)
        else:
            dl = await self.inner.open(key, if_match=etag)
            dl = _skip(dl, start)
        try:
            return await self._decrypting(key, dl, plain, lo, hi)
        except BaseException:
            await dl.aclose()
            raise

    async def _decrypting(
        self, key: str, dl: Download, plain: EncryptedObjectInfo, lo: int, hi: int, found: _Envelope | None = None
    ) -> Download:
        """A Download of plaintext ``[lo, hi)`` from ``dl``, which starts at the segment holding ``lo``
        (``found``: the envelope of ``dl.info``, if known)."""
        if found is None:
            found = self._envelope(key, dl.info)
        layout = found.layout
        first = layout.segment_of(lo)
        cipher = await self._cipher(key, dl.info, found)
        last_index = layout.segments(dl.info.size) - 1
        span = in_memory(dl)
        if span is not None and hi - lo <= IN_MEMORY_LIMIT:  # the store already read it: no stream needed
            skip = lo - layout.plain_start(first)
            piece = cipher.decrypt_span(span, first, last_index, skip_header=first == 0, skip=skip, length=hi - lo)
            if len(piece) != hi - lo:
                raise IntegrityError("the ciphertext ended before the requested range", key=key, backend=self.name)
            return Download(plain, piece, start=lo, end=hi, range_requested=True)
        segments = cipher.decrypt_stream(
            aiter(dl), first, last_index, skip_header=first == 0, pool=self._workers(), threads=self.threads
        )
        chunks = _window(segments, lo - layout.plain_start(first), hi - lo, key, self.name)
        return Download(plain, chunks, start=lo, end=hi, range_requested=True, close=dl.aclose)

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """Decrypt ``src`` and encrypt it again as ``dst`` (the body is bound to its key)."""
        return await BaseBackend.copy(self, src, dst, mode=mode)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Decrypt ``key`` and encrypt it again with ``metadata`` (the body is bound to its metadata)."""
        return await BaseBackend.replace_metadata(self, key, metadata, if_match=if_match)

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self._listed(prefix, start_after)

    async def _listed(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            plain: ObjectInfo | None = None
            if info.metadata and META_ALGORITHM in info.metadata:
                try:
                    plain = self._plain(info, remember=False)
                except StorageError:  # a listing never fails on one odd object
                    plain = None
            if plain is None:
                try:
                    plain = dataclasses.replace(info, size=self.layout.plaintext_size(info.size))
                except StorageError:
                    plain = info
            yield plain

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        if self.signer is None:
            raise UnsupportedError(
                "an encrypted store has no URLs of its own: they would hand out ciphertext. Serve it through "
                "the unistore service (or an app mounting add_storage(..., serve_files=True) over this layer) "
                "and pass Encrypt(..., signer=UrlSigner(secret, base_url))",
                key=key,
                backend=self.name,
                operation="sign_url",
            )
        if method.upper() not in ("GET", "HEAD"):
            raise UnsupportedError(
                "an encrypted store signs download URLs only", key=key, backend=self.name, operation="sign_url"
            )
        expires = expires_in if expires_in is not None else self.default_expires_in
        return self.signer.sign(key, expires_in=expires, download=download, method=method)

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``data`` encrypted; a signed URL with a ``signer``, else the key as a relative URL."""
        await self.put_object(key, data, content_type=content_type, metadata=metadata)
        if self.signer is None:
            return self.unsigned_url(key)
        return await url_after_put(self, key)

    def unsigned_url(self, key: str) -> str:
        """The key as a relative URL: no URL of the store below may stand in for one of this layer
        (it would serve ciphertext), also when a layer above falls back to an unsigned URL."""
        return quote(key, safe="/")


def _local(store: StorageBackend) -> bool:
    """Whether ``store`` is the local store: its streamed reads already fetch their next chunk
    while the caller uses this one (a read-ahead of ours on top costs a task hop per chunk and,
    with one more chunk alive, fresh pages: 18 % more CPU on a local get), and its writes run in
    a worker thread while the event loop waits (free to seal the next chunk)."""
    return isinstance(store, LocalBackend)


def _user(metadata: Mapping[str, str]) -> dict[str, str]:
    """The caller's part of stored ``metadata``."""
    return {name: value for name, value in metadata.items() if not name.startswith(RESERVED_PREFIX)}


def range_attempts() -> range:
    """How often a range read re-reads an object overwritten between its size and its bytes."""
    return range(_READ_RETRIES)


async def _checked(chunks: AsyncIterator[bytes], size: int, key: str, backend: str) -> AsyncIterator[bytes]:
    """``chunks``, checked to add up to ``size`` bytes."""
    seen = 0
    try:
        async for chunk in chunks:
            seen += len(chunk)
            if chunk:
                yield chunk
    finally:
        await close(chunks)
    if seen != size:
        raise IntegrityError(f"decrypted {seen} bytes, expected {size}", key=key, backend=backend)


async def _window(
    segments: AsyncGenerator[bytes, None], skip: int, length: int, key: str, backend: str
) -> AsyncIterator[bytes]:
    """``length`` bytes of ``segments`` after the first ``skip``."""
    try:
        async for segment in segments:
            if skip >= len(segment):
                skip -= len(segment)
                continue
            piece = segment[skip : skip + length]
            skip = 0
            length -= len(piece)
            if piece:
                yield piece
            if length == 0:
                return
    finally:
        await close(segments)
    if length:
        raise IntegrityError("the ciphertext ended before the requested range", key=key, backend=backend)


def _skip(dl: Download, count: int) -> Download:
    """``dl`` without its first ``count`` bytes (for stores without ranges)."""

    async def rest() -> AsyncIterator[bytes]:
        left = count
        async for chunk in dl:
            if left >= len(chunk):
                left -= len(chunk)
                continue
            yield chunk[left:]
            left = 0

    return Download(dl.info, rest(), start=count, end=dl.end, close=dl.aclose)
