"""Cloudinary uploads for :mod:`unistore.backends.cloudinary`: replayable sources, form bodies, chunking.

A body up to ``chunk_size`` is one signed ``multipart/form-data`` POST, encoded
here in one piece (cheaper than a generic form encoder, and sent in one write).
Larger bodies go in ``chunk_size`` pieces with ``Content-Range`` and
``X-Unique-Upload-Id``; the total must be known first, so a stream that outgrows
one chunk is spooled to a temporary file (memory: one chunk; disk: the body once).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO, Any

import httpx

from ..._base import iter_body
from ..._types import Body
from ._api import json_of, raise_for

__all__ = ["Source", "form_body", "upload_asset"]

Send = Callable[..., Awaitable[httpx.Response]]
_JOIN = 256 * 1024  # bodies up to this size are sent as one buffer


def form_body(fields: dict[str, str], data: bytes) -> tuple[bytes, bytes, str]:
    """A ``multipart/form-data`` body around ``data`` (the fields, then ``data`` as ``file``):
    the bytes before and after ``data``, and the content type."""
    boundary = secrets.token_hex(16)
    head = "".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n' for k, v in fields.items()
    )
    head += (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="blob"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode(), f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


async def _post_form(
    send: Send, url: str, key: str, fields: dict[str, str], data: bytes, headers: dict[str, str] | None = None
) -> Any:
    """One upload POST. Small bodies go as one buffer (one write); a chunk is sent as three parts
    with its length, so it is not copied into a second buffer."""
    head, tail, ctype = form_body(fields, data)
    headers = {**(headers or {}), "Content-Type": ctype}
    if len(data) <= _JOIN:
        return await send("POST", url, "put", key, content=b"".join((head, data, tail)), headers=headers)

    async def parts() -> AsyncIterator[bytes]:
        for part in (head, data, tail):
            yield part

    headers["Content-Length"] = str(len(head) + len(data) + len(tail))
    return await send("POST", url, "put", key, content=parts(), headers=headers)


async def upload_asset(
    send: Send, url: str, key: str, fields: dict[str, str], source: Source, chunk_size: int
) -> dict[str, Any]:
    """Upload ``source`` with the signed ``fields``, in one request or in chunks; the asset (JSON)."""
    if source.size <= chunk_size:
        r = await _post_form(send, url, key, fields, await source.read_at(0, source.size))
        if r.status_code != 200:
            raise_for(r, "put", key)
        res: dict[str, Any] = json_of(r, "put", key)
        return res
    upload_id = os.urandom(16).hex()
    offset = 0
    while offset < source.size:
        n = min(chunk_size, source.size - offset)
        headers = {"Content-Range": f"bytes {offset}-{offset + n - 1}/{source.size}", "X-Unique-Upload-Id": upload_id}
        r = await _post_form(send, url, key, fields, await source.read_at(offset, n), headers)
        if r.status_code != 200:
            raise_for(r, "put", key)
        offset += n
    res = json_of(r, "put", key)
    return res


class Source:
    """A body with a known size, readable at any offset (uploads are replayable): bytes in memory,
    a path on disk, or a stream spooled to a temporary file once it outgrows one chunk."""

    def __init__(self, data: bytes | None, file: IO[bytes] | None, size: int, owned: bool) -> None:
        self._data, self._file, self.size, self._owned = data, file, size, owned

    @classmethod
    async def load(cls, body: Body, chunk_size: int) -> Source:
        if isinstance(body, bytes | bytearray | memoryview):
            return cls(bytes(body), None, len(body), False)
        if isinstance(body, os.PathLike):
            f = await asyncio.to_thread(open, os.fspath(body), "rb")
            return cls(None, f, os.fstat(f.fileno()).st_size, True)
        buf = bytearray()
        spool: IO[bytes] | None = None
        try:
            async for chunk in iter_body(body, min(chunk_size, 1 << 20)):
                if spool is None:
                    buf += chunk
                    if len(buf) > chunk_size:
                        spool = await asyncio.to_thread(tempfile.TemporaryFile)
                        await asyncio.to_thread(spool.write, buf)
                        buf.clear()
                else:
                    await asyncio.to_thread(spool.write, chunk)
        except BaseException:
            if spool is not None:
                await asyncio.to_thread(spool.close)
            raise
        if spool is None:
            return cls(bytes(buf), None, len(buf), False)
        size = await asyncio.to_thread(spool.tell)
        return cls(None, spool, size, True)

    async def read_at(self, offset: int, n: int) -> bytes:
        if self._data is not None:
            return self._data[offset : offset + n]
        assert self._file is not None
        f = self._file

        def read() -> bytes:
            f.seek(offset)
            return f.read(n)

        return await asyncio.to_thread(read)

    async def aclose(self) -> None:
        if self._file is not None and self._owned:
            await asyncio.to_thread(self._file.close)
