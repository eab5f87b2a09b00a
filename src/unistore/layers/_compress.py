"""The :class:`Compress` layer: gzip or zstd bodies, skipped where compression does not pay."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import mimetypes
import os
import tempfile
import threading
import weakref
import zlib
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal
from urllib.parse import quote

from .._base import StorageBackend, check_read_conditions, iter_body, url_after_put
from .._errors import (
    ConfigurationError,
    IntegrityError,
    InvalidMetadataError,
    InvalidRangeError,
    PreconditionFailedError,
    UnsupportedError,
)
from .._keys import validate_key
from .._signing import UrlSigner
from .._types import (
    Body,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    accept_encoding,
    accepted_encodings,
    normalize_metadata,
)
from ._layer import Layer, replace_keeping

__all__ = [
    "Compress",
    "CompressedObjectInfo",
    "Encoding",
    "META_ENCODING",
    "META_PLAIN_SIZE",
    "SKIP_TYPES",
    "looks_compressed",
]

Encoding = Literal["gzip", "zstd"]

META_ENCODING: Final = "x-compress-encoding"
"""Stored metadata: the body's ``Content-Encoding`` (``gzip`` or ``zstd``)."""
META_PLAIN_SIZE: Final = "x-compress-plain-size"
"""Stored metadata: the size of the uncompressed body."""
RESERVED_PREFIX: Final = "x-compress-"

SAMPLE_SIZE: Final = 64 * 1024
"""A streamed body is judged on its first this many bytes."""
SPOOL_IN_MEMORY: Final = 1024 * 1024
"""Compressed output of a streamed body is held in memory up to this size, then in a temporary file."""
_OUT_CHUNK = 64 * 1024
_IN_THREAD = 256 * 1024  # compress at least this many bytes in a worker thread, off the event loop
_READ_RETRIES = 3
_ATTEMPTS = range(_READ_RETRIES)

SKIP_TYPES: Final = frozenset(
    {
        "application/zip", "application/gzip", "application/x-gzip", "application/zstd", "application/x-xz",
        "application/x-bzip2", "application/x-7z-compressed", "application/x-rar-compressed",
        "application/vnd.rar", "application/x-compress", "application/x-lzip", "application/x-brotli",
        "application/pdf", "application/epub+zip", "application/java-archive",
        "application/vnd.android.package-archive",
        "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.openxmlformats-officedocument.presentationml.presentation",
        "font/woff", "font/woff2",
    }
)  # fmt: skip
"""Content types never compressed (besides every ``image/*``, ``video/*`` and ``audio/*`` but SVG and BMP)."""

_COMPRESSIBLE_MEDIA = frozenset({"image/svg+xml", "image/bmp", "image/x-ms-bmp", "audio/wav", "audio/x-wav"})

_MAGIC: Final = (
    (0, b"\xff\xd8\xff"),  # JPEG
    (0, b"\x89PNG\r\n\x1a\n"),
    (0, b"GIF8"),
    (0, b"PK\x03\x04"),  # zip, docx, jar, epub
    (0, b"\x1f\x8b"),  # gzip
    (0, b"\x28\xb5\x2f\xfd"),  # zstd
    (0, b"\xfd7zXZ\x00"),  # xz
    (0, b"BZh"),  # bzip2
    (0, b"7z\xbc\xaf\x27\x1c"),
    (0, b"Rar!\x1a\x07"),
    (0, b"OggS"),
    (0, b"fLaC"),
    (0, b"ID3"),  # mp3
    (0, b"\x1a\x45\xdf\xa3"),  # webm, mkv
    (0, b"wOFF"),
    (0, b"wOF2"),
    (0, b"%PDF-"),
    (4, b"ftyp"),  # mp4, mov, heic, avif
)


def looks_compressed(head: bytes) -> bool:
    """Whether a body starting with ``head`` is already compressed, by its magic bytes."""
    if head[:4] == b"RIFF" and head[8:12] in (b"WEBP", b"AVI "):
        return True
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06:  # MPEG audio frame
        return True
    return any(head[at : at + len(magic)] == magic for at, magic in _MAGIC)


def _skipped_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind in _COMPRESSIBLE_MEDIA:
        return False
    return kind in SKIP_TYPES or kind.split("/", 1)[0] in ("image", "video", "audio")


