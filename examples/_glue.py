"""What the guide's examples leave to the reader, written once: stand-in auth and tenancy
dependencies, and the app factory every example module uses."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, HTTPException

from unistore import StorageBackend, add_storage, easy_storage

__all__ = ["User", "get_current_user", "lazy_app", "make_app", "require_tenant_id"]

# Letters, digits, "_" and "-" only: a "/" in an id would let one user's or tenant's keys
# land under another one's prefix, the only isolation the guide's examples have.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


@dataclass(frozen=True)
class User:
    id: str


async def get_current_user(x_user_id: Annotated[str | None, Header()] = None) -> User:
    """Stand-in for your auth dependency: the user named by the ``X-User-Id`` header."""
    if x_user_id is None or not _ID.fullmatch(x_user_id):
        raise HTTPException(status_code=401, detail="Send X-User-Id: <letters, digits, _ or ->")
    return User(id=x_user_id)


async def require_tenant_id(x_tenant_id: Annotated[str | None, Header()] = None) -> str:
    """Stand-in for ``svc_infra.tenancy.require_tenant_id``: the ``X-Tenant-Id`` header."""
    if x_tenant_id is None or not _ID.fullmatch(x_tenant_id):
        raise HTTPException(status_code=400, detail="Send X-Tenant-Id: <letters, digits, _ or ->")
    return x_tenant_id


def make_app(router: APIRouter, title: str, backend: StorageBackend | None = None) -> FastAPI:
    """``FastAPI()`` with the example's router and ``add_storage``; ``backend=None`` auto-detects.

    Stores that sign their own URLs (local, memory) get the file route that serves them.
    """
    storage = backend if backend is not None else easy_storage()
    app = FastAPI(title=f"unistore example: {title}")
    app.include_router(router)
    add_storage(app, storage, serve_files=getattr(storage, "signer", None) is not None)
    return app


def lazy_app(module: dict[str, Any], create_app: Callable[[], FastAPI]) -> Callable[[str], Any]:
    """A module ``__getattr__`` building ``app`` on first access, so ``uvicorn examples.x:app``
    works and importing the module (as the tests do) reads no environment."""

    def __getattr__(name: str) -> Any:
        if name == "app":
            module["app"] = application = create_app()
            return application
        raise AttributeError(f"module {module['__name__']!r} has no attribute {name!r}")

    return __getattr__
