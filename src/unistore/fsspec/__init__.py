"""fsspec access to any unistore store: ``UnistoreFileSystem`` and the ``unistore…`` protocols.

Needs the ``fsspec`` extra (``pip install unistore[fsspec]``).
"""

from __future__ import annotations

from ._filesystem import (
    PROTOCOLS,
    UnistoreFile,
    UnistoreFileSystem,
    UnistoreStreamedFile,
    register_store,
    unregister_store,
)

__all__ = [
    "PROTOCOLS",
    "UnistoreFile",
    "UnistoreFileSystem",
    "UnistoreStreamedFile",
    "register_store",
    "unregister_store",
]
