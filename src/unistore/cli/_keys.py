"""``unistore keys``: rotate an encrypted store's keys, report which KEK each object uses, retire a KEK.

The keyring comes from the environment (``keyring_from_env``: ``UNISTORE_KEYRING*``,
``UNISTORE_AWS_KMS_*`` or ``UNISTORE_GCP_KMS_*``); STORE is the store holding the encrypted
objects (a URL or a named store), opened without encryption and wrapped in ``Encrypt``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from typing import Annotated, Any, Literal

import typer

from .._errors import InvalidArgumentError
from ._common import QuietOpt, app, open_store, run
from ._transfer import note

__all__ = ["keys_app"]

keys_app = typer.Typer(
    help="Key rotation of an encrypted store (keyring from UNISTORE_KEYRING*, UNISTORE_AWS_KMS_* or "
    "UNISTORE_GCP_KMS_*).",
    no_args_is_help=True,
)
app.add_typer(keys_app, name="keys")

StoreArg = Annotated[str, typer.Argument(help="The store holding the encrypted objects (URL or name).")]
PrefixArg = Annotated[str, typer.Argument(help="Only keys starting with this prefix.")]


async def _close(keyring: Any) -> None:
    close = getattr(keyring, "aclose", None)
    if close is not None:
        await close()


@keys_app.command("rotate")
def rotate_command(
    store: StoreArg,
    prefix: PrefixArg = "",
    rewrap_: Annotated[
        bool, typer.Option("--rewrap", help="Rewrap data keys under the primary KEK (metadata only).")
    ] = False,
    reencrypt_: Annotated[
        bool, typer.Option("--reencrypt", help="New data keys: rewrite every object under the primary KEK.")
    ] = False,
    rate: Annotated[float | None, typer.Option(min=0.001, help="At most this many objects per second.")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="Objects in flight.")] = 8,
    written_before: Annotated[
        str | None,
        typer.Option(
            help="--reencrypt: leave objects under the primary KEK written at or after this ISO 8601 time "
            "(default: when the job first started)."
        ),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Move every object under PREFIX to the keyring's primary KEK; resumes a killed run."""
    if rewrap_ == reencrypt_:
        note("give exactly one of --rewrap and --reencrypt")
        raise typer.Exit(2)
    cutoff = None
    if written_before is not None:
        try:
            cutoff = datetime.fromisoformat(written_before.replace("Z", "+00:00"))
        except ValueError:
            note(f"--written-before must be an ISO 8601 time, not {written_before!r}")
            raise typer.Exit(6) from None
    mode: Literal["rewrap", "reencrypt"] = "rewrap" if rewrap_ else "reencrypt"

    async def work() -> int:
        from ..encryption import Encrypt, RotationProgress, keyring_from_env, rotate

        keyring = keyring_from_env()
        raw = open_store(store)
        last = [time.monotonic()]

        def show(p: RotationProgress) -> None:
            now = time.monotonic()
            if not quiet and now - last[0] >= 1.0:
                last[0] = now
                done = sum(p.counts.values())
                rotated = p.counts.get("rewrapped", 0) + p.counts.get("reencrypted", 0)
                rate_now = done / max(p.elapsed, 1e-9)
                note(f"{mode}: {done} objects looked at, {rotated} rotated, {rate_now:.0f}/s, at {p.key!r}")

        try:
            report = await rotate(
                Encrypt(raw, keyring),
                mode,
                prefix,
                rate=rate,
                concurrency=concurrency,
                progress=show,
                written_before=cutoff,
            )
        finally:
            await raw.aclose()
            await _close(keyring)
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(report.counts.items())) or "no objects"
        typer.echo(f"{mode} to KEK {report.target!r}: {counts} ({report.seconds:.1f} s, run {report.runs})")
        for key, why in report.failed:
            note(f"not rotated: {key!r}: {why}")
        if report.counts.get("raced"):
            note(f"{report.counts['raced']} object(s) kept changing under live writers: run the job again")
        return 9 if report.failed else 0

    code = run(work)
    if code:
        raise typer.Exit(code)


@keys_app.command("usage")
def usage_command(
    store: StoreArg,
    prefix: PrefixArg = "",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
) -> None:
    """Objects under PREFIX per KEK id (from their metadata; nothing is decrypted)."""

    async def work() -> None:
        from ..encryption import key_usage

        raw = open_store(store, read_only=True)
        try:
            usage = await key_usage(raw, prefix)
        finally:
            await raw.aclose()
        if as_json:
            doc = {
                "keys": dict(usage.counts),
                "samples": {k: list(v) for k, v in usage.samples.items()},
                "plain": usage.plain,
                "unreadable": list(usage.unreadable),
            }
            typer.echo(json.dumps(doc, indent=2, ensure_ascii=False))
            return
        for key_id, count in sorted(usage.counts.items()):
            typer.echo(f"{count}\t{key_id}")
        if usage.plain:
            typer.echo(f"{usage.plain}\t(not encrypted)")
        if usage.unreadable:
            typer.echo(f"{len(usage.unreadable)}\t(malformed encryption metadata)")

    run(work)


@keys_app.command("retire")
def retire_command(
    key_id: Annotated[str, typer.Argument(help="The KEK id to retire.")],
    store: StoreArg,
    prefix: Annotated[str, typer.Option(help="Only check keys starting with this prefix.")] = "",
) -> None:
    """Check that no object still uses KEY_ID, so it can be removed from the keyring (exit 5 naming them if some do)."""
    if not key_id.strip():
        raise InvalidArgumentError("KEY_ID is empty")

    async def work() -> None:
        from ..encryption import Encrypt, keyring_from_env, retire_key

        keyring = keyring_from_env()
        raw = open_store(store, read_only=True)
        try:
            usage = await retire_key(Encrypt(raw, keyring), key_id, prefix)
        finally:
            await raw.aclose()
            await _close(keyring)
        total = sum(usage.counts.values())
        typer.echo(f"no object uses KEK {key_id!r} ({total} encrypted objects checked): remove it from the keyring")

    run(work)
