"""One small adapter per client under test (adapted from the team's peer harness).

Every adapter implements ``put``/``get``/``list`` for 4 KiB objects and listing,
and ``put_file``/``get_file`` for the large object (streaming where the library
can). Libraries are imported inside ``open()`` so a worker process only loads
the client it measures. ``group`` names the durability class an adapter is
compared in: ``"nosync"`` (page cache only), ``"fsync"`` (data and directory
entry on disk before the call returns) or ``"mem"`` (in-process store).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024  # copy buffer where the caller picks the chunk size
CONTENT_TYPE = "application/octet-stream"
META = {"owner": "bench", "n": "1"}  # the custom metadata of the "-meta" clients' PUTs

REGISTRY: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    REGISTRY[cls.name] = cls
    return cls


class Adapter:
    name = ""
    label = ""
    backend = "fs"  # "fs": gets a fresh directory cfg["root"]; "mem": in-process store
    group = "nosync"  # durability class, see the module docstring
    transfer = "whole bytes"
    workloads: tuple[str, ...] = ("small", "large", "list")

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg

    @property
    def root(self) -> str:
        return str(self.cfg["root"])

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> Any:
        raise NotImplementedError

    async def list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    async def put_file(self, key: str, path: str) -> None:
        await self.put(key, _read_whole(path))

    async def get_file(self, key: str, path: str) -> None:
        _write_whole(path, await self.get(key))


def _read_whole(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _write_whole(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


def _open_sink(path: str) -> Any:
    """Destination file of a streamed download; chunks are written with plain ``write``."""
    return open(path, "wb", buffering=0)


# ============================================================ plain-Python baseline

_tmp_ids = itertools.count()


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _put_atomic(path: str, data: bytes, fsync: bool) -> None:
    """Write a temp file beside ``path`` and rename it into place (fsync file + dir if asked)."""
    tmp = f"{path}.tmp{next(_tmp_ids)}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with open(fd, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(os.path.dirname(path))


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _copy(src: str, dst: str, fsync: bool = False) -> None:
    """8 MiB ``readinto``/``write`` loop with one reused buffer."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fi, open(dst, "wb", buffering=0) as fo:
        while n := fi.readinto(buf):
            fo.write(view[:n])
        if fsync:
            os.fsync(fo.fileno())


def _copy_atomic(src: str, dst: str, fsync: bool) -> None:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    tmp = f"{dst}.tmp{next(_tmp_ids)}"
    _copy(src, tmp, fsync)
    os.replace(tmp, dst)
    if fsync:
        _fsync_dir(os.path.dirname(dst))


def _walk(top: str) -> list[str]:
    out: list[str] = []
    stack = [top]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    out.append(e.path)
    return out


@register
class Baseline(Adapter):
    name = "base"
    label = "plain open/write + rename in to_thread (baseline)"
    transfer = "8 MiB readinto/write loop in one thread (to temp + rename)"
    fsync = False

    def _p(self, key: str) -> str:
        return os.path.join(self.root, key)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(_put_atomic, self._p(key), data, self.fsync)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(_read_file, self._p(key))

    async def list(self, prefix: str) -> list[str]:
        return await asyncio.to_thread(_walk, self._p(prefix))

    async def put_file(self, key: str, path: str) -> None:
        await asyncio.to_thread(_copy_atomic, path, self._p(key), self.fsync)

    async def get_file(self, key: str, path: str) -> None:
        await asyncio.to_thread(_copy, self._p(key), path)


@register
class BaselineFsync(Baseline):
    name = "base-fsync"
    label = "plain open/write + fsync + rename + fsync dir (baseline, fsync)"
    transfer = "8 MiB readinto/write loop to temp, fsync, rename, fsync dir"
    group = "fsync"
    fsync = True
    workloads = ("small", "large")


# ============================================================ unistore


@register
class UnistoreLocal(Adapter):
    name = "unistore-local"
    label = "unistore LocalBackend(fsync=False)"
    transfer = "put_object(key, Path) / async for chunk in open(key) (1 MiB chunks)"
    fsync = False

    async def open(self) -> None:
        from unistore import LocalBackend

        self.b = LocalBackend(base_path=self.root, fsync=self.fsync)

    async def close(self) -> None:
        await self.b.aclose()

    async def put(self, key: str, data: bytes) -> None:
        await self.b.put_object(key, data)

    async def get(self, key: str) -> bytes:
        return await self.b.get(key)  # the spec's get(): today ``(await open(key)).read()``

    async def list(self, prefix: str) -> list[str]:
        return await self.b.list_keys(prefix, limit=10**6)

    async def put_file(self, key: str, path: str) -> None:
        await self.b.put_object(key, Path(path))

    async def get_file(self, key: str, path: str) -> None:
        with _open_sink(path) as f:
            async with await self.b.open(key) as dl:
                async for chunk in dl:
                    f.write(chunk)


