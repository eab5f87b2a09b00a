"""Upload validation: size limits while streaming, types by magic bytes, image limits, filename policy.

``Validate(inner, policy=ValidationPolicy(...))`` checks every write before the
inner store commits it. A refused upload raises a :class:`ValidationError`
(4xx over HTTP) and nothing is stored: the size limit is checked against a known
length before a byte is read and again while the body streams, and a stream
that goes over it fails the inner write, which stores nothing.

The type is decided from the first :attr:`ValidationPolicy.sniff_size` bytes with
`filetype <https://pypi.org/project/filetype/>`_ (binary formats), plus the
WHATWG MIME Sniffing table for HTML and XML (and SVG), never from the client's
``Content-Type``. Image dimensions are read from the header with Pillow
(``Image.open`` without ``load``), so a decompression bomb is refused without
being decoded.
"""

from __future__ import annotations

import functools
import io
import mimetypes
import posixpath
import unicodedata
import warnings
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .._base import StorageBackend, iter_body, path_size
from .._errors import ConfigurationError, QuotaExceededError, StorageError, UnsupportedError
from .._keys import validate_key, validate_prefix
from .._mime import check_content_type, parse_mime_type
from .._types import Body, ObjectInfo, WriteMode, guess_content_type
from ._layer import Layer

__all__ = [
    "FileTooLargeError",
    "FilenameRejectedError",
    "ImageTooLargeError",
    "UnsupportedMediaTypeError",
    "UploadRule",
    "Validate",
    "ValidationError",
    "ValidationPolicy",
    "sniff_type",
]

OnMismatch = Literal["refuse", "correct"]


class ValidationError(StorageError):
    """An upload broke the validation policy; nothing was stored (422 unless a subclass says otherwise)."""

    status = 422


class FileTooLargeError(ValidationError, QuotaExceededError):
    """The body is larger than the prefix's ``max_size`` (413)."""

    status = 413


class UnsupportedMediaTypeError(ValidationError):
    """The sniffed type is not allowed here, or disagrees with the declared type or the extension (415)."""

    status = 415


class ImageTooLargeError(ValidationError):
    """An image's header declares more pixels or larger dimensions than allowed (a decompression bomb) (413)."""

    status = 413


class FilenameRejectedError(ValidationError):
    """The key's file name breaks the filename policy: double extension, control or format characters (400)."""

    status = 400


