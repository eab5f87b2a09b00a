"""Cloudinary's documented REST conventions: key ↔ public id, signatures, transformations, errors.

Kept apart from the backend so the test fake and the backend cannot drift: both
sign and escape through these functions, and the tests cross-check them
against the official SDK. :func:`raise_for` is the backend's one error boundary
for responses.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, NoReturn

import httpx

from ..._errors import (
    InvalidArgumentError,
    InvalidKeyError,
    InvalidRangeError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    StorageError,
    UnavailableError,
    parse_retry_after,
)
from ..._types import ObjectInfo, guess_content_type

__all__ = [
    "RESOURCE_TYPES",
    "ResourceType",
    "Transform",
    "api_signature",
    "asset_context",
    "context_string",
    "decode_public_id",
    "encode_public_id",
    "info_from_resource",
    "json_of",
    "parse_context",
    "raise_for",
    "resource_type_for",
    "smart_escape",
    "type_order",
    "url_signature",
]

ResourceType = Literal["image", "video", "raw"]

# Characters a public id may not contain (Cloudinary: ? & # \ % < > +), plus the escape character itself.
_ESCAPED = frozenset("?&#\\%<>+~")
_ESCAPE = re.compile(r"~([0-9A-F]{2})")
MAX_PUBLIC_ID = 255
BACKEND = "CloudinaryBackend"


def raise_for(r: httpx.Response, op: str, key: str | None) -> NoReturn:
    """Raise the unistore error for an unsuccessful response (its body must have been read)."""
    status = r.status_code
    try:
        message = str(r.json()["error"]["message"]).splitlines()[0][:200]
    except Exception:
        message = r.reason_phrase or f"HTTP {status}"
    kw: dict[str, Any] = {"key": key, "backend": BACKEND, "operation": op}
    if status == 404:
        raise NotFoundError("no such object", **kw)
    if status == 416:
        raise InvalidRangeError("range not satisfiable", **kw)
    if status in (401, 403):
        raise PermissionDeniedError(f"access denied: {message}", **kw)
    if status == 420 or status == 429:
        raise RateLimitedError(message, retry_after=parse_retry_after(r.headers.get("retry-after")), **kw)
    if status >= 500:
        raise UnavailableError(f"Cloudinary error {status}: {message}", **kw)
    if status == 413:
        raise QuotaExceededError(message, **kw)
    if status == 400:
        raise InvalidArgumentError(f"Cloudinary rejected the request: {message}", **kw)
    raise StorageError(f"Cloudinary error {status}: {message}", **kw)


def json_of(r: httpx.Response, op: str, key: str | None) -> Any:
    """The JSON body of a successful response; a body that is not JSON (a proxy's page, a cut
    answer) is an :class:`UnavailableError`."""
    try:
        return r.json()
    except ValueError as exc:
        raise UnavailableError(
            f"the server's answer is not valid JSON ({type(exc).__name__})", key=key, backend=BACKEND, operation=op
        ) from exc


def encode_public_id(folder: str, key: str) -> str:
    """The public id for ``key``: reserved characters become ``~XX`` (hex), character by character,
    so the mapping is one-to-one and a key prefix maps to a public-id prefix."""
    pid = folder + "".join(f"~{ord(c):02X}" if c in _ESCAPED else c for c in key)
    if len(pid) > MAX_PUBLIC_ID:
        raise InvalidKeyError(f"key is too long for a Cloudinary public id ({MAX_PUBLIC_ID} characters)", key=key)
    return pid


def decode_public_id(folder: str, public_id: str) -> str | None:
    """The key of a public id made by :func:`encode_public_id` (``None`` if outside ``folder``)."""
    if not public_id.startswith(folder):
        return None
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), public_id[len(folder) :])


def resource_type_for(content_type: str) -> ResourceType:
    """image/* → image; video/* and audio/* → video (Cloudinary keeps audio as video); else raw."""
    major = content_type.partition("/")[0].lower()
    if major == "image":
        return "image"
    if major in ("video", "audio"):
        return "video"
    return "raw"


RESOURCE_TYPES: tuple[ResourceType, ...] = ("image", "video", "raw")


def type_order(key: str) -> tuple[ResourceType, ...]:
    """The resource types to try for ``key``: the one its extension suggests first."""
    first = resource_type_for(guess_content_type(key))
    return (first, *(t for t in RESOURCE_TYPES if t != first))


def api_signature(params: dict[str, str], secret: str, algorithm: str = "sha1") -> str:
    """Upload/Download API signature: the sorted ``k=v`` pairs of non-empty parameters (``&`` in a
    pair encoded as ``%26``, signature version 2), joined by ``&``, the API secret appended, hashed."""
    skip = {"file", "api_key", "resource_type", "cloud_name", "signature"}
    pairs = sorted(f"{k}={v}".replace("&", "%26") for k, v in params.items() if v != "" and k not in skip)
    return hashlib.new(algorithm, ("&".join(pairs) + secret).encode()).hexdigest()


def url_signature(to_sign: str, secret: str, algorithm: str = "sha1") -> str:
    """A delivery-URL signature component: ``s--`` + 8 chars of base64url(hash(path + secret)) + ``--``,
    hashed with the product environment's signature algorithm, as the SDKs do."""
    digest = hashlib.new(algorithm, (to_sign + secret).encode()).digest()
    return "s--" + base64.urlsafe_b64encode(digest)[:8].decode() + "--"


_UNSAFE = re.compile(rb"[^a-zA-Z0-9_.\-/:]")


def smart_escape(source: str) -> str:
    """Percent-encode a public id for a delivery URL path exactly as the SDKs' ``smart_escape``:
    every UTF-8 byte but ``A-Za-z0-9_.-/:`` as ``%XX`` (so ``~`` is ``%7E``, unlike ``quote``)."""
    return _UNSAFE.sub(lambda m: b"%%%02X" % m.group()[0], source.encode()).decode("ascii")


def _escape_context(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("|", "\\|")


def context_string(context: dict[str, str]) -> str:
    """Contextual metadata in the Upload API's ``key=value|key=value`` form (``=``, ``|`` escaped)."""
    return "|".join(f"{_escape_context(k)}={_escape_context(v)}" for k, v in context.items())


# System fields kept in the asset's context next to the custom metadata.
_SYSTEM = {"_ct": "content_type", "_cc": "cache_control", "_cd": "content_disposition", "_sz": "size"}


def asset_context(meta: dict[str, str], content_type: str, cache_control: str | None, disposition: str | None) -> str:
    """The Upload API ``context`` for custom metadata plus the system fields (``_ct``, ``_cc``, ``_cd``)."""
    context = {**meta, "_ct": content_type}
    if cache_control is not None:
        context["_cc"] = cache_control
    if disposition is not None:
        context["_cd"] = disposition
    return context_string(context)


def info_from_resource(res: Mapping[str, Any], folder: str) -> ObjectInfo:
    """An asset resource (Upload/Admin API JSON) as :class:`ObjectInfo`; the etag is ``{version}-{md5}``."""
    context = dict((res.get("context") or {}).get("custom") or {})
    system = {name: context.pop(short, None) for short, name in _SYSTEM.items()}
    try:
        modified = datetime.fromisoformat(str(res.get("created_at", "")).replace("Z", "+00:00"))
    except ValueError:
        modified = datetime.now(UTC)
    key = decode_public_id(folder, str(res["public_id"]))
    return ObjectInfo(
        key=key or str(res["public_id"]),
        size=int(res.get("bytes", 0)),
        etag=f"{res.get('version', 0)}-{res.get('etag', '')}",
        last_modified=modified,
        content_type=system["content_type"] or "application/octet-stream",
        metadata=context,
        cache_control=system["cache_control"],
        content_disposition=system["content_disposition"],
    )


def parse_context(text: str) -> dict[str, str]:
    """The inverse of :func:`context_string`."""
    out: dict[str, str] = {}
    name: list[str] = []
    value: list[str] = []
    cur, i = name, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i + 1])
            i += 2
            continue
        if c == "=" and cur is name:
            cur = value
        elif c == "|":
            out["".join(name)] = "".join(value)
            name, value = [], []
            cur = name
        else:
            cur.append(c)
        i += 1
    if name or value:
        out["".join(name)] = "".join(value)
    return out


_CROPS = ("scale", "fit", "limit", "mfit", "fill", "lfill", "pad", "lpad", "mpad", "crop", "thumb")
_WORD = re.compile(r"[a-z0-9_:]+")


@dataclass(frozen=True, slots=True)
class Transform:
    """A Cloudinary transformation for :meth:`CloudinaryBackend.get_url` (resize, crop, format, quality).

    >>> str(Transform(width=200, height=200, crop="fill", format="webp", quality="auto"))
    'c_fill,f_webp,h_200,q_auto,w_200'
    """

    width: int | None = None
    height: int | None = None
    crop: Literal["scale", "fit", "limit", "mfit", "fill", "lfill", "pad", "lpad", "mpad", "crop", "thumb"] | None = (
        None
    )
    gravity: str | None = None
    """``auto``, ``face``, ``center``, ``north_east``..."""
    format: str | None = None
    """``auto`` (best for the browser), ``webp``, ``avif``, ``jpg``, ``png``..."""
    quality: int | Literal["auto", "auto:best", "auto:good", "auto:eco", "auto:low"] | None = None

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise InvalidArgumentError(f"transform {name} must be a positive int")
        if self.crop is not None and self.crop not in _CROPS:
            raise InvalidArgumentError(f"transform crop must be one of {', '.join(_CROPS)}")
        if isinstance(self.quality, int) and not isinstance(self.quality, bool):
            if not 1 <= self.quality <= 100:
                raise InvalidArgumentError("transform quality must be 1..100 or 'auto'")
        elif self.quality is not None and not str(self.quality).startswith("auto"):
            raise InvalidArgumentError("transform quality must be 1..100 or 'auto'")
        for name in ("gravity", "format"):
            value = getattr(self, name)
            if value is not None and not _WORD.fullmatch(value):
                raise InvalidArgumentError(f"transform {name} {value!r} is not a Cloudinary value")
        if not any(getattr(self, f) is not None for f in ("width", "height", "crop", "gravity", "format", "quality")):
            raise InvalidArgumentError("an empty transform: give at least one of width, height, crop, format...")

    def __str__(self) -> str:
        parts = {
            "c": self.crop,
            "f": self.format,
            "g": self.gravity,
            "h": self.height,
            "q": self.quality,
            "w": self.width,
        }
        return ",".join(f"{k}_{v}" for k, v in sorted(parts.items()) if v is not None)
