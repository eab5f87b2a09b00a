"""What a local version is, as :class:`~unistore.ObjectInfo`: from its ``stat`` alone (no sidecar or
xattr: the etag from inode, mtime and size, the type from the name) or from a commit."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any, TypeAlias

from ..._types import ObjectInfo, guess_content_type

__all__ = ["Written", "as_info", "stat_etag", "stat_info", "written_info"]


def stat_etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def stat_info(key: str, st: os.stat_result) -> ObjectInfo:
    """Info of a version without a sidecar: etag from inode, mtime and size; type from the name."""
    return ObjectInfo(
        key=key,
        size=st.st_size,
        etag=stat_etag(st),
        last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
        content_type=guess_content_type(key),
    )


Written: TypeAlias = tuple[int, int, str]
"""What a commit returns: size, mtime stamp (ns), etag."""


def written_info(key: str, meta: dict[str, Any], written: Written) -> ObjectInfo:
    size, stamp, etag = written
    return ObjectInfo(
        key=key,
        size=size,
        etag=etag,
        last_modified=datetime.fromtimestamp(stamp / 1e9, UTC),
        content_type=meta["ct"],
        metadata=meta["meta"],
        cache_control=meta["cc"],
        content_disposition=meta["cd"],
    )


def as_info(key: str, info: ObjectInfo | os.stat_result) -> ObjectInfo:
    return info if isinstance(info, ObjectInfo) else stat_info(key, info)
