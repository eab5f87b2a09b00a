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

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import uuid4

# --- glue the guide leaves out -----------------------------------------------------------
from fastapi import FastAPI, Header, HTTPException

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, UploadFile, Query
from unistore import get_storage, StorageBackend
from typing import List, Optional


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
    from unistore import LocalBackend, MemoryBackend, add_storage, easy_storage

    storage = backend if backend is not None else easy_storage()
    app = FastAPI(title="unistore example: documents with metadata")
    app.include_router(router)
    # Signed URLs of the local and memory backends are served by the app itself.
    add_storage(app, storage, serve_files=isinstance(storage, LocalBackend | MemoryBackend))
    return app


def __getattr__(name: str) -> Any:
    # ``uvicorn examples.documents:app`` builds the app on first access, so importing
    # the module (as the tests do) never reads the environment.
    if name == "app":
        globals()["app"] = application = create_app()
        return application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
