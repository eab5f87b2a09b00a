"""Every module keeps an exact, sorted ``__all__``; the package ships ``py.typed``."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import pytest

import unistore

MODULES = sorted(
    m.name for m in pkgutil.walk_packages(unistore.__path__, "unistore.") if not m.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_module_all_is_sorted_unique_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} has no __all__"
    assert list(exported) == sorted(exported), f"{name}.__all__ is not sorted"
    assert len(set(exported)) == len(exported)
    for attr in exported:
        assert getattr(module, attr) is not None, f"{name}.{attr}"


def test_public_names_defined_in_private_modules_are_reexported() -> None:
    private = ["unistore._base", "unistore._errors", "unistore._keys", "unistore._signing"]
    for name in private:
        module = importlib.import_module(name)
        for attr in module.__all__:
            if attr[0].isupper() and attr.endswith(("Error", "Backend")):
                assert attr in unistore.__all__, f"{name}.{attr} is not re-exported"


def test_py_typed_marker_is_shipped() -> None:
    assert (Path(unistore.__file__).parent / "py.typed").is_file()


@pytest.mark.parametrize(
    ("module", "package"),
    [
        ("unistore._batch", "unistore"),
        ("unistore._bluegreen", "unistore"),
        ("unistore.layers._dualwrite", "unistore.layers"),
        ("unistore.layers._fallback", "unistore.layers"),
        ("unistore.layers._replicate", "unistore.layers"),
    ],
)
def test_data_movement_helpers_are_reexported(module: str, package: str) -> None:
    """What the moving-data page imports comes from the packages, not the private modules."""
    names = importlib.import_module(module).__all__
    exported = importlib.import_module(package).__all__
    assert names and all(n in exported for n in names)
    assert "OutboxEntry" in importlib.import_module("unistore.layers").__all__


def test_every_layer_class_is_exported_from_unistore_layers() -> None:
    import unistore.layers
    from unistore.layers import Layer

    for info in pkgutil.iter_modules(unistore.layers.__path__, "unistore.layers."):
        module = importlib.import_module(info.name)
        for attr in module.__all__:
            value = getattr(module, attr)
            if isinstance(value, type) and issubclass(value, Layer):
                assert attr in unistore.layers.__all__, f"{info.name}.{attr} is not exported by unistore.layers"
    for name in ("Dedup", "DedupObjectInfo", "SweepReport"):
        assert name in unistore.layers.__all__
