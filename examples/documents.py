"""The guide's "Document Storage with Metadata": per-user documents with category and tags.

Run: ``uvicorn examples.documents:app`` then::

    curl -H 'X-User-Id: alice' -F file=@report.pdf \
        'localhost:8000/documents/upload?category=reports&tags=q3&tags=finance'
    curl -H 'X-User-Id: alice' 'localhost:8000/documents?category=reports'

The guide's ``metadata`` stores ``size`` as an int; unistore keeps metadata values as
strings, but ``get_metadata`` returns the system ``size`` (an int) under the same name,
so the listing shows the integer size. ``category`` becomes a key segment: a value
such as ``../bob`` is refused by key validation (400), never written elsewhere.
"""

# The guide's ``typing.List``/``Optional`` annotations and import lines are kept as
# written, so ruff's UP006, UP035, UP045 and import sorting are off for this file.
# ruff: noqa: I001, UP006, UP035, UP045

from datetime import datetime
from uuid import uuid4

# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import get_current_user, lazy_app, make_app
from fastapi import FastAPI

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, UploadFile, Query
from unistore import get_storage, StorageBackend
from typing import List, Optional


router = APIRouter()


@router.post("/documents/upload")
async def upload_document(
    file: UploadFile,
    tags: List[str] = Query(default=[]),
    category: str = Query(default="general"),
    storage: StorageBackend = Depends(get_storage),
    current_user=Depends(get_current_user),
):
    """Upload a document with metadata."""
    content = await file.read()

    # Generate unique key
    file_id = uuid4()
    key = f"documents/{current_user.id}/{category}/{file_id}/{file.filename}"

    url = await storage.put(
        key=key,
        data=content,
        content_type=file.content_type or "application/octet-stream",
        metadata={
            "user_id": str(current_user.id),
            "document_id": str(file_id),
            "category": category,
            "tags": ",".join(tags),
            "original_filename": file.filename,
            "size": len(content),
            "uploaded_at": datetime.utcnow().isoformat(),
        }
    )

    # Store document record in database
    # document = await create_document_record(...)

    return {
        "document_id": str(file_id),
        "url": url,
        "filename": file.filename,
        "size": len(content),
        "category": category,
        "tags": tags,
    }


@router.get("/documents")
async def list_documents(
    category: Optional[str] = None,
    storage: StorageBackend = Depends(get_storage),
    current_user=Depends(get_current_user),
):
    """List user's documents."""
    prefix = f"documents/{current_user.id}/"
    if category:
        prefix += f"{category}/"

    keys = await storage.list_keys(prefix=prefix, limit=100)

    # Get metadata for each file
    documents = []
    for key in keys:
        metadata = await storage.get_metadata(key)
        documents.append({
            "key": key,
            "filename": metadata.get("original_filename"),
            "size": metadata.get("size"),
            "category": metadata.get("category"),
            "uploaded_at": metadata.get("uploaded_at"),
        })

    return {"documents": documents}


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    return make_app(router, "documents with metadata", backend)


__getattr__ = lazy_app(globals(), create_app)