@register
class UnistoreLocalFsync(UnistoreLocal):
    name = "unistore-local-fsync"
    label = "unistore LocalBackend(fsync=True)"
    group = "fsync"
    fsync = True
    workloads = ("small", "large")


@register
class UnistoreLocalMeta(UnistoreLocal):
    name = "unistore-local-meta"
    label = "unistore LocalBackend(fsync=False), PUT with metadata"
    workloads = ("small",)

    async def put(self, key: str, data: bytes) -> None:
        await self.b.put_object(key, data, content_type="text/x-bench", metadata=META)


@register
class UnistoreLocalFsyncMeta(UnistoreLocalMeta):
    name = "unistore-local-fsync-meta"
    label = "unistore LocalBackend(fsync=True), PUT with metadata"
    group = "fsync"
    fsync = True


@register
class UnistoreMemory(UnistoreLocal):
    name = "unistore-mem"
    label = "unistore MemoryBackend"
    backend = "mem"
    group = "mem"

    async def open(self) -> None:
        from unistore import MemoryBackend

        self.b = MemoryBackend()


# ============================================================ obstore


@register
class ObstoreLocal(Adapter):
    name = "obstore-local"
    label = "obstore LocalStore"
    transfer = "put_async(Path) / get_async().stream(min_chunk_size=8 MiB)"

    async def open(self) -> None:
        from obstore.store import LocalStore

        self.store: Any = LocalStore(self.root, mkdir=True)

    async def put(self, key: str, data: bytes) -> None:
        import obstore

        await obstore.put_async(self.store, key, data)

    async def get(self, key: str) -> Any:
        import obstore

        r = await obstore.get_async(self.store, key)
        return await r.bytes_async()

    async def list(self, prefix: str) -> list[str]:
        import obstore

        keys: list[str] = []
        async for chunk in obstore.list(self.store, prefix=prefix):
            keys.extend(m["path"] for m in chunk)
        return keys

    async def put_file(self, key: str, path: str) -> None:
        import obstore

        await obstore.put_async(self.store, key, Path(path))

    async def get_file(self, key: str, path: str) -> None:
        import obstore

        r = await obstore.get_async(self.store, key)
        with _open_sink(path) as f:
            async for chunk in r.stream(min_chunk_size=CHUNK):
                f.write(chunk)


@register
class ObstoreMemory(ObstoreLocal):
    name = "obstore-mem"
    label = "obstore MemoryStore"
    backend = "mem"
    group = "mem"

    async def open(self) -> None:
        from obstore.store import MemoryStore

        self.store = MemoryStore()


# ============================================================ svc-infra 1.22.2


@register
class SvcInfraLocal(Adapter):
    name = "svc-infra-local"
    label = "svc-infra LocalBackend"
    transfer = "whole bytes (no streaming API)"

    async def open(self) -> None:
        from svc_infra.storage.backends import LocalBackend

        self.b: Any = LocalBackend(base_path=self.root, base_url="http://localhost/files")

    async def put(self, key: str, data: bytes) -> None:
        await self.b.put(key, data, CONTENT_TYPE)

    async def get(self, key: str) -> bytes:
        data: bytes = await self.b.get(key)
        return data

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = await self.b.list_keys(prefix=prefix, limit=10**6)
        return keys


@register
class SvcInfraMemory(SvcInfraLocal):
    name = "svc-infra-mem"
    label = "svc-infra MemoryBackend(max_size=1 TiB)"
    backend = "mem"
    group = "mem"

    async def open(self) -> None:
        from svc_infra.storage.backends import MemoryBackend

        # The default quota (100 MB) would refuse the 1 GiB object.
        self.b = MemoryBackend(max_size=1 << 40)


# ============================================================ calibration

_NOOP = bytes(4096)


@register
class Noop(Adapter):
    """The harness loop alone: its CPU/op is the floor every client pays."""

    name = "noop"
    label = "no-op (harness overhead)"
    backend = "mem"
    group = "mem"
    workloads = ("small",)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.sleep(0)

    async def get(self, key: str) -> bytes:
        await asyncio.sleep(0)
        return _NOOP
