"""Test support: the conformance suite every backend passes, and a server helper.

>>> from unistore.testing import BackendConformance
>>> class TestMyBackend(BackendConformance):
...     @pytest.fixture
...     def backend(self): ...
"""

from ._chaos import chaos_stack, no_sleep
from ._conformance import INVALID_KEYS, TRICKY_KEYS, BackendConformance
from ._server import free_port, running_server

__all__ = [
    "BackendConformance",
    "INVALID_KEYS",
    "TRICKY_KEYS",
    "chaos_stack",
    "free_port",
    "no_sleep",
    "running_server",
]
