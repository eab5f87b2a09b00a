"""An fsspec filesystem over any unistore backend or layer stack."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from typing import Any, ClassVar
from urllib.parse import urlsplit

import fsspec
from fsspec.asyn import AbstractAsyncStreamedFile, AsyncFileSystem, sync, sync_wrapper
from fsspec.callbacks import DEFAULT_CALLBACK, Callback
from fsspec.spec import AbstractBufferedFile
from fsspec.spec import _Cached as _FsspecCached

from .._base import StorageBackend
from .._config import backend_from_url
from .._errors import ConfigurationError, InvalidRangeError, NotFoundError
from .._types import ByteRange, CommonPrefix, ObjectInfo, Range, SuffixRange, WriteMode

__all__ = [
    "PROTOCOLS",
    "UnistoreFile",
    "UnistoreFileSystem",
    "UnistoreStreamedFile",
    "register_store",
    "unregister_store",
]

#: The fsspec protocols this filesystem answers to (each registered through the
#: ``fsspec.specs`` entry point): ``unistore://NAME/key`` for a store registered in
#: this process or named in the stores file, ``unistore+s3://bucket/key`` and
#: ``unistore+gs://bucket/key`` for a bucket configured from the environment.
PROTOCOLS = ("unistore", "unistore+s3", "unistore+gs")

_CHUNK = 1024 * 1024
_STORES: dict[str, StorageBackend] = {}
_STORES_LOCK = threading.Lock()


def register_store(name: str, backend: StorageBackend) -> None:
    """Make ``backend`` (any backend or layer stack) reachable as ``unistore://name/...``
    in this process; it wins over a store of the same name in the stores file."""
    with _STORES_LOCK:
        _STORES[name] = backend
    UnistoreFileSystem.clear_instance_cache()  # a cached filesystem may hold the name's old store
    _ensure_registered()


def _ensure_registered() -> None:
    """Register the protocols with fsspec when the package's entry points are not installed
    (a source checkout); a protocol some other package already claims is left alone."""
    for proto in PROTOCOLS:
        with contextlib.suppress(ValueError):
            fsspec.register_implementation(proto, UnistoreFileSystem)


def unregister_store(name: str) -> None:
    """Forget a store registered with :func:`register_store` (no error if unknown)."""
    with _STORES_LOCK:
        _STORES.pop(name, None)
    UnistoreFileSystem.clear_instance_cache()


def _named_backend(name: str, overrides: Mapping[str, Any]) -> StorageBackend:
    with _STORES_LOCK:
        found = _STORES.get(name)
    if found is not None:
        return found
    from ..cli._refs import store_url

    url, token = store_url(name)
    if token and url.startswith(("http://", "https://")):
        return backend_from_url(url, token=token, **overrides)
    return backend_from_url(url, **overrides)


class _Cached(_FsspecCached):  # type: ignore[misc]
    """fsspec's instance cache, skipped for a backend object: stores' reprs may be equal, so
    only a URL or a store name (and its options) identifies the filesystem to share."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        backend = args[0] if args else kwargs.get("backend")
        if backend is not None and not isinstance(backend, str):
            kwargs["skip_instance_cache"] = True
        return super().__call__(*args, **kwargs)