def _load_zlib() -> Any:
    """zlib-ng's zlib when installed (the ``compress`` extra: the same gzip format, deflate about
    twice as fast at the same level), else the standard library's."""
    try:
        from zlib_ng import zlib_ng
    except ImportError:
        return zlib
    return zlib_ng


_zlib: Any = _load_zlib()


def _zstd() -> Any:
    try:
        import zstandard
    except ImportError as exc:
        raise ConfigurationError("zstd compression needs zstandard: pip install 'unistore[compress]'") from exc
    return zstandard


@functools.cache
def _zstd_module() -> Any:
    """PEP 784's ``compression.zstd`` (Python 3.14), else its ``backports.zstd``; looked up once (a
    failed import searches ``sys.path`` again on every call)."""
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError as exc:
            raise ConfigurationError(
                "reading zstd needs backports.zstd on Python < 3.14: pip install 'unistore[compress]'"
            ) from exc
    return zstd


def _zstd_reader() -> tuple[Any, type[Exception]]:
    """A zstd decompressor with an output limit per call (PEP 784's API): ``zstandard``'s has none."""
    zstd = _zstd_module()
    return zstd.ZstdDecompressor(), zstd.ZstdError


_SMALL_ZSTD = 256 * 1024
"""Plain bodies up to this size are inflated in one call on a reused context: a new PEP 784
decompressor costs about 50 us (its context), more than inflating 4 KiB."""

_shared = threading.local()


def _default_threads() -> int:
    """zstd threads for streamed bodies by default: 2 where there are 2 cores or more."""
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def _zstd_compressor(level: int) -> Any:
    """A one-shot zstd compressor at ``level`` (with checksum), reused per thread: building one
    costs more than compressing a few KiB."""
    cache: dict[int, Any] | None = getattr(_shared, "compressors", None)
    if cache is None:
        cache = _shared.compressors = {}
    c = cache.get(level)
    if c is None:
        c = cache[level] = _zstd().ZstdCompressor(level=level, write_checksum=True)
    return c


