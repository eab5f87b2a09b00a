"""Cloudinary listing for :mod:`unistore.backends.cloudinary`: three resource types merged in key order.

The Admin API lists one resource type at a time, newest first, paged with
``next_cursor``. A prefix's assets of all three types are fetched (concurrently),
mapped back to keys, merged and sorted, so one prefix's names are held in memory.
A stale copy under a type other than the key's preferred one loses to it.
A delimited (one-level) listing uses the folders and Search APIs instead: see :func:`level_listing`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from ._api import RESOURCE_TYPES, decode_public_id, encode_public_id, type_order

__all__ = ["level_listing", "merged_listing"]

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


Admin = Callable[..., Awaitable[dict[str, Any] | None]]
"""``admin(method, path, *, params=None, json=None)``: one Admin API call, ``None`` on 404."""

_PROBES = 8  # folders checked for assets at once


def _quoted(value: str) -> str:
    """A search-expression term in quotes: only ``"``, ``*`` and ``\\`` are escaped there."""
    return '"' + "".join("\\" + c if c in '"*\\' else c for c in value) + '"'


async def level_listing(
    admin: Admin, folder: str, prefix: str, start_after: str | None, page_size: int, delivery_type: str
) -> list[tuple[str, dict[str, Any] | None]]:
    """One level under ``prefix`` (delimiter ``/``), in name order: ``(key, resource)`` for each asset
    directly in the level's folder and ``(folder_key, None)`` for each subfolder holding an asset.

    Subfolders come from the folders API (``GET /folders[/path]``, ``next_cursor`` paging); the
    assets of the level from the Search API (``folder="path"``, all resource types, by public id).
    Cloudinary keeps a folder after its last asset is deleted, so each candidate subfolder is probed
    (``GET /resources/:type/:delivery?prefix=path/&max_results=1``, one to three calls) and an empty
    one is left out. Nothing below the level is listed."""
    level = prefix[: prefix.rfind("/") + 1]
    path = (encode_public_id(folder, level) if level else folder).rstrip("/")

    def wanted(name: str) -> bool:
        return name.startswith(prefix) and (start_after is None or name > start_after)

    async def subfolders() -> list[str]:
        out: list[str] = []
        params = {"max_results": str(min(page_size, 500))}
        url = f"folders/{quote(path, safe='/')}" if path else "folders"
        while True:
            page = await admin("GET", url, params=params)
            if page is None:  # no such folder: an empty level
                return out
            for f in page.get("folders") or []:
                name = decode_public_id(folder, f"{f['path']}/")
                if name is not None and wanted(name):
                    out.append(name)
            if not page.get("next_cursor"):
                return out
            params["next_cursor"] = str(page["next_cursor"])

    async def assets() -> dict[str, dict[str, Any]]:
        body: dict[str, Any] = {
            "expression": f"folder={_quoted(path)} AND type={delivery_type}",
            "sort_by": [{"public_id": "asc"}],
            "max_results": min(page_size, 500),
            "with_field": ["context"],
        }
        found: dict[str, dict[str, Any]] = {}
        while True:
            page = await admin("POST", "resources/search", json=body) or {}
            for res in page.get("resources") or []:
                key = decode_public_id(folder, str(res["public_id"]))
                if key is None or not wanted(key) or "/" in key[len(level) :]:
                    continue
                if key in found:
                    order = type_order(key)
                    if order.index(found[key]["resource_type"]) <= order.index(res["resource_type"]):
                        continue
                found[key] = res
            if not page.get("next_cursor"):
                return found
            body["next_cursor"] = page["next_cursor"]

    sem = asyncio.Semaphore(_PROBES)

    async def holds_assets(name: str) -> bool:
        params = {"prefix": encode_public_id(folder, name), "max_results": "1"}
        async with sem:
            for rtype in RESOURCE_TYPES:
                page = await admin("GET", f"resources/{rtype}/{delivery_type}", params=params)
                if page and page.get("resources"):
                    return True
        return False

    names, found = await asyncio.gather(subfolders(), assets())
    full = await asyncio.gather(*(holds_assets(n) for n in names))
    entries: list[tuple[str, dict[str, Any] | None]] = [(n, None) for n, ok in zip(names, full, strict=True) if ok]
    entries += found.items()
    return sorted(entries, key=lambda e: e[0])
