"""The guide's "Signed URL Generation": a time-limited download link for ``uploads/{file_id}/document.pdf``.

Run: ``uvicorn examples.signed_urls:app`` then, once a file is stored under
``uploads/<id>/document.pdf`` (the guide leaves the upload out; the tests put it with
``storage.put``)::

    curl -H 'X-User-Id: alice' 'localhost:8000/files/<id>/download-url?expires_in=300'

Two things the guide's code needs that it does not say:

* ``Query``, ``datetime`` and ``timedelta`` are used but not imported;
* its route ``GET /files/{file_id}/download-url`` lies under ``/files``, the default
  prefix of ``add_storage(serve_files=True)``'s own ``GET /files/{key:path}`` route.
  Starlette takes the first match, so the router is included *before* ``add_storage``;
  the other way round every request for a link answers 403 (unsigned file URL).
"""

# The guide's import lines are kept as written, so import sorting is off for this file.
# ruff: noqa: I001

from datetime import datetime, timedelta

# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import get_current_user, lazy_app, make_app
from fastapi import FastAPI, Query

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, HTTPException
from unistore import get_storage, StorageBackend


router = APIRouter()


@router.get("/files/{file_id}/download-url")
async def get_download_url(
    file_id: str,
    expires_in: int = Query(default=3600, ge=60, le=86400),  # 1 min to 24 hours
    download: bool = Query(default=True),
    storage: StorageBackend = Depends(get_storage),
    current_user=Depends(get_current_user),
):
    """Generate a signed URL for file download."""
    # Verify user owns the file
    # file = await get_file_record(file_id)
    # if file.user_id != current_user.id:
    #     raise HTTPException(status_code=403, detail="Access denied")

    key = f"uploads/{file_id}/document.pdf"

    # Check file exists
    if not await storage.exists(key):
        raise HTTPException(status_code=404, detail="File not found")

    # Generate signed URL
    url = await storage.get_url(
        key=key,
        expires_in=expires_in,
        download=download  # If True, browser downloads instead of displaying
    )

    return {
        "url": url,
        "expires_in": expires_in,
        "expires_at": (datetime.utcnow() + timedelta(seconds=expires_in)).isoformat()
    }


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    return make_app(router, "signed download URLs", backend)


__getattr__ = lazy_app(globals(), create_app)