def _inflate_small_zstd(body: bytes, size: int) -> bytes:
    """The ``size`` plain bytes of one whole zstd frame; ValueError says why it is corrupt.

    The frame must fill ``body`` exactly and declare no other size than ``size`` before any
    output is allocated; the output is capped at ``size`` bytes."""
    zstd, zstandard = _zstd_module(), _zstd()
    try:
        frame = zstd.get_frame_size(body)
        declared = zstandard.frame_content_size(body)
    except (zstd.ZstdError, zstandard.ZstdError) as exc:
        raise ValueError("it ended early" if len(body) < 18 else str(exc)) from None
    if frame != len(body):
        raise ValueError("bytes after the end of the compressed stream")
    if declared not in (-1, size):
        raise ValueError(f"its frame declares {declared} bytes, expected {size}")
    d = getattr(_shared, "zstd", None)
    if d is None:
        d = _shared.zstd = zstandard.ZstdDecompressor()
    try:
        plain = d.decompress(body, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ValueError(str(exc)) from None
    if len(plain) != size:
        raise ValueError(f"{len(plain)} bytes, expected {size}")
    return bytes(plain)


@dataclass(frozen=True, slots=True)
class CompressedObjectInfo(ObjectInfo):
    """An :class:`ObjectInfo` of a compressed object: ``size`` is the plain size, ``stored_size`` the
    compressed one, ``content_encoding`` how it is compressed; ``metadata`` is the caller's."""

    content_encoding: str | None = None
    stored_size: int | None = None

    def as_dict(self) -> dict[str, object]:
        """The custom metadata, ``content_encoding`` and ``stored_size``, then the system fields."""
        out: dict[str, object] = dict(self.metadata)
        out["content_encoding"] = self.content_encoding
        out["stored_size"] = self.stored_size
        out.update(ObjectInfo.as_dict(self))
        return out


_COUNTERS: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _counters(option: Any) -> tuple[Any, Any] | None:
    """(bytes saved, objects by outcome) counters in ``option``'s registry (see :class:`Compress`)."""
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if option is None or option is True else option
    found = _COUNTERS.get(registry)
    if found is None:
        saved = prometheus_client.Counter(
            "unistore_compress_saved_bytes",
            "Bytes not stored thanks to compression (plain size minus stored size).",
            ["backend", "encoding"],
            registry=registry,
        )
        objects = prometheus_client.Counter(
            "unistore_compress_objects",
            "Objects written through Compress, by outcome.",
            ["backend", "outcome"],
            registry=registry,
        )
        found = _COUNTERS[registry] = (saved, objects)
    return found


def _owned_by_compress(name: str) -> bool:
    """Whether a metadata name is one Compress writes."""
    return name.startswith(RESERVED_PREFIX)


class Compress(Layer):
    """Compresses bodies written through it (gzip or zstd) and decompresses every read.

    A body is stored as is when its content type is an already-compressed one (images, video,
    audio, archives: :data:`SKIP_TYPES`), when its first bytes are such a format's magic bytes,
    when it is under ``min_size`` bytes, or when compressing saves less than ``min_savings``
    (a fraction: 0.1 = 10 %). Bodies given as bytes are compressed whole and the result is kept
    only if it saves enough; streamed bodies are judged on their first :data:`SAMPLE_SIZE` bytes
    and then compressed as they arrive into a spool (memory up to :data:`SPOOL_IN_MEMORY`, then
    a temporary file), so the plain size is known and the write stays one atomic put.

    The encoding and the plain size are stored as metadata (:data:`META_ENCODING`,
    :data:`META_PLAIN_SIZE`); ``head`` reports the plain size (``stored_size`` the compressed
    one). Reads decompress as they stream; a range read decompresses from the start and drops the
    bytes before the range (it costs reading and inflating everything before the range's end).
    A corrupted or truncated body raises :class:`IntegrityError`. :meth:`open_encoded` hands out
    the stored bytes to callers that accept the encoding.

    Where it belongs: above Encrypt (ciphertext does not compress) and below Observe, RateLimit
    and Cache. URLs: the store's own URLs would serve compressed bytes without their
    ``Content-Encoding``, so ``sign_url`` refuses compressed objects (uncompressed ones get the
    store's URL) unless a ``signer`` is given: a :class:`~unistore.UrlSigner` whose ``base_url`` is
    the ``/files`` route of an app serving this layer (``add_storage(..., serve_files=True)``, or
    the unistore service), which then signs every download URL. ``threads`` is how many threads
    zstd compresses a streamed body on (zstd's own multithreading, same format; default 2 on a
    machine with 2 or more cores, 0 = on one thread); bodies given as bytes use one thread. ``metrics`` is a Prometheus
    registry, ``True`` (the global one), ``None`` (the global one if prometheus_client is
    installed) or ``False``.
    """

    transforms_bodies: ClassVar[bool] = True

    def __init__(
        self,
        inner: StorageBackend,
        *,
        encoding: Encoding = "gzip",
        level: int | None = None,
        min_savings: float = 0.1,
        min_size: int = 256,
        metrics: Any = None,
        signer: UrlSigner | None = None,
        threads: int | None = None,
    ) -> None:
        super().__init__(inner)
        self.signer = signer
        if threads is not None and threads < 0:
            raise ConfigurationError("threads must be >= 0")
        self.threads = _default_threads() if threads is None else threads
        if encoding not in ("gzip", "zstd"):
            raise ConfigurationError(f"encoding must be 'gzip' or 'zstd', not {encoding!r}")
        if not 0 <= min_savings < 1 or min_size < 0:
            raise ConfigurationError("min_savings must be in [0, 1) and min_size >= 0")
        if encoding == "zstd":
            _zstd()
        self.encoding: Encoding = encoding
        self.level = level if level is not None else (6 if encoding == "gzip" else 3)
        self.min_savings = min_savings
        self.min_size = min_size
        self._metrics = _counters(metrics)

    def __repr__(self) -> str:
        return f"Compress({self.inner!r}, encoding={self.encoding!r})"

    # --- helpers ----------------------------------------------------------------------

    def _worth(self, plain: int, packed: int) -> bool:
        return plain > 0 and packed <= plain * (1 - self.min_savings) and packed < plain

    def _compress_all(self, data: bytes) -> bytes:
        if self.encoding == "gzip":
            c = _zlib.compressobj(self.level, zlib.DEFLATED, 31)
            return bytes(c.compress(data) + c.flush())
        return bytes(_zstd_compressor(self.level).compress(data))

    async def _compress_off_loop(self, data: bytes) -> bytes:
        if len(data) >= _IN_THREAD:
            return await asyncio.to_thread(self._compress_all, data)
        return self._compress_all(data)

    def _compressor(self) -> Any:
        if self.encoding == "gzip":
            return _zlib.compressobj(self.level, zlib.DEFLATED, 31)
        return _zstd().ZstdCompressor(level=self.level, write_checksum=True, threads=self.threads).compressobj()

    def _count(self, outcome: str, saved: int = 0) -> None:
        if self._metrics is not None:
            self._metrics[1].labels(self.name, outcome).inc()
            if saved > 0:
                self._metrics[0].labels(self.name, self.encoding).inc(saved)

    def _plain(self, info: ObjectInfo) -> ObjectInfo:
        """``info`` of the stored object as the caller sees it."""
        encoding = info.metadata.get(META_ENCODING)
        if encoding is None:
            return info
        try:
            size = int(info.metadata[META_PLAIN_SIZE])
        except (KeyError, ValueError):
            raise IntegrityError(
                "a compressed object without a valid plain size", key=info.key, backend=self.name
            ) from None
        if encoding not in ("gzip", "zstd") or size < 0:
            raise IntegrityError(f"unknown content encoding {encoding!r}", key=info.key, backend=self.name)
        user = {name: value for name, value in info.metadata.items() if not name.startswith(RESERVED_PREFIX)}
        return CompressedObjectInfo(
            key=info.key,
            size=size,
            etag=info.etag,
            last_modified=info.last_modified,
            content_type=info.content_type,
            metadata=user,
            cache_control=info.cache_control,
            content_disposition=info.content_disposition,
            content_encoding=encoding,
            stored_size=info.size,
        )

    # --- writes -----------------------------------------------------------------------

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
                raise InvalidMetadataError(
                    f"metadata names starting with {RESERVED_PREFIX!r} belong to Compress", key=key, backend=self.name
                )
        kind = content_type or mimetypes.guess_type(key)[0]
        options: dict[str, Any] = {
            "content_type": content_type,
            "mode": mode,
            "cache_control": cache_control,
            "content_disposition": content_disposition,
        }
        if isinstance(body, bytes | bytearray | memoryview):
            return await self._put_bytes(key, bytes(body), kind, user, options)
        source = aiter(iter_body(body))
        sample: list[bytes] = []
        seen = 0
        ended = False
        while seen < SAMPLE_SIZE:
            try:
                chunk = await anext(source)
            except StopAsyncIteration:
                ended = True
                break
            sample.append(bytes(chunk))
            seen += len(chunk)
        if ended:
            return await self._put_bytes(key, b"".join(sample), kind, user, options)
        head = b"".join(sample)
        outcome = self._skip_reason(head, kind)
        if outcome is None:
            probe = await self._compress_off_loop(head)
            if not self._worth(len(head), len(probe)):
                outcome = "not_worth"
        if outcome is not None:
            self._count(outcome)
            info = await self.inner.put_object(key, _chain(head, source), metadata=user, **options)
            return self._plain(info)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            compressor = self._compressor()
            spool.write(compressor.compress(head))
            total = len(head)
            async for chunk in source:
                total += len(chunk)
                if len(chunk) >= _IN_THREAD:
                    spool.write(await asyncio.to_thread(compressor.compress, chunk))
                else:
                    spool.write(compressor.compress(chunk))
            spool.write(compressor.flush())
            stored_size = spool.tell()
            spool.seek(0)
            stored = {**user, META_ENCODING: self.encoding, META_PLAIN_SIZE: str(total)}
            info = await self.inner.put_object(key, spool, metadata=stored, **options)
        self._count("compressed", total - stored_size)
        return self._plain(info if info.metadata else dataclasses.replace(info, metadata=stored))

    def _skip_reason(self, head: bytes, kind: str | None) -> str | None:
        if _skipped_type(kind):
            return "skipped_type"
        if looks_compressed(head):
            return "skipped_magic"
        return None

    async def _put_bytes(
        self, key: str, data: bytes, kind: str | None, user: dict[str, str], options: dict[str, Any]
    ) -> ObjectInfo:
        outcome = "skipped_small" if len(data) < self.min_size else self._skip_reason(data[:SAMPLE_SIZE], kind)
        if outcome is None:
            packed = await self._compress_off_loop(data)
            if self._worth(len(data), len(packed)):
                stored = {**user, META_ENCODING: self.encoding, META_PLAIN_SIZE: str(len(data))}
                info = await self.inner.put_object(key, packed, metadata=stored, **options)
                self._count("compressed", len(data) - len(packed))
                return self._plain(info if info.metadata else dataclasses.replace(info, metadata=stored))
            outcome = "not_worth"
        self._count(outcome)
        return self._plain(await self.inner.put_object(key, data, metadata=user, **options))

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``data`` (compressed when it pays); the store's URL, or the key as a relative URL
        for a compressed object (the store's URL would serve compressed bytes)."""
        info = await self.put_object(key, data, content_type=content_type, metadata=metadata)
        if isinstance(info, CompressedObjectInfo):
            return quote(key, safe="/")
        return await url_after_put(self, key)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Replace the caller's metadata, keeping the compression metadata."""
        user = normalize_metadata(metadata)
        if any(name.startswith(RESERVED_PREFIX) for name in user):
            raise InvalidMetadataError(
                f"metadata names starting with {RESERVED_PREFIX!r} belong to Compress", key=key, backend=self.name
            )
        return self._plain(
            await replace_keeping(
                self.inner, key, user, _owned_by_compress, if_match=if_match, layer=self.name, attempts=_READ_RETRIES
            )
        )

    # --- reads ------------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        return self._plain(await self.inner.head(key))

    async def exists(self, key: str) -> bool:
        return await self.inner.exists(key)

    async def open_encoded(
        self,
        key: str,
        *,
        accept: tuple[str, ...] = ("gzip",),
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> tuple[Download, str | None]:
        """The stored bytes and their encoding if it is in ``accept`` (serve them with that
        ``Content-Encoding``), else the decompressed body and ``None``. ``info.size`` is the
        plain size either way; the Download's span is that of the bytes it yields. The same as
        :meth:`open` inside :func:`~unistore.accept_encoding`, which works through other layers too."""
        with accept_encoding(*accept):
            dl = await self.open(key, if_match=if_match, if_none_match=if_none_match)
        return dl, dl.encoding

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        if range is None:
            dl = await self.inner.open(key, if_match=if_match, if_none_match=if_none_match)
            try:
                plain = self._plain(dl.info)
            except BaseException:
                await dl.aclose()
                raise
            if not isinstance(plain, CompressedObjectInfo):
                return dl
            assert plain.content_encoding is not None
            if plain.content_encoding in accepted_encodings():  # served as stored (Content-Encoding)
                return Download(plain, aiter(dl), start=0, end=dl.end, close=dl.aclose, encoding=plain.content_encoding)
            return self._inflating(key, dl, plain, 0, plain.size, False)
        for _attempt in _ATTEMPTS:
            try:
                return await self._open_range(key, range, if_match, if_none_match)
            except _Overwritten:
                continue  # overwritten between two requests: read the new version
        raise PreconditionFailedError("the object kept changing while being read", key=key, backend=self.name)

    async def _open_range(self, key: str, rng: Range, if_match: str | None, if_none_match: str | None) -> Download:
        """``rng`` of ``key``: the store's own range read when stored as is, else inflated from the start."""
        try:
            dl = await self.inner.open(key, range=rng, if_match=if_match, if_none_match=if_none_match)
        except InvalidRangeError:
            info = self._plain(await self.inner.head(key))  # a range past the stored (compressed) end?
            if not isinstance(info, CompressedObjectInfo):
                raise
            check_read_conditions(info, if_match, if_none_match, self.name)
            plain: ObjectInfo = info
        else:
            try:
                plain = self._plain(dl.info)
            except BaseException:
                await dl.aclose()
                raise
            if not isinstance(plain, CompressedObjectInfo):
                return dl
            await dl.aclose()  # a span of compressed bytes is useless: read from the start
        try:
            lo, hi = rng.resolve(plain.size)
        except InvalidRangeError as exc:
            exc.key, exc.backend = key, self.name
            raise
        try:
            whole = await self.inner.open(key, if_match=plain.etag)
        except PreconditionFailedError:
            if if_match is not None:
                raise
            raise _Overwritten from None
        try:
            again = self._plain(whole.info)
        except BaseException:
            await whole.aclose()
            raise
        assert isinstance(again, CompressedObjectInfo)
        return self._inflating(key, whole, again, lo, hi, True)

    def _inflating(
        self, key: str, dl: Download, plain: CompressedObjectInfo, lo: int, hi: int, ranged: bool
    ) -> Download:
        assert plain.content_encoding is not None
        chunks = _inflate(aiter(dl), plain.content_encoding, plain.size, lo, hi, key, self.name)
        return Download(plain, chunks, start=lo, end=hi, range_requested=ranged, close=dl.aclose)

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        return self._listed(prefix, start_after)

    async def _listed(self, prefix: str, start_after: str | None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            try:
                yield self._plain(info)
            except IntegrityError:  # a listing never fails on one odd object
                yield info

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """Downloads: the ``signer``'s URL when there is one, else the store's URL for an uncompressed
        object and :class:`UnsupportedError` for a compressed one. Uploads: the store's URL."""
        if method.upper() in ("GET", "HEAD") and self.signer is not None:
            validate_key(key)
            expires = expires_in if expires_in is not None else self.default_expires_in
            return self.signer.sign(key, expires_in=expires, download=download, method=method)
        if method.upper() in ("GET", "HEAD"):
            info = await self.inner.head(key)
            if META_ENCODING in info.metadata:
                raise UnsupportedError(
                    "a compressed object has no URL of its own: the store would serve compressed bytes; "
                    "serve it through an app over this layer",
                    key=key,
                    backend=self.name,
                    operation="sign_url",
                )
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)


class _Overwritten(Exception):
    """The object changed between a range read's two requests."""


async def _chain(head: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if head:
        yield head
    async for chunk in rest:
        yield chunk


async def _inflate(
    chunks: AsyncIterator[bytes], encoding: str, size: int, lo: int, hi: int, key: str, backend: str
) -> AsyncIterator[bytes]:
    """Plain bytes ``[lo, hi)`` of a body of ``size`` plain bytes; IntegrityError if it is corrupt."""

    def bad(why: str) -> IntegrityError:
        return IntegrityError(f"the compressed body is corrupt: {why}", key=key, backend=backend, operation="get")

    if encoding == "zstd" and 0 < size <= _SMALL_ZSTD:
        # a small body whole, then one call: bounded, as the body may be at most ``size`` bytes
        # (the layer stores a compressed body only when it is smaller than the plain one)
        got: list[bytes] = []
        held = 0
        async for chunk in chunks:
            got.append(bytes(chunk))
            held += len(chunk)
            if held > size:
                raise bad("more bytes than its plain size")
        try:
            plain = _inflate_small_zstd(b"".join(got), size)
        except ValueError as exc:
            raise bad(str(exc)) from None
        if lo < hi:
            yield plain[lo:hi] if (lo, hi) != (0, size) else plain
        return
    if encoding == "gzip":
        d: Any = _zlib.decompressobj(31)
        errors: tuple[type[BaseException], ...] = (_zlib.error,)
    else:
        d, error = _zstd_reader()
        errors = (error,)
    pos = 0

    def pieces(data: bytes) -> Iterator[bytes]:
        """Decompress ``data`` lazily, in outputs of at most ``_OUT_CHUNK`` bytes: a body that
        inflates 1000:1 never holds more than one output in memory."""
        try:
            if encoding == "gzip":
                while data:
                    yield d.decompress(data, _OUT_CHUNK)
                    data = d.unconsumed_tail
                    if d.eof:
                        break
            else:
                yield d.decompress(data, _OUT_CHUNK)
                while not d.eof and not d.needs_input:
                    yield d.decompress(b"", _OUT_CHUNK)
        except errors as exc:
            raise bad(str(exc) or type(exc).__name__) from None
        if d.eof and d.unused_data:
            raise bad("bytes after the end of the compressed stream")

    async for chunk in chunks:
        if not chunk:
            continue
        if d.eof:
            raise bad("bytes after the end of the compressed stream")
        for part in pieces(bytes(chunk)):
            if not part:
                continue
            start, end = pos, pos + len(part)
            pos = end
            if pos > size:
                raise bad("more bytes than its plain size")
            if end > lo and start < hi:
                yield part[max(lo - start, 0) : min(hi, end) - start]
            if pos >= hi and hi < size:
                return  # the range is served: the rest is not inflated
    if not d.eof:
        raise bad("it ended early")
    if pos != size:
        raise bad(f"{pos} bytes, expected {size}")
