"""Test support: the conformance suite every backend passes, real S3 servers and Redis, and a server helper.

>>> from unistore.testing import BackendConformance
>>> class TestMyBackend(BackendConformance):
...     @pytest.fixture
...     def backend(self): ...
"""

from ._chaos import chaos_stack, no_sleep
from ._conformance import INVALID_KEYS, TRICKY_KEYS, BackendConformance
from ._redis import RedisServer, redis_server
from ._s3servers import S3Server, moto_server, seaweedfs
from ._server import free_port, running_server

__all__ = [
    "BackendConformance",
    "INVALID_KEYS",
    "RedisServer",
    "S3Server",
    "TRICKY_KEYS",
    "chaos_stack",
    "free_port",
    "moto_server",
    "no_sleep",
    "redis_server",
    "running_server",
    "seaweedfs",
]
