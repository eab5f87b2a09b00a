"""The typer app, shared options, opening stores, and errors as one line plus an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar

import typer

from .._base import StorageBackend
from .._config import backend_from_url, detect_backend, easy_storage
from .._errors import (
    ConfigurationError,
    IntegrityError,
    InvalidArgumentError,
    InvalidKeyError,
    InvalidRangeError,
    NotFoundError,
    NotModifiedError,
    PermissionDeniedError,
    PreconditionFailedError,
    QuotaExceededError,
    StorageError,
    TransientError,
    UnavailableError,
    UnsupportedError,
)
from ._refs import store_url
from ._transfer import note

__all__ = [
    "EXIT_CODES",
    "QuietOpt",
    "RESERVED_METADATA",
    "StoreOpt",
    "TokenOpt",
    "app",
    "closing",
    "exit_code",
    "metadata_options",
    "open_store",
    "run",
]

T = TypeVar("T")

EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (NotFoundError, 3),
    (FileNotFoundError, 3),
    (PermissionDeniedError, 4),
    (PermissionError, 4),
    (PreconditionFailedError, 5),
    (NotModifiedError, 5),
    (InvalidKeyError, 6),
    (InvalidArgumentError, 6),
    (InvalidRangeError, 6),
    (TransientError, 7),
    (ConnectionError, 7),
    (ConfigurationError, 8),
    (IntegrityError, 9),
    (QuotaExceededError, 10),
    (UnsupportedError, 11),
    (StorageError, 1),
    (OSError, 1),
)
"""Exit code per error family, most specific first."""

RESERVED_METADATA = frozenset(
    {"key", "size", "etag", "content_type", "last_modified", "cache_control", "content_disposition"}
)
"""Names ``get_metadata`` uses for the object's own fields: custom metadata cannot take them."""

app = typer.Typer(
    name="unistore",
    help="Store and serve files on any backend; run the unistore service.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

StoreOpt = Annotated[
    str | None,
    typer.Option("--store", "-s", envvar="UNISTORE_STORE", help="Store URL or name (default: STORAGE_* env)."),
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="UNISTORE_TOKEN", help="Bearer token for an http(s) store.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")]


def exit_code(exc: BaseException) -> int:
    """The exit code of an error (see :data:`EXIT_CODES`)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 1)


def _describe(exc: BaseException) -> str:
    """One line naming the error, its key and store where known, and the cause."""
    if isinstance(exc, StorageError):
        text = exc.message or str(exc)
        where = [f"{exc.key!r}"] if exc.key and exc.key not in text else []
        if exc.backend and exc.backend not in text:
            where.append(f"in {exc.backend}")
        cause = exc.__cause__
        if isinstance(exc, UnavailableError) and cause is not None and str(cause) not in text:
            text += f" ({cause})"
        return f"{type(exc).__name__}: {text}" + (f" ({' '.join(where)})" if where else "")
    return f"{type(exc).__name__}: {exc}"


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; an expected failure becomes one line on stderr and its exit code."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except (StorageError, OSError) as exc:
        note(_describe(exc))
        raise typer.Exit(exit_code(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


NO_STORE = (
    "no store configured: pass --store URL (file:///srv/files, s3://bucket, http://127.0.0.1:8000 ...) or a "
    "store name, set UNISTORE_STORE, or set STORAGE_BACKEND and its STORAGE_* variables"
)


def open_store(url: str | None, token: str | None = None, *, read_only: bool = False) -> StorageBackend:
    """The store at ``url`` (a URL or a named store; auto-detected from the environment when
    ``None``). Auto-detection that finds nothing is a :class:`ConfigurationError`, never a
    throw-away memory store (``STORAGE_BACKEND=memory`` still asks for one). With
    ``read_only``, a local store whose directory does not exist is a :class:`NotFoundError`
    instead of a new directory."""
    if url is None:
        kind, _ = detect_backend()
        if kind == "memory" and not os.environ.get("STORAGE_BACKEND", "").strip():
            raise ConfigurationError(NO_STORE)
        if read_only and kind == "local":
            _must_exist(os.environ.get("STORAGE_BASE_PATH") or os.environ.get("RAILWAY_VOLUME_MOUNT_PATH") or "")
        return easy_storage()
    url, named_token = store_url(url)
    token = token or named_token
    if read_only and url.startswith("file:"):
        from urllib.parse import unquote, urlsplit

        _must_exist(unquote(urlsplit(url).path))
    if url.startswith(("http://", "https://")) and token:
        return backend_from_url(url, token=token)
    return backend_from_url(url)


def _must_exist(path: str) -> None:
    from dataclasses import fields

    from ..backends.local import LocalSettings

    where = path or str(next(f.default for f in fields(LocalSettings) if f.name == "base_path"))
    if not os.path.isdir(where):
        raise NotFoundError(f"no store at {where!r} (no such directory)")


def metadata_options(items: list[str] | None) -> dict[str, str]:
    """``-m NAME=VALUE`` options as a dict; names the object's own fields take are refused."""
    out = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"metadata must be NAME=VALUE, got {item!r}")
        if name.strip().lower() in RESERVED_METADATA:
            raise InvalidArgumentError(
                f"metadata name {name!r} is reserved for the object's own field (use --content-type / --cache-control)"
            )
        out[name] = value
    return out


@contextlib.asynccontextmanager
async def closing(store: StorageBackend) -> AsyncIterator[StorageBackend]:
    """``store``, closed on the way out."""
    try:
        yield store
    finally:
        await store.aclose()
