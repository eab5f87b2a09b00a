"""MIME types as browsers read them: WHATWG "parse a MIME type" and Fetch's "extract a MIME type".

A browser does not read ``Content-Type: text/plain, text/html`` as ``text/plain``: it
splits the value on commas (outside quoted strings), parses each part, skips failures
and ``*/*``, and keeps the *last* type. Judging a stored type any other way lets an
uploader choose what the browser renders. This module follows the standards step by
step (https://mimesniff.spec.whatwg.org/#parse-a-mime-type,
https://fetch.spec.whatwg.org/#concept-header-extract-mime-type), decides whether a
type may be shown inline from the app's origin (an allow-list), and checks a type
before it is stored.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from dataclasses import dataclass, field

from ._errors import InvalidArgumentError

__all__ = [
    "INLINE_SAFE",
    "MimeType",
    "check_content_type",
    "extract_mime_type",
    "inline_safe",
    "parse_mime_type",
    "split_header_value",
]

_WHITESPACE = "\n\r\t "  # HTTP whitespace
_TAB_OR_SPACE = "\t "
_TOKEN = frozenset("!#$%&'*+-.^_`|~" + string.ascii_letters + string.digits)
_QUOTED = frozenset(["\t", *map(chr, range(0x20, 0x7F)), *map(chr, range(0x80, 0x100))])

INLINE_SAFE = frozenset(
    {
        "text/plain",
        "text/csv",
        "application/json",
        "application/pdf",
        "image/png",
        "image/apng",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
        "audio/mpeg",
        "audio/ogg",
        "audio/wav",
        "audio/webm",
        "audio/aac",
        "audio/flac",
        "audio/mp4",
        "video/mp4",
        "video/webm",
        "video/ogg",
        "font/woff",
        "font/woff2",
        "font/ttf",
        "font/otf",
    }
)
"""Essences a browser shows without running anything from the serving origin: text shown as
text (with ``nosniff``), images other than SVG, audio, video, fonts, and PDF (rendered by an
isolated viewer). Every other type, known or not, is served as an attachment in a sandbox."""


@dataclass(frozen=True, slots=True)
class MimeType:
    """A parsed MIME type: lower-case ``type``/``subtype`` and its parameters (names lower-case)."""

    type: str
    subtype: str
    parameters: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def essence(self) -> str:
        """``type/subtype``."""
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        """WHATWG "serialize a MIME type" (parameter values quoted where they must be)."""
        out = self.essence
        for name, value in self.parameters.items():
            if not value or not _TOKEN.issuperset(value):
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f";{name}={value}"
        return out


def _collect(text: str, pos: int, stop: str) -> tuple[str, int]:
    """Collect code points from ``pos`` up to the first one in ``stop``."""
    end = pos
    while end < len(text) and text[end] not in stop:
        end += 1
    return text[pos:end], end


def _quoted_string(text: str, pos: int, *, extract: bool) -> tuple[str, int]:
    """Fetch's "collect an HTTP quoted string" from the ``"`` at ``pos``."""
    start, value = pos, ""
    pos += 1
    while True:
        part, pos = _collect(text, pos, '"\\')
        value += part
        if pos >= len(text):
            break
        quote_or_backslash = text[pos]
        pos += 1
        if quote_or_backslash == "\\":
            if pos >= len(text):
                value += "\\"
                break
            value += text[pos]
            pos += 1
        else:
            break
    return (value if extract else text[start:pos]), pos


def parse_mime_type(text: str) -> MimeType | None:
    """WHATWG "parse a MIME type": the type, or ``None`` for failure."""
    text = text.strip(_WHITESPACE)
    type_, pos = _collect(text, 0, "/")
    if not type_ or not _TOKEN.issuperset(type_) or pos >= len(text):
        return None
    subtype, pos = _collect(text, pos + 1, ";")
    subtype = subtype.rstrip(_WHITESPACE)
    if not subtype or not _TOKEN.issuperset(subtype):
        return None
    mime = MimeType(type_.lower(), subtype.lower())
    while pos < len(text):
        pos += 1  # the ";"
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        name, pos = _collect(text, pos, ";=")
        name = name.lower()
        if pos < len(text):
            if text[pos] == ";":
                continue
            pos += 1  # the "="
        if pos >= len(text):
            break
        if text[pos] == '"':
            value, pos = _quoted_string(text, pos, extract=True)
            _, pos = _collect(text, pos, ";")
        else:
            value, pos = _collect(text, pos, ";")
            value = value.rstrip(_WHITESPACE)
            if not value:
                continue
        if name and _TOKEN.issuperset(name) and _QUOTED.issuperset(value) and name not in mime.parameters:
            mime.parameters[name] = value
    return mime


