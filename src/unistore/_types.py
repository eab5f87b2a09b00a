"""Value types shared by every backend: object info, ranges, write modes, capabilities, downloads."""

from __future__ import annotations

import functools
import mimetypes
import os
import re
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Final, Literal, Protocol, TypeAlias

from ._errors import InvalidArgumentError, InvalidMetadataError, InvalidRangeError
from ._mime import check_content_type

__all__ = [
    "AsyncReader",
    "Body",
    "ByteRange",
    "Capabilities",
    "CommonPrefix",
    "DEFAULT_CONTENT_TYPE",
    "Download",
    "IfMatch",
    "MetadataInput",
    "ObjectInfo",
    "Range",
    "SuffixRange",
    "WriteMode",
    "accept_encoding",
    "accepted_encodings",
    "check_content_type",
    "check_header_value",
    "current_storage_class",
    "guess_content_type",
    "is_metadata_name",
    "normalize_metadata",
    "parse_http_range",
    "storage_class",
]

DEFAULT_CONTENT_TYPE: Final = "application/octet-stream"
MAX_METADATA_BYTES: Final = 2048  # S3's limit on user metadata; enforced everywhere for portability


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What a store knows about one object.

    ``etag`` is an opaque version token: it changes on every write and is what
    ``if_match`` / ``if_none_match`` compare against. ``metadata`` holds the
    caller's custom metadata only (lower-case names, string values).
    """

    key: str
    size: int
    etag: str
    last_modified: datetime
    content_type: str | None = DEFAULT_CONTENT_TYPE
    """The stored media type; ``None`` where it is unknown: in a listing whose service does not
    return it (S3's ``ListObjectsV2``), never guessed. :meth:`head` gives the stored one."""
    metadata: Mapping[str, str] = field(default_factory=dict)
    cache_control: str | None = None
    content_disposition: str | None = None
    storage_class: str | None = None
    """The store's storage class (S3's ``STANDARD_IA``, GCS's ``NEARLINE`` ...) where the store
    reports one; ``None`` on stores without classes and where the answer does not say."""

    def as_dict(self) -> dict[str, object]:
        """The spec's ``get_metadata`` dict: custom metadata at the top level, then
        the system fields ``key``, ``size``, ``content_type``, ``etag``,
        ``last_modified`` (ISO 8601), which win on a name collision."""
        out: dict[str, object] = dict(self.metadata)
        out.update(
            key=self.key,
            size=self.size,
            content_type=self.content_type,
            etag=self.etag,
            last_modified=self.last_modified.isoformat(),
        )
        if self.cache_control is not None:
            out["cache_control"] = self.cache_control
        if self.content_disposition is not None:
            out["content_disposition"] = self.content_disposition
        if self.storage_class is not None:
            out["storage_class"] = self.storage_class
        return out


# --- ranges ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CommonPrefix:
    """A "folder" of a delimited listing: every key under ``prefix`` (which ends with the
    delimiter) stands behind this one entry."""

    prefix: str


@dataclass(frozen=True, slots=True)
class ByteRange:
    """Bytes ``[start, end)``, half-open like a Python slice; ``end=None`` means to the end.

    An ``end`` past the object's size is clamped; a ``start`` at or past the size
    is unsatisfiable (:class:`InvalidRangeError`, HTTP 416).
    """

    start: int
    end: int | None = None

    def __post_init__(self) -> None:
        if self.start < 0:
            raise InvalidRangeError(f"range start {self.start} is negative")
        if self.end is not None and self.end <= self.start:
            raise InvalidRangeError(f"range end {self.end} is not after start {self.start}")

    def resolve(self, size: int) -> tuple[int, int]:
        """The concrete ``(start, end)`` for an object of ``size`` bytes."""
        if self.start >= size:
            raise InvalidRangeError(f"range start {self.start} is past the end ({size} bytes)", size=size)
        end = size if self.end is None else min(self.end, size)
        return self.start, end


@dataclass(frozen=True, slots=True)
class SuffixRange:
    """The last ``length`` bytes (all of them if the object is shorter)."""

    length: int

    def __post_init__(self) -> None:
        if self.length <= 0:
            raise InvalidRangeError(f"suffix length {self.length} must be positive")

    def resolve(self, size: int) -> tuple[int, int]:
        """The concrete ``(start, end)``; unsatisfiable on an empty object (RFC 9110 §14.1.2)."""
        if size == 0:
            raise InvalidRangeError("suffix range of an empty object", size=size)
        return max(0, size - self.length), size


Range: TypeAlias = ByteRange | SuffixRange

_HTTP_RANGE = re.compile(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", re.IGNORECASE)


def parse_http_range(header: str) -> Range | None:
    """Convert an HTTP ``Range`` header (inclusive ``bytes=a-b``) to a half-open range.

    This is the one place the inclusive HTTP form is converted (RFC 9110 §14.1.2).
    Returns ``None`` for headers a server may ignore (other units, several ranges);
    raises :class:`InvalidRangeError` for a malformed single byte range.
    """
    if "," in header or not header.strip().lower().startswith("bytes"):
        return None
    m = _HTTP_RANGE.fullmatch(header)
    if not m:
        raise InvalidRangeError(f"malformed Range header {header[:64]!r}")
    first, last = m.groups()
    if first == "" and last == "":
        raise InvalidRangeError(f"malformed Range header {header[:64]!r}")
    if first == "":
        return SuffixRange(int(last))
    start = int(first)
    if last == "":
        return ByteRange(start)
    if int(last) < start:
        raise InvalidRangeError(f"malformed Range header {header[:64]!r}")
    return ByteRange(start, int(last) + 1)


# --- write modes ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IfMatch:
    """Write only if the stored object's etag is ``etag`` (else PreconditionFailedError)."""

    etag: str


WriteMode: TypeAlias = Literal["overwrite", "create"] | IfMatch
"""``"overwrite"`` (default), ``"create"`` (only if absent, else AlreadyExistsError), or ``IfMatch``."""


# --- capabilities ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do natively. A missing one raises :class:`UnsupportedError`."""

    conditional_put: bool = False
    """``mode="create"`` and ``IfMatch`` writes are atomic."""
    conditional_get: bool = False
    """``if_match`` / ``if_none_match`` on reads."""
    conditional_delete: bool = False
    """``if_match`` on ``remove``."""
    ranges: bool = False
    streaming: bool = False
    """Reads and writes run in bounded memory for any object size."""
    signed_urls: bool = False
    presigned_put: bool = False
    server_side_copy: bool = False
    max_object_size: int | None = None


# --- bodies and metadata --------------------------------------------------------------


class AsyncReader(Protocol):
    """A file-like object with an async ``read`` (FastAPI's ``UploadFile``, aiofiles)."""

    async def read(self, size: int = -1) -> bytes: ...


Body: TypeAlias = bytes | bytearray | memoryview | AsyncIterable[bytes] | IO[bytes] | AsyncReader | os.PathLike[str]
"""What a write accepts: bytes, an async iterable of bytes, a binary file (sync or async ``read``), or a path."""

MetadataInput: TypeAlias = Mapping[str, "str | int | float | bool"]

_META_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]*")


def is_metadata_name(name: str) -> bool:
    """Whether ``name`` follows the metadata name rule (so it is also a valid header name)."""
    return _META_NAME.fullmatch(name) is not None


def normalize_metadata(metadata: Mapping[str, object] | None) -> dict[str, str]:
    """Validate custom metadata and return it as the portable form every backend stores.

    Names are lower-cased (HTTP headers are case-insensitive, so S3 and GCS would
    lower-case them anyway) and must then match ``[a-z0-9][a-z0-9_.-]*``. Values
    must be ``str``, ``int``, ``float`` or ``bool`` and are stored as strings;
    anything else (dicts, ``None``, objects) is an :class:`InvalidMetadataError`,
    raised before anything is written. Names plus values may total 2 KiB (UTF-8).
    """
    if not metadata:
        return {}
    out: dict[str, str] = {}
    total = 0
    for name, value in metadata.items():
        if not isinstance(name, str):
            raise InvalidMetadataError(f"metadata name {name!r} is not a str")
        lname = name.lower()
        if not _META_NAME.fullmatch(lname):
            raise InvalidMetadataError(f"metadata name {name!r} must match [a-z0-9][a-z0-9_.-]*")
        if lname in out:
            raise InvalidMetadataError(f"metadata name {name!r} given twice (names are case-insensitive)")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str | int | float):
            text = str(value)
        else:
            raise InvalidMetadataError(
                f"metadata value for {name!r} must be str, int, float or bool, not {type(value).__name__}"
            )
        if "\x00" in text:
            raise InvalidMetadataError(f"metadata value for {name!r} contains NUL")
        total += len(lname.encode()) + len(text.encode("utf-8", "surrogatepass"))
        out[lname] = text
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadataError(f"metadata is {total} bytes; the limit is {MAX_METADATA_BYTES}")
    return out


