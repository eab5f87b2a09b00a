"""Running the service, issuing tokens, and the named stores file."""

from __future__ import annotations

from typing import Annotated

import typer

from .._errors import ConfigurationError, InvalidArgumentError, NotFoundError, UnsupportedError
from ._common import StoreOpt, TokenOpt, app, closing, open_store, run
from ._refs import NamedStore, check_name, config_path, load_stores, save_stores
from ._version import version_line

__all__ = ["parse_duration", "stores_app", "version_callback"]

stores_app = typer.Typer(
    help="Named stores (~/.config/unistore/stores.toml or $UNISTORE_CONFIG).", no_args_is_help=True
)
app.add_typer(stores_app, name="store")


def version_callback(value: bool) -> None:
    """``--version``: print the installed version and exit."""
    if value:
        typer.echo(version_line())
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
    cpu_affinity: Annotated[
        str | None,
        typer.Option(
            envvar="UNISTORE_CPU_AFFINITY",
            help="auto: pin each of several workers to one CPU (as nginx's worker_cpu_affinity auto); none"
            " (the default): the scheduler places them.",
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
        cpu_affinity=cpu_affinity,
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


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> int:
    """Seconds in a duration such as ``8h``, ``30m``, ``2d``, ``45s`` or ``600`` (400 otherwise)."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:], 0)
    number = value[:-1] if unit else value
    if not number.isdigit() or int(number) < 1:
        raise InvalidArgumentError(f"a duration is a whole number with s, m, h or d (8h, 30m, 2d), not {text!r}")
    return int(number) * (unit or 1)


@app.command("ui-link")
def ui_link(
    url: Annotated[str, typer.Option(help="The service's base URL.")] = "http://127.0.0.1:8000",
    prefix: Annotated[str, typer.Option(help="Key prefix the link's token is restricted to.")] = "",
    expires: Annotated[str, typer.Option(help="Lifetime: 8h, 30m, 2d or seconds.")] = "8h",
    actions: Annotated[
        str, typer.Option(help="Comma-separated: read,write,delete,metrics,admin.")
    ] = "read,write,delete",
    subject: Annotated[str, typer.Option(help="Who the link is for (logged, rate-limited by).")] = "ui",
    secret: Annotated[
        str | None, typer.Option(envvar="UNISTORE_SECRET", help="The service secret (UNISTORE_SECRET).")
    ] = None,
    token: TokenOpt = None,
) -> None:
    """Print a link that opens the web UI with a fresh scoped token: URL/ui/#token=TOKEN.

    The token is minted with the secret, or without one by the service itself
    (``POST /v1/tokens``) for an ``admin`` ``--token``. It travels in the URL's
    fragment, which browsers never send to the server, so it stays out of logs.
    """

    async def work() -> None:
        acts = [a.strip() for a in actions.split(",") if a.strip()]
        lifetime = parse_duration(expires)
        base = url.rstrip("/")
        if secret:
            from ..service._auth import TokenAuthority

            minted = TokenAuthority(secret.encode()).issue(acts, prefix=prefix, expires_in=lifetime, subject=subject)
        elif token:
            minted = await _token_from_service(base, token, acts, prefix, lifetime, subject)
        else:
            raise ConfigurationError("no secret and no admin token: set UNISTORE_SECRET or pass --token")
        typer.echo(f"{base}/ui/#token={minted}")

    run(work)


async def _token_from_service(
    base: str, admin: str, actions: list[str], prefix: str, expires_in: int, subject: str
) -> str:
    """A token minted by the service at ``base`` (``POST /v1/tokens``) for the ``admin`` token."""
    import httpx

    from ..backends.http._wire import error_from_response, translate

    body = {"actions": actions, "prefix": prefix, "expires_in": expires_in, "subject": subject}
    with translate(key=None, backend="HttpBackend", operation="token"):
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(f"{base}/v1/tokens", json=body, headers={"authorization": f"Bearer {admin}"})
    if r.status_code != 201:
        raise error_from_response(r, r.content, key=None, backend="HttpBackend", operation="token")
    return str(r.json()["token"])


@app.command("ui-cors")
def ui_cors(
    origins: Annotated[list[str], typer.Argument(help="The service's origin(s), scheme://host[:port].")],
    store: StoreOpt = None,
    max_age: Annotated[int, typer.Option(min=0, max=86400, help="Seconds browsers cache the preflight.")] = 3600,
) -> None:
    """Let the web UI on ORIGINS send upload parts straight to the S3 bucket (sets its CORS rule).

    Replaces the bucket's whole CORS configuration with one rule: the origins,
    PUT/GET/HEAD, any request header, ETag exposed.
    """

    async def work() -> None:
        from ..layers import Layer

        async with closing(open_store(store)) as backend:
            inner = backend
            while isinstance(inner, Layer):
                inner = inner.inner
            allow = getattr(inner, "allow_browser_uploads", None)
            if allow is None:
                raise UnsupportedError(f"{inner.name} has no bucket CORS: only S3 stores take direct browser uploads")
            await allow(origins, max_age=max_age)
            typer.echo("browser uploads allowed from " + ", ".join(await inner.cors_origins()))  # type: ignore[attr-defined]

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