def split_header_value(value: str) -> list[str]:
    """Fetch's "get, decode, and split": the comma-separated parts, quoted strings kept whole."""
    values: list[str] = []
    pos, current = 0, ""
    while True:
        part, pos = _collect(value, pos, '",')
        current += part
        if pos < len(value) and value[pos] == '"':
            quoted, pos = _quoted_string(value, pos, extract=False)
            current += quoted
            if pos < len(value):
                continue
        values.append(current.strip(_TAB_OR_SPACE))
        current = ""
        if pos >= len(value):
            return values
        pos += 1  # the ","


def extract_mime_type(header_values: Iterable[str]) -> MimeType | None:
    """Fetch's "extract a MIME type" from every ``Content-Type`` field of a response (``None``: failure)."""
    fields = list(header_values)
    if not fields:
        return None
    charset: str | None = None
    essence: str | None = None
    mime: MimeType | None = None
    for value in split_header_value(", ".join(fields)):
        temporary = parse_mime_type(value)
        if temporary is None or temporary.essence == "*/*":
            continue
        mime = temporary
        if mime.essence != essence:
            charset = mime.parameters.get("charset")
            essence = mime.essence
        elif "charset" not in mime.parameters and charset is not None:
            mime.parameters["charset"] = charset
    return mime


def inline_safe(content_type: str | None) -> bool:
    """Whether a response with this ``Content-Type`` value may be shown inline from our origin.

    The type is read as a browser reads it (:func:`extract_mime_type`), and only an
    essence in :data:`INLINE_SAFE` passes: missing, empty, invalid, unknown and
    active types (HTML, XML, SVG, JavaScript, ``multipart/x-mixed-replace``...) do not.
    """
    if content_type is None:
        return False
    mime = extract_mime_type([content_type])
    return mime is not None and mime.essence in INLINE_SAFE


_CHECKED: dict[str, str | None] = {}
_CHECKED_MAX = 1024
"""Values :func:`check_content_type` accepted, with its answer: a request's type (the same few on every
write) is parsed once. The first ``_CHECKED_MAX`` distinct ones (of at most 256 characters) are kept; a
refused value never is."""


def check_content_type(value: str | None) -> str | None:
    """A content type fit to store: exactly one valid MIME type (surrounding whitespace removed).

    ``None`` or empty means "none given". A list (any comma), a value that does not
    parse, a wildcard (``*/*``, ``text/*``) or one with characters that cannot be sent in
    a header is refused with :class:`InvalidArgumentError`.
    """
    if value is None:
        return None
    if type(value) is str:
        try:
            return _CHECKED[value]
        except KeyError:
            checked = _check_content_type(value)
            if len(_CHECKED) < _CHECKED_MAX and len(value) <= 256:
                _CHECKED[value] = checked
            return checked
    if not isinstance(value, str):
        raise InvalidArgumentError(f"content_type must be a string, not {type(value).__name__}")
    return _check_content_type(value)


def _check_content_type(value: str) -> str | None:
    if not all(" " <= c <= "~" or c == "\t" for c in value):
        raise InvalidArgumentError("content_type must be printable ASCII (RFC 9110 §5.5)")
    text = value.strip(_TAB_OR_SPACE)
    if not text:
        return None
    if "," in text:
        raise InvalidArgumentError(f"content_type must be one MIME type, not a list: {text!r}")
    mime = parse_mime_type(text)
    if mime is None:
        raise InvalidArgumentError(f"content_type {text!r} is not a MIME type (type/subtype)")
    if "*" in (mime.type, mime.subtype):
        raise InvalidArgumentError(f"content_type {text!r} is a wildcard, not a MIME type")
    return text
