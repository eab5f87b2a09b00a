"""One small adapter class per S3 client under test (issue 3).

Every adapter gets ``cfg`` = {endpoint, bucket, region, access_key, secret_key,
list_limit} and implements:

    open() / close()          create / dispose the client (not timed)
    put(key, data)            store 4 KiB bytes
    get(key) -> buffer        fetch bytes (anything with len())
    list(prefix) -> list      every key under ``prefix`` (all pages, if the library can)
    put_file(key, path)       upload a local file (streaming / multipart where the library can)
    get_file(key, path)       download to a local file (streaming where the library can)

Every library is used through its public async API with its defaults, except where
a comment says otherwise.  Imports happen in ``open()`` so a worker process only
loads the client it measures.
"""

# ruff: noqa: ASYNC230  (the file writes mirror what a caller does with a stream)
from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

CHUNK = 8 * 1024 * 1024  # streaming chunk where the caller has to pick one
CONTENT_TYPE = "application/octet-stream"

REGISTRY: dict[str, type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    REGISTRY[cls.name] = cls
    return cls


class Adapter:
    name = ""
    label = ""
    group = ""  # "raw" (the reference for the targets), "unistore" or "peer"
    transfer = "whole bytes"
    workloads: tuple[str, ...] = ("small", "large", "list")
    small_ops_cap: int | None = None  # at most this many small ops (very slow clients)

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.bucket: str = cfg["bucket"]

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    async def get(self, key: str) -> Any:
        raise NotImplementedError

    async def list(self, prefix: str) -> list[Any]:
        raise NotImplementedError

    async def put_file(self, key: str, path: str) -> None:
        data = await asyncio.to_thread(Path(path).read_bytes)
        await self.put(key, data)

    async def get_file(self, key: str, path: str) -> None:
        data = await self.get(key)
        with open(path, "wb") as f:
            f.write(data)


# ------------------------------------------------------------------ unistore


@register
class UnistoreS3(Adapter):
    name = "unistore-s3"
    label = 'unistore S3Backend (checksum="md5", the default)'
    group = "unistore"
    transfer = "put_object(Path): multipart 8 MiB parts, 8 conc., read from file ranges / open() stream"
    checksum = "md5"

    async def open(self) -> None:
        from unistore.backends.s3 import S3Backend

        self.b = S3Backend(
            bucket=self.bucket,
            endpoint=self.cfg["endpoint"],
            access_key=self.cfg["access_key"],
            secret_key=self.cfg["secret_key"],
            region=self.cfg["region"],
            checksum=self.checksum,
        )

    async def close(self) -> None:
        await self.b.aclose()

    async def put(self, key: str, data: bytes) -> None:
        await self.b.put_object(key, data)

    async def get(self, key: str) -> Any:
        return await self.b.get(key)

    async def list(self, prefix: str) -> list[str]:
        return await self.b.list_keys(prefix, limit=10**6)

    async def put_file(self, key: str, path: str) -> None:
        await self.b.put_object(key, Path(path))

    async def get_file(self, key: str, path: str) -> None:
        with open(path, "wb") as f:
            async with await self.b.open(key) as dl:
                async for chunk in dl:
                    f.write(chunk)


@register
class UnistoreS3NoChecksum(UnistoreS3):
    name = "unistore-s3-nocsum"
    label = 'unistore S3Backend (checksum="none")'
    checksum = "none"


# ------------------------------------------------------------------ raw clients


@register
class Aioboto3Raw(Adapter):
    name = "aioboto3"
    label = "aioboto3 (raw client)"
    group = "raw"
    transfer = "upload_file/download_file (managed multipart, 8 MiB parts, 10 conc.)"

    async def open(self) -> None:
        import aioboto3
        from aiobotocore.config import AioConfig

        self._session = aioboto3.Session()
        # Pool raised from the default 10 so concurrency 32 is not capped by the pool.
        self._cm = self._session.client(
            "s3",
            endpoint_url=self.cfg["endpoint"],
            region_name=self.cfg["region"],
            aws_access_key_id=self.cfg["access_key"],
            aws_secret_access_key=self.cfg["secret_key"],
            config=AioConfig(max_pool_connections=64),
        )
        self.s3 = await self._cm.__aenter__()

    async def close(self) -> None:
        await self._cm.__aexit__(None, None, None)

    async def put(self, key: str, data: bytes) -> None:
        await self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)

    async def get(self, key: str) -> bytes:
        r = await self.s3.get_object(Bucket=self.bucket, Key=key)
        async with r["Body"] as body:
            return await body.read()

    async def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        async for page in pages:
            keys.extend(o["Key"] for o in page.get("Contents", ()))
        return keys

    async def put_file(self, key: str, path: str) -> None:
        await self.s3.upload_file(path, self.bucket, key)

    async def get_file(self, key: str, path: str) -> None:
        await self.s3.download_file(self.bucket, key, path)


