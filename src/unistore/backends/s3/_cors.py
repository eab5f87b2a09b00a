"""The bucket's CORS rule for browser uploads (PutBucketCors / GetBucketCors).

A browser page on the service's origin that sends upload parts straight to the
store (presigned part URLs) needs the bucket to answer its CORS preflight:
the page's origin allowed, ``PUT``/``GET``/``HEAD``, any request header, and
``ETag`` exposed so the page may read each part's ETag.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import urlsplit
from xml.sax.saxutils import escape

from ..._errors import InvalidArgumentError
from ._xml import parse_xml

if TYPE_CHECKING:
    from . import S3Backend

__all__ = ["BROWSER_METHODS", "get_cors_origins", "put_browser_cors"]

BROWSER_METHODS = ("PUT", "GET", "HEAD")


def _origin(text: str) -> str:
    """``scheme://host[:port]`` exactly (400 for anything else, such as a path or a wildcard)."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise InvalidArgumentError(f"an origin is scheme://host[:port], not {text!r}")
    return f"{parts.scheme}://{parts.netloc}"


async def put_browser_cors(backend: S3Backend, origins: Sequence[str], *, max_age: int = 3600) -> None:
    """Set the bucket's CORS configuration to one rule for browser uploads from ``origins``.

    This replaces the bucket's whole CORS configuration (S3 keeps one per bucket).
    """
    allowed = [_origin(o) for o in origins]
    if not allowed:
        raise InvalidArgumentError("name at least one origin")
    if not 0 <= max_age <= 86400:
        raise InvalidArgumentError("max_age must be 0..86400 seconds")
    rule = "".join(f"<AllowedOrigin>{escape(o)}</AllowedOrigin>" for o in allowed)
    rule += "".join(f"<AllowedMethod>{m}</AllowedMethod>" for m in BROWSER_METHODS)
    rule += f"<AllowedHeader>*</AllowedHeader><ExposeHeader>ETag</ExposeHeader><MaxAgeSeconds>{max_age}</MaxAgeSeconds>"
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<CORSConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><CORSRule>{rule}</CORSRule>'
        "</CORSConfiguration>"
    ).encode()
    headers = {
        "content-type": "application/xml",
        "content-md5": base64.b64encode(hashlib.md5(body).digest()).decode(),
    }
    await backend._send("PUT", backend._bucket_path, op="put_cors", query={"cors": ""}, headers=headers, body=body)


async def get_cors_origins(backend: S3Backend) -> list[str]:
    """The origins the bucket's CORS rules allow (empty when it has none)."""
    from ..._errors import NotFoundError

    try:
        r = await backend._send("GET", backend._bucket_path, op="get_cors", query={"cors": ""})
    except NotFoundError:  # NoSuchCORSConfiguration
        return []
    root = parse_xml(r.body, operation="get_cors", backend=backend.name)
    return [el.text or "" for el in root.iter() if el.tag.rpartition("}")[2] == "AllowedOrigin"]
