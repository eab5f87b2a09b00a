"""``unistore --version``'s line, without typer or the commands (see :func:`unistore.cli.main`)."""

from __future__ import annotations

__all__ = ["version_line"]


def version_line() -> str:
    """``unistore X.Y.Z``: the package's version (the installed distribution's: a test checks they agree)."""
    from .. import __version__

    return f"unistore {__version__}"