class UnistoreFileSystem(AsyncFileSystem, metaclass=_Cached):  # type: ignore[misc]
    """An fsspec filesystem whose paths are the keys of one unistore store.

    Build it from a backend object (``UnistoreFileSystem(backend)``), a store URL
    (``UnistoreFileSystem("s3://bucket/prefix")``) or a store name
    (``UnistoreFileSystem(store="photos")``). Folders are the ``/``-separated prefixes of
    keys: they exist while a key is below them, so ``mkdir`` writes nothing.
    """

    protocol: ClassVar[tuple[str, ...]] = PROTOCOLS
    root_marker = ""
    async_impl = True

    def __init__(
        self,
        backend: StorageBackend | str | None = None,
        *,
        store: str | None = None,
        url: str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        batch_size: int | None = None,
        **options: Any,
    ) -> None:
        """``options`` are settings for a store built from ``url`` or ``store``
        (``endpoint=…``); ``asynchronous=True`` for use from a running event loop."""
        super().__init__(asynchronous=asynchronous, loop=loop, batch_size=batch_size)
        if isinstance(backend, str):
            url, backend = backend, None
        if backend is not None:
            if url is not None or store is not None or options:
                raise ConfigurationError("pass a backend, a url or a store name, not several")
            self.backend: StorageBackend = backend
        elif url is not None:
            self.backend = backend_from_url(url, **options)
        elif store is not None:
            self.backend = _named_backend(store, options)
        else:
            raise ConfigurationError("UnistoreFileSystem needs a backend, a url or a store name")
        self.url = url
        self.store = store

    # --- paths -------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = os.fspath(path) if not isinstance(path, str) else path
        for proto in cls.protocol:
            head = proto + "://"
            if path.startswith(head):
                rest = path[len(head) :]
                path = rest.split("/", 1)[1] if "/" in rest else ""
                break
        return path.strip("/")

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        scheme, sep, rest = path.partition("://")
        if not sep:
            return {}
        where = rest.split("/", 1)[0]
        if scheme == "unistore":
            return {"store": where}
        if scheme in ("unistore+s3", "unistore+gs"):
            return {"url": f"{scheme.removeprefix('unistore+')}://{where}"}
        return {}

    def unstrip_protocol(self, name: str) -> str:
        """The full URL of ``name``, when this filesystem was built from a store name or bucket."""
        if self.store is not None:
            return f"unistore://{self.store}/{name}"
        if self.url is not None and urlsplit(self.url).scheme in ("s3", "gs"):
            bucket = urlsplit(self.url).netloc
            return f"unistore+{urlsplit(self.url).scheme}://{bucket}/{name}"
        return str(name)

    # --- metadata ----------------------------------------------------------------

    @staticmethod
    def _file_entry(info: ObjectInfo) -> dict[str, Any]:
        return {
            "name": info.key,
            "size": info.size,
            "type": "file",
            "etag": info.etag,
            "LastModified": info.last_modified,
            "mtime": info.last_modified.timestamp(),
            "content_type": info.content_type,
            "metadata": dict(info.metadata),
        }

    @staticmethod
    def _dir_entry(path: str) -> dict[str, Any]:
        return {"name": path.rstrip("/"), "size": 0, "type": "directory"}

    async def _is_folder(self, path: str) -> bool:
        if not path:
            return True
        async for _ in self.backend.iter_keys(path + "/"):
            return True
        return False

    async def _info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if path:
            try:
                return self._file_entry(await self.backend.head(path))
            except NotFoundError:
                pass
        if await self._is_folder(path):
            return self._dir_entry(path)
        raise NotFoundError(f"no file or folder {path!r}", key=path)

    async def _exists(self, path: str, **kwargs: Any) -> bool:
        try:
            await self._info(path)
        except FileNotFoundError:
            return False
        return True

    async def _ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        prefix = path + "/" if path else ""
        out: list[dict[str, Any]] = []
        async for entry in self.backend.iter_entries(prefix, delimiter="/"):
            if isinstance(entry, CommonPrefix):
                out.append(self._dir_entry(entry.prefix))
            else:
                out.append(self._file_entry(entry))
        if not out and path:
            out = [await self._info(path)]  # a file lists as itself; a missing path raises
        return out if detail else [e["name"] for e in out]

    async def _find(
        self, path: str, maxdepth: int | None = None, withdirs: bool = False, **kwargs: Any
    ) -> list[str] | dict[str, dict[str, Any]]:
        """Every file below ``path`` from one flat listing (not one listing per folder)."""
        if maxdepth is not None:
            found: list[str] | dict[str, dict[str, Any]] = await super()._find(path, maxdepth, withdirs, **kwargs)
            return found
        path = self._strip_protocol(path)
        detail = kwargs.pop("detail", False)
        out: dict[str, dict[str, Any]] = {}
        if withdirs and path and await self._is_folder(path):
            out[path] = self._dir_entry(path)
        prefix = path + "/" if path else ""
        async for info in self.backend.iter_objects(prefix):
            out[info.key] = self._file_entry(info)
            if withdirs:
                parts = info.key[len(prefix) :].split("/")[:-1]
                for i in range(1, len(parts) + 1):
                    folder = prefix + "/".join(parts[:i])
                    out.setdefault(folder, self._dir_entry(folder))
        if not out and path:
            with contextlib.suppress(NotFoundError):
                out[path] = self._file_entry(await self.backend.head(path))
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    async def _modified(self, path: str) -> datetime:
        info = await self._info(path)
        if info["type"] != "file":
            raise IsADirectoryError(path)
        modified: datetime = info["LastModified"]
        return modified

    modified = sync_wrapper(_modified)

    def ukey(self, path: str) -> str:
        """A key that changes whenever the object does: its etag."""
        info = self.info(path)
        return str(info.get("etag") or super().ukey(path))

    def checksum(self, path: str) -> int:
        """An integer from the object's etag (equal while the content is)."""
        return int(hashlib.sha256(self.ukey(path).encode()).hexdigest()[:16], 16)

    async def _sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        return await self.backend.sign_url(self._strip_protocol(path), expires_in=expiration, **kwargs)

    def sign(self, path: str, expiration: int = 100, **kwargs: Any) -> str:
        """A signed URL for ``path`` valid ``expiration`` seconds (``method="PUT"`` to upload)."""
        return str(sync(self.loop, self._sign, path, expiration, **kwargs))

    # --- folders (implicit in an object store) -----------------------------------

    async def _mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if path and await self._is_file(path):
            raise FileExistsError(path)

    async def _makedirs(self, path: str, exist_ok: bool = False) -> None:
        path = self._strip_protocol(path)
        if not path:
            return
        if await self._is_file(path):
            raise FileExistsError(path)
        if not exist_ok and await self._is_folder(path):
            raise FileExistsError(path)

    async def _is_file(self, path: str) -> bool:
        try:
            await self.backend.head(path)
        except NotFoundError:
            return False
        return True

    # --- reads -------------------------------------------------------------------

    async def _range(self, path: str, start: int | None, end: int | None) -> Range | bytes | None:
        """The store range for fsspec's ``start``/``end`` (negative counts from the end),
        or ``b""`` when the span is empty."""
        if start is None and end is None:
            return None
        start = start or 0
        if start < 0 and end is None:
            return SuffixRange(-start)
        if start < 0 or (end is not None and end < 0):
            size = (await self.backend.head(path)).size
            start = max(0, size + start) if start < 0 else start
            end = size + end if end is not None and end < 0 else end
        if end is not None and end <= start:
            return b""
        return ByteRange(start, end) if start or end is not None else None

    async def _cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        span = await self._range(path, start, end)
        if isinstance(span, bytes):
            await self.backend.head(path)  # still raise for a missing file
            return span
        try:
            download = await self.backend.open(path, range=span)
        except InvalidRangeError:
            return b""  # start past the end reads nothing, as for a local file
        return await download.read()

    async def _get_file(self, rpath: str, lpath: str, callback: Callback = DEFAULT_CALLBACK, **kwargs: Any) -> None:
        if await asyncio.to_thread(os.path.isdir, lpath):
            return
        rpath = self._strip_protocol(rpath)
        try:
            download = await self.backend.open(rpath)
        except NotFoundError:
            if await self._is_folder(rpath):
                os.makedirs(lpath, exist_ok=True)
                return
            raise
        async with download:
            callback.set_size(download.content_length)
            out = await asyncio.to_thread(open, lpath, "wb")
            try:
                async for chunk in download:
                    await asyncio.to_thread(out.write, chunk)
                    callback.relative_update(len(chunk))
            finally:
                await asyncio.to_thread(out.close)

    # --- writes ------------------------------------------------------------------

    @staticmethod
    def _mode(mode: str) -> WriteMode:
        if mode not in ("overwrite", "create"):
            raise ValueError(f"mode must be 'overwrite' or 'create', got {mode!r}")
        return "create" if mode == "create" else "overwrite"

    async def _pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        await self.backend.put_object(self._strip_protocol(path), bytes(value), mode=self._mode(mode))

    async def _put_file(
        self,
        lpath: str,
        rpath: str,
        callback: Callback = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kwargs: Any,
    ) -> None:
        if await asyncio.to_thread(os.path.isdir, lpath):
            return  # folders are implicit
        rpath = self._strip_protocol(rpath)
        f = await asyncio.to_thread(open, lpath, "rb")
        callback.set_size(os.fstat(f.fileno()).st_size)

        async def chunks() -> AsyncIterator[bytes]:
            while chunk := await asyncio.to_thread(f.read, _CHUNK):
                yield chunk
                callback.relative_update(len(chunk))

        try:
            await self.backend.put_object(rpath, chunks(), mode=self._mode(mode))
        finally:
            await asyncio.to_thread(f.close)

    async def _cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        src, dst = self._strip_protocol(path1), self._strip_protocol(path2)
        try:
            await self.backend.copy(src, dst)
        except NotFoundError:
            if await self._is_folder(src):
                return  # copying a folder creates nothing by itself
            raise

    async def _rm_file(self, path: str, **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if not await self.backend.remove(path) and not await self._is_folder(path):
            raise NotFoundError(f"no file {path!r}", key=path)

    async def _rm(
        self,
        path: str | list[str],
        recursive: bool = False,
        batch_size: int | None = None,
        maxdepth: int | None = None,
        **kwargs: Any,
    ) -> None:
        paths = await self._expand_path(path, recursive=recursive, maxdepth=maxdepth)
        files = [p for p in paths if p]
        limit = asyncio.Semaphore(batch_size or self.batch_size or 64)

        async def one(p: str) -> None:
            async with limit:
                await self.backend.remove(p)

        await asyncio.gather(*(one(p) for p in files))

    # --- files -------------------------------------------------------------------

    async def open_async(self, path: str, mode: str = "rb", **kwargs: Any) -> UnistoreStreamedFile:
        """A file for ``async with``: ``"rb"`` (ranged reads) or ``"wb"`` (streamed upload)."""
        if mode not in ("rb", "wb") or kwargs.get("compression"):
            raise ValueError(f"open_async supports modes 'rb' and 'wb' without compression, got {mode!r}")
        path = self._strip_protocol(path)
        size = None
        if mode == "rb":
            info = await self._info(path)
            if info["type"] != "file":
                raise IsADirectoryError(path)
            size = info["size"]
        return UnistoreStreamedFile(self, path, mode, size, **kwargs)

    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> UnistoreFile:
        return UnistoreFile(
            self,
            self._strip_protocol(path),
            mode,
            block_size=block_size,
            autocommit=autocommit,
            cache_options=cache_options,
            **kwargs,
        )


class _Upload:
    """One streamed write: chunks handed to a running ``put_object`` through a queue of
    ``depth`` (bounded memory); an error pushed in aborts it, so nothing is stored."""

    def __init__(self, backend: StorageBackend, key: str, mode: WriteMode, depth: int = 1) -> None:
        self.queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)
        self.task: asyncio.Future[ObjectInfo] = asyncio.ensure_future(backend.put_object(key, self._body(), mode=mode))

    async def _body(self) -> AsyncIterator[bytes]:
        while True:
            item = await self.queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def push(self, item: bytes | BaseException | None) -> None:
        put: asyncio.Future[None] = asyncio.ensure_future(self.queue.put(item))
        task: asyncio.Future[Any] = self.task
        await asyncio.wait([put, task], return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            put.cancel()
            if item is not None:
                task.result()  # re-raise the upload's failure

    async def finish(self) -> None:
        await self.push(None)
        await self.task

    async def abort(self) -> None:
        if not self.task.done():
            with contextlib.suppress(Exception):
                await self.push(ConnectionAbortedError("write discarded"))
        await asyncio.gather(self.task, return_exceptions=True)


class UnistoreFile(AbstractBufferedFile):  # type: ignore[misc]
    """A buffered file of a :class:`UnistoreFileSystem`: reads fetch ranges with readahead;
    writes stream block by block into one upload (multipart on S3 and GCS), so memory stays
    at a few blocks. The object appears only on a clean close; an exception inside
    ``with fs.open(path, "wb")`` or :meth:`discard` leaves the previous object untouched."""

    DEFAULT_BLOCK_SIZE = 5 * 2**20
    fs: UnistoreFileSystem

    def __init__(self, fs: UnistoreFileSystem, path: str, mode: str = "rb", **kwargs: Any) -> None:
        if mode == "ab":
            raise NotImplementedError("append is not supported by object stores")
        if mode == "xb" and fs.isfile(path):
            raise FileExistsError(path)  # early; the write itself is also create-only
        super().__init__(fs, path, mode, **kwargs)
        self._upload: _Upload | None = None

    def _fetch_range(self, start: int, end: int) -> bytes:
        data: bytes = sync(self.fs.loop, self.fs._cat_file, self.path, start, end)
        return data

    def _initiate_upload(self) -> None:
        """Nothing yet: a file closed within one block is written with a single put."""

    async def _start(self) -> None:
        self._upload = _Upload(self.fs.backend, self.path, "create" if self.mode == "xb" else "overwrite")

    def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        if self._upload is None and final:
            sync(self.fs.loop, self.fs._pipe_file, self.path, data, "create" if self.mode == "xb" else "overwrite")
            return True
        if self._upload is None:
            sync(self.fs.loop, self._start)
        assert self._upload is not None
        if data:
            sync(self.fs.loop, self._upload.push, data)
        if final:
            sync(self.fs.loop, self._upload.finish)
        return True

    def discard(self) -> None:
        """Abandon the write: nothing is stored and the file is closed."""
        self.closed = True
        if self._upload is not None:
            sync(self.fs.loop, self._upload.abort)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self.writable() and not self.closed:
            self.discard()
        else:
            self.close()


class UnistoreStreamedFile(AbstractAsyncStreamedFile):  # type: ignore[misc]
    """The file of :meth:`UnistoreFileSystem.open_async`: ``await f.read(n)`` fetches a range;
    writes stream into one upload like :class:`UnistoreFile`, stored on a clean close."""

    DEFAULT_BLOCK_SIZE = 5 * 2**20
    fs: UnistoreFileSystem

    def __init__(self, fs: UnistoreFileSystem, path: str, mode: str, size: int | None, **kwargs: Any) -> None:
        super().__init__(fs, path, mode, size=size, cache_type="none", **kwargs)
        self._upload: _Upload | None = None

    async def _fetch_range(self, start: int, end: int) -> bytes:
        return await self.fs._cat_file(self.path, start, end)

    async def _initiate_upload(self) -> None:
        """Nothing yet: a file closed within one block is written with a single put."""

    async def _upload_chunk(self, final: bool = False) -> bool:
        data = self.buffer.getvalue()
        if self._upload is None and final:
            await self.fs._pipe_file(self.path, data)
            return True
        if self._upload is None:
            self._upload = _Upload(self.fs.backend, self.path, "overwrite")
        if data:
            await self._upload.push(data)
        if final:
            await self._upload.finish()
        return True

    async def discard(self) -> None:
        """Abandon the write: nothing is stored and the file is closed."""
        self.closed = True
        if self._upload is not None:
            await self._upload.abort()

    async def __aexit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None and self.mode == "wb" and not self.closed:
            await self.discard()
        else:
            await self.close()
