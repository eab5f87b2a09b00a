"""A local fake of Cloudinary's documented REST API, for tests and benchmarks (no emulator exists).

It checks what the real service checks: Upload/Download API signatures (SHA-1
or SHA-256 over the sorted params + secret), timestamps (±1 h) and expiry,
HTTP Basic auth on the Admin API (resources, folders, search), chunked uploads
(``Content-Range`` + ``X-Unique-Upload-Id``), ``next_cursor`` paging, delivery-URL signatures for
authenticated assets, images that Pillow cannot open ("Invalid image file"),
and ``Range`` on delivery. Folders behave as in fixed-folder mode: an upload
creates the folders of its public id, and a folder outlives its last asset.
The Search API understands ``field=value`` / ``field:value`` terms joined by
``AND`` over ``folder``, ``type``, ``resource_type`` and ``public_id`` (a
trailing ``*`` matches a prefix). It does not transform images: a transformed URL
serves the original bytes with ``X-Fake-Transformation`` naming the
transformation. Serve it with :func:`unistore.testing.running_server`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..backends.cloudinary._api import parse_context, smart_escape

__all__ = ["FakeCloudinary"]


_UNSIGNED = frozenset({"file", "api_key", "resource_type", "cloud_name", "signature"})


def _sdk() -> Any:
    """``cloudinary.utils`` of the official SDK (a dev dependency): signatures are checked with its algorithms."""
    import cloudinary.utils  # type: ignore[import-untyped]

    return cloudinary.utils


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status)


_TERM = re.compile(r'(\w+)\s*[=:]\s*("(?:\\.|[^"\\])*"|[^\s"()]+)')
_SEARCHABLE = ("folder", "type", "resource_type", "public_id")


def _parse_expression(expression: str) -> list[tuple[str, str, bool]]:
    """``field=value AND …`` as ``(field, value, prefix)`` terms (a trailing unescaped ``*``: prefix)."""
    terms = []
    for part in re.split(r"\s+AND\s+", expression.strip()) if expression.strip() else []:
        m = _TERM.fullmatch(part.strip())
        if not m or m.group(1) not in _SEARCHABLE:
            raise ValueError(f"unsupported term {part!r}")
        raw = m.group(2)
        if raw.startswith('"'):
            raw = raw[1:-1]
        wildcard = raw.endswith("*") and not raw.endswith("\\*")
        value = re.sub(r"\\(.)", r"\1", raw[:-1] if wildcard else raw)
        terms.append((m.group(1), value, wildcard))
    return terms


def _matches(asset: _Asset, name: str, value: str, prefix: bool) -> bool:
    actual = asset.public_id.rpartition("/")[0] if name == "folder" else str(getattr(asset, name))
    return actual.startswith(value) if prefix else actual == value


@dataclass
class _Asset:
    public_id: str
    resource_type: str
    type: str
    data: bytes
    format: str
    version: int
    context: dict[str, str]
    tags: list[str]
    created_at: str

    def json(self, context: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "public_id": self.public_id,
            "resource_type": self.resource_type,
            "type": self.type,
            "format": self.format,
            "version": self.version,
            "bytes": len(self.data),
            "etag": hashlib.md5(self.data).hexdigest(),
            "created_at": self.created_at,
            "tags": self.tags,
            "folder": self.public_id.rpartition("/")[0],
        }
        if context and self.context:
            out["context"] = {"custom": dict(self.context)}
        return out


@dataclass
class FakeCloudinary:
    """The fake's state and its ASGI app (``.app``)."""

    cloud_name: str = "demo"
    api_key: str = "123456789012345"
    api_secret: str = "fake-secret-abcdefghijklmnop"
    assets: dict[tuple[str, str, str], _Asset] = field(default_factory=dict)
    chunks: dict[str, dict[int, bytes]] = field(default_factory=dict)
    folders: set[str] = field(default_factory=set)
    requests: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _version: int = 0

    @property
    def app(self) -> Starlette:
        c = self.cloud_name
        return Starlette(
            routes=[
                Route(f"/v1_1/{c}/ping", self.ping),
                Route(f"/v1_1/{c}/{{rt}}/upload", self.upload, methods=["POST"]),
                Route(f"/v1_1/{c}/{{rt}}/destroy", self.destroy, methods=["POST"]),
                Route(f"/v1_1/{c}/{{rt}}/download", self.download),
                Route(f"/v1_1/{c}/folders", self.list_folders),
                Route(f"/v1_1/{c}/folders/{{path:path}}", self.list_folders),
                Route(f"/v1_1/{c}/resources/search", self.search, methods=["POST"]),
                Route(f"/v1_1/{c}/resources/{{rt}}/{{type}}", self.list),
                Route(f"/v1_1/{c}/resources/{{rt}}/{{type}}/{{pid:path}}", self.resource),
                Route(f"/{c}/{{rt}}/{{type}}/{{rest:path}}", self.deliver),
            ]
        )

    # --- checks ---------------------------------------------------------------------------

    def _check_signed(self, params: dict[str, str]) -> Response | None:
        if params.get("api_key") != self.api_key:
            return _error(401, "Invalid api_key")
        api_sign_request = _sdk().api_sign_request
        sig = params.get("signature", "")
        algorithm = "sha256" if len(sig) == 64 else "sha1"
        signed = {k: v for k, v in params.items() if k not in _UNSIGNED}
        bare = {k: v for k, v in signed.items() if k != "signature_algorithm"}
        if sig not in (
            api_sign_request(signed, self.api_secret, algorithm),
            api_sign_request(bare, self.api_secret, algorithm),
        ):
            return _error(401, "Invalid Signature")
        try:
            stamp = int(params.get("timestamp", ""))
        except ValueError:
            return _error(400, "Missing required parameter - timestamp")
        if abs(time.time() - stamp) > 3600:
            return _error(400, "Stale request - reported time is more than 1 hour ago")
        return None

    def _check_basic(self, request: Request) -> Response | None:
        header = request.headers.get("authorization", "")
        expected = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        if header != f"Basic {expected}":
            return _error(401, "Invalid credentials")
        return None

    # --- Upload API -----------------------------------------------------------------------

    async def upload(self, request: Request) -> Response:
        self.requests += 1
        form = await request.form()
        params = {k: v for k, v in form.items() if isinstance(v, str)}
        bad = self._check_signed(params)
        if bad:
            return bad
        upload = form.get("file")
        data = await upload.read() if upload is not None and not isinstance(upload, str) else b""
        rt = request.path_params["rt"]
        pid = params.get("public_id") or hashlib.sha1(data).hexdigest()[:20]
        content_range = request.headers.get("content-range")
        if content_range:
            m = re.fullmatch(r"bytes ([0-9]+)-([0-9]+)/([0-9]+)", content_range)
            upload_id = request.headers.get("x-unique-upload-id")
            if not m or not upload_id:
                return _error(400, "Invalid Content-Range or missing X-Unique-Upload-Id")
            first, last, total = map(int, m.groups())
            if last - first + 1 != len(data):
                return _error(400, "Content-Range does not match the chunk")
            with self._lock:
                parts = self.chunks.setdefault(upload_id, {})
                parts[first] = data
                received = sum(len(p) for p in parts.values())
            if received < total:
                return JSONResponse({"done": False, "public_id": pid, "bytes": received})
            with self._lock:
                parts = self.chunks.pop(upload_id)
            data = b"".join(parts[k] for k in sorted(parts))
            if len(data) != total:
                return _error(400, "Chunks do not add up to the total")
        fmt = pid.rpartition(".")[2] if rt == "raw" and "." in pid.rpartition("/")[2] else ""
        if rt == "image":
            try:
                from PIL import Image

                with Image.open(io.BytesIO(data)) as img:
                    img.verify()
                    fmt = (img.format or "").lower().replace("jpeg", "jpg")
            except Exception:
                return _error(400, "Invalid image file")
        elif rt == "video":
            if data[4:8] != b"ftyp":
                return _error(400, "Invalid video file")
            fmt = "mp4"
        with self._lock:
            key = (rt, params.get("type", "upload"), pid)
            if key in self.assets and params.get("overwrite") == "false":
                return JSONResponse(self.assets[key].json() | {"existing": True})
            self._version = max(self._version + 1, int(time.time()))
            asset = _Asset(
                public_id=pid,
                resource_type=rt,
                type=params.get("type", "upload"),
                data=data,
                format=fmt,
                version=self._version,
                context=parse_context(params.get("context", "")),
                tags=[t for t in params.get("tags", "").split(",") if t],
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            self.assets[key] = asset
            segments = pid.split("/")[:-1]
            self.folders.update("/".join(segments[: i + 1]) for i in range(len(segments)))
        return JSONResponse(asset.json())

    async def destroy(self, request: Request) -> Response:
        self.requests += 1
        params = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
        bad = self._check_signed(params)
        if bad:
            return bad
        with self._lock:
            gone = self.assets.pop((request.path_params["rt"], params.get("type", "upload"), params["public_id"]), None)
        return JSONResponse({"result": "ok" if gone else "not found"})

    # --- Admin API ------------------------------------------------------------------------

    async def ping(self, request: Request) -> Response:
        return self._check_basic(request) or JSONResponse({"status": "ok"})

    async def resource(self, request: Request) -> Response:
        self.requests += 1
        bad = self._check_basic(request)
        if bad:
            return bad
        p = request.path_params
        pid = p["pid"]
        asset = self.assets.get((p["rt"], p["type"], pid))
        if asset is None:
            return _error(404, f"Resource not found - {pid}")
        return JSONResponse(asset.json())

    async def list(self, request: Request) -> Response:
        self.requests += 1
        bad = self._check_basic(request)
        if bad:
            return bad
        p, q = request.path_params, request.query_params
        prefix = q.get("prefix", "")
        max_results = min(int(q.get("max_results", "10")), 500)
        with self._lock:
            # newest first, as the Admin API orders by default
            matching = sorted(
                (
                    a
                    for (rt, ty, pid), a in self.assets.items()
                    if rt == p["rt"] and ty == p["type"] and pid.startswith(prefix)
                ),
                key=lambda a: (-a.version, a.public_id),
            )
        start = int(q.get("next_cursor", "0") or 0)
        page = matching[start : start + max_results]
        out: dict[str, Any] = {"resources": [a.json(context=q.get("context") == "true") for a in page]}
        if start + max_results < len(matching):
            out["next_cursor"] = str(start + max_results)
        return JSONResponse(out)

    async def list_folders(self, request: Request) -> Response:
        """``GET /folders`` (root folders) and ``GET /folders/:path`` (its subfolders)."""
        self.requests += 1
        bad = self._check_basic(request)
        if bad:
            return bad
        parent = request.path_params.get("path", "").strip("/")
        with self._lock:
            if parent and parent not in self.folders:
                return _error(404, f"Can't find folder with path {parent}")
            below = sorted(f for f in self.folders if f.rpartition("/")[0] == parent)
        q = request.query_params
        max_results = min(int(q.get("max_results", "2000") or 2000), 2000)
        start = int(q.get("next_cursor", "0") or 0)
        page = below[start : start + max_results]
        out: dict[str, Any] = {
            "folders": [
                {"name": f.rpartition("/")[2], "path": f, "external_id": hashlib.md5(f.encode()).hexdigest()}
                for f in page
            ],
            "total_count": len(below),
        }
        if start + max_results < len(below):
            out["next_cursor"] = str(start + max_results)
        return JSONResponse(out)

    async def search(self, request: Request) -> Response:
        """``POST /resources/search`` with a JSON body (expression, sort_by, max_results,
        next_cursor, with_field), across resource types."""
        self.requests += 1
        bad = self._check_basic(request)
        if bad:
            return bad
        try:
            body = await request.json()
            terms = _parse_expression(str(body.get("expression", "")))
            max_results = int(body.get("max_results", 50))
            start = int(body.get("next_cursor") or 0)
        except ValueError as exc:
            return _error(400, f"Invalid search request: {exc}")
        if not 1 <= max_results <= 500:
            return _error(400, "max_results must be between 1 and 500")
        sort = [next(iter(s.items())) for s in body.get("sort_by") or [{"created_at": "desc"}]]
        with self._lock:
            matching = [a for a in self.assets.values() if all(_matches(a, *t) for t in terms)]
        for name, direction in reversed(sort):
            if name not in ("public_id", "created_at"):
                return _error(400, f"Unsupported sort field {name}")
            matching.sort(key=lambda a: getattr(a, name), reverse=direction == "desc")
        page = matching[start : start + max_results]
        context = "context" in (body.get("with_field") or [])
        out: dict[str, Any] = {"total_count": len(matching), "resources": [a.json(context) for a in page]}
        if start + max_results < len(matching):
            out["next_cursor"] = str(start + max_results)
        return JSONResponse(out)

    # --- delivery ---------------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        self.requests += 1
        params = dict(request.query_params)
        bad = self._check_signed(params)
        if bad:
            return _error(403, "Invalid signature") if bad.status_code == 401 else bad
        if "expires_at" in params and int(params["expires_at"]) < time.time():
            return _error(403, "URL expired")
        asset = self.assets.get((request.path_params["rt"], params.get("type", "upload"), params["public_id"]))
        if asset is None:
            return _error(404, "Resource not found")
        name = asset.public_id.rpartition("/")[2] + (f".{asset.format}" if asset.resource_type != "raw" else "")
        headers = {"Content-Disposition": f'attachment; filename="{name}"'} if params.get("attachment") else {}
        return self._serve(request, asset, headers)

    async def deliver(self, request: Request) -> Response:
        self.requests += 1
        p = request.path_params
        raw_path = request.scope["raw_path"].decode()
        rest = raw_path.split(f"/{p['rt']}/{p['type']}/", 1)[1]
        signature = None
        m = re.match(r"s--([A-Za-z0-9_-]{8})--/", rest)
        if m:
            signature, rest = f"s--{m.group(1)}--", rest[m.end() :]
        m = re.fullmatch(r"(?:(.*)/)?v([0-9]+)/(.+)", rest, re.DOTALL)
        if not m:
            return _error(404, "Resource not found")
        transformation, source = m.group(1) or "", m.group(3)
        must_sign = p["type"] in ("authenticated", "private") or transformation or signature
        if must_sign and (p["type"] == "private" or not self._sdk_signed(p, transformation, source, signature)):
            return _error(401, "Invalid signature")
        pid_text = unquote(source)
        asset = self.assets.get((p["rt"], p["type"], pid_text))
        if asset is None and p["rt"] != "raw" and "." in pid_text:
            pid_text, _, fmt = pid_text.rpartition(".")
            asset = self.assets.get((p["rt"], p["type"], pid_text))
            if asset is not None and fmt != asset.format and "f_" not in transformation:
                asset = None
        if asset is None or smart_escape(asset.public_id) not in source:
            return _error(404, "Resource not found")
        headers: dict[str, str] = {}
        if "fl_attachment" in transformation:
            headers["Content-Disposition"] = f'attachment; filename="{asset.public_id.rpartition("/")[2]}"'
        if transformation:
            headers["X-Fake-Transformation"] = transformation
        return self._serve(request, asset, headers)

    def _sdk_signed(self, p: dict[str, Any], transformation: str, source: str, signature: str | None) -> bool:
        """Whether the official SDK (``cloudinary.utils.cloudinary_url``, a dev dependency) signs this
        path's public id and transformation with ``signature`` (either signature algorithm) and
        writes the source exactly as the URL does."""
        cloudinary_url = _sdk().cloudinary_url

        if signature is None:
            return False

        for algorithm in ("sha1", "sha256"):
            url, _ = cloudinary_url(
                unquote(source),
                cloud_name=self.cloud_name,
                api_secret=self.api_secret,
                sign_url=True,
                signature_algorithm=algorithm,
                raw_transformation=transformation or None,
                resource_type=p["rt"],
                type=p["type"],
                version=1,
            )
            if url.endswith(f"/{source}") and f"/{signature}/" in url:
                return True
        return False

    @staticmethod
    def _serve(request: Request, asset: _Asset, headers: dict[str, str]) -> Response:
        data = asset.data
        headers["Accept-Ranges"] = "bytes"
        headers["ETag"] = f'"{hashlib.md5(data).hexdigest()}"'
        rng = request.headers.get("range")
        m = re.fullmatch(r"bytes=([0-9]*)-([0-9]*)", rng or "")
        if not m or (m.group(1) == "" and m.group(2) == ""):
            return Response(data, headers=headers, media_type="application/octet-stream")
        if m.group(1) == "":
            start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data) or end < start:
            return Response(b"", status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        return Response(data[start : end + 1], status_code=206, headers=headers, media_type="application/octet-stream")
