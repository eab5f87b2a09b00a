"""Cloudinary listing for :mod:`unistore.backends.cloudinary`: three resource types merged in key order.

The Admin API lists one resource type at a time, newest first, paged with
``next_cursor``. A prefix's assets of all three types are fetched (concurrently),
mapped back to keys, merged and sorted, so one prefix's names are held in memory.
A stale copy under a type other than the key's preferred one loses to it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ._cloudinary_api import RESOURCE_TYPES, decode_public_id, encode_public_id, type_order

__all__ = ["merged_listing"]

FetchPage = Callable[[str, dict[str, str]], Awaitable[dict[str, Any]]]


async def merged_listing(
    fetch_page: FetchPage, folder: str, prefix: str, start_after: str | None, page_size: int, detailed: bool
) -> list[dict[str, Any]]:
    """The assets whose keys start with ``prefix`` (and sort after ``start_after``), in key order.
    ``fetch_page(resource_type, params)`` is one Admin API listing request; ``detailed`` asks for context."""
    pid_prefix = encode_public_id(folder, prefix) if prefix else folder

    async def one_type(rtype: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        params = {"prefix": pid_prefix, "max_results": str(page_size)}
        if detailed:
            params["context"] = "true"
        while True:
            page = await fetch_page(rtype, params)
            out += page.get("resources") or []
            if not page.get("next_cursor"):
                return out
            params["next_cursor"] = page["next_cursor"]

    found: dict[str, dict[str, Any]] = {}
    for resources in await asyncio.gather(*(one_type(t) for t in RESOURCE_TYPES)):
        for res in resources:
            key = decode_public_id(folder, str(res["public_id"]))
            if key is None or not key.startswith(prefix) or (start_after is not None and key <= start_after):
                continue
            if key in found:
                order = type_order(key)
                if order.index(found[key]["resource_type"]) <= order.index(res["resource_type"]):
                    continue
            found[key] = res
    return [found[k] for k in sorted(found)]
