"""``unistore cost``: a month's bill on every provider, side by side, and the one to use."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Annotated, Any

import typer

from .._errors import UnavailableError
from ._common import TokenOpt, app, closing, open_store, run
from ._transfer import note

__all__ = ["cost"]

GbOpt = Annotated[float | None, typer.Option(min=0, help="GB a month (default: from the metrics, else 0).")]
CountOpt = Annotated[float | None, typer.Option(min=0, help="Requests a month (default: from the metrics, else 0).")]


async def _scrape(url: str, token: str | None) -> str:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        raise UnavailableError(f"cannot reach {url}: {exc}") from exc
    if r.status_code != 200:
        raise UnavailableError(f"{url} answered {r.status_code}")
    return r.text


def _gb(value: float | None) -> float | None:
    from ..cost import GB

    return None if value is None else value * GB


@app.command()
def cost(
    scan: Annotated[str | None, typer.Option("--scan", help="Store to list for bytes and objects stored.")] = None,
    from_metrics: Annotated[
        str | None, typer.Option("--from-metrics", help="URL of a /metrics page of Observe's metrics.")
    ] = None,
    month: Annotated[str | None, typer.Option(help="YYYY-MM to project (default: this month).")] = None,
    prices: Annotated[
        str | None,
        typer.Option(
            "--prices",
            envvar="UNISTORE_PRICES",
            help="Price table (TOML) whose entries override the packaged ones, field by field.",
        ),
    ] = None,
    stored_gb: GbOpt = None,
    egress_gb: GbOpt = None,
    deleted_gb: GbOpt = None,
    deleted_age_days: Annotated[float, typer.Option(min=0, help="Average age of deleted data, days.")] = 30.0,
    puts: CountOpt = None,
    gets: CountOpt = None,
    lists: CountOpt = None,
    deletes: CountOpt = None,
    access: Annotated[str | None, typer.Option(help="hot, warm or cold (default: from the egress and reads).")] = None,
    backend: Annotated[str | None, typer.Option(help="Only this backend's metrics (default: all).")] = None,
    window: Annotated[
        float | None, typer.Option(min=1, help="Seconds the metrics counters cover (default: process uptime).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    token: TokenOpt = None,
    metrics_token: Annotated[
        str | None, typer.Option(help="Bearer token for --from-metrics when it differs from --token.")
    ] = None,
) -> None:
    """Project a month's storage bill on every provider from a store's listing (--scan), a
    service's metrics (--from-metrics), or both (stored volume from the listing, requests and
    egress from the metrics), and recommend one."""
    from ..cost import Access, Usage, load_prices, month_seconds, project_all, recommend, scan_usage, usage_from_metrics

    if access not in (None, "hot", "warm", "cold"):
        raise typer.BadParameter("must be hot, warm or cold", param_hint="--access")

    async def work() -> dict[str, Any]:
        table = load_prices(prices)
        seconds = month_seconds(month)
        usage, sources = Usage(), []
        if from_metrics is not None:
            text = await _scrape(from_metrics, metrics_token or token)
            usage, covered = usage_from_metrics(text, backend=backend, window=window, month=month)
            sources.append(f"metrics of {from_metrics} over {covered / 3600:,.1f} h")
            if scan is None and stored_gb is None and "unistore_stored_bytes{" not in text:
                note(
                    "no unistore_stored_bytes in the metrics (Observe.measure_usage never ran): storage counts as 0;"
                    " add --scan STORE or --stored-gb"
                )
        if scan is not None:  # with --from-metrics: what is stored from the listing, the rest from the metrics
            async with closing(open_store(scan, token, read_only=True)) as store:
                found = await scan_usage(store)
            fields = ("stored_bytes", "objects", "small_objects", "small_bytes")
            usage = replace(usage, **{f: getattr(found, f) for f in fields})
            sources.append(f"listing of {scan}")
        source = " and ".join(sources) or "assumptions only"
        given = {
            "stored_bytes": _gb(stored_gb),
            "egress_bytes": _gb(egress_gb),
            "deleted_bytes": _gb(deleted_gb),
            "puts": puts,
            "gets": gets,
            "lists": lists,
            "deletes": deletes,
        }
        usage = replace(usage, deleted_age_days=deleted_age_days, **{k: v for k, v in given.items() if v is not None})
        projections = project_all(usage, table)
        pick: Access | None = access  # type: ignore[assignment]
        choice = recommend(usage, projections, pick)
        return {
            "month_days": round(seconds / 86400),
            "source": source,
            "prices_checked": table.checked,
            "currency": table.currency,
            "usage": {**asdict(usage), "stored_gb": usage.stored_gb, "egress_gb": usage.egress_gb},
            "providers": [asdict(p) for p in projections],
            "recommendation": asdict(choice),
        }

    report = run(work)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    _show(report)


def _show(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    u = report["usage"]
    console = Console()
    console.print(
        f"{u['stored_gb']:,.2f} GB in {u['objects']:,.0f} objects; a {report['month_days']}-day month of"
        f" {u['puts']:,.0f} puts, {u['gets']:,.0f} gets, {u['lists']:,.0f} lists, {u['egress_gb']:,.2f} GB sent"
        f" ({report['source']}; prices of {report['prices_checked']}, {report['currency']})"
    )
    table = Table(title=f"A month's bill ({report['currency']}; * recommended)")
    table.add_column("provider", no_wrap=True)
    for money in ("storage", "requests", "egress", "other", "total"):
        table.add_column(money, justify="right", no_wrap=True)
    table.add_column("notes")
    pick = report["recommendation"]["key"]
    for p in report["providers"]:
        total = "n/a" if p["total"] is None else f"{p['total']:,.2f}"
        name = p["name"] + (" *" if p["key"] == pick else "")
        notes = "; ".join(p["notes"]) + ("" if p["fits"] else " (not a fit)")
        cells = [f"{p[c]:,.2f}" for c in ("storage", "requests", "egress", "other")]
        table.add_row(name, *cells, total, notes)
    console.print(table)
    r = report["recommendation"]
    console.print(f"Recommended: {r['name']} - {r['reason']}", soft_wrap=True)
