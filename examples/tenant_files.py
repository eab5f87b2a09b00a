"""The guide's "Tenant-Scoped File Storage": every key lives under ``tenants/{tenant_id}/files/``.

Run: ``uvicorn examples.tenant_files:app`` then::

    curl -H 'X-Tenant-Id: acme' -H 'X-User-Id: alice' -F file=@a.txt localhost:8000/tenant-files/upload
    curl -H 'X-Tenant-Id: acme' localhost:8000/tenant-files

The guide imports ``require_tenant_id`` from ``svc_infra.tenancy``; unistore has no
tenancy module, so a stand-in reads the ``X-Tenant-Id`` header. It must refuse ids
containing ``/``: the key prefix is the only isolation, and a tenant named
``acme/files/x`` would otherwise write into ``tenants/acme/files/`` and show up in
tenant ``acme``'s listing.
"""

# The guide's import lines are kept as written, so import sorting is off for this file.
# ruff: noqa: I001

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import uuid4

# --- glue the guide leaves out -----------------------------------------------------------
from fastapi import FastAPI, Header, HTTPException

# --- the guide's code (import lines changed to unistore; see require_tenant_id below) -----
from fastapi import APIRouter, Depends, UploadFile
from unistore import get_storage, StorageBackend

_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def require_tenant_id(x_tenant_id: Annotated[str | None, Header()] = None) -> str:
    """Stand-in for ``svc_infra.tenancy.require_tenant_id``: the ``X-Tenant-Id`` header.

    Only letters, digits, ``_`` and ``-``: a ``/`` would let one tenant's keys land
    under another tenant's prefix.
    """
    if x_tenant_id is None or not _ID.fullmatch(x_tenant_id):
        raise HTTPException(status_code=400, detail="Send X-Tenant-Id: <letters, digits, _ or ->")
    return x_tenant_id


@dataclass(frozen=True)
class User:
    id: str


async def get_current_user(x_user_id: Annotated[str | None, Header()] = None) -> User:
    """Stand-in for your auth dependency: the user named by the ``X-User-Id`` header."""
    if x_user_id is None or not _ID.fullmatch(x_user_id):
        raise HTTPException(status_code=401, detail="Send X-User-Id: <letters, digits, _ or ->")
    return User(id=x_user_id)


router = APIRouter()


@router.post("/tenant-files/upload")
async def upload_tenant_file(
    file: UploadFile,
    storage: StorageBackend = Depends(get_storage),
    tenant_id: str = Depends(require_tenant_id),
    current_user=Depends(get_current_user),
):
    """Upload a file scoped to current tenant."""
    content = await file.read()

    # Tenant-scoped key ensures isolation
    key = f"tenants/{tenant_id}/files/{uuid4()}/{file.filename}"

    url = await storage.put(
        key=key,
        data=content,
        content_type=file.content_type or "application/octet-stream",
        metadata={
            "tenant_id": tenant_id,
            "user_id": str(current_user.id),
            "filename": file.filename,
            "uploaded_at": datetime.utcnow().isoformat(),
        }
    )

    return {"url": url, "filename": file.filename}


@router.get("/tenant-files")
async def list_tenant_files(
    storage: StorageBackend = Depends(get_storage),
    tenant_id: str = Depends(require_tenant_id),
):
    """List files for current tenant only."""
    # Prefix ensures tenant isolation
    prefix = f"tenants/{tenant_id}/files/"
    keys = await storage.list_keys(prefix=prefix, limit=100)

    return {"files": keys, "count": len(keys)}


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    from unistore import LocalBackend, MemoryBackend, add_storage, easy_storage

    storage = backend if backend is not None else easy_storage()
    app = FastAPI(title="unistore example: tenant-scoped files")
    app.include_router(router)
    # Signed URLs of the local and memory backends are served by the app itself.
    add_storage(app, storage, serve_files=isinstance(storage, LocalBackend | MemoryBackend))
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.tenant_files:app`` builds the app on first access, so importing
    # the module (as the tests do) never reads the environment.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
