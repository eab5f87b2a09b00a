"""Upload bodies checked while they stream: size bound and ``Content-MD5`` / ``Repr-Digest``.

``Content-MD5`` is base64 of the body's MD5 (RFC 1864). ``Repr-Digest`` is an
RFC 9530 dictionary such as ``sha-256=:<base64>:``; ``sha-256`` and ``sha-512``
are verified, other algorithms ignored (§2). A mismatch raises
:class:`IntegrityError` from the body iterator at its end, before the backend
commits, so nothing is stored; a body over the size bound raises
:class:`QuotaExceededError` as soon as it crosses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Mapping

from .._errors import IntegrityError, InvalidArgumentError, QuotaExceededError

__all__ = ["check_digests", "expected_digests", "verified_body"]

_ALGORITHMS = {"sha-256": "sha256", "sha-512": "sha512"}
_MEMBER = re.compile(r"\s*([a-z0-9*_\-.]+)\s*=\s*:([A-Za-z0-9+/=]*):\s*(?:,|\Z)")


def _b64(value: str, header: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"{header} is not valid base64") from None


def expected_digests(headers: Mapping[str, str]) -> dict[str, bytes]:
    """``{hashlib name: digest}`` announced by ``Content-MD5`` and ``Repr-Digest`` (400 if malformed)."""
    out: dict[str, bytes] = {}
    md5 = headers.get("content-md5")
    if md5 is not None:
        out["md5"] = _b64(md5.strip(), "Content-MD5")
        if len(out["md5"]) != 16:
            raise InvalidArgumentError("Content-MD5 must be 16 bytes, base64-encoded")
    repr_digest = headers.get("repr-digest")
    if repr_digest is not None:
        pos, text = 0, repr_digest.strip()
        while pos < len(text):
            m = _MEMBER.match(text, pos)
            if m is None or m.end() == pos:
                raise InvalidArgumentError("Repr-Digest must be a list of algorithm=:base64: (RFC 9530)")
            name = _ALGORITHMS.get(m.group(1).lower())
            if name is not None:
                out[name] = _b64(m.group(2), "Repr-Digest")
            pos = m.end()
    return out


def check_digests(data: bytes, *, expected: Mapping[str, bytes], key: str) -> None:
    """Raise as :func:`verified_body` does at its end if a digest of the whole body ``data`` differs."""
    for name, digest in expected.items():
        if hashlib.new(name, data).digest() != digest:
            label = "Content-MD5" if name == "md5" else "Repr-Digest"
            raise IntegrityError(f"{label} does not match the body ({name})", key=key, operation="put")


async def verified_body(
    chunks: AsyncIterable[bytes], *, expected: Mapping[str, bytes], max_size: int, key: str
) -> AsyncIterator[bytes]:
    """Yield ``chunks``; raise past ``max_size`` bytes, or at the end if a digest differs."""
    hashes = {name: hashlib.new(name) for name in expected}
    size = 0
    async for chunk in chunks:
        if not chunk:
            continue
        size += len(chunk)
        if size > max_size:
            raise QuotaExceededError(f"request body is larger than {max_size} bytes", key=key, operation="put")
        for h in hashes.values():
            h.update(chunk)
        yield chunk
    for name, h in hashes.items():
        if h.digest() != expected[name]:
            label = "Content-MD5" if name == "md5" else "Repr-Digest"
            raise IntegrityError(f"{label} does not match the body ({name})", key=key, operation="put")
