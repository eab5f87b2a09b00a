"""The typer app, shared options, opening stores, and errors as one line plus an exit code."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, TypeVar
from urllib.parse import unquote, urlsplit, urlunsplit

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
from ._refs import config_path, store_path, store_url
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
    "open_at",
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


_OPENED: dict[str, str] = {}
"""Backend name -> the URL this command opened it from (secrets removed), for error lines."""


def _shown(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _describe(exc: BaseException) -> str:
    """One line naming the error, its key and store (by the URL given) where known, and the cause."""
    if isinstance(exc, StorageError):
        text = exc.message or str(exc)
        where = [f"{exc.key!r}"] if exc.key and exc.key not in text else []
        if exc.backend and exc.backend not in text:
            where.append(f"in {_OPENED.get(exc.backend, exc.backend)}")
        cause = exc.__cause__
        told = str(cause) in text or text.startswith("cannot reach ")  # the cause is already in the message
        if isinstance(exc, UnavailableError) and cause is not None and not told:
            text += f" ({cause})"
        return f"{type(exc).__name__}: {text}" + (f" ({' '.join(where)})" if where else "")
    return f"{type(exc).__name__}: {exc}"


def run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; an expected failure becomes one line on stderr and its exit code."""
    _OPENED.clear()
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
    store = _open_url(url, token, read_only=read_only)
    name = store.name
    _OPENED[name] = _shown(url) if name not in _OPENED or _OPENED[name] == _shown(url) else name
    return store


def open_at(
    text: str, store: str | None, token: str | None = None, *, read_only: bool = False
) -> tuple[StorageBackend, str]:
    """The store and key a key argument names (``NAME:path``, an object URL, or a key of ``store``:
    see :func:`unistore.cli._refs.store_path`)."""
    where, key, name = store_path(text, store)
    try:
        return open_store(where, token, read_only=read_only), key
    except ConfigurationError as exc:
        if name is None or where is not None or exc.message != NO_STORE:
            raise
        raise ConfigurationError(
            f"no store named {name!r} in {config_path()} (unistore store add {name} URL), and no default store"
            " (--store, UNISTORE_STORE or STORAGE_*)"
        ) from None


def _open_url(url: str, token: str | None, *, read_only: bool) -> StorageBackend:
    if read_only and url.startswith("file:"):
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
