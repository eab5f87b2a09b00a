"""The guide's "Profile Picture Upload": validate type and size, verify with Pillow, resize to 200x200.

Run: ``uvicorn examples.profile_picture:app`` then::

    curl -H 'X-User-Id: alice' -F 'file=@me.png;type=image/png' localhost:8000/users/me/avatar

Quirks of the guide's code, kept as written (see examples/README.md):

* the key's extension is ``file.filename.split('.')[-1]``: taken from the client's file
  name, not from the image, so ``me`` (no dot) gives ``profile.me`` and a PNG named
  ``me.jpg`` is stored as ``profile.jpg``; the stored content type is also the client's
  declared one, not the format Pillow found;
* ``image.save(output, format=image.format)`` relies on ``thumbnail`` resizing in place
  (it does, so ``format`` survives); an animated GIF keeps only its first frame;
* ``except Exception as e`` never uses ``e`` and drops the cause (ruff F841/B904 silenced).
"""

# The guide's import lines are kept as written, so import sorting is off for this file.
# ruff: noqa: I001

from datetime import datetime

# --- glue the guide leaves out (examples/_glue.py) ------------------------------------
from examples._glue import get_current_user, lazy_app, make_app
from fastapi import FastAPI

# --- the guide's code (import line changed to unistore) ----------------------------------
from fastapi import APIRouter, Depends, File, HTTPException, UploadFile
from unistore import get_storage, StorageBackend
from PIL import Image
import io


router = APIRouter()

MAX_SIZE = 2 * 1024 * 1024  # 2MB
ALLOWED_TYPES = {"image/jpeg", "image/png", "image/gif", "image/webp"}


@router.post("/users/me/avatar")
async def upload_avatar(
    file: UploadFile = File(...),
    storage: StorageBackend = Depends(get_storage),
    current_user=Depends(get_current_user),  # Your auth dependency
):
    """Upload user profile picture."""
    # Validate content type
    if file.content_type not in ALLOWED_TYPES:
        raise HTTPException(
            status_code=415,
            detail=f"Unsupported file type. Allowed: {ALLOWED_TYPES}"
        )

    # Read and validate size
    content = await file.read()
    if len(content) > MAX_SIZE:
        raise HTTPException(
            status_code=413,
            detail=f"File too large. Max size: {MAX_SIZE} bytes"
        )

    # Validate image and resize
    try:
        image = Image.open(io.BytesIO(content))
        image.verify()  # Verify it's a valid image

        # Reopen and resize
        image = Image.open(io.BytesIO(content))
        image.thumbnail((200, 200))

        # Save to bytes
        output = io.BytesIO()
        image.save(output, format=image.format)
        resized_content = output.getvalue()
    except Exception as e:  # noqa: F841 - as in the guide
        raise HTTPException(status_code=400, detail="Invalid image file")  # noqa: B904

    # Store with user-specific key
    key = f"avatars/{current_user.id}/profile.{file.filename.split('.')[-1]}"
    url = await storage.put(
        key=key,
        data=resized_content,
        content_type=file.content_type,
        metadata={
            "user_id": str(current_user.id),
            "original_filename": file.filename,
            "uploaded_at": datetime.utcnow().isoformat(),
        }
    )

    # Update user record with new avatar URL
    # await update_user_avatar(current_user.id, url)

    return {"avatar_url": url}


# --- app factory ---------------------------------------------------------------------------


def create_app(backend: StorageBackend | None = None) -> FastAPI:
    """The example as an app; ``backend=None`` auto-detects it from the environment."""
    return make_app(router, "profile picture", backend)


__getattr__ = lazy_app(globals(), create_app)