@dataclass(frozen=True, slots=True)
class UploadRule:
    """What may be stored under ``prefix`` (the longest matching rule applies; ``None``: no limit).

    ``content_types`` are the allowed sniffed types; ``extensions`` the allowed
    file name extensions (lower case, with the dot, ``""`` for none). An image
    (any ``image/*`` type Pillow reads) may have at most ``max_pixels`` pixels and
    ``max_width`` by ``max_height``.
    """

    prefix: str = ""
    max_size: int | None = None
    content_types: frozenset[str] | None = None
    extensions: frozenset[str] | None = None
    max_pixels: int | None = None
    max_width: int | None = None
    max_height: int | None = None

    def __post_init__(self) -> None:
        validate_prefix(self.prefix)
        for name in ("max_size", "max_pixels", "max_width", "max_height"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ConfigurationError(f"UploadRule.{name} must be an int >= 0 or None")
        if self.content_types is not None:
            object.__setattr__(self, "content_types", frozenset(_essence(t) for t in self.content_types))
        if self.extensions is not None:
            exts = frozenset(e.lower() for e in self.extensions)
            if any(e and not e.startswith(".") for e in exts):
                raise ConfigurationError("UploadRule.extensions must start with '.' (or be '' for none)")
            object.__setattr__(self, "extensions", exts)

    @property
    def checks_images(self) -> bool:
        """Whether any image limit is set."""
        return any(v is not None for v in (self.max_pixels, self.max_width, self.max_height))

    @property
    def constrained(self) -> bool:
        """Whether this rule refuses anything at all."""
        return self.checks_images or any(v is not None for v in (self.max_size, self.content_types, self.extensions))


_COMPOUND = frozenset({".tar.gz", ".tar.bz2", ".tar.xz", ".tar.zst"})


@dataclass(frozen=True, slots=True)
class ValidationPolicy:
    """The rules of a :class:`Validate` layer.

    ``rules`` apply by longest matching prefix (keys matching none are refused
    unless one rule has prefix ``""``). ``on_mismatch`` decides what a declared
    type that disagrees with the sniffed one does: ``"refuse"`` (415) or
    ``"correct"`` (store the sniffed type). ``sniff_size`` bytes are read for
    sniffing; up to ``image_header_size`` for an image header. ``check_filenames``
    refuses a name with two known extensions (``photo.jpg.exe``) unless in
    ``compound_extensions``, and names with Unicode format characters (bidi overrides).
    """

    rules: tuple[UploadRule, ...] = (UploadRule(),)
    on_mismatch: OnMismatch = "refuse"
    sniff_size: int = 8192
    image_header_size: int = 65536
    check_filenames: bool = True
    compound_extensions: frozenset[str] = field(default=_COMPOUND)

    def __post_init__(self) -> None:
        if self.on_mismatch not in ("refuse", "correct"):
            raise ConfigurationError("on_mismatch must be 'refuse' or 'correct'")
        if not 512 <= self.sniff_size <= self.image_header_size <= 16 * 1024 * 1024:
            raise ConfigurationError("need 512 <= sniff_size <= image_header_size <= 16 MiB")
        prefixes = [r.prefix for r in self.rules]
        if len(set(prefixes)) != len(prefixes):
            raise ConfigurationError("two upload rules have the same prefix")

    @classmethod
    def permissive(cls) -> ValidationPolicy:
        """Allow everything, correct a declared type that the bytes contradict (no refusals)."""
        return cls(rules=(UploadRule(),), on_mismatch="correct", check_filenames=False)

    def rule_for(self, key: str) -> UploadRule:
        """The rule with the longest prefix of ``key``; :class:`UnsupportedMediaTypeError` if none."""
        best: UploadRule | None = None
        for rule in self.rules:
            if key.startswith(rule.prefix) and (best is None or len(rule.prefix) > len(best.prefix)):
                best = rule
        if best is None:
            raise UnsupportedMediaTypeError("no upload rule allows this key", key=key, operation="put")
        return best

    def check_declared(self, key: str, *, size: int | None = None, content_type: str | None = None) -> UploadRule:
        """What can be refused before a byte is read: the key's name, a known ``size``, and a declared
        type that the rule does not allow (only when mismatches are refused). Returns the rule."""
        validate_key(key)
        rule = self.rule_for(key)
        if self.check_filenames:
            self._check_name(key, rule)
        if size is not None and rule.max_size is not None and size > rule.max_size:
            raise FileTooLargeError(f"the body is larger than {rule.max_size} bytes", key=key, operation="put")
        declared = _essence(content_type) if content_type else None
        if (
            declared
            and declared not in _GENERIC
            and self.on_mismatch == "refuse"
            and rule.content_types is not None
            and _canonical(declared) not in {_canonical(t) for t in rule.content_types}
        ):
            raise UnsupportedMediaTypeError(f"content type {declared!r} is not allowed here", key=key, operation="put")
        return rule

    def _check_name(self, key: str, rule: UploadRule) -> None:
        name = posixpath.basename(key)
        if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
            raise FilenameRejectedError("file name has a control or format character", key=key, operation="put")
        exts = _extensions(name)
        if len(exts) > 1 and "".join(exts[-2:]) not in self.compound_extensions:
            known = [e for e in exts if mimetypes.guess_type("x" + e, strict=False)[0] is not None]
            if len(known) > 1:
                raise FilenameRejectedError(
                    f"file name has more than one extension ({''.join(exts)})", key=key, operation="put"
                )
        ext = _extension(name, self.compound_extensions)
        if rule.extensions is not None and ext not in rule.extensions:
            raise UnsupportedMediaTypeError(
                f"extension {ext or '(none)'!r} is not allowed here", key=key, operation="put"
            )

    def decide(self, key: str, sniffed: str | None, declared: str | None, rule: UploadRule) -> str | None:
        """The content type to store for a body whose bytes sniff as ``sniffed`` (see :func:`sniff_type`)
        and that was declared ``declared``, or a :class:`ValidationError`."""
        given = _essence(declared) if declared else None
        if given in _GENERIC:
            given, declared = None, None
        # Without a declared type the store would guess one from the extension: hold that to the bytes too.
        claimed = given or _name_type(key)
        chosen: str | None
        if sniffed is None:
            if _canonical(claimed) in _SNIFFABLE:
                # It claims a type we recognise by its bytes, but its bytes are not that type.
                if self.on_mismatch == "refuse":
                    raise UnsupportedMediaTypeError(
                        f"the body is not {claimed} (its bytes say otherwise)", key=key, operation="put"
                    )
                chosen = "application/octet-stream"
            else:
                chosen = declared
        elif _canonical(claimed) == sniffed or (given is None and claimed in _GENERIC):
            chosen = declared or sniffed
        elif self.on_mismatch == "refuse":
            said = "declared" if given else "the name says"
            raise UnsupportedMediaTypeError(f"{said} {claimed} but the body is {sniffed}", key=key, operation="put")
        else:
            chosen = sniffed
        effective = _canonical(_essence(chosen)) if chosen else _canonical(claimed)
        if rule.content_types is not None and effective not in {_canonical(t) for t in rule.content_types}:
            raise UnsupportedMediaTypeError(
                f"type {sniffed or effective} is not allowed here", key=key, operation="put"
            )
        if self.check_filenames and sniffed is not None:
            ext = _extension(posixpath.basename(key), self.compound_extensions)
            if ext and ext not in _extensions_of(sniffed):
                raise UnsupportedMediaTypeError(
                    f"extension {ext!r} does not match the body's type {sniffed}", key=key, operation="put"
                )
        return chosen


@functools.lru_cache(maxsize=256)
def _essence(content_type: str) -> str:
    mime = parse_mime_type(content_type)
    return mime.essence if mime is not None else content_type.strip().lower()


_GENERIC = frozenset({"application/octet-stream", "binary/octet-stream", "application/unknown"})

_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/vnd.microsoft.icon": "image/x-icon",
    "audio/wav": "audio/x-wav",
    "audio/wave": "audio/x-wav",
    "audio/vnd.wave": "audio/x-wav",
    "audio/flac": "audio/x-flac",
    "application/x-zip-compressed": "application/zip",
    "application/x-gzip": "application/gzip",
    "application/x-pdf": "application/pdf",
    "text/xml": "application/xml",
    "image/x-png": "image/png",
}


