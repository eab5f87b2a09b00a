"""Resumable S3 upload sessions (``S3Backend.uploads``), all their state on the server.

A session is its key, upload id and part checksum algorithm, serialised as
:attr:`UploadSession.token`, so another process (or the same one after a
restart) can upload more parts, list what is stored, and complete it.
Completion checks the caller's manifest of part checksums against what the
server stored before the object becomes visible.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ..._base import iter_body
from ..._errors import IntegrityError, InvalidArgumentError, UnsupportedError
from ..._keys import validate_key
from ..._types import Body, ObjectInfo, WriteMode
from ._multipart import MAX_PARTS, PartInfo, _abort, _complete, _create, _upload_part
from ._settings import MAX_PRESIGN
from ._wire import iso_date, md5_of_etag, xml_children, xml_find
from ._xml import ENCODED, name_decoder, parse_xml

if TYPE_CHECKING:
    from . import S3Backend

__all__ = ["S3Uploads", "UploadSession"]

_DIGEST_BYTES = {"content-md5": 16, "x-amz-checksum-sha256": 32, "x-amz-checksum-crc32": 4}
_DIGEST_NAMES = {"content-md5": "MD5", "x-amz-checksum-sha256": "SHA-256", "x-amz-checksum-crc32": "CRC-32"}


@dataclass(frozen=True, slots=True)
class UploadSession:
    """A resumable upload: everything needed to resume it is in :attr:`token`."""

    key: str
    upload_id: str
    checksum: str = "md5"
    """The part checksum the session was opened with; every part and the completion use it."""

    @property
    def token(self) -> str:
        """An opaque string that :meth:`S3Uploads.resume` turns back into this session."""
        raw = json.dumps({"k": self.key, "u": self.upload_id, "c": self.checksum}, separators=(",", ":")).encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class S3Uploads:
    """Resumable multipart upload sessions of one :class:`S3Backend` (``backend.uploads``)."""

    def __init__(self, backend: S3Backend) -> None:
        self._b = backend

    async def start(
        self,
        key: str,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        cache_control: str | None = None,
        content_disposition: str | None = None,
        keep_crc32: bool = False,
    ) -> UploadSession:
        """Open a session for ``key``; nothing is visible until :meth:`complete`. Its parts carry the
        backend's ``checksum`` (MD5 where that is ``crc32``: the checksums callers such as browsers
        compute and compare), or with ``keep_crc32`` CRC-32 where that is ``crc32``: for a caller that
        hashes its parts itself (:meth:`upload_part` does), at a tenth of MD5's CPU."""
        validate_key(key)
        headers, _, _ = self._b._write_headers(key, content_type, metadata, cache_control, content_disposition)
        mode = self._b.settings.checksum
        if mode == "crc32" and not keep_crc32:
            mode = "md5"
        return UploadSession(key, await _create(self._b, key, headers, mode), mode)

    def resume(self, token: str) -> UploadSession:
        """The session a :attr:`UploadSession.token` stands for (in any process)."""
        try:
            raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            session = UploadSession(str(raw["k"]), str(raw["u"]), str(raw.get("c", "md5")))
            if session.checksum not in ("md5", "sha256", "crc32", "none"):
                raise ValueError(session.checksum)
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise InvalidArgumentError("malformed upload session token", backend=self._b.name) from exc
        validate_key(session.key)
        return session

    async def upload_part(self, session: UploadSession, number: int, data: Body) -> PartInfo:
        """Store part ``number`` (1..10000; any order, in parallel, from any process).

        Every part but the last must be at least 5 MiB (S3's rule); with
        ``equal_parts`` every part but the last must be exactly ``part_size``.
        Re-uploading a number replaces that part.
        """
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgumentError(f"part number must be 1..{MAX_PARTS}", key=session.key, backend=self._b.name)
        chunks = [c async for c in iter_body(data)]
        size = sum(len(c) for c in chunks)
        if size > self._b.settings.part_size and self._b._equal_parts:
            raise InvalidArgumentError("part larger than part_size", key=session.key, backend=self._b.name)
        return await _upload_part(self._b, session.key, session.upload_id, number, chunks, size, session.checksum)

    @property
    def can_presign_parts(self) -> bool:
        """Whether :meth:`presign_part` works here (not with SSE-C: the uploader would need the key)."""
        return not self._b._read_headers

    async def presign_part(
        self, session: UploadSession, number: int, *, expires_in: int | None = None, checksum: str | None = None
    ) -> tuple[str, dict[str, str]]:
        """A presigned ``PUT`` URL for part ``number`` and the headers its uploader must send.

        The part goes straight to the store; :meth:`list_parts` and :meth:`complete`
        see it like any other. ``checksum`` (base64, in the session's algorithm) is
        signed into the URL, so the store accepts only that body; a ``sha256``
        session needs it. SSE-C sessions cannot presign parts (the uploader would
        need the customer key): :class:`UnsupportedError`.
        """
        if not 1 <= number <= MAX_PARTS:
            raise InvalidArgumentError(f"part number must be 1..{MAX_PARTS}", key=session.key, backend=self._b.name)
        if not self.can_presign_parts:
            raise UnsupportedError("presigned parts cannot carry an SSE-C key", key=session.key, backend=self._b.name)
        expires = self._b.default_expires_in if expires_in is None else expires_in
        if not 0 < expires <= MAX_PRESIGN:
            raise InvalidArgumentError(
                f"expires_in must be between 1 and {MAX_PRESIGN} seconds", key=session.key, backend=self._b.name
            )
        signed: dict[str, str] = {}
        if session.checksum == "crc32":
            if not checksum:
                raise InvalidArgumentError(
                    "a crc32 session presigns a part only with its CRC-32", key=session.key, backend=self._b.name
                )
            signed["x-amz-checksum-crc32"] = checksum
        elif session.checksum == "sha256":
            if not checksum:
                raise InvalidArgumentError(
                    "a sha256 session presigns a part only with its SHA-256", key=session.key, backend=self._b.name
                )
            signed["x-amz-checksum-sha256"] = checksum
        elif checksum:
            signed["content-md5"] = checksum
        for name, value in signed.items():
            try:
                if len(base64.b64decode(value, validate=True)) != _DIGEST_BYTES[name]:
                    raise ValueError(value)
            except (ValueError, binascii.Error):
                raise InvalidArgumentError(
                    f"checksum must be the part's base64 {_DIGEST_NAMES[name]}",
                    key=session.key,
                ) from None
        query = {"partNumber": str(number), "uploadId": session.upload_id}
        creds = await self._b.credentials()
        path = self._b._object_path(session.key)
        qs = self._b._signer.presign(creds, "PUT", self._b._host, path, expires, query, signed)
        return f"{self._b._origin}{path}?{qs}", signed

    async def list_parts(self, session: UploadSession) -> list[PartInfo]:
        """The parts stored so far, by number (what a resuming client still has to send)."""
        parts: list[PartInfo] = []
        query = {"uploadId": session.upload_id, "max-parts": "1000"}
        while True:
            r = await self._b._send(
                "GET", self._b._object_path(session.key), op="list_parts", key=session.key, query=query
            )
            root = parse_xml(r.body, operation="list_parts", backend=self._b.name, key=session.key)
            for p in xml_children(root, "Part"):
                etag = xml_find(p, "ETag").strip('"')
                checksum = xml_find(p, "ChecksumCRC32" if session.checksum == "crc32" else "ChecksumSHA256") or None
                if checksum is None and session.checksum in ("md5", "none"):  # a plain part ETag is its MD5
                    checksum = md5_of_etag(etag)
                parts.append(PartInfo(int(xml_find(p, "PartNumber")), int(xml_find(p, "Size", "0")), etag, checksum))
            marker = xml_find(root, "NextPartNumberMarker")
            if xml_find(root, "IsTruncated") != "true" or not marker:
                return sorted(parts, key=lambda p: p.number)
            query = {**query, "part-number-marker": marker}

    async def complete(
        self,
        session: UploadSession,
        manifest: Sequence[tuple[int, str | None]] | Sequence[PartInfo],
        *,
        mode: WriteMode = "overwrite",
        max_part_size: int | None = None,
    ) -> ObjectInfo:
        """Check ``manifest`` — ``(number, checksum)`` pairs or :class:`PartInfo` — against the
        stored parts, then make the object visible; a ``None`` checksum takes the stored part as
        it is. A missing part or a checksum that differs raises :class:`IntegrityError`, a part
        over ``max_part_size`` :class:`InvalidArgumentError`; either leaves the session open for
        a retry."""
        from ._wire import condition_headers as _condition_headers

        wanted = [p if isinstance(p, PartInfo) else PartInfo(int(p[0]), -1, "", p[1]) for p in manifest]
        if not wanted:
            raise InvalidArgumentError("empty manifest", key=session.key, backend=self._b.name)
        stored = {p.number: p for p in await self.list_parts(session)}
        chosen: list[PartInfo] = []
        for want in sorted(wanted, key=lambda p: p.number):
            part = stored.get(want.number)
            if part is None:
                raise IntegrityError(
                    f"part {want.number} was never uploaded",
                    key=session.key,
                    backend=self._b.name,
                    operation="complete",
                )
            if max_part_size is not None and part.size > max_part_size:
                raise InvalidArgumentError(
                    f"part {want.number} is larger than part_size ({max_part_size})",
                    key=session.key,
                    backend=self._b.name,
                )
            known = part.checksum is not None and want.checksum is not None
            if (known and want.checksum != part.checksum) or (want.etag and want.etag != part.etag):
                raise IntegrityError(
                    f"part {want.number} differs from the stored part",
                    key=session.key,
                    backend=self._b.name,
                    operation="complete",
                )
            if session.checksum in ("sha256", "crc32") and part.checksum is None:
                if want.checksum is None:
                    raise IntegrityError(
                        f"part {want.number} needs its {_DIGEST_NAMES['x-amz-checksum-' + session.checksum]} in the "
                        "manifest (the server does not report it)",
                        key=session.key,
                        backend=self._b.name,
                        operation="complete",
                    )
                part = PartInfo(part.number, part.size, part.etag, want.checksum)  # the server verifies it
            chosen.append(part)
        if self._b._equal_parts and len({p.size for p in chosen[:-1]}) > 1:
            raise IntegrityError("parts differ in size (equal_parts)", key=session.key, backend=self._b.name)
        cond = _condition_headers(mode)
        await _complete(self._b, session.key, session.upload_id, chosen, cond, mode == "create", session.checksum)
        return await self._b.head(session.key)

    async def abort(self, session: UploadSession) -> None:
        """Discard the session and every stored part."""
        await _abort(self._b, session.key, session.upload_id)

    async def list(self, prefix: str = "") -> list[tuple[UploadSession, datetime]]:
        """Sessions still open under ``prefix``, with when each was started."""
        base = self._b.settings.prefix
        query = {"uploads": "", "prefix": base + prefix, "encoding-type": ENCODED}
        out: list[tuple[UploadSession, datetime]] = []
        while True:
            r = await self._b._send("GET", self._b._bucket_path, op="list_uploads", query=query)
            root = parse_xml(r.body, operation="list_uploads", backend=self._b.name)
            name = name_decoder(root)
            for u in xml_children(root, "Upload"):
                session = UploadSession(name(xml_find(u, "Key"))[len(base) :], xml_find(u, "UploadId"), "")
                out.append((session, iso_date(xml_find(u, "Initiated"))))
            if xml_find(root, "IsTruncated") != "true":
                return out
            query = {
                **query,
                "key-marker": name(xml_find(root, "NextKeyMarker")),
                "upload-id-marker": xml_find(root, "NextUploadIdMarker"),
            }
