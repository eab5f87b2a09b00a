"""``unistore migrate SRC DST [PREFIX]``: copy a store's objects to another, verified and resumable."""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from .._errors import InvalidArgumentError
from ._common import QuietOpt, app, closing, open_store, run
from ._transfer import err

if TYPE_CHECKING:
    from .._migrate import MigrationReport, Upgrade

__all__: list[str] = []


def _upgrade_function(spec: str) -> Upgrade:
    """``module:function`` imported."""
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise InvalidArgumentError(f"--upgrade must be MODULE:FUNCTION, got {spec!r}")
    function = getattr(importlib.import_module(module), name, None)
    if not callable(function):
        raise InvalidArgumentError(f"--upgrade {spec!r} is not a function")
    return function  # type: ignore[no-any-return]


@app.command("migrate")
def migrate_command(
    src: Annotated[str, typer.Argument(help="Source store (URL or name).")],
    dst: Annotated[str, typer.Argument(help="Destination store (URL or name).")],
    prefix: Annotated[str, typer.Argument(help="Only keys starting with this.")] = "",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Report what would be copied; write nothing.")] = False,
    verify_only: Annotated[
        bool, typer.Option("--verify-only", help="Report missing and differing objects; write nothing.")
    ] = False,
    ops: Annotated[
        float | None, typer.Option("--ops-per-second", min=0.001, help="At most N objects a second.")
    ] = None,
    rate: Annotated[float | None, typer.Option("--bytes-per-second", min=1, help="At most N bytes a second.")] = None,
    jobs: Annotated[int, typer.Option("--transfers", "-j", min=1, max=256, help="Objects in flight at once.")] = 8,
    schema_version: Annotated[
        int | None, typer.Option("--schema-version", help="Stamp schema_version=N on copies without one.")
    ] = None,
    upgrade: Annotated[
        str | None, typer.Option("--upgrade", help="MODULE:FUNCTION(data, info, version) -> bytes at version+1.")
    ] = None,
    job: Annotated[str, typer.Option("--job", help="Name of this migration's checkpoint.")] = "default",
    worker: Annotated[
        bool, typer.Option("--worker", help="Run as one of many workers sharing the job through leases in DST.")
    ] = False,
    lease_seconds: Annotated[
        float, typer.Option("--lease-seconds", min=0.1, help="With --worker: a lease not renewed this long is free.")
    ] = 30.0,
    range_size: Annotated[int, typer.Option("--range-size", min=1, help="With --worker: keys per range.")] = 10_000,
    src_token: Annotated[str | None, typer.Option("--src-token", help="Token for the source side.")] = None,
    dst_token: Annotated[str | None, typer.Option("--dst-token", help="Token for the destination side.")] = None,
    metrics_file: Annotated[
        str | None, typer.Option("--metrics-file", help="Write Prometheus metrics (text format) here at the end.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The report as one JSON object.")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Copy every object under PREFIX from SRC to DST: metadata included, each copy checked by
    SHA-256 (between buckets of one S3 server: copied inside the server, checked by ETag), never
    overwriting an object DST already has; rerun to resume after an interruption.

    Exit 0 when everything is there and identical, 9 when objects are missing or differ, 1 when
    some failed."""
    if dry_run and verify_only:
        raise typer.BadParameter("--dry-run and --verify-only do not go together")
    if worker and (dry_run or verify_only):
        raise typer.BadParameter("--worker copies; run --dry-run or --verify-only without it")
    try:
        function = _upgrade_function(upgrade) if upgrade else None
    except (InvalidArgumentError, ImportError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--upgrade") from None
    registry: Any = None
    if metrics_file:
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()

    async def work() -> MigrationReport:
        async with closing(open_store(src, src_token, read_only=True)) as s, closing(open_store(dst, dst_token)) as d:
            from rich.progress import Progress, SpinnerColumn, TextColumn

            from .._migrate import migrate
            from .._migrate_workers import migrate_worker

            bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), console=err(), disable=quiet)
            with bar:
                task = bar.add_task("migrating", total=None)

                def shown(report: MigrationReport) -> None:
                    bar.update(
                        task,
                        description=f"{report.examined} examined: {report.copied} copied, {report.skipped} skipped, "
                        f"{len(report.differing) + len(report.missing)} differing/missing, {len(report.failed)} failed",
                    )

                if worker:
                    return await migrate_worker(
                        s,
                        d,
                        prefix,
                        lease_seconds=lease_seconds,
                        range_size=range_size,
                        job=job,
                        concurrency=jobs,
                        ops_per_second=ops,
                        bytes_per_second=rate,
                        schema_version=schema_version,
                        upgrade=function,
                        metrics=registry,
                        on_progress=shown,
                    )
                return await migrate(
                    s,
                    d,
                    prefix,
                    dry_run=dry_run,
                    verify_only=verify_only,
                    concurrency=jobs,
                    ops_per_second=ops,
                    bytes_per_second=rate,
                    schema_version=schema_version,
                    upgrade=function,
                    job=job,
                    metrics=registry,
                    on_progress=shown,
                )

    report = run(work)
    if registry is not None and metrics_file:
        from prometheus_client import write_to_textfile

        write_to_textfile(metrics_file, registry)
    typer.echo(json.dumps(report.as_dict(), ensure_ascii=False) if as_json else report.text())
    if report.failed:
        raise typer.Exit(1)
    if report.missing or report.differing:
        raise typer.Exit(9)
