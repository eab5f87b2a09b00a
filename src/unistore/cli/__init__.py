"""``unistore``: the command line over any store (typer + rich).

A store is a URL (``--store``, or ``UNISTORE_STORE``; else auto-detected from
``STORAGE_*`` like ``easy_storage()``, and an error when nothing is configured):
``file:///srv/files``, ``s3://bucket``, ``http://127.0.0.1:8000`` (a unistore
service; token from ``--token`` or ``UNISTORE_TOKEN``)... or the name of a store
saved with ``unistore store add NAME URL``. ``cp``/``mv``/``sync`` address an
object as ``STORE_URL#KEY``, ``NAME:KEY`` or by its own URL (``s3://bucket/key``,
``gs://bucket/key``, ``http(s)://HOST/v1/objects/KEY``), a local file by its path
or ``file:///path`` (a directory means ``dir/<basename>``), stdin/stdout as ``-``.

``get`` and ``put`` resume interrupted transfers when rerun (see
:mod:`unistore.cli._transfer`); ``cp -r``, ``sync`` and ``mv -r`` move whole trees
with several transfers at once, skipping what is already there unchanged (see
:mod:`unistore.cli._tree`).

Exit codes, one per error family (see :data:`EXIT_CODES`): 0 success, 2 usage,
3 not found, 4 permission denied, 5 precondition failed, 6 invalid input,
7 unavailable or throttled (retry later), 8 configuration, 9 integrity,
10 quota exceeded, 11 unsupported, 1 any other storage error, 130 interrupted.
Expected failures print one line on stderr, never a traceback.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._common import EXIT_CODES, app, exit_code

__all__ = ["EXIT_CODES", "app", "exit_code", "main"]

_COMMANDS = ("_admin", "_cost", "_keys", "_lifecycle", "_migrate", "_objects", "_trees")
"""The modules whose commands register on ``app`` when they are imported."""


def __getattr__(name: str) -> Any:
    # typer, rich and the commands are imported on first use: `unistore --version` needs none of them
    if name in ("EXIT_CODES", "app", "exit_code"):
        from . import _common

        for module in _COMMANDS:
            importlib.import_module(f"{__name__}.{module}")
        value = getattr(_common, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _missing() -> str | None:
    """The [cli] extra's package that is not installed, if any (checked without importing it)."""
    for name in ("typer", "rich"):
        try:
            if importlib.util.find_spec(name) is None:
                return name
        except ImportError:  # a finder that refuses it outright
            return name
    return None


def main() -> Any:
    """The ``unistore`` console script."""
    if sys.argv[1:] == ["--version"]:  # answered before typer and the commands are imported
        from ._version import version_line

        print(version_line())
        raise SystemExit(0)
    missing = _missing()
    if missing is not None:  # the [cli] extra: say how to install it (exit 8, configuration)
        print(
            f"unistore: the command line needs the {missing!r} package: pip install 'unistore[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(8)
    return __getattr__("app")()