_HEADER_SAFE = re.compile(r"[\x20-\x7e\t]*")


def check_header_value(name: str, value: str | None) -> str | None:
    """Validate a value that will be sent as an HTTP header (content type, cache-control,
    content-disposition): printable ASCII only, so it can never split or break a response."""
    if value is None:
        return None
    if not isinstance(value, str) or not _HEADER_SAFE.fullmatch(value):
        raise InvalidArgumentError(f"{name} must be printable ASCII (RFC 9110 §5.5)")
    return value


def guess_content_type(key: str) -> str:
    """The MIME type for ``key``'s extension, or ``application/octet-stream``."""
    name = key.rpartition("/")[2]
    dot = name.find(".")
    return _guess_by_suffix(name[dot:].lower()) if dot >= 0 else DEFAULT_CONTENT_TYPE


@functools.lru_cache(maxsize=1024)
def _guess_by_suffix(suffixes: str) -> str:
    return mimetypes.guess_type("x" + suffixes, strict=False)[0] or DEFAULT_CONTENT_TYPE


# --- downloads ------------------------------------------------------------------------


class Download:
    """A streaming read: an async iterator of chunks plus the object's ``info``.

    ``start``/``end`` give the served span ``[start, end)``; ``range_requested``
    tells whether a range was asked for. Use it as an async context manager (or
    call :meth:`aclose`) so the underlying handle is released even when the
    stream is abandoned half-way. ``chunks`` may be ``bytes`` when the whole span
    is already in memory (small objects): then nothing needs releasing.
    ``encoding`` is set (``gzip``, ``zstd``) when the chunks are the object's stored,
    compressed bytes, served as they are to a reader inside :func:`accept_encoding`; then
    ``info.size`` is still the plain size and ``content_length`` the encoded one.
    """

    __slots__ = ("_chunks", "_close", "_data", "encoding", "end", "info", "range_requested", "start")

    def __init__(
        self,
        info: ObjectInfo,
        chunks: AsyncIterator[bytes] | bytes,
        *,
        start: int = 0,
        end: int | None = None,
        range_requested: bool = False,
        close: Callable[[], Awaitable[None]] | None = None,
        encoding: str | None = None,
    ) -> None:
        self.info = info
        self.encoding = encoding
        self.start = start
        self.end = info.size if end is None else end
        self.range_requested = range_requested
        if isinstance(chunks, bytes):
            self._data: bytes | None = chunks
            self._chunks: AsyncIterator[bytes] | None = None
        else:
            self._data, self._chunks = None, chunks
        self._close = close

    @property
    def content_length(self) -> int:
        """Number of bytes this download yields."""
        return self.end - self.start

    def __aiter__(self) -> AsyncIterator[bytes]:
        if self._chunks is None:
            data, self._data = self._data or b"", None
            self._chunks = _once(data)
        return self._chunks

    async def read(self) -> bytes:
        """Read the rest of the stream into memory and close it."""
        if self._data is not None and self._close is None:
            data, self._data = self._data, b""
            return data
        try:
            return b"".join([chunk async for chunk in self])
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the underlying handle; safe to call twice."""
        close, self._close = self._close, None
        self._data = b"" if self._data is not None else None
        aclose = getattr(self._chunks, "aclose", None)
        try:
            if aclose is not None:
                await aclose()
        finally:
            if close is not None:
                await close()

    async def __aenter__(self) -> Download:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


_CLASS: ContextVar[str | None] = ContextVar("unistore_storage_class", default=None)


@contextmanager
def storage_class(name: str | None) -> Iterator[None]:
    """Writes inside store their objects in the storage class ``name`` (S3: ``STANDARD_IA``,
    ``INTELLIGENT_TIERING``, ``GLACIER_IR`` ...; GCS: ``NEARLINE``, ``COLDLINE``, ``ARCHIVE`` ...),
    through any stack of layers. Stores without classes refuse such writes
    (:class:`UnsupportedError`) rather than ignore them; ``None`` is the store's default again."""
    if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Z][A-Z0-9_]{1,39}", name)):
        raise InvalidArgumentError(f"storage class must be an upper-case name like STANDARD_IA, not {name!r}")
    token = _CLASS.set(name)
    try:
        yield
    finally:
        _CLASS.reset(token)


def current_storage_class() -> str | None:
    """The class the innermost :func:`storage_class` asks writes to use (``None``: the default)."""
    return _CLASS.get()


_ACCEPT: ContextVar[tuple[str, ...]] = ContextVar("unistore_accept_encoding", default=())


@contextmanager
def accept_encoding(*encodings: str) -> Iterator[None]:
    """Whole-object reads inside may return a compressed object's stored bytes as they are
    (``Download.encoding`` names the encoding) when it is one of ``encodings``: what an HTTP
    server does for a client whose ``Accept-Encoding`` lists it. Ranged reads and every other
    object stay plain. ``accept_encoding()`` with no names turns it off again inside."""
    token = _ACCEPT.set(tuple(encodings))
    try:
        yield
    finally:
        _ACCEPT.reset(token)


def accepted_encodings() -> tuple[str, ...]:
    """The encodings the innermost :func:`accept_encoding` allows (none outside one)."""
    return _ACCEPT.get()
