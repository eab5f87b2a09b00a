"""Verbs over many objects: ls, du, rm, cp, mv, sync (see :mod:`unistore.cli._tree`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path
from typing import Annotated

import typer

from .._errors import InvalidArgumentError
from .._types import CommonPrefix, ObjectInfo
from ._common import QuietOpt, StoreOpt, TokenOpt, app, closing, metadata_options, open_at, open_store, run
from ._objects import CacheOpt, MetaOpt, NoClobberOpt, TypeOpt, copy_one
from ._refs import Ref, parse_ref, store_path
from ._transfer import human, note
from ._tree import Filters, LocalTree, Options, StoreTree, Tree, remove_tree, stdin_confirms, transfer_tree

__all__: list[str] = []

IncludeOpt = Annotated[
    list[str] | None, typer.Option("--include", help="Only paths matching this glob (repeatable; * crosses /).")
]
ExcludeOpt = Annotated[list[str] | None, typer.Option("--exclude", help="Leave out paths matching this glob.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print what would change; change nothing.")]
TransfersOpt = Annotated[int, typer.Option("--transfers", "-j", min=1, max=256, help="Files in flight at once.")]
ChecksumOpt = Annotated[bool, typer.Option("--checksum", "-c", help="Compare SHA-256 digests, not size and time.")]
SideTokens = tuple[str | None, str | None]
SrcTokenOpt = Annotated[str | None, typer.Option("--src-token", help="Token for the source side.")]
DstTokenOpt = Annotated[str | None, typer.Option("--dst-token", help="Token for the destination side.")]
StateDirOpt = Annotated[
    str | None,
    typer.Option(envvar="UNISTORE_STATE_DIR", help="Resumable uploads' records [~/.cache/unistore/uploads]."),
]


def _filters(include: list[str] | None, exclude: list[str] | None) -> Filters:
    return Filters(tuple(include or ()), tuple(exclude or ()))


@app.command("ls")
def list_objects(
    prefix: Annotated[str, typer.Argument()] = "",
    store: StoreOpt = None,
    token: TokenOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Every key below, not one level.")] = False,
    long: Annotated[bool, typer.Option("--long", "-l", help="Size, modified time and type too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    as_jsonl: Annotated[bool, typer.Option("--jsonl", help="One JSON object per line.")] = False,
    max_keys: Annotated[int | None, typer.Option("--max", min=1, help="Stop after N entries.")] = None,
) -> None:
    """List PREFIX one level deep (folders end with /), or every key with -r; streamed."""

    async def work() -> None:
        s, at = open_at(prefix, store, token, read_only=True)
        async with closing(s):
            entries = s.iter_objects(at) if recursive else s.iter_entries(at)
            listed = 0
            if as_json:
                typer.echo("[", nl=False)
            async for entry in entries:
                if max_keys is not None and listed == max_keys:
                    note(f"stopped at --max {max_keys}: more entries under {prefix!r}")
                    break
                if as_json or as_jsonl:
                    line = json.dumps(_entry_dict(entry), ensure_ascii=False)
                    typer.echo(("," if as_json and listed else "") + line, nl=as_jsonl)
                elif isinstance(entry, CommonPrefix):
                    typer.echo(f"{'':>10}  {'':>25}  {'-':<28}  {entry.prefix}" if long else entry.prefix)
                elif long:
                    when = entry.last_modified.isoformat(timespec="seconds")
                    typer.echo(f"{human(entry.size):>10}  {when:>25}  {entry.content_type or '-':<28}  {entry.key}")
                else:
                    typer.echo(entry.key)
                listed += 1
            if as_json:
                typer.echo("]")
            if not listed and (unsaved := store_path(prefix, store)[2]):
                note(f"nothing under {prefix!r}; no store named {unsaved!r} is saved (unistore store list)")

    run(work)


def _entry_dict(entry: ObjectInfo | CommonPrefix) -> dict[str, object]:
    if isinstance(entry, CommonPrefix):
        return {"prefix": entry.prefix}
    return {
        "key": entry.key,
        "size": entry.size,
        "etag": entry.etag,
        "last_modified": entry.last_modified.isoformat(),
        "content_type": entry.content_type,
    }


@app.command("du")
def disk_usage(
    prefix: Annotated[str, typer.Argument()] = "",
    store: StoreOpt = None,
    token: TokenOpt = None,
    summarize: Annotated[bool, typer.Option("--summarize", help="Only the total.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON output.")] = False,
) -> None:
    """Count objects and bytes under PREFIX, per folder one level down, then the total."""

    async def work() -> None:
        groups: dict[str, list[int]] = {}
        total = [0, 0]
        s, at = open_at(prefix, store, token, read_only=True)
        async with closing(s):
            async for info in s.iter_objects(at):
                rest = info.key[len(at) :]
                cut = rest.find("/")
                name = at + (rest[: cut + 1] if cut >= 0 else rest)
                total[0], total[1] = total[0] + 1, total[1] + info.size
                if not summarize:
                    group = groups.setdefault(name, [0, 0])
                    group[0], group[1] = group[0] + 1, group[1] + info.size
        if as_json:
            rows = [{"prefix": k, "objects": c, "bytes": b} for k, (c, b) in groups.items()]
            typer.echo(json.dumps({"prefix": at, "objects": total[0], "bytes": total[1], "entries": rows}))
            return
        for name, (count, size) in groups.items():
            typer.echo(f"{count:>10}  {human(size):>10}  {name}")
        typer.echo(f"{total[0]:>10}  {human(total[1]):>10}  {at or '(all)'} total ({total[1]} bytes)")

    run(work)


@app.command()
def rm(
    keys: list[str],
    store: StoreOpt = None,
    token: TokenOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="KEYS are folders: delete below.")] = False,
    dry_run: DryRunOpt = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="No question before deleting over 1,000.")] = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    transfers: TransfersOpt = 8,
) -> None:
    """Delete KEYS (a missing key is not an error), or with -r every object in the folders KEYS
    (``www`` is ``www/``, never ``www-old/``)."""

    async def work() -> None:
        for text in keys:
            s, key = open_at(text, store, token)
            async with closing(s):
                if not recursive:
                    if dry_run:
                        typer.echo(f"would delete {key}")
                    else:
                        typer.echo(f"{'deleted' if await s.delete(key) else 'absent'} {key}")
                    continue
                key = key if not key or key.endswith("/") else key + "/"  # the folder, as cp -r reads it
                count = await remove_tree(
                    s,
                    key,
                    filters=_filters(include, exclude),
                    dry_run=dry_run,
                    confirm=(lambda n: True) if yes else stdin_confirms,
                    transfers=transfers,
                )
                if count == 0 and not dry_run and not yes:
                    note(f"nothing deleted under {key!r} (over 1,000 objects need --yes when not asked on a terminal)")
                typer.echo(f"{'would delete' if dry_run else 'deleted'} {count} under {key}")

    run(work)


def _tree(ref: Ref, token: str | None, stack: contextlib.AsyncExitStack) -> Tree:
    if ref.key is None:
        if ref.store == "-":
            raise InvalidArgumentError("a tree transfer cannot read or write stdio")
        return LocalTree(Path(ref.store))
    store = open_store(ref.store, token or ref.token)
    stack.push_async_callback(store.aclose)
    prefix = ref.key if not ref.key or ref.key.endswith("/") else ref.key + "/"
    return StoreTree(store, prefix)


def _tree_run(source: str, dest: str, tokens: SideTokens, opts: Options) -> None:
    async def work() -> None:
        src, dst = parse_ref(source), parse_ref(dest)
        if src.key is None and dst.key is None:
            _must_not_overlap(src.store, dst.store)
        if src.key is None and not await asyncio.to_thread(os.path.isdir, src.store):
            raise NotADirectoryError(f"not a directory: {src.store!r}")
        async with contextlib.AsyncExitStack() as stack:
            stats = await transfer_tree(_tree(src, tokens[0], stack), _tree(dst, tokens[1], stack), opts)
        if stats.first_error is not None:
            raise stats.first_error

    run(work)


def _must_not_overlap(source: str, dest: str) -> None:
    """A local-to-local tree transfer needs two separate directories (neither inside the other)."""
    a, b = Path(source).resolve(), Path(dest).resolve()
    if a == b or a in b.parents or b in a.parents:
        raise InvalidArgumentError(f"{source!r} and {dest!r} overlap: give two separate directories")


def _options(**kw: object) -> Options:
    return Options(**kw)  # type: ignore[arg-type]


@app.command()
def cp(
    source: Annotated[str, typer.Argument(help="An object (STORE_URL#KEY, NAME:KEY, s3://bucket/key ...), a file, -.")],
    dest: Annotated[str, typer.Argument(help="An object, a file or directory, or -.")],
    token: TokenOpt = None,
    src_token: SrcTokenOpt = None,
    dst_token: DstTokenOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Copy a tree (prefix or directory).")] = False,
    content_type: TypeOpt = None,
    cache_control: CacheOpt = None,
    meta: MetaOpt = None,
    ignore_existing: NoClobberOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    checksum: ChecksumOpt = False,
    dry_run: DryRunOpt = False,
    transfers: TransfersOpt = 16,
    state_dir: StateDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Copy an object, or a tree with -r, between any two stores, files or stdio, streamed.

    A tree copy skips files that are already there unchanged (so a rerun after an
    interruption resumes) and resumes large files where they stopped."""
    metadata = metadata_options(meta)
    if recursive:
        opts = _options(
            transfers=transfers,
            checksum=checksum,
            ignore_existing=ignore_existing,
            dry_run=dry_run,
            quiet=quiet,
            filters=_filters(include, exclude),
            content_type=content_type,
            cache_control=cache_control,
            metadata=metadata,
            state_dir=state_dir,
        )
        return _tree_run(source, dest, (src_token or token, dst_token or token), opts)

    async def work() -> None:
        src, dst = parse_ref(source), parse_ref(dest)
        if src.key is None and await asyncio.to_thread(os.path.isdir, src.store):
            raise InvalidArgumentError(f"{source!r} is a directory: copy it with cp -r")
        if dry_run:
            typer.echo(f"would copy {source} -> {dest}")
            return
        await copy_one(
            src,
            dst,
            src_token=src_token or token,
            dst_token=dst_token or token,
            content_type=content_type,
            cache_control=cache_control,
            metadata=metadata,
            mode="create" if ignore_existing else "overwrite",
            quiet=quiet,
            label=f"cp {source}",
        )

    run(work)


