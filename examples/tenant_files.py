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

from datetime import datetime
from uuid import uuid4

# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import get_current_user, require_tenant_id, lazy_app, make_app
from fastapi import FastAPI

# --- the guide's code (import lines changed to unistore; see require_tenant_id below) -----
from fastapi import APIRouter, Depends, UploadFile
from unistore import get_storage, StorageBackend


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
    return make_app(router, "tenant-scoped files", backend)


__getattr__ = lazy_app(globals(), create_app)
