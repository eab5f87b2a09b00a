"""Tink's AES256-GCM-HKDF streaming AEAD wire format, built on ``cryptography``'s AES-GCM and HKDF.

A ciphertext is ``header || C_0 || C_1 || ... || C_{n-1}``:

- ``header = len(header) (1 byte, 40) || salt (32 bytes) || nonce prefix (7 bytes)``;
- the segment key is ``HKDF-SHA256(ikm=DEK, salt=salt, info=associated data)``, 32 bytes;
- ``C_i = AES-256-GCM(segment key, nonce_i, M_i)`` with no associated data and a 16-byte tag,
  ``nonce_i = nonce prefix || i (4 bytes, big-endian) || 1 if i == n-1 else 0``;
- every ciphertext segment but the last is ``segment_size`` bytes long, the first one counting
  the header; the last is 16 to ``segment_size`` bytes.

This is the format of Tink's ``AesGcmHkdfStreamingKey`` (HKDF-SHA256, 32-byte derived key, any
ciphertext segment size); ciphertexts interoperate with Tink's own ``StreamingAead``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .._errors import ConfigurationError, IntegrityError

__all__ = [
    "HEADER_SIZE",
    "KEY_SIZE",
    "Layout",
    "OFFLOAD",
    "Offload",
    "PIECE",
    "SegmentCipher",
    "TAG_SIZE",
    "close",
    "flatten",
    "new_header",
    "read_ahead",
]

PIECE = 256 * 1024
"""Ciphertext bytes a streamed put seals into one piece (whole segments; at least one)."""
OFFLOAD = 256 * 1024
"""Plaintext bytes of one input chunk's segments from which they are sealed or opened in a worker
thread (with an ``offload``): a thread hop costs about as much as ciphering 128 KiB."""

KEY_SIZE = 32
NONCE_PREFIX_SIZE = 7
HEADER_SIZE = 1 + KEY_SIZE + NONCE_PREFIX_SIZE
TAG_SIZE = 16
MAX_SEGMENTS = 2**32

_Job = tuple[int, bytes | bytearray | memoryview, bool]
"""One segment to seal or open: its index, its bytes and whether it is the last one."""
_Op = Callable[[int, bytes | bytearray | memoryview, bool], bytes]
_InFlight = deque["asyncio.Future[list[bytes]]"]
_COUNTER = struct.Struct(">I?")
"""The nonce's tail: the segment index (4 bytes, big-endian) and the last-segment flag."""
_T = TypeVar("_T")
Offload = Callable[..., "asyncio.Future[Any]"]
"""Runs ``fn(*args)`` in a worker thread: ``offload(fn, *args)`` is awaited for its result."""
_Seal = tuple[int, bytes | bytearray | memoryview]
"""One segment to seal (not the last one): its index and its plaintext."""


def _seal_into(aead: AESGCM, prefix: bytes, out: memoryview, lead: bytes, segments: Sequence[_Seal]) -> list[bytes]:
    """``lead`` then the ciphertext of ``segments``, sealed into ``out`` and copied out as pieces
    of whole segments of at most ``len(out)`` bytes (one segment if larger)."""
    pack, room, pieces = _COUNTER.pack, len(out), []
    out[: len(lead)] = lead
    fill = len(lead)
    for index, data in segments:
        size = len(data) + TAG_SIZE
        if fill + size > room:
            pieces.append(bytes(out[:fill]))
            fill = 0
        aead.encrypt_into(prefix + pack(index, False), data, None, out[fill : fill + size])
        fill += size
    pieces.append(bytes(out[:fill]))
    return pieces


def _open_into(aead: AESGCM, prefix: bytes, out: memoryview, jobs: Sequence[_Job]) -> int:
    """Write the plaintext of ``jobs`` (segments, in order) at the start of ``out``; its length.
    IntegrityError if one does not authenticate (``out`` then holds unauthenticated bytes)."""
    pack, fill = _COUNTER.pack, 0
    for index, data, last in jobs:
        if index >= MAX_SEGMENTS:
            raise IntegrityError("too many segments")
        size = len(data) - TAG_SIZE
        try:
            aead.decrypt_into(prefix + pack(index, last), data, None, out[fill : fill + size])
        except InvalidTag:
            raise IntegrityError(f"segment {index} does not authenticate (tampered, truncated or reordered)") from None
        fill += size
    return fill


