"""GCS resumable uploads for :mod:`unistore.backends.gcs`: a session fed in ``chunk_size`` pieces.

Memory stays at one chunk (plus the piece being read). GCS may persist less
than a piece (it acknowledges a shorter ``Range``): the rest is resent. A body
that fails cancels the session, so nothing is committed and the old object stays.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx

from ..._types import WriteMode
from ._wire import INFO_FIELDS, json_of, raise_for

__all__ = ["resumable_upload"]

Send = Callable[..., Awaitable[httpx.Response]]


async def resumable_upload(
    send: Send,
    upload_url: str,
    key: str,
    buf: bytearray,
    rest: AsyncIterator[bytes],
    resource: dict[str, Any],
    params: dict[str, str],
    mode: WriteMode,
    chunk_size: int,
) -> dict[str, Any]:
    """Upload ``buf`` then ``rest`` through one session; the stored object's resource (JSON)."""
    r = await send(
        "POST",
        upload_url,
        "put",
        key,
        params={"uploadType": "resumable", "fields": INFO_FIELDS, **params},
        json=resource,
        headers={"X-Upload-Content-Type": resource["contentType"]},
    )
    if r.status_code != 200 or "location" not in r.headers:
        raise_for(r, "put", key, mode)
    session = r.headers["location"]
    offset, done = 0, False
    try:
        while True:
            while not done and len(buf) <= chunk_size:
                chunk = await anext(rest, None)
                if chunk is None:
                    done = True
                else:
                    buf += chunk
            last = done and len(buf) <= chunk_size
            piece = bytes(buf[:chunk_size]) if not last else bytes(buf)
            end = offset + len(piece)
            total = str(end) if last else "*"
            content_range = f"bytes {offset}-{end - 1}/{total}" if piece else f"bytes */{total}"
            r = await send("PUT", session, "put", key, content=piece, headers={"Content-Range": content_range})
            if last:
                if r.status_code not in (200, 201):
                    raise_for(r, "put", key, mode)
                res: dict[str, Any] = json_of(r, "put", key)
                return res
            if r.status_code != 308:
                raise_for(r, "put", key, mode)
            committed = int(r.headers.get("range", f"bytes=0-{offset - 1}").rpartition("-")[2]) + 1
            del buf[: committed - offset]  # GCS may persist less than was sent: resend the rest
            offset = committed
    except BaseException:
        with contextlib.suppress(Exception):  # best effort: an abandoned session expires in a week
            await send("DELETE", session, "put", key)  # cancel the session: nothing is committed
        raise
