"""A backend's optional dependencies, checked when it is created (not at its first request)."""

from __future__ import annotations

import importlib.util
import sys

from .._errors import ConfigurationError

__all__ = ["require_extra"]


def _absent(module: str) -> bool:
    """Whether ``module`` cannot be imported (checked without importing it)."""
    if module in sys.modules:
        return sys.modules[module] is None
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def require_extra(backend: str, extra: str, *modules: str) -> None:
    """Raise :class:`ConfigurationError` naming ``extra`` if any of ``modules`` is not installed."""
    missing = [name for name in modules if _absent(name)]
    if missing:
        raise ConfigurationError(
            f"{backend} needs the [{extra}] extra ({', '.join(missing)} missing): pip install 'unistore[{extra}]'"
        )
