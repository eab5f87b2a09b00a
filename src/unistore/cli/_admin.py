"""Running the service, issuing tokens, and the named stores file."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import typer

from .._errors import ConfigurationError, NotFoundError
from ._common import app, run
from ._refs import NamedStore, check_name, config_path, load_stores, save_stores

__all__ = ["stores_app", "version_callback"]

stores_app = typer.Typer(
    help="Named stores (~/.config/unistore/stores.toml or $UNISTORE_CONFIG).", no_args_is_help=True
)
app.add_typer(stores_app, name="store")


def version_callback(value: bool) -> None:
    """``--version``: print the installed version and exit."""
    if value:
        try:
            typer.echo(f"unistore {version('unistore')}")
        except PackageNotFoundError:  # pragma: no cover - running from a source tree
            typer.echo("unistore (not installed)")
        raise typer.Exit()


@app.callback()
def _main(
    show_version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Store and serve files on any backend; run the unistore service."""


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to bind.")] = 8000,
    no_auth: Annotated[bool, typer.Option("--no-auth", help="No tokens (local development only).")] = False,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, help="Worker processes sharing the port and the store (default: env WEB_CONCURRENCY, else 1)."
        ),
    ] = None,
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
    from ..service.__main__ import serve as serve_forever

    timeouts = {"HEADER_TIMEOUT": header_timeout, "BODY_TIMEOUT": body_timeout, "BODY_DEADLINE": body_deadline}
    serve_forever(
        host,
        port,
        no_auth=no_auth,
        overrides={f"UNISTORE_{k}": str(v) for k, v in timeouts.items() if v is not None},
        workers=workers,
    )


@app.command("token")
def issue_token(
    actions: Annotated[str, typer.Option(help="Comma-separated: read,write,delete,metrics,admin.")] = "read",
    prefix: Annotated[str, typer.Option(help="Key prefix the token is restricted to.")] = "",
    expires_in: Annotated[int, typer.Option(min=1, help="Lifetime in seconds.")] = 3600,
    subject: Annotated[str, typer.Option(help="Who the token is for (logged, rate-limited by).")] = "client",
    secret: Annotated[
        str | None, typer.Option(envvar="UNISTORE_SECRET", help="The service secret (UNISTORE_SECRET).")
    ] = None,
) -> None:
    """Issue a scoped token signed with the service secret."""

    async def work() -> None:
        from ..service._auth import TokenAuthority

        if not secret:
            raise ConfigurationError("no secret: set UNISTORE_SECRET or pass --secret")
        authority = TokenAuthority(secret.encode())
        acts = [a.strip() for a in actions.split(",") if a.strip()]
        typer.echo(authority.issue(acts, prefix=prefix, expires_in=expires_in, subject=subject))

    run(work)


@stores_app.command("add")
def store_add(
    name: str,
    url: str,
    token: Annotated[str | None, typer.Option(help="Bearer token for an http(s) store.")] = None,
) -> None:
    """Save the store URL under NAME (use it as --store NAME or NAME:key)."""

    async def work() -> None:
        check_name(name)
        scheme = url.partition("://")[0].lower()
        if scheme not in ("file", "memory", "s3", "gs", "cloudinary", "http", "https"):
            raise ConfigurationError(f"unsupported storage URL scheme {scheme!r} in {url!r}")
        stores = load_stores()
        stores[name] = NamedStore(name, url, token)
        typer.echo(f"saved {name} in {save_stores(stores)}")

    run(work)


@stores_app.command("list")
def store_list() -> None:
    """List the named stores (tokens are not shown)."""

    async def work() -> None:
        for store in sorted(load_stores().values(), key=lambda s: s.name):
            typer.echo(f"{store.name}\t{store.url}" + ("\t(token)" if store.token else ""))

    run(work)


@stores_app.command("rm")
def store_rm(name: str) -> None:
    """Forget the store NAME."""

    async def work() -> None:
        stores = load_stores()
        if stores.pop(name, None) is None:
            raise NotFoundError(f"no store named {name!r} in {config_path()}")
        save_stores(stores)
        typer.echo(f"removed {name}")

    run(work)
