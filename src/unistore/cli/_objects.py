"""Single-object verbs: put, get, cat, stat, rm, url/presign, and cp/mv of one object."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Annotated

import typer

from .._errors import InvalidArgumentError
from .._types import Download, WriteMode
from ._common import QuietOpt, StoreOpt, TokenOpt, app, closing, metadata_options, open_at, open_store, run
from ._refs import Ref, local_target
from ._transfer import download, progress, read_file, upload, write_file

__all__ = ["copy_one"]

MetaOpt = Annotated[list[str] | None, typer.Option("--meta", "-m", help="NAME=VALUE, repeatable.")]
TypeOpt = Annotated[str | None, typer.Option("--content-type", "-t", help="Content type (default: guessed).")]
CacheOpt = Annotated[str | None, typer.Option("--cache-control", help="Cache-Control stored with the object.")]
NoClobberOpt = Annotated[
    bool, typer.Option("--ignore-existing", "--no-clobber", "-n", help="Never overwrite (create-only write).")
]


@app.command()
def put(
    key: str,
    source: Annotated[str, typer.Argument(help="File to upload, or - for stdin.")] = "-",
    store: StoreOpt = None,
    token: TokenOpt = None,
    content_type: TypeOpt = None,
    cache_control: CacheOpt = None,
    meta: MetaOpt = None,
    ignore_existing: NoClobberOpt = False,
    state_dir: Annotated[
        str | None,
        typer.Option(envvar="UNISTORE_STATE_DIR", help="Resumable uploads' records [~/.cache/unistore/uploads]."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Upload a file (streamed) to KEY; a large file to an http(s) or S3 store resumes when rerun."""

    async def work() -> None:
        path, metadata = None if source == "-" else Path(source), metadata_options(meta)
        mode: WriteMode = "create" if ignore_existing else "overwrite"
        s, at = open_at(key, store, token)
        async with closing(s):
            info = await upload(
                s,
                at,
                path,
                content_type=content_type,
                metadata=metadata,
                state_dir=state_dir,
                quiet=quiet,
                mode=mode,
                cache_control=cache_control,
            )
        typer.echo(json.dumps({"key": info.key, "size": info.size, "etag": info.etag}))

    run(work)


@app.command()
def get(
    key: str,
    dest: Annotated[str, typer.Argument(help="File or directory to write into, or - for stdout.")] = "-",
    store: StoreOpt = None,
    token: TokenOpt = None,
    no_resume: Annotated[bool, typer.Option("--no-resume", help="Discard a partial download; keep none.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Download KEY (streamed) to a file or stdout; a rerun resumes an interrupted download (DEST.part)."""

    async def work() -> None:
        s, at = open_at(key, store, token, read_only=True)
        async with closing(s):
            target = None if dest == "-" else local_target(dest, at)
            if target is not None:
                await download(s, at, target, resume=not no_resume, quiet=quiet)
                return
            async with await s.open(at) as dl:
                with progress(f"get {key}", dl.content_length, quiet) as advance:
                    await write_file(None, dl.__aiter__(), advance)

    run(work)


@app.command()
def cat(keys: list[str], store: StoreOpt = None, token: TokenOpt = None) -> None:
    """Write the objects KEYS to stdout, one after another, streamed."""

    async def work() -> None:
        for key in keys:
            s, at = open_at(key, store, token, read_only=True)
            async with closing(s), await s.open(at) as dl:
                await write_file(None, dl.__aiter__(), lambda n: None)

    run(work)


@app.command()
def stat(key: str, store: StoreOpt = None, token: TokenOpt = None) -> None:
    """Print KEY's stored fields and metadata as JSON."""

    async def work() -> None:
        s, at = open_at(key, store, token, read_only=True)
        async with closing(s):
            typer.echo(json.dumps(await s.get_metadata(at), indent=2, ensure_ascii=False))

    run(work)


@app.command("url")
def url(
    key: str,
    store: StoreOpt = None,
    token: TokenOpt = None,
    expires_in: Annotated[int, typer.Option(min=1)] = 3600,
    download_: Annotated[bool, typer.Option("--download", help="Serve as an attachment.")] = False,
    method: Annotated[str, typer.Option(help="GET, or PUT to let the holder upload (where the store can).")] = "GET",
) -> None:
    """Print a signed URL for KEY (also: presign)."""

    async def work() -> None:
        s, at = open_at(key, store, token, read_only=method.upper() == "GET")
        async with closing(s):
            typer.echo(await s.sign_url(at, expires_in=expires_in, download=download_, method=method.upper()))

    run(work)


app.command("presign", help="Print a signed URL for KEY (same as url).")(url)


async def copy_one(
    src: Ref,
    dst: Ref,
    *,
    src_token: str | None,
    dst_token: str | None,
    content_type: str | None,
    cache_control: str | None,
    metadata: dict[str, str],
    mode: WriteMode,
    quiet: bool,
    label: str,
) -> Callable[[], Awaitable[None]] | None:
    """Copy one object or file; returns how to remove the source (for mv), if it is an object."""
    target: Path | None = None
    if src.key is not None and not src.key:
        raise InvalidArgumentError(f"{src.store!r} names no object (give a key)")
    if dst.key is None and dst.store != "-":
        name = src.key if src.key is not None else Path(src.store).name
        target = local_target(dst.store, name)
    async with contextlib.AsyncExitStack() as stack:
        content, extra, total, cache, disposition = content_type, dict(metadata), None, cache_control, None
        dl: Download | None = None
        path: Path | None = None
        if src.key is not None:
            s = await stack.enter_async_context(closing(open_store(src.store, src_token or src.token, read_only=True)))
            dl = await stack.enter_async_context(await s.open(src.key))
            content = content or dl.info.content_type
            extra = {**dl.info.metadata, **metadata}
            total, cache, disposition = dl.content_length, cache or dl.info.cache_control, dl.info.content_disposition
        elif src.store != "-":
            path = Path(src.store)
            total = path.stat().st_size
        with progress(label, total, quiet) as advance:
            chunks = _counted(dl.__aiter__(), advance) if dl is not None else read_file(path, advance)
            if dst.key is None:
                await write_file(target, chunks, lambda n: None)
            else:
                if not dst.key:
                    raise InvalidArgumentError(f"{dst.store!r} names no object (give a key)")
                d = await stack.enter_async_context(closing(open_store(dst.store, dst_token or dst.token)))
                await d.put_object(
                    dst.key,
                    chunks,
                    content_type=content,
                    metadata=extra,
                    mode=mode,
                    cache_control=cache,
                    content_disposition=disposition,
                )
    if src.key is None or dl is None:
        return None
    version, where, key = dl.info.etag, src, src.key

    async def remove() -> None:
        async with closing(open_store(where.store, src_token or where.token)) as s:
            await s.remove(key, if_match=version)  # a newer version written meanwhile stays

    return remove


async def _counted(chunks: AsyncIterator[bytes], advance: Callable[[int], None]) -> AsyncIterator[bytes]:
    async for data in chunks:
        advance(len(data))
        yield data