@app.command()
def mv(
    source: Annotated[str, typer.Argument(help="An object, or a tree with -r.")],
    dest: Annotated[str, typer.Argument(help="An object, a file or directory.")],
    token: TokenOpt = None,
    src_token: SrcTokenOpt = None,
    dst_token: DstTokenOpt = None,
    recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Move a tree.")] = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    transfers: TransfersOpt = 16,
    state_dir: StateDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Move: copy, then delete the source once its copy is complete (a source changed
    meanwhile is kept)."""
    if recursive:
        opts = _options(
            transfers=transfers, move=True, quiet=quiet, filters=_filters(include, exclude), state_dir=state_dir
        )
        return _tree_run(source, dest, (src_token or token, dst_token or token), opts)

    async def work() -> None:
        src, dst = parse_ref(source), parse_ref(dest)
        if src.key is None:
            raise InvalidArgumentError(f"{source!r} is not an object: mv moves objects (use cp for local files)")
        remove = await copy_one(
            src,
            dst,
            src_token=src_token or token,
            dst_token=dst_token or token,
            content_type=None,
            cache_control=None,
            metadata={},
            mode="overwrite",
            quiet=quiet,
            label=f"mv {source}",
        )
        if remove is not None:
            await remove()

    run(work)


@app.command()
def sync(
    source: Annotated[str, typer.Argument(help="A store prefix (s3://bucket/dir, NAME:dir ...) or a directory.")],
    dest: Annotated[str, typer.Argument(help="A store prefix or a directory.")],
    token: TokenOpt = None,
    src_token: SrcTokenOpt = None,
    dst_token: DstTokenOpt = None,
    delete: Annotated[bool, typer.Option("--delete", help="Delete destination files the source lacks.")] = False,
    checksum: ChecksumOpt = False,
    ignore_existing: NoClobberOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    content_type: TypeOpt = None,
    cache_control: CacheOpt = None,
    meta: MetaOpt = None,
    dry_run: DryRunOpt = False,
    transfers: TransfersOpt = 16,
    state_dir: StateDirOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Make DEST hold what SOURCE holds: copy new and changed files (size and time, or
    --checksum), and with --delete remove the ones SOURCE lacks."""
    opts = _options(
        transfers=transfers,
        checksum=checksum,
        ignore_existing=ignore_existing,
        delete=delete,
        dry_run=dry_run,
        quiet=quiet,
        filters=_filters(include, exclude),
        content_type=content_type,
        cache_control=cache_control,
        metadata=metadata_options(meta),
        state_dir=state_dir,
    )
    _tree_run(source, dest, (src_token or token, dst_token or token), opts)
