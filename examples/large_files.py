"""The guide's "Large File Uploads with Progress": read the upload in 1 MiB chunks, then store it.

Run: ``uvicorn examples.large_files:app --timeout-keep-alive 300`` then::

    curl -H 'X-User-Id: alice' -F file=@video.mp4 localhost:8000/large-files/upload

As the guide says, this "simple example" joins the chunks and holds the whole file in
memory (twice, briefly) before ``storage.put``. unistore's ``put`` also accepts an async
iterator of chunks, which streams with memory bounded by the chunk size; the code below
stays as the guide wrote it.
"""

# The guide's import lines are kept as written, so import sorting is off for this file.
# ruff: noqa: I001

from datetime import datetime
from uuid import uuid4

# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import get_current_user, lazy_app, make_app
from fastapi import FastAPI

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, UploadFile, BackgroundTasks
from unistore import get_storage, StorageBackend


router = APIRouter()


@router.post("/large-files/upload")
async def upload_large_file(
    file: UploadFile,
    background_tasks: BackgroundTasks,
    storage: StorageBackend = Depends(get_storage),
    current_user=Depends(get_current_user),
):
    """Upload large file with background processing."""
    # For very large files, consider chunked uploads
    # This is a simple example that reads entire file

    file_id = uuid4()
    key = f"large-files/{current_user.id}/{file_id}/{file.filename}"

    # Read file in chunks
    chunks = []
    while chunk := await file.read(1024 * 1024):  # 1MB chunks
        chunks.append(chunk)

    content = b"".join(chunks)

    # Store file
    url = await storage.put(
        key=key,
        data=content,
        content_type=file.content_type or "application/octet-stream",
        metadata={
            "user_id": str(current_user.id),
            "file_id": str(file_id),
            "size": len(content),
            "uploaded_at": datetime.utcnow().isoformat(),
        }
    )

    # Background task for post-processing (virus scan, thumbnail generation, etc.)
    # background_tasks.add_task(process_file, file_id, key)

    return {
        "file_id": str(file_id),
        "url": url,
        "size": len(content),
        "status": "uploaded"
    }


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    return make_app(router, "large file upload", backend)


__getattr__ = lazy_app(globals(), create_app)