_ENCODINGS = {
    "gzip": "application/gzip",
    "bzip2": "application/x-bzip2",
    "xz": "application/x-xz",
    "br": "application/x-brotli",
    "compress": "application/x-compress",
}


def _name_type(key: str) -> str:
    """The type a store would give ``key`` from its name (a compressed name: the compression's type)."""
    name = posixpath.basename(key)
    dot = name.find(".")
    return _suffix_type(name[dot:].lower() if dot >= 0 else "")


@functools.lru_cache(maxsize=1024)
def _suffix_type(suffixes: str) -> str:
    _, encoding = mimetypes.guess_type("x" + suffixes, strict=False)
    if encoding in _ENCODINGS:
        return _ENCODINGS[encoding]
    return _essence(guess_content_type("x" + suffixes))


def _canonical(essence: str) -> str:
    return _ALIASES.get(essence, essence)


def _extensions(name: str) -> list[str]:
    """Every ``.suffix`` of a file name, lower case (a leading dot is part of the stem)."""
    parts = name.lstrip(".").split(".")
    return ["." + p.lower() for p in parts[1:]]


def _extension(name: str, compound: frozenset[str]) -> str:
    exts = _extensions(name)
    if len(exts) >= 2 and "".join(exts[-2:]) in compound:
        return "".join(exts[-2:])
    return exts[-1] if exts else ""


@functools.lru_cache(maxsize=256)
def _extensions_of(mime: str) -> frozenset[str]:
    """The extensions a type goes by (``mimetypes`` plus filetype's own name for it)."""
    out = {e.lower() for e in mimetypes.guess_all_extensions(mime, strict=False)}
    for alias, target in _ALIASES.items():
        if target == mime:
            out.update(e.lower() for e in mimetypes.guess_all_extensions(alias, strict=False))
    out.update(_EXTRA_EXTENSIONS.get(mime, ()))
    kind = _filetype().get_type(mime=mime)
    if kind is not None:
        out.add("." + kind.extension)
    return frozenset(out)


