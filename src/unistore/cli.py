"""``unistore``: the command line over any store (typer + rich).

A store is a URL (``--store``, or ``UNISTORE_STORE``; else auto-detected from
``STORAGE_*`` like ``easy_storage()``): ``file:///srv/files``, ``s3://bucket``,
``http://127.0.0.1:8000`` (a unistore service; token from ``--token`` or
``UNISTORE_TOKEN``)... ``cp`` addresses an object as ``STORE_URL#KEY``, a local
file by its path, and stdin/stdout as ``-``.

``get`` and ``put`` resume interrupted transfers when rerun: ``get`` continues
``DEST.part`` from where it stopped (never splicing two versions), ``put`` of a
large file to an http(s) or S3 store sends only the parts its upload session
lacks. See :mod:`unistore._cli_transfer`.

Exit codes, one per error family (see :data:`EXIT_CODES`): 0 success, 2 usage,
3 not found, 4 permission denied, 5 precondition failed, 6 invalid input,
7 unavailable or throttled (retry later), 8 configuration, 9 integrity,
10 quota exceeded, 11 unsupported, 1 any other storage error. Expected
failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from ._base import StorageBackend
from ._cli_transfer import download, note, progress, read_file, upload, write_file
from ._config import backend_from_url, easy_storage
from ._errors import (
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
    UnsupportedError,
)
from ._types import Download

__all__ = ["EXIT_CODES", "app", "main"]

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
    (ConfigurationError, 8),
    (IntegrityError, 9),
    (QuotaExceededError, 10),
    (UnsupportedError, 11),
    (StorageError, 1),
    (OSError, 1),
)
"""Exit code per error family, most specific first."""

app = typer.Typer(
    name="unistore",
    help="Store and serve files on any backend; run the unistore service.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

StoreOpt = Annotated[
    str | None, typer.Option("--store", "-s", envvar="UNISTORE_STORE", help="Store URL (default: STORAGE_* env).")
]
TokenOpt = Annotated[
    str | None, typer.Option("--token", envvar="UNISTORE_TOKEN", help="Bearer token for an http(s) store.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")]


def exit_code(exc: BaseException) -> int:
    """The exit code of an error (see :data:`EXIT_CODES`)."""
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), 1)


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run ``work``; an expected failure becomes one line on stderr and its exit code."""
    try:
        return asyncio.run(work())  # type: ignore[arg-type]
    except (StorageError, OSError) as exc:
        message = exc.message if isinstance(exc, StorageError) else str(exc)
        note(f"{type(exc).__name__}: {message or exc}")
        raise typer.Exit(exit_code(exc)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


def open_store(url: str | None, token: str | None = None) -> StorageBackend:
    """The store at ``url`` (auto-detected from the environment when ``None``)."""
    if url is None:
        return easy_storage()
    if url.startswith(("http://", "https://")) and token:
        return backend_from_url(url, token=token)
    return backend_from_url(url)


def _metadata(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidArgumentError(f"metadata must be NAME=VALUE, got {item!r}")
        out[name] = value
    return out


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No tokens (local development only).")] = False,
    header_timeout: Annotated[
        float | None, typer.Option(help="Seconds to send request headers (default 10; env UNISTORE_HEADER_TIMEOUT).")
    ] = None,
    body_timeout: Annotated[
        float | None, typer.Option(help="Seconds a body may pause (then 408) (default 30; env UNISTORE_BODY_TIMEOUT).")
    ] = None,
    body_deadline: Annotated[
        float | None, typer.Option(help="Seconds a whole body may take (default none; env UNISTORE_BODY_DEADLINE).")
    ] = None,
) -> None:
    """Run the storage service (backend from STORAGE_*, settings from UNISTORE_*)."""
    from .service.__main__ import serve as run

    timeouts = {"HEADER_TIMEOUT": header_timeout, "BODY_TIMEOUT": body_timeout, "BODY_DEADLINE": body_deadline}
    run(host, port, no_auth=no_auth, overrides={f"UNISTORE_{k}": str(v) for k, v in timeouts.items() if v is not None})


@app.command()
def put(
    key: str,
    source: Annotated[str, typer.Argument(help="File to upload, or - for stdin.")] = "-",
    store: StoreOpt = None,
    token: TokenOpt = None,
    content_type: Annotated[str | None, typer.Option("--content-type", "-t")] = None,
    meta: Annotated[list[str] | None, typer.Option("--meta", "-m", help="NAME=VALUE, repeatable.")] = None,
    state_dir: Annotated[
        str | None,
        typer.Option(envvar="UNISTORE_STATE_DIR", help="Resumable uploads' records [~/.cache/unistore/uploads]."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Upload a file (streamed) to KEY; a large file to an http(s) or S3 store resumes when rerun."""

    async def work() -> None:
        path, metadata = None if source == "-" else Path(source), _metadata(meta or [])
        async with _closing(open_store(store, token)) as s:
            info = await upload(
                s, key, path, content_type=content_type, metadata=metadata, state_dir=state_dir, quiet=quiet
            )
        typer.echo(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))

    _run(work)


@app.command()
def get(
    key: str,
    dest: Annotated[str, typer.Argument(help="File to write, or - for stdout.")] = "-",
    store: StoreOpt = None,
    token: TokenOpt = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Discard a partial download; keep none.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Download KEY (streamed) to a file or stdout; a rerun resumes an interrupted download (DEST.part)."""

    async def work() -> None:
        async with _closing(open_store(store, token)) as s:
            if dest != "-":
                await download(s, key, Path(dest), resume=not no_resume, quiet=quiet)
                return
            async with await s.open(key) as dl:
                with progress(f"get {key}", dl.content_length, quiet) as advance:
                    await write_file(None, dl.__aiter__(), advance)

    _run(work)


@app.command("ls")
def list_objects(
    prefix: Annotated[str, typer.Argument()] = "",
    store: StoreOpt = None,
    token: TokenOpt = None,
    limit: Annotated[int, typer.Option(min=1)] = 1000,
    long: Annotated[bool, typer.Option("--long", "-l", help="Size, modified time and type too.")] = False,
) -> None:
    """List keys under PREFIX."""

    async def work() -> None:
        async with _closing(open_store(store, token)) as s:
            infos = []
            async for info in s.iter_objects(prefix):
                infos.append(info)
                if len(infos) >= limit:
                    break
        if not long:
            for info in infos:
                typer.echo(info.key)
            return
        table = Table("size", "last modified", "content type", "key", box=None)
        for info in infos:
            table.add_row(str(info.size), info.last_modified.isoformat(timespec="seconds"), info.content_type, info.key)
        Console().print(table)

    _run(work)


@app.command()
def stat(key: str, store: StoreOpt = None, token: TokenOpt = None) -> None:
    """Print KEY's metadata as JSON."""

    async def work() -> None:
        async with _closing(open_store(store, token)) as s:
            typer.echo(json.dumps(await s.get_metadata(key), indent=2, ensure_ascii=False))

    _run(work)


@app.command()
def rm(keys: list[str], store: StoreOpt = None, token: TokenOpt = None) -> None:
    """Delete KEYS (a missing key is not an error)."""

    async def work() -> None:
        async with _closing(open_store(store, token)) as s:
            for key in keys:
                typer.echo(f"{'deleted' if await s.delete(key) else 'absent'} {key}")

    _run(work)


@app.command()
def url(
    key: str,
    store: StoreOpt = None,
    token: TokenOpt = None,
    expires_in: Annotated[int, typer.Option(min=1)] = 3600,
    download: Annotated[bool, typer.Option("--download", help="Serve as an attachment.")] = False,
) -> None:
    """Print a signed URL for KEY."""

    async def work() -> None:
        async with _closing(open_store(store, token)) as s:
            typer.echo(await s.get_url(key, expires_in=expires_in, download=download))

    _run(work)


@dataclass(frozen=True, slots=True)
class _Ref:
    store: str | None
    key: str | None  # None: a local file (or - for stdio) named by ``store``


def _ref(text: str) -> _Ref:
    if "#" in text and "://" in text.split("#", 1)[0]:
        store, key = text.split("#", 1)
        return _Ref(store, key)
    return _Ref(text, None)


@app.command()
def cp(
    source: Annotated[str, typer.Argument(help="STORE_URL#KEY, a file, or -.")],
    dest: Annotated[str, typer.Argument(help="STORE_URL#KEY, a file, or -.")],
    token: TokenOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Copy an object between any two stores, files or stdio, streamed."""
    src, dst = _ref(source), _ref(dest)

    async def work() -> None:
        async with contextlib.AsyncExitStack() as stack:
            content_type, metadata, total = None, None, None
            dl: Download | None = None
            path: Path | None = None
            if src.key is not None:
                s = await stack.enter_async_context(_closing(open_store(src.store, token)))
                dl = await stack.enter_async_context(await s.open(src.key))
                content_type, metadata, total = dl.info.content_type, dict(dl.info.metadata), dl.content_length
            elif src.store != "-":
                path = Path(src.store or "-")
                total = path.stat().st_size
            with progress(f"cp {source}", total, quiet) as advance:
                chunks = _counted(dl.__aiter__(), advance) if dl is not None else read_file(path, advance)
                if dst.key is None:
                    await write_file(None if dst.store == "-" else Path(dst.store or "-"), chunks, lambda n: None)
                    return
                d = await stack.enter_async_context(_closing(open_store(dst.store, token)))
                await d.put_object(dst.key, chunks, content_type=content_type, metadata=metadata)

    _run(work)


async def _counted(chunks: AsyncIterator[bytes], advance: Callable[[int], None]) -> AsyncIterator[bytes]:
    async for data in chunks:
        advance(len(data))
        yield data


@app.command("token")
def issue_token(
    actions: Annotated[str, typer.Option(help="Comma-separated: read,write,delete,admin.")] = "read",
    prefix: Annotated[str, typer.Option(help="Key prefix the token is restricted to.")] = "",
    expires_in: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
    subject: Annotated[str, typer.Option(help="Who the token is for (logged, rate-limited by).")] = "client",
    secret: Annotated[
        str | None, typer.Option(envvar="UNISTORE_SECRET", help="The service secret (UNISTORE_SECRET).")
    ] = None,
) -> None:
    """Issue a scoped token signed with the service secret."""

    async def work() -> None:
        from .service._auth import TokenAuthority

        if not secret:
            raise ConfigurationError("no secret: set UNISTORE_SECRET or pass --secret")
        authority = TokenAuthority(secret.encode())
        acts = [a.strip() for a in actions.split(",") if a.strip()]
        typer.echo(authority.issue(acts, prefix=prefix, expires_in=expires_in, subject=subject))

    _run(work)


@contextlib.asynccontextmanager
async def _closing(store: StorageBackend) -> AsyncIterator[StorageBackend]:
    try:
        yield store
    finally:
        await store.aclose()


def main() -> Any:
    """The ``unistore`` console script."""
    return app()
