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

import sys
from typing import Any

try:  # the [cli] extra; without it the console script says how to install it (exit 8, configuration)
    import rich
    import typer
except ModuleNotFoundError as exc:
    _MISSING: str | None = exc.name or "typer"
else:
    _MISSING = None
    del rich, typer

if _MISSING is None:
    from . import _admin, _cost, _keys, _lifecycle, _migrate, _objects, _trees
    from ._common import EXIT_CODES, app, exit_code

    # imported for the commands they register on ``app``
    _COMMANDS = (_admin, _cost, _keys, _lifecycle, _migrate, _objects, _trees)

__all__ = ["EXIT_CODES", "app", "exit_code", "main"]


def main() -> Any:
    """The ``unistore`` console script."""
    if _MISSING is not None:
        print(
            f"unistore: the command line needs the {_MISSING!r} package: pip install 'unistore[cli]'",
            file=sys.stderr,
        )
        raise SystemExit(8)
    return app()