_EXTRA_EXTENSIONS: Mapping[str, tuple[str, ...]] = {
    "image/jpeg": (".jpg", ".jpeg", ".jpe", ".jfif"),
    "image/x-icon": (".ico",),
    "image/tiff": (".tif", ".tiff"),
    "application/gzip": (".gz", ".tgz", ".tar.gz"),
    "application/x-bzip2": (".bz2", ".tar.bz2"),
    "application/x-xz": (".xz", ".tar.xz"),
    "application/zstd": (".zst", ".tar.zst"),
    "text/html": (".html", ".htm"),
    "application/xml": (".xml",),
    "image/svg+xml": (".svg",),
    "audio/x-wav": (".wav",),
    "audio/x-flac": (".flac",),
}


def _filetype() -> Any:
    try:
        import filetype
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ConfigurationError("Validate needs filetype and Pillow: pip install 'unistore[validate]'") from exc
    return filetype


# WHATWG MIME Sniffing §7.1 "identifying a resource with an unknown MIME type": the HTML and XML rows,
# matched case-insensitively after leading whitespace and followed by a tag-terminating byte.
_HTML_TAGS = (
    b"<!DOCTYPE HTML", b"<HTML", b"<HEAD", b"<SCRIPT", b"<IFRAME", b"<H1", b"<DIV", b"<FONT", b"<TABLE",
    b"<A", b"<STYLE", b"<TITLE", b"<B", b"<BODY", b"<BR", b"<P", b"<!--",
)  # fmt: skip
_WS = b"\t\n\x0c\r "


def _markup_type(head: bytes) -> str | None:
    text = head
    if text.startswith(b"\xef\xbb\xbf"):
        text = text[3:]
    text = text.lstrip(_WS)
    upper = text[:1024].upper()
    for tag in _HTML_TAGS:
        if upper.startswith(tag) and len(upper) > len(tag) and upper[len(tag)] in b" >":
            return "text/html"
    if upper.startswith(b"<?XML") or upper.startswith(b"<SVG"):
        # SVG is XML that browsers run scripts in: tell it apart from other XML.
        return "image/svg+xml" if b"<SVG" in text[:4096].upper() else "application/xml"
    return None


def sniff_type(head: bytes) -> str | None:
    """The type of a body starting with ``head`` from its magic bytes; ``None`` if unrecognised."""
    kind = _filetype().guess(head[:8192]) if head else None
    if kind is not None:
        return _canonical(str(kind.mime))
    return _markup_type(head)


_SNIFFABLE = frozenset(
    _canonical(t)
    for t in (
        "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/tiff", "image/x-icon",
        "image/avif", "image/heic", "image/apng", "application/pdf", "application/zip", "application/gzip",
        "application/x-msdownload", "application/x-executable", "video/mp4", "video/webm", "audio/mpeg",
        "audio/x-wav", "audio/ogg", "audio/x-flac", "text/html", "image/svg+xml", "application/x-7z-compressed",
        "application/x-rar-compressed", "application/x-tar", "application/wasm",
    )
)  # fmt: skip
"""Declared types whose bytes we recognise: a body that does not sniff as one cannot claim to be one."""


