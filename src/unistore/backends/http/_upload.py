"""Parallel, resumable uploads of files through a unistore service's upload sessions.

The session id and the parts already stored (with their SHA-256) are kept in a
small JSON file under ``state_dir``. It is named after the service, the key and
the file's path, size and mtime, and rewritten atomically after every part. A
new process uploading the same unchanged file to the same key finds it, asks the
service which parts it really holds, and sends only the missing ones. A session
the service no longer knows (expired, completed) starts over. The state file is
removed once the object is complete.

With ``direct_uploads`` the session is a direct one: each part's URL is asked of
the service, pinned to the part's checksum (MD5, or SHA-256 when the store runs
with SHA-256 part checksums), and the bytes go straight to the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..._errors import NotFoundError
from ..._records import exclusive, write_json
from ..._types import ObjectInfo
from ._wire import info_from_json

if TYPE_CHECKING:
    from . import HttpBackend

__all__ = ["upload_file"]

_JSON = {"Content-Type": "application/json"}


@dataclass(slots=True)
class _State:
    upload_id: str
    part_size: int
    parts: dict[int, str] = field(default_factory=dict)  # number -> base64 checksum
    direct: bool = False
    checksum: str = "sha256"  # the algorithm of the part checksums: sha256, or md5 (direct sessions)


def _state_path(state_dir: str, url: str, key: str, path: str, st: os.stat_result) -> Path:
    ident = json.dumps([url, key, os.path.abspath(path), st.st_size, st.st_mtime_ns])
    return Path(state_dir) / (hashlib.sha256(ident.encode()).hexdigest() + ".json")


def _load(path: Path) -> _State | None:
    try:
        raw = json.loads(path.read_text())
        parts = {int(n): str(d) for n, d in raw["parts"].items()}
        state = _State(str(raw["upload_id"]), int(raw["part_size"]), parts, bool(raw.get("direct")))
        state.checksum = str(raw.get("checksum", "sha256"))
        return state if state.checksum in ("sha256", "md5") else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _save(path: Path, state: _State) -> None:
    doc = {
        "upload_id": state.upload_id,
        "part_size": state.part_size,
        "parts": state.parts,
        "direct": state.direct,
        "checksum": state.checksum,
    }
    write_json(path, doc)


def _read_part(path: str, offset: int, length: int, algorithm: str) -> tuple[bytes, str]:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise OSError(f"{path} changed size during the upload")
    return data, base64.b64encode(hashlib.new(algorithm, data, usedforsecurity=False).digest()).decode()


async def upload_file(
    backend: HttpBackend,
    key: str,
    path: str,
    *,
    content_type: str | None,
    metadata: Mapping[str, str],
    state_dir: str,
    part_size: int,
    concurrency: int,
    progress: Callable[[int], None] | None = None,
) -> ObjectInfo:
    """Upload ``path`` to ``key`` as parallel session parts, resuming a previous attempt if one is recorded.

    ``progress(n)`` is told the bytes of the parts found already stored (once, first),
    then each part's size as it is stored.
    """
    st = await asyncio.to_thread(os.stat, path)
    state_file = _state_path(state_dir, backend.settings.url, key, path, st)
    with exclusive(state_file.with_suffix(".lock"), f"{path} to {key}"):
        state = await asyncio.to_thread(_load, state_file)
        stored: dict[int, str] = {}
        if state is not None:
            try:
                r = await backend._send("GET", f"/v1/uploads/{state.upload_id}/parts", key=key, operation="list_parts")
                on_server = {int(p["number"]): str(p.get(state.checksum)) for p in r.json()["parts"]}
                stored = {n: d for n, d in on_server.items() if state.parts.get(n) == d}
            except NotFoundError:
                state = None
        if state is None:
            doc: dict[str, Any] = {
                "key": key,
                "content_type": content_type,
                "metadata": dict(metadata),
                "part_size": part_size,
                "direct": backend.settings.direct_uploads,
            }
            r = await backend._send(
                "POST", "/v1/uploads", key=key, operation="create_upload", body=json.dumps(doc).encode(), headers=_JSON
            )
            answer = r.json()
            state = _State(str(answer["upload_id"]), int(answer["part_size"]), {}, bool(answer.get("direct")))
            state.checksum = str(answer.get("checksum", "sha256"))
            await asyncio.to_thread(_save, state_file, state)
        state.parts = dict(stored)
        size, step = st.st_size, state.part_size
        numbers = [n for n in range(1, max(1, -(-size // step)) + 1) if n not in stored]
        if progress is not None:
            progress(sum(min(step, size - (n - 1) * step) for n in stored))
        slots = asyncio.Semaphore(concurrency)
        record = asyncio.Lock()
        session = state

        async def send(number: int) -> None:
            async with slots:
                offset = (number - 1) * step
                length = min(step, size - offset)
                data, digest = await asyncio.to_thread(_read_part, path, offset, length, session.checksum)
                if session.direct:
                    await _send_direct(backend, key, session.upload_id, number, data, digest)
                else:
                    await backend._send(
                        "PUT",
                        f"/v1/uploads/{session.upload_id}/parts/{number}",
                        key=key,
                        operation="upload_part",
                        body=data,
                        headers={"Repr-Digest": f"sha-256=:{digest}:"},
                    )
                backend.parts_sent += 1
                async with record:  # recorded before it is reported: the record is what a rerun trusts
                    session.parts[number] = digest
                    await asyncio.to_thread(_save, state_file, session)
                if progress is not None:
                    progress(len(data))

        try:
            async with asyncio.TaskGroup() as tg:
                for number in numbers:
                    tg.create_task(send(number))
        except BaseExceptionGroup as group:
            raise group.exceptions[0] from None
        manifest = {"parts": [{"number": n, session.checksum: d} for n, d in sorted(session.parts.items())]}
        r = await backend._send(
            "POST",
            f"/v1/uploads/{session.upload_id}/complete",
            key=key,
            operation="complete_upload",
            body=json.dumps(manifest).encode(),
            headers=_JSON,
            replayable=False,  # a lost success would replay into 404: rerunning the upload is the retry
        )
        with contextlib.suppress(OSError):
            await asyncio.to_thread(os.unlink, state_file)
        return info_from_json(r.json())


async def _send_direct(backend: HttpBackend, key: str, upload_id: str, number: int, data: bytes, digest: str) -> None:
    """Ask the service for part ``number``'s URL, pinned to ``digest``, and send the part straight to the store."""
    ask = {"parts": [{"number": number, "checksum": digest}]}
    r = await backend._send(
        "POST",
        f"/v1/uploads/{upload_id}/part-urls",
        key=key,
        operation="part_url",
        body=json.dumps(ask).encode(),
        headers=_JSON,
    )
    spec = r.json()["parts"][0]
    # A part PUT is idempotent (same number, same bytes), so the store request is retried like any other.
    await backend._send(
        "PUT", "", url=spec["url"], key=key, operation="upload_part", body=data, headers=spec["headers"]
    )
