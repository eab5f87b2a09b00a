"""The guide's "Using Storage in Routes": upload, download and delete under ``uploads/``.

Run: ``uvicorn examples.basic_routes:app`` then::

    curl -F file=@notes.txt localhost:8000/upload
    curl localhost:8000/download/notes.txt
    curl -X DELETE localhost:8000/files/notes.txt
"""

# The guide's import lines are kept as written, so import sorting is off for this file.
# ruff: noqa: I001


# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import lazy_app, make_app
from fastapi import FastAPI, HTTPException, Response

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, UploadFile
from unistore import get_storage, StorageBackend

router = APIRouter()


@router.post("/upload")
async def upload_file(
    file: UploadFile,
    storage: StorageBackend = Depends(get_storage),
):
    """Upload a file and return its URL."""
    content = await file.read()
    url = await storage.put(
        key=f"uploads/{file.filename}",
        data=content,
        content_type=file.content_type or "application/octet-stream",
        metadata={"uploader": "user_123", "timestamp": "2025-11-18"}
    )
    return {"url": url, "filename": file.filename}


@router.get("/download/{filename}")
async def download_file(
    filename: str,
    storage: StorageBackend = Depends(get_storage),
):
    """Download a file by filename."""
    key = f"uploads/{filename}"
    try:
        content = await storage.get(key)
        return Response(content=content, media_type="application/octet-stream")
    except FileNotFoundError:
        raise HTTPException(status_code=404, detail="File not found")  # noqa: B904 - as in the guide


@router.delete("/files/{filename}")
async def delete_file(
    filename: str,
    storage: StorageBackend = Depends(get_storage),
):
    """Delete a file."""
    key = f"uploads/{filename}"
    await storage.delete(key)
    return {"status": "deleted"}


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    return make_app(router, "basic routes", backend)


__getattr__ = lazy_app(globals(), create_app)
