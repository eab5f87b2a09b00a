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

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

# --- glue the guide leaves out -----------------------------------------------------------
from fastapi import FastAPI, Header, Query

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, HTTPException
from unistore import get_storage, StorageBackend


@dataclass(frozen=True)
class User:
    id: str


_USER_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


async def get_current_user(x_user_id: Annotated[str | None, Header()] = None) -> User:
    """Stand-in for your auth dependency: the user named by the ``X-User-Id`` header."""
    if x_user_id is None or not _USER_ID.fullmatch(x_user_id):
        raise HTTPException(status_code=401, detail="Send X-User-Id: <letters, digits, _ or ->")
    return User(id=x_user_id)


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
    from unistore import LocalBackend, MemoryBackend, add_storage, easy_storage

    storage = backend if backend is not None else easy_storage()
    app = FastAPI(title="unistore example: signed download URLs")
    app.include_router(router)  # first: /files/{file_id}/download-url before /files/{key:path}
    # Signed URLs of the local and memory backends are served by the app itself.
    add_storage(app, storage, serve_files=isinstance(storage, LocalBackend | MemoryBackend))
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.signed_urls:app`` builds the app on first access, so importing
    # the module (as the tests do) never reads the environment.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
