"""The Idempotency layer's helpers: a body made hashable and replayable, and records' JSON form."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import AsyncIterable, Mapping
from datetime import datetime
from typing import IO, Any

from .._base import iter_body
from .._types import Body, IfMatch, ObjectInfo

__all__ = ["Spool", "info_from_json", "info_to_json"]

_SPOOL_IN_MEMORY = 8 * 1024 * 1024


class Spool:
    """A body made hashable and replayable: bytes and paths as is, seekable files rewound, else spooled."""

    def __init__(self, body: Body) -> None:
        self._body = body
        self._file: IO[bytes] | None = None
        self._start = 0

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None and self._file is not self._body:
            self._file.close()

    async def digest(self, key: str, options: Mapping[str, Any]) -> str:
        h = hashlib.sha256()
        mode = options["mode"]
        meta = options["metadata"]
        h.update(
            json.dumps(
                [
                    key,
                    options["content_type"],
                    sorted((str(k).lower(), str(v)) for k, v in (meta or {}).items()),
                    mode.etag if isinstance(mode, IfMatch) else mode,
                    options["cache_control"],
                    options["content_disposition"],
                ]
            ).encode()
        )
        body = self._body
        if isinstance(body, bytes | bytearray | memoryview):
            h.update(body)
        elif isinstance(body, os.PathLike) or _seekable(body):
            if not isinstance(body, os.PathLike):
                self._file = body  # type: ignore[assignment]
                self._start = self._file.tell()  # type: ignore[union-attr]
            async for chunk in iter_body(body):
                h.update(chunk)
        else:
            spool = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - closed in __exit__
            self._file = spool
            source = body if isinstance(body, AsyncIterable) else iter_body(body)
            async for chunk in source:
                h.update(chunk)
                spool.write(chunk)
        return h.hexdigest()

    def body(self) -> Body:
        if self._file is None:
            return self._body
        self._file.seek(self._start)
        return self._file


def _seekable(body: object) -> bool:
    seekable = getattr(body, "seekable", None)
    try:
        return bool(seekable()) if callable(seekable) and hasattr(body, "tell") else False
    except (OSError, ValueError):
        return False


def info_to_json(info: ObjectInfo) -> dict[str, Any]:
    return {
        "key": info.key,
        "size": info.size,
        "etag": info.etag,
        "last_modified": info.last_modified.isoformat(),
        "content_type": info.content_type,
        "metadata": dict(info.metadata),
        "cache_control": info.cache_control,
        "content_disposition": info.content_disposition,
    }


def info_from_json(data: dict[str, Any]) -> ObjectInfo:
    return ObjectInfo(**{**data, "last_modified": datetime.fromisoformat(data["last_modified"])})