@dataclass(frozen=True)
class Layout:
    """Where the segments of a ciphertext with ciphertext segment size ``segment_size`` lie."""

    segment_size: int

    def __post_init__(self) -> None:
        if not HEADER_SIZE + TAG_SIZE < self.segment_size < 2**31:
            raise ConfigurationError(f"segment size must be in {HEADER_SIZE + TAG_SIZE + 1}..{2**31 - 1}")

    @property
    def first_plain(self) -> int:
        """Plaintext bytes in segment 0 (the header shares its ciphertext segment)."""
        return self.segment_size - HEADER_SIZE - TAG_SIZE

    @property
    def plain(self) -> int:
        """Plaintext bytes in every other full segment."""
        return self.segment_size - TAG_SIZE

    def plain_len(self, index: int) -> int:
        """Plaintext bytes in full segment ``index``."""
        return self.first_plain if index == 0 else self.plain

    def segment_of(self, pos: int) -> int:
        """The segment holding plaintext byte ``pos``."""
        return 0 if pos < self.first_plain else 1 + (pos - self.first_plain) // self.plain

    def plain_start(self, index: int) -> int:
        """The plaintext offset of segment ``index``."""
        return 0 if index == 0 else self.first_plain + (index - 1) * self.plain

    def cipher_start(self, index: int) -> int:
        """The ciphertext offset of segment ``index``'s encrypted bytes (after the header for 0)."""
        return HEADER_SIZE if index == 0 else index * self.segment_size

    def ciphertext_size(self, size: int) -> int:
        """The ciphertext size of a ``size``-byte plaintext (as this module writes it)."""
        count = 1 if size <= self.first_plain else 2 + (size - self.first_plain - 1) // self.plain
        return HEADER_SIZE + size + count * TAG_SIZE

    def segments(self, ciphertext_size: int) -> int:
        """The number of segments in a ciphertext of ``ciphertext_size`` bytes."""
        return max(1, -(-ciphertext_size // self.segment_size))

    def plaintext_size(self, ciphertext_size: int) -> int:
        """The plaintext size of a ciphertext of ``ciphertext_size`` bytes; IntegrityError if no
        ciphertext has that size."""
        count = self.segments(ciphertext_size)
        last = ciphertext_size - (count - 1) * self.segment_size - (HEADER_SIZE if count == 1 else 0)
        if last < TAG_SIZE or count > MAX_SEGMENTS:
            raise IntegrityError(f"a ciphertext of {ciphertext_size} bytes is truncated")
        return ciphertext_size - HEADER_SIZE - count * TAG_SIZE


def new_header() -> bytes:
    """A fresh header: its length, a random salt and a random nonce prefix."""
    return bytes([HEADER_SIZE]) + os.urandom(KEY_SIZE + NONCE_PREFIX_SIZE)


class SegmentCipher:
    """Encrypts and decrypts the segments of one ciphertext (one DEK, header and associated data)."""

    __slots__ = ("_aead", "_prefix", "header", "layout")

    def __init__(self, dek: bytes, header: bytes, associated_data: bytes, layout: Layout) -> None:
        if len(header) != HEADER_SIZE or header[0] != HEADER_SIZE:
            raise IntegrityError("the ciphertext header is malformed")
        if len(dek) < KEY_SIZE:
            raise IntegrityError("the data key is too short")
        salt = header[1 : 1 + KEY_SIZE]
        key = HKDF(hashes.SHA256(), KEY_SIZE, salt, associated_data).derive(dek)
        self._aead = AESGCM(key)
        self._prefix = header[1 + KEY_SIZE :]
        self.header = header
        self.layout = layout

    def _nonce(self, index: int, last: bool) -> bytes:
        if index >= MAX_SEGMENTS:
            raise IntegrityError("too many segments")
        return self._prefix + _COUNTER.pack(index, last)

    def encrypt(self, index: int, plaintext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """Segment ``index``'s ciphertext."""
        return self._aead.encrypt(self._nonce(index, last), plaintext, None)

    def decrypt(self, index: int, ciphertext: bytes | bytearray | memoryview, last: bool) -> bytes:
        """Segment ``index``'s plaintext; IntegrityError if it does not authenticate as that segment."""
        try:
            return self._aead.decrypt(self._nonce(index, last), ciphertext, None)
        except InvalidTag:
            where = "last segment" if last else "segment"
            raise IntegrityError(f"{where} {index} does not authenticate (tampered, truncated or reordered)") from None

    @staticmethod
    def _run(op: _Op, jobs: Sequence[_Job]) -> list[bytes]:
        return [op(index, data, last) for index, data, last in jobs]

    async def _pipeline(
        self, op: _Op, jobs: list[_Job], inflight: _InFlight, pool: Executor | None, threads: int
    ) -> list[list[bytes]]:
        """Queue ``op`` over one chunk's ``jobs`` and return the results now due, per chunk, in order.

        Without ``pool`` (or with ``threads`` < 2) the jobs run here and now. Else they run as one
        task on ``pool`` and the results of the oldest chunks are returned once more than
        ``threads`` chunks are in flight (or as soon as they are done): up to ``threads`` chunks
        are sealed or opened at once while the caller reads the next one. A chunk's results are
        only returned once every segment of it succeeded; its error is raised in its turn.
        """
        if pool is None or threads < 2:
            return [self._run(op, jobs)]
        if jobs:
            inflight.append(asyncio.get_running_loop().run_in_executor(pool, self._run, op, jobs))
        out = []
        while inflight and (len(inflight) > threads or inflight[0].done()):
            out.append(await inflight.popleft())
        return out

    @staticmethod
    async def _drain(inflight: _InFlight) -> list[list[bytes]]:
        """The results of every chunk still in flight, in order."""
        out = []
        while inflight:
            out.append(await inflight.popleft())
        return out

    async def seal(
        self, chunks: AsyncIterator[bytes], *, per_chunk: bool = True, piece: int | None = None
    ) -> AsyncGenerator[list[bytes], None]:
        """The whole ciphertext of the plaintext ``chunks``, as one list of pieces per input chunk
        (none for a chunk that completes no segment) and a last list at the end of the input; with
        ``per_chunk=False`` each piece as soon as it is sealed, alone in its list (fewer bytes held).

        A piece is whole segments, about ``piece`` bytes (:data:`PIECE`; one segment if segments
        are larger); the first one starts with the header. Each segment is sealed by ``encrypt_into`` straight
        from the input chunk into one reused buffer, and each piece is one copy of it: no object
        and no zero-filled output per segment, a few pieces per MiB for the store to take. Only a
        segment spanning two input chunks is gathered first. A segment is sealed as the last one
        only at the end of the input; closing this generator closes ``chunks``.
        """
        layout, aead, prefix, pack = self.layout, self._aead, self._prefix, _COUNTER.pack
        seg, first, plain = layout.segment_size, layout.first_plain, layout.plain
        room = max((PIECE if piece is None else piece) // seg, 1) * seg  # each segment but the last fills ``seg``
        out = memoryview(bytearray(room))
        out[:HEADER_SIZE] = self.header
        fill, index, pending = HEADER_SIZE, 0, bytearray()
        try:
            async for chunk in chunks:
                view, pos, end, pieces = memoryview(chunk), 0, len(chunk), list[bytes]()
                size = first if index == 0 else plain
                if pending:
                    pos = min(size - len(pending), end)
                    pending += view[:pos]
                    if pos == end:  # not full, or full but maybe the last segment
                        continue
                    aead.encrypt_into(prefix + pack(index, False), pending, None, out[fill : fill + size + TAG_SIZE])
                    fill, index, size, pending = fill + size + TAG_SIZE, index + 1, plain, bytearray()
                while end - pos > size:  # more follows: not the last segment
                    if fill + size + TAG_SIZE > room:
                        pieces.append(bytes(out[:fill]))
                        fill = 0
                        if not per_chunk:
                            yield pieces
                            pieces = []
                    if index >= MAX_SEGMENTS - 1:
                        raise IntegrityError("too many segments")
                    aead.encrypt_into(
                        prefix + pack(index, False), view[pos : pos + size], None, out[fill : fill + size + TAG_SIZE]
                    )
                    fill, pos, index, size = fill + size + TAG_SIZE, pos + size, index + 1, plain
                pending += view[pos:]
                if index and fill:
                    pieces.append(bytes(out[:fill]))
                    fill = 0
                del chunk, view  # the input chunk is not held while its ciphertext waits
                if pieces:
                    yield pieces
                del pieces
            size = len(pending) + TAG_SIZE
            aead.encrypt_into(prefix + pack(index, True), pending, None, out[fill : fill + size])
            yield [bytes(out[: fill + size])]
        finally:
            await close(chunks)

    async def seal_offloaded(self, chunks: AsyncIterator[bytes], offload: Offload) -> AsyncGenerator[list[bytes], None]:
        """The pieces :meth:`seal` yields (the same bytes, in the same lists), with each input chunk
        after the first sealed by ``offload`` in a worker thread while the caller writes the last
        chunk's pieces and this reads the next chunk (at most two chunks in a thread at once).

        The first chunk (a body of one chunk never pays a thread hop), chunks of less than
        :data:`OFFLOAD` bytes of segments, mutable chunks and the last segment are sealed here.
        A thread seals into a buffer of its own, which is reused only once that thread is done;
        the caller gets immutable copies. Closing this generator closes ``chunks``.
        """
        layout, aead, prefix = self.layout, self._aead, self._prefix
        seg, first, plain = layout.segment_size, layout.first_plain, layout.plain
        room = max(PIECE // seg, 1) * seg
        free: list[memoryview] = []
        lead, index, pending, seen = self.header, 0, bytearray(), False
        ahead: tuple[asyncio.Future[Any], memoryview] | None = None
        try:
            async for chunk in chunks:
                view, pos, end, segments = memoryview(chunk), 0, len(chunk), list[_Seal]()
                size = first if index == 0 else plain
                if pending:
                    pos = min(size - len(pending), end)
                    pending += view[:pos]
                    if pos == end:  # not full, or full but maybe the last segment
                        continue
                    segments.append((index, pending))
                    index, size, pending = index + 1, plain, bytearray()
                while end - pos > size:  # more follows: not the last segment
                    if index >= MAX_SEGMENTS - 1:
                        raise IntegrityError("too many segments")
                    segments.append((index, view[pos : pos + size]))
                    pos, index, size = pos + size, index + 1, plain
                pending += view[pos:]
                threaded = seen and isinstance(chunk, bytes) and sum(len(data) for _, data in segments) >= OFFLOAD
                seen = True
                del chunk, view  # the input chunk is held only by its segments
                if not segments:
                    continue
                out = free.pop() if free else memoryview(bytearray(room))
                if threaded:
                    job = offload(_seal_into, aead, prefix, out, lead, segments)
                    lead = b""
                    del segments
                    if ahead is not None:
                        done, ahead = ahead, (job, out)
                        yield await self._sealed(done, free)
                    else:
                        ahead = (job, out)
                    continue
                if ahead is not None:
                    done, ahead = ahead, None
                    yield await self._sealed(done, free)
                pieces = _seal_into(aead, prefix, out, lead, segments)
                lead = b""
                free.append(out)
                del segments
                yield pieces
                del pieces
            if ahead is not None:
                done, ahead = ahead, None
                yield await self._sealed(done, free)
            out = free.pop() if free else memoryview(bytearray(room))
            out[: len(lead)] = lead
            size = len(lead) + len(pending) + TAG_SIZE
            aead.encrypt_into(prefix + _COUNTER.pack(index, True), pending, None, out[len(lead) : size])
            yield [bytes(out[:size])]
        finally:
            if ahead is not None:  # its thread may still write into its buffer, which is dropped
                ahead[0].cancel()
            await close(chunks)

    @staticmethod
    async def _sealed(job: tuple[asyncio.Future[Any], memoryview], free: list[memoryview]) -> list[bytes]:
        """The pieces of a chunk sealed in a thread; its buffer is free again once the thread is done."""
        pieces = cast(list[bytes], await job[0])
        free.append(job[1])
        return pieces

    async def encrypt_stream(
        self, chunks: AsyncIterator[bytes], *, pool: Executor | None = None, threads: int = 1
    ) -> AsyncIterator[bytes]:
        """The whole ciphertext of the plaintext ``chunks``: the header, then one chunk per input chunk
        (its segments joined), then the last segment. See :meth:`encrypt_batches`."""
        batches = self.encrypt_batches(chunks, pool=pool, threads=threads)
        try:
            async for batch in batches:
                yield batch[0] if len(batch) == 1 else b"".join(batch)
        finally:
            await close(batches)

    async def encrypt_batches(
        self, chunks: AsyncIterator[bytes], *, pool: Executor | None = None, threads: int = 1
    ) -> AsyncIterator[list[bytes]]:
        """The whole ciphertext of the plaintext ``chunks``, as lists of pieces: ``[header]``, then
        the segments sealed from each input chunk (no list is empty), then ``[last segment]``.

        A segment is sealed as the last one only at the end of the input, so at most one
        segment plus one input chunk is held in memory. Whole segments are encrypted straight
        from the input chunk; only a segment spanning two chunks is copied. Nothing is joined:
        a store that writes the pieces one after the other copies each byte once. With ``pool``
        and ``threads`` > 1 up to ``threads`` chunks are sealed at once on its threads (in order).
        """
        inflight: _InFlight = deque()
        try:
            yield [self.header]
            layout, index, pending = self.layout, 0, bytearray()
            async for chunk in chunks:
                view, pos, end, jobs = memoryview(chunk), 0, len(chunk), list[_Job]()
                if pending:
                    take = min(layout.plain_len(index) - len(pending), end)
                    pending += view[:take]
                    pos = take
                    if len(pending) == layout.plain_len(index) and pos < end:  # more follows: not the last
                        jobs.append((index, pending, False))
                        index, pending = index + 1, bytearray()
                while not pending and end - pos > layout.plain_len(index):
                    size = layout.plain_len(index)
                    jobs.append((index, view[pos : pos + size], False))
                    pos, index = pos + size, index + 1
                if pos < end:
                    pending += view[pos:]
                done = await self._pipeline(self.encrypt, jobs, inflight, pool, threads)
                del chunk, view, jobs  # the input chunk is not held while its ciphertext waits
                for out in done:
                    if out:
                        yield out
                del done
            for out in await self._drain(inflight):
                if out:
                    yield out
            yield [self.encrypt(index, pending, True)]
        finally:
            for future in inflight:
                future.cancel()
            await close(chunks)

    def decrypt_span(
        self,
        ciphertext: bytes,
        first: int,
        last_index: int,
        *,
        skip_header: bool,
        skip: int = 0,
        length: int | None = None,
    ) -> bytes:
        """The plaintext of in-memory ``ciphertext`` that starts at segment ``first`` (at the header
        with ``skip_header``); segment ``last_index`` is the object's last one. Only ``length``
        bytes after the first ``skip`` are returned (all of them when ``length`` is None).

        Each segment is decrypted into its own bytes and the part asked for is joined from views
        of them: one copy, and no zeroed buffer as large as the span (which, from 128 KiB up,
        glibc maps fresh and faults in on every read).
        """
        view, pos, index, spans = memoryview(ciphertext), 0, first, []
        if skip_header:
            if ciphertext[:HEADER_SIZE] != self.header:
                raise IntegrityError("the ciphertext header does not match the object's metadata")
            pos = HEADER_SIZE
        while index <= last_index and pos < len(ciphertext):
            size = self.layout.plain_len(index) + TAG_SIZE
            if index == last_index:
                if len(ciphertext) - pos < TAG_SIZE:
                    raise IntegrityError(f"the ciphertext ends inside segment {index}")
                spans.append((index, pos, len(ciphertext), True))
                pos = len(ciphertext)
            elif len(ciphertext) - pos < size:
                raise IntegrityError(f"the ciphertext ends inside segment {index}")
            else:
                spans.append((index, pos, pos + size, False))
                pos += size
            index += 1
        if pos != len(ciphertext):
            raise IntegrityError("the ciphertext is longer than its segments")
        plain = [self.decrypt(index, view[lo:hi], last) for index, lo, hi, last in spans]
        if skip == 0 and length is None:
            return plain[0] if len(plain) == 1 else b"".join(plain)
        left = sum(map(len, plain)) - skip if length is None else length
        pieces: list[bytes | memoryview] = []
        for segment in plain:
            if skip >= len(segment):
                skip -= len(segment)
                continue
            if left <= 0:
                break
            piece = memoryview(segment)[skip : skip + left]
            pieces.append(piece)
            skip, left = 0, left - len(piece)
        return b"".join(pieces)

    def encrypt_all(self, plaintext: bytes) -> bytes:
        """The whole ciphertext of an in-memory ``plaintext``."""
        layout, view, out = self.layout, memoryview(plaintext), [self.header]
        index, pos = 0, 0
        while len(plaintext) - pos > layout.plain_len(index):
            out.append(self.encrypt(index, view[pos : pos + layout.plain_len(index)], False))
            pos, index = pos + layout.plain_len(index), index + 1
        out.append(self.encrypt(index, view[pos:], True))
        return b"".join(out)

    async def decrypt_stream(
        self,
        chunks: AsyncIterator[bytes],
        first: int,
        last_index: int | None,
        *,
        skip_header: bool,
        pool: Executor | None = None,
        threads: int = 1,
        offload: Offload | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The plaintext of ciphertext ``chunks`` that start at segment ``first``'s encrypted bytes
        (or at the header, with ``skip_header``, which must then equal this cipher's header).

        ``last_index`` is the index of the object's last segment when the caller knows it (a
        range read), else the last segment is whatever the stream ends with. Each segment is
        authenticated before any of its bytes is yielded; a short or overlong stream raises
        :class:`IntegrityError`. With ``pool`` and ``threads`` > 1 up to ``threads`` chunks are
        opened at once on its threads; a chunk's segments are yielded, in order, once all of
        them authenticate. Else, with ``offload``, each chunk after the first with at least
        :data:`OFFLOAD` bytes of whole segments is opened by ``offload`` in a worker thread while
        the last chunk's segments are yielded (one chunk in a thread at a time), its segments
        yielded once all of them authenticate.
        """
        inflight: _InFlight = deque()
        ahead: tuple[asyncio.Future[Any], memoryview] | None = None
        spare: memoryview | None = None
        seen = False
        try:
            layout, index, pending = self.layout, first, bytearray()
            aead, prefix, pack = self._aead, self._prefix, _COUNTER.pack
            first_plain, plain, seg = layout.first_plain, layout.plain, layout.segment_size
            sequential = pool is None or threads < 2
            header: bytearray | None = bytearray() if skip_header else None
            async for chunk in chunks:
                view, pos, end, jobs = memoryview(chunk), 0, len(chunk), list[_Job]()
                if header is not None:
                    pos = min(HEADER_SIZE - len(header), end)
                    header += view[:pos]
                    if len(header) < HEADER_SIZE:
                        continue
                    if header != self.header:
                        raise IntegrityError("the ciphertext header does not match the object's metadata")
                    header = None
                if pending:
                    take = min(max(layout.plain_len(index) + TAG_SIZE - len(pending), 0), end - pos)
                    pending += view[pos : pos + take]
                    pos += take
                    full = len(pending) == layout.plain_len(index) + TAG_SIZE
                    if full and (pos < end if last_index is None else index < last_index):
                        jobs.append((index, pending, False))
                        index, pending = index + 1, bytearray()
                while not pending and not sequential:
                    size = layout.plain_len(index) + TAG_SIZE
                    left = end - pos
                    if left < size or (left == size if last_index is None else index >= last_index):
                        break
                    jobs.append((index, view[pos : pos + size], False))
                    pos, index = pos + size, index + 1
                if sequential and offload is not None:
                    while not pending:
                        size = layout.plain_len(index) + TAG_SIZE
                        left = end - pos
                        if left < size or (left == size if last_index is None else index >= last_index):
                            break
                        jobs.append((index, view[pos : pos + size], False))
                        pos, index = pos + size, index + 1
                    if pos < end:
                        pending += view[pos:]
                    threaded = seen and isinstance(chunk, bytes) and sum(len(job[1]) for job in jobs) >= OFFLOAD
                    seen = True
                    del chunk, view
                    prior, ahead = ahead, None
                    if threaded:  # opened in a thread while the last chunk's plaintext is yielded
                        need = sum(len(job[1]) - TAG_SIZE for job in jobs)
                        out = spare if spare is not None and len(spare) >= need else memoryview(bytearray(need + seg))
                        spare = None
                        ahead = (offload(_open_into, self._aead, self._prefix, out, jobs), out)
                        jobs = []
                    if prior is not None:
                        # copied here: bytes made in a worker thread come from its malloc arena,
                        # which hands pages back and faults them in again chunk after chunk
                        opened = bytes(prior[1][: cast(int, await prior[0])])
                        spare = prior[1]  # free again: its thread is done and it was copied
                        yield opened
                        del opened
                    for at, data, last in jobs:
                        yield self.decrypt(at, data, last)
                    continue
                if sequential:  # each segment decrypted just before it is yielded: a small working set
                    for at, data, last in jobs:  # the one completed from the last chunk
                        yield self.decrypt(at, data, last)
                    try:
                        while not pending:
                            size = (first_plain if index == 0 else plain) + TAG_SIZE
                            left = end - pos
                            if left < size or (left == size if last_index is None else index >= last_index):
                                break
                            if index >= MAX_SEGMENTS:
                                raise IntegrityError("too many segments")
                            segment = aead.decrypt(prefix + pack(index, False), view[pos : pos + size], None)
                            pos, index = pos + size, index + 1
                            yield segment
                    except InvalidTag:
                        raise IntegrityError(
                            f"segment {index} does not authenticate (tampered, truncated or reordered)"
                        ) from None
                    if pos < end:
                        pending += view[pos:]
                    continue
                if pos < end:
                    pending += view[pos:]
                for batch in await self._pipeline(self.decrypt, jobs, inflight, pool, threads):
                    for segment in batch:
                        yield segment
            for batch in await self._drain(inflight):
                for segment in batch:
                    yield segment
            if ahead is not None:
                prior, ahead = ahead, None
                yield bytes(prior[1][: cast(int, await prior[0])])
            if header is not None:
                raise IntegrityError("the ciphertext ends inside its header")
            if last_index is None or index == last_index:
                if len(pending) < TAG_SIZE:
                    raise IntegrityError(f"the ciphertext ends inside segment {index}")
                yield self.decrypt(index, pending, True)
            elif pending:
                raise IntegrityError(f"the ciphertext ends inside segment {index}")
        finally:
            for future in inflight:
                future.cancel()
            if ahead is not None:  # its thread may still write into its buffer, which is dropped
                ahead[0].cancel()
            await close(chunks)


async def close(stream: object) -> None:
    """Close an async generator (or anything with ``aclose``) that a consumer stops reading."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


class _Raised:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


async def read_ahead(source: AsyncIterator[_T], depth: int = 1, *, lean: bool = False) -> AsyncGenerator[_T, None]:
    """``source``'s items (chunks, or lists of them), pulled by a task that runs up to ``depth``
    items ahead of the consumer.

    The cipher then works on one chunk while the store reads or writes the next one in its
    I/O thread (or on the network). At most ``depth + 2`` chunks are held; with ``lean`` the
    task pulls the next item only once the consumer took the last one, so at most 2 are held
    (the consumer's and the next), which suits a consumer that waits on I/O between items (a
    store writing them). An error of ``source`` is raised to the consumer, and closing this
    generator stops the task and closes ``source``.
    """
    queue: asyncio.Queue[object] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for chunk in source:
                await queue.put(chunk)
                del chunk
                if lean:
                    await queue.join()
        except Exception as exc:  # handed to the consumer, who raises it
            await queue.put(_Raised(exc))
        else:
            await queue.put(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            queue.task_done()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.error
            yield cast(_T, item)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await close(source)


async def flatten(batches: AsyncIterator[list[bytes]]) -> AsyncGenerator[bytes, None]:
    """Every piece of every list of ``batches``, in order; closing it closes ``batches``."""
    try:
        async for batch in batches:
            for piece in batch:
                yield piece
    finally:
        await close(batches)
