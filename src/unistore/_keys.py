"""Key rules, shared by every backend.

A key is a ``/``-separated path of one or more segments. A key is rejected
(:class:`InvalidKeyError`) when it

- is not a ``str``, is empty, or is longer than 1024 UTF-8 bytes;
- starts with ``/`` or a Windows drive prefix (``C:``);
- contains a backslash, NUL, or any control character (C0, DEL, C1);
- has an empty segment (``a//b``, a trailing ``/``), a ``.`` or ``..`` segment,
  or a segment longer than 255 UTF-8 bytes;
- still has any of those after percent-decoding (``%2e%2e/x``, ``a%2F..%2Fb``);
- has a segment starting with ``.unistore`` (the namespace a local store keeps
  its own files in, reserved on every backend so keys stay portable).

Anything else is accepted exactly as given: ``a..b.txt``, spaces, unicode,
``!@#$%^&()_+-=;',``. Keys are never normalised.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from urllib.parse import unquote

from ._errors import InvalidKeyError

__all__ = ["MAX_KEY_BYTES", "RESERVED_PREFIX", "reserved_keys", "validate_key", "validate_prefix"]

MAX_KEY_BYTES = 1024
MAX_SEGMENT_BYTES = 255
RESERVED_PREFIX = ".unistore"

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")
# Keys no rule below can refuse: ASCII names of 255 bytes at most, no segment starting with
# "." (so never ".", "..", or reserved), no "%", "\\", ":" or control character.
_PLAIN = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_\-.]*(?:/[A-Za-z0-9_\-][A-Za-z0-9_\-.]*)*")
_RESERVED_ALLOWED: ContextVar[bool] = ContextVar("unistore_reserved_keys", default=False)


@contextlib.contextmanager
def reserved_keys() -> Iterator[None]:
    """Let keys in this block use the reserved ``.unistore`` namespace (internal state only).

    unistore's own components (the service's sessions and idempotency records)
    store their state through any backend this way; user keys never can.
    """
    token = _RESERVED_ALLOWED.set(True)
    try:
        yield
    finally:
        _RESERVED_ALLOWED.reset(token)


def _check_text(key: str, text: str, *, partial_last: bool) -> None:
    if "\\" in text:
        raise InvalidKeyError("key contains a backslash", key=key)
    if _CONTROL.search(text):
        raise InvalidKeyError("key contains a control character", key=key)
    if text.startswith("/"):
        raise InvalidKeyError("key must not start with '/'", key=key)
    if _DRIVE.match(text):
        raise InvalidKeyError("key must not start with a drive prefix", key=key)
    segments = text.split("/")
    if partial_last:
        # A prefix ends in a partial segment ("" after a trailing "/", or the
        # start of a name such as "." matching ".hidden"): only whole segments
        # are held to the segment rules.
        segments.pop()
    for seg in segments:
        if seg == "":
            raise InvalidKeyError("key has an empty segment", key=key)
        if seg in (".", ".."):
            raise InvalidKeyError("key has a '.' or '..' segment", key=key)
        if seg.startswith(RESERVED_PREFIX) and not _RESERVED_ALLOWED.get():
            raise InvalidKeyError(f"segments starting with {RESERVED_PREFIX!r} are reserved", key=key)
        if len(seg.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise InvalidKeyError(f"key segment longer than {MAX_SEGMENT_BYTES} bytes", key=key)


def _decoded_forms(text: str) -> list[str]:
    """``text`` percent-decoded repeatedly until stable (catches ``%252e``, however deep).

    Terminates: every decoding that changes the text shortens it by at least two
    characters, and callers bound the text to 1024 bytes first.
    """
    forms = []
    while "%" in text:
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            break
        forms.append(decoded)
        text = decoded
    return forms


def validate_key(key: object) -> str:
    """Return ``key`` unchanged if it obeys the key rules; raise :class:`InvalidKeyError`."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"key must be a str, not {type(key).__name__}")
    if len(key) <= MAX_SEGMENT_BYTES and _PLAIN.fullmatch(key):
        return key  # the common case, decided by one regex
    if not key:
        raise InvalidKeyError("key must not be empty", key=key)
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError("key is not valid unicode (lone surrogate)", key=key) from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"key longer than {MAX_KEY_BYTES} UTF-8 bytes", key=key[:64] + "…")
    _check_text(key, key, partial_last=False)
    for decoded in _decoded_forms(key):
        _check_text(key, decoded, partial_last=False)
    return key


def validate_prefix(prefix: object) -> str:
    """Validate a listing prefix: ``""``, a partial key, or a key ending in ``/``.

    The same rules as keys for every complete segment; the text after the last
    ``/`` is a partial segment (``"rep"`` matches ``"report.pdf"``, ``"."``
    matches ``".hidden"``) and may be empty.
    """
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    try:
        size = len(prefix.encode("utf-8"))
    except UnicodeEncodeError:  # no key has one, and a file system cannot name one
        raise InvalidKeyError("prefix is not valid unicode (lone surrogate)", key=prefix[:64]) from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(f"prefix longer than {MAX_KEY_BYTES} UTF-8 bytes", key=prefix[:64])
    _check_text(prefix, prefix, partial_last=True)
    for decoded in _decoded_forms(prefix):
        _check_text(prefix, decoded, partial_last=True)
    return prefix
