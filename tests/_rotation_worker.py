"""A rewrap job in its own process, for tests/test_rotation_load.py (which SIGKILLs it).

Usage: ``python _rotation_worker.py STORE_JSON LOG PREFIX RATE``. Every metadata update the job
makes is appended to LOG (one key a line) once the store has accepted it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from typing import Any

from unistore import LocalBackend
from unistore._base import StorageBackend
from unistore._types import ObjectInfo
from unistore.encryption import Encrypt, keyring_from_env, rewrap
from unistore.layers import Layer


class LogWrites(Layer):
    def __init__(self, inner: StorageBackend, fd: int) -> None:
        super().__init__(inner)
        self.fd = fd

    async def replace_metadata(self, key: str, metadata: Any, *, if_match: str | None = None) -> ObjectInfo:
        info = await self.inner.replace_metadata(key, metadata, if_match=if_match)
        os.write(self.fd, key.encode() + b"\n")  # O_APPEND: one atomic line, kept by the kernel on SIGKILL
        return info

    async def put_object(self, key: str, body: Any, **kw: Any) -> ObjectInfo:
        info = await self.inner.put_object(key, body, **kw)
        if not key.startswith("_unistore/"):
            os.write(self.fd, b"PUT " + key.encode() + b"\n")
        return info


def open_store(spec: dict[str, str]) -> StorageBackend:
    if spec["kind"] == "local":
        return LocalBackend(base_path=spec["path"], fsync=False)
    from unistore.backends.s3 import S3Backend

    return S3Backend(
        bucket=spec["bucket"],
        endpoint=spec["endpoint"],
        region="us-east-1",
        access_key=spec["access_key"],
        secret_key=spec["secret_key"],
    )


async def main(spec: dict[str, str], log: str, prefix: str, rate: float) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    raw = open_store(spec)
    try:
        report = await rewrap(Encrypt(LogWrites(raw, fd), keyring_from_env()), prefix, rate=rate, metrics=False)
        print(json.dumps({"counts": dict(report.counts), "runs": report.runs}), flush=True)
    finally:
        await raw.aclose()
        os.close(fd)


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])))