@register
class ObstoreRaw(Adapter):
    name = "obstore"
    label = "obstore 0.12 S3Store (raw client)"
    group = "raw"
    transfer = "put_async(Path) multipart (5 MiB parts, 12 conc.) / get_async().stream() 8 MiB"

    async def open(self) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            self.bucket,
            endpoint=self.cfg["endpoint"],
            region=self.cfg["region"],
            access_key_id=self.cfg["access_key"],
            secret_access_key=self.cfg["secret_key"],
            virtual_hosted_style_request=False,
            client_options={"allow_http": True, "timeout": "600s"},
        )

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
        with open(path, "wb") as f:
            async for chunk in r.stream(min_chunk_size=CHUNK):
                f.write(chunk)


# ------------------------------------------------------------------ other libraries


@register
class S3fsPeer(Adapter):
    name = "s3fs"
    label = "s3fs (async mode)"
    group = "peer"
    transfer = "_put_file multipart (50 MiB parts) / _get_file streamed"

    async def open(self) -> None:
        import s3fs

        self.fs = s3fs.S3FileSystem(
            asynchronous=True,
            skip_instance_cache=True,
            key=self.cfg["access_key"],
            secret=self.cfg["secret_key"],
            endpoint_url=self.cfg["endpoint"],
            client_kwargs={"region_name": self.cfg["region"]},
            # Pool raised from the default 10 so concurrency 32 is not capped by the pool.
            config_kwargs={"max_pool_connections": 64},
        )
        self._session = await self.fs.set_session()

    async def close(self) -> None:
        await self._session.close()

    def _p(self, key: str) -> str:
        return f"{self.bucket}/{key}"

    async def put(self, key: str, data: bytes) -> None:
        await self.fs._pipe_file(self._p(key), data)

    async def get(self, key: str) -> bytes:
        return await self.fs._cat_file(self._p(key))

    async def list(self, prefix: str) -> list[str]:
        self.fs.invalidate_cache()
        return await self.fs._find(self._p(prefix))

    async def put_file(self, key: str, path: str) -> None:
        await self.fs._put_file(path, self._p(key))

    async def get_file(self, key: str, path: str) -> None:
        await self.fs._get_file(self._p(key), path)


@register
class SvcInfraS3(Adapter):
    name = "svc-infra-s3"
    label = "svc-infra 1.22.2 S3Backend"
    group = "peer"
    transfer = "whole bytes (no streaming API)"
    # Every call builds a new aioboto3 Session + client, and put() also presigns a URL
    # through another one: ~0.5 s CPU per op, so it runs 32 small ops, not thousands.
    small_ops_cap = 32

    async def open(self) -> None:
        from svc_infra.storage.backends.s3 import S3Backend

        # Credentials and endpoint passed explicitly (its settings-based factory reads
        # STORAGE_S3_* env vars; the constructor itself does not).
        self.b = S3Backend(
            bucket=self.bucket,
            region=self.cfg["region"],
            endpoint=self.cfg["endpoint"],
            access_key=self.cfg["access_key"],
            secret_key=self.cfg["secret_key"],
        )

    async def put(self, key: str, data: bytes) -> None:
        await self.b.put(key, data, CONTENT_TYPE)

    async def get(self, key: str) -> bytes:
        return await self.b.get(key)

    async def list(self, prefix: str) -> list[str]:
        # ONE ListObjectsV2 with MaxKeys=limit (default 100), no pagination.  AWS S3 caps
        # a page at 1000 keys; SeaweedFS honours larger MaxKeys, moto caps at 1000.
        return await self.b.list_keys(prefix=prefix, limit=self.cfg.get("list_limit", 10_000))
