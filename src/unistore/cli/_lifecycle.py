"""``unistore lifecycle``: show, apply and sweep a store's lifecycle rules (expire, transition,
abort incomplete uploads after N days, by prefix). S3 and GCS apply rules themselves; other
stores keep them and expire objects when ``unistore lifecycle sweep`` runs (e.g. from cron)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from .._errors import InvalidArgumentError
from ._common import app, open_store, run

__all__ = ["lifecycle_app"]

lifecycle_app = typer.Typer(
    help="A store's lifecycle rules: expire or transition objects after N days, by prefix.", no_args_is_help=True
)
app.add_typer(lifecycle_app, name="lifecycle")

StoreArg = Annotated[str, typer.Argument(help="The store (URL or name).")]


@lifecycle_app.command("show")
def show_command(
    store: StoreArg, as_json: Annotated[bool, typer.Option("--json", help="The rules as JSON.")] = False
) -> None:
    """The store's rules, and whether the store applies them itself (native) or the sweeper does."""

    async def work() -> None:
        from .._lifecycle import read_lifecycle, rules_to_json

        target = open_store(store, read_only=True)
        try:
            rules, where = await read_lifecycle(target)
        finally:
            await target.aclose()
        if as_json:
            doc = json.loads(rules_to_json(rules))
            typer.echo(json.dumps({**doc, "applied_by": where}, indent=2))
            return
        if not rules:
            typer.echo("no lifecycle rules")
            return
        for r in rules:
            actions = []
            if r.transition_days is not None:
                actions.append(f"to {r.transition_class} after {r.transition_days} d")
            if r.expire_days is not None:
                actions.append(f"expire after {r.expire_days} d")
            if r.abort_multipart_days is not None:
                actions.append(f"abort uploads after {r.abort_multipart_days} d")
            typer.echo(f"{r.id}\t{r.prefix or '(all)'}\t{', '.join(actions)}")
        typer.echo(f"applied by: {'the store' if where == 'native' else 'unistore lifecycle sweep'}")

    run(work)


@lifecycle_app.command("apply")
def apply_command(
    store: StoreArg,
    rules_file: Annotated[Path, typer.Argument(help='A JSON file: {"rules": [{"id": ..., "prefix": ..., ...}]}.')],
) -> None:
    """Make the rules in RULES_FILE the store's lifecycle (replacing its rules; `{"rules": []}` removes them)."""

    async def work() -> None:
        from .._lifecycle import apply_lifecycle, rules_from_json

        try:
            text = rules_file.read_text()
        except OSError as exc:
            raise InvalidArgumentError(f"cannot read {rules_file}: {exc.strerror}") from None
        rules = rules_from_json(text)
        target = open_store(store)
        try:
            where = await apply_lifecycle(target, rules)
        finally:
            await target.aclose()
        how = "applied by the store" if where == "native" else "kept in the store: run `unistore lifecycle sweep`"
        typer.echo(f"{len(rules)} rule(s) {how}")

    run(work)


@lifecycle_app.command("sweep")
def sweep_command(
    store: StoreArg,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would expire; delete nothing.")] = False,
    now: Annotated[
        str | None, typer.Option(help="Judge ages as of this ISO 8601 time instead of now (to preview).")
    ] = None,
) -> None:
    """Delete the objects the store's kept rules say have expired (for stores without native lifecycle)."""

    async def work() -> None:
        from .._lifecycle import sweep_lifecycle

        at = None
        if now is not None:
            try:
                at = datetime.fromisoformat(now)
            except ValueError:
                raise InvalidArgumentError(f"--now must be an ISO 8601 time, not {now!r}") from None
            at = at if at.tzinfo else at.replace(tzinfo=UTC)
        target = open_store(store)
        try:
            result = await sweep_lifecycle(target, now=at, dry_run=dry_run)
        finally:
            await target.aclose()
        for key in result.expired:
            typer.echo(("would expire " if dry_run else "expired ") + key)
        typer.echo(
            f"{len(result.expired)} {'would expire' if dry_run else 'expired'}, {result.examined} examined"
            + (f", {len(result.changed)} rewritten meanwhile (kept)" if result.changed else "")
        )

    run(work)