def _image_limits(key: str, header: bytes, rule: UploadRule, complete: bool) -> bool:
    """Check an image's header; ``False`` if more bytes are needed to read it."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError as exc:  # pragma: no cover - exercised without the extra
        raise ConfigurationError("Validate needs Pillow for image limits: pip install 'unistore[validate]'") from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(header)) as im:  # reads the header only, decodes nothing
                width, height = im.size
    except Image.DecompressionBombError:
        raise ImageTooLargeError("the image declares too many pixels", key=key, operation="put") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if not complete:
            return False
        raise UnsupportedMediaTypeError(
            f"the image header cannot be read ({type(exc).__name__})", key=key, operation="put"
        ) from None
    if rule.max_pixels is not None and width * height > rule.max_pixels:
        raise ImageTooLargeError(
            f"the image has {width}x{height} pixels, more than {rule.max_pixels}", key=key, operation="put"
        )
    if (rule.max_width is not None and width > rule.max_width) or (
        rule.max_height is not None and height > rule.max_height
    ):
        raise ImageTooLargeError(f"the image is {width}x{height}, larger than allowed", key=key, operation="put")
    return True


class Validate(Layer):
    """Refuses writes that break ``policy`` (see :class:`ValidationPolicy`); nothing refused is stored.

    Where it belongs: near the top, under Observe (refusals are measured) and above
    Idempotency (which spools a keyed body to hash it: the size limit must cut the
    stream first), Cache, Compress and Encrypt (it must see the bytes the client sent). Every write path is checked:
    ``put_object``, and ``copy`` into a prefix whose rule refuses anything (the
    source is streamed through the checks; elsewhere the native copy is used).
    Signed ``PUT``/``POST`` URLs would skip the checks, so they are refused
    (:class:`UnsupportedError`) for keys under a rule that refuses anything.
    """

    def __init__(self, inner: StorageBackend, *, policy: ValidationPolicy | None = None) -> None:
        super().__init__(inner)
        _filetype()
        self.policy = policy if policy is not None else ValidationPolicy()

    def __repr__(self) -> str:
        return f"Validate({self.inner!r})"

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
        policy = self.policy
        content_type = check_content_type(content_type)
        rule = policy.check_declared(key, size=await _known_size(body), content_type=content_type)
        chunks = iter_body(body).__aiter__()
        head, exhausted = await _read_upto(chunks, policy.sniff_size)
        sniffed = sniff_type(head)
        chosen = policy.decide(key, sniffed, content_type, rule)
        if rule.checks_images and sniffed is not None and sniffed.startswith("image/") and sniffed != "image/svg+xml":
            while not _image_limits(key, head, rule, exhausted or len(head) >= policy.image_header_size):
                more, exhausted = await _read_upto(chunks, policy.image_header_size - len(head))
                head += more
        _check_size(key, len(head), rule)
        return await self.inner.put_object(
            key,
            _limited(head, chunks, key, rule),
            content_type=chosen,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        if not self.policy.rule_for(validate_key(dst)).constrained and not self.policy.check_filenames:
            return await self.inner.copy(src, dst, mode=mode)
        async with await self.inner.open(src) as dl:
            info = dl.info
            return await self.put_object(
                dst,
                dl,
                content_type=info.content_type,
                metadata=info.metadata,
                mode=mode,
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        if method.upper() not in ("GET", "HEAD") and (
            self.policy.rule_for(validate_key(key)).constrained or self.policy.check_filenames
        ):
            raise UnsupportedError(
                f"a signed {method.upper()} URL would bypass upload validation", key=key, operation="sign_url"
            )
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)


async def _known_size(body: Body) -> int | None:
    """The body's length when known without reading it (bytes-likes and paths)."""
    if isinstance(body, bytes | bytearray):
        return len(body)
    if isinstance(body, memoryview):
        return body.nbytes
    if hasattr(body, "__fspath__"):
        size = await path_size(body)  # type: ignore[arg-type]
        return size if size >= 0 else None
    return None


async def _read_upto(chunks: AsyncIterator[bytes], n: int) -> tuple[bytes, bool]:
    """Up to ``n`` bytes (perhaps a little more: whole chunks) and whether the body has ended."""
    parts: list[bytes] = []
    got = 0
    while got < n:
        chunk = await anext(chunks, None)
        if chunk is None:
            return b"".join(parts), True
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts), False


def _check_size(key: str, size: int, rule: UploadRule) -> None:
    if rule.max_size is not None and size > rule.max_size:
        raise FileTooLargeError(f"the body is larger than {rule.max_size} bytes", key=key, operation="put")


async def _limited(head: bytes, chunks: AsyncIterator[bytes], key: str, rule: UploadRule) -> AsyncIterator[bytes]:
    """``head`` then the rest of the body, failing the write once it passes ``rule.max_size``."""
    seen = len(head)
    if head:
        yield head
    async for chunk in chunks:
        seen += len(chunk)
        _check_size(key, seen, rule)
        yield chunk
