"""An fsspec filesystem over any unistore backend or layer stack."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import threading
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import fsspec
from fsspec.asyn import AbstractAsyncStreamedFile, AsyncFileSystem, sync, sync_wrapper
from fsspec.caching import BaseCache, register_cache
from fsspec.callbacks import DEFAULT_CALLBACK, Callback, NoOpCallback
from fsspec.spec import AbstractBufferedFile
from fsspec.spec import _Cached as _FsspecCached

from .._base import StorageBackend
from .._config import backend_from_url
from .._errors import ConfigurationError, InvalidRangeError, NotFoundError
from .._types import ByteRange, CommonPrefix, Download, ObjectInfo, Range, SuffixRange, WriteMode

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
#: ``cat_ranges``: ranges of one file closer than this are read with one request, _RANGE_READS
#: requests at once, each spanning at most a _RANGE_READS-th of the file's ranges' extent but
#: _RANGE_BLOCK at least (a single range may be longer)
_RANGE_GAP = _CHUNK
_RANGE_BLOCK = 8 * _CHUNK
_RANGE_READS = 4
#: ``get_file``: an object is read in pieces of this size, _GET_READS at once; so is a single
#: read of _SPLIT_AT bytes or more (``cat_file``, a large read of an open file)
_GET_PIECE = 8 * _CHUNK
_SPLIT_AT = 2 * _GET_PIECE
#: an open file's read away from the last one fetches at least this much
_MIN_FETCH = 64 * 1024
_GET_READS = 4
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
        if isinstance(span, ByteRange) and span.end is not None and span.end - span.start >= _SPLIT_AT:
            return await self._cat_pieces(path, span.start, span.end)
        try:
            download = await self.backend.open(path, range=span)
        except InvalidRangeError:
            return b""  # start past the end reads nothing, as for a local file
        return await download.read()

    async def _cat_pieces(self, path: str, a: int, b: int) -> bytes:
        """Bytes ``[a, b)`` of ``path`` read as ``_GET_PIECE`` pieces, ``_GET_READS`` at once (one
        stream is bound by the store's latency, several fill the link). Pieces of different versions
        of the object (it was replaced meanwhile) are read again with one request."""
        limit = asyncio.Semaphore(_GET_READS)

        async def piece(lo: int) -> tuple[str | None, list[bytes]]:
            async with limit:
                try:
                    download = await self.backend.open(path, range=ByteRange(lo, min(lo + _GET_PIECE, b)))
                except InvalidRangeError:  # past the end of the object
                    return None, []
                async with download:
                    if download.start != lo:  # not the range asked for: let the plain read sort it out
                        return "", []
                    return download.info.etag, [chunk async for chunk in download]

        got = await asyncio.gather(*(piece(lo) for lo in range(a, b, _GET_PIECE)))
        if len({etag for etag, _ in got if etag is not None}) > 1 or any(etag == "" for etag, _ in got):
            try:
                return await (await self.backend.open(path, range=ByteRange(a, b))).read()
            except InvalidRangeError:
                return b""
        return b"".join([chunk for _, chunks in got for chunk in chunks])  # the one copy

    async def _cat_ranges(
        self,
        paths: list[str],
        starts: int | Iterable[int | None] | None,
        ends: int | Iterable[int | None] | None,
        max_gap: int | None = None,
        batch_size: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list[bytes | BaseException]:
        """Ranges of files, read concurrently (``batch_size`` requests at once, 4 by default): ranges
        of one file less than ``max_gap`` bytes apart (1 MiB by default) share one request, split so
        that the requests can run side by side; each range is cut out as the body streams by, so
        memory holds the ranges, not the gaps between them."""
        if not isinstance(paths, list):
            raise TypeError("paths must be a list")
        n = len(paths)
        starts = list(starts) if isinstance(starts, Iterable) else [starts] * n
        ends = list(ends) if isinstance(ends, Iterable) else [ends] * n
        if len(starts) != n or len(ends) != n:
            raise ValueError("paths, starts and ends must have the same length")
        gap = _RANGE_GAP if max_gap is None else max_gap
        out: list[bytes | BaseException] = [b""] * n
        groups: dict[str, list[int]] = {}
        loose: list[int] = []  # ranges from the end, or to a negative end: read one by one
        for i, (p, a, b) in enumerate(zip(paths, starts, ends, strict=True)):
            if (a is not None and a < 0) or b is None or b < 0:
                loose.append(i)
            else:
                groups.setdefault(self._strip_protocol(p), []).append(i)
        jobs: list[tuple[str, int, int, list[int]]] = []  # one request: path, start, end, its ranges
        reads = batch_size or _RANGE_READS
        for path, idx in groups.items():
            idx.sort(key=lambda i: starts[i] or 0)
            extent = max(int(ends[i]) for i in idx) - (starts[idx[0]] or 0)  # type: ignore[arg-type]
            block = max(_RANGE_BLOCK, -(-extent // reads))
            for i in idx:
                a, b = starts[i] or 0, int(ends[i])  # type: ignore[arg-type]
                if jobs and jobs[-1][0] == path:
                    _, ja, jb, members = jobs[-1]
                    if a - jb <= gap and max(b, jb) - ja <= block:
                        jobs[-1] = (path, ja, max(b, jb), [*members, i])
                        continue
                jobs.append((path, a, b, [i]))
        limit = asyncio.Semaphore(reads)

        async def fetch(path: str, a: int, b: int, members: list[int]) -> None:
            async with limit:
                try:
                    if len(members) == 1:
                        out[members[0]] = await self._cat_file(path, a, b, **kwargs)
                    else:
                        spans = [(starts[i] or 0, max(starts[i] or 0, int(ends[i])), i) for i in members]  # type: ignore[arg-type]
                        await self._read_spans(path, a, b, spans, out)
                except Exception as exc:
                    for i in members:
                        out[i] = exc

        async def one(i: int) -> None:
            async with limit:
                try:
                    out[i] = await self._cat_file(paths[i], starts[i], ends[i], **kwargs)
                except Exception as exc:
                    out[i] = exc

        await asyncio.gather(*(fetch(*job) for job in jobs), *(one(i) for i in loose))
        if on_error != "return":
            for item in out:
                if isinstance(item, BaseException):
                    raise item
        return out

    async def _read_spans(
        self, path: str, a: int, b: int, spans: list[tuple[int, int, int]], out: list[bytes | BaseException]
    ) -> None:
        """Read ``[a, b)`` of ``path`` with one request and store each ``(start, end, index)`` span's
        bytes at ``out[index]`` as the body streams by: only the bytes of spans not yet complete are
        held, so a long request costs no more memory than its spans (the gaps are dropped)."""
        try:
            download = await self.backend.open(path, range=ByteRange(a, b))
        except InvalidRangeError:  # starts past the end: every span reads nothing
            for _, _, i in spans:
                out[i] = b""
            return
        spans.sort()
        k, held, held_at = 0, bytearray(), download.start  # held: the body from held_at on
        async with download:
            pos = download.start
            async for chunk in download:
                at, pos = pos, pos + len(chunk)
                if held:
                    held += chunk
                elif pos > spans[k][0]:  # the first byte the next span needs
                    held_at = max(at, spans[k][0])
                    held = bytearray(memoryview(chunk)[held_at - at :])
                else:
                    continue  # a gap between spans
                while k < len(spans) and spans[k][1] <= pos:
                    lo, hi, i = spans[k]
                    out[i] = bytes(memoryview(held)[lo - held_at : hi - held_at])  # one copy
                    k += 1
                if k == len(spans):
                    break
                keep = spans[k][0] - held_at
                if keep > 0:
                    del held[:keep]  # done with everything before the next span
                    held_at += keep
        for lo, hi, i in spans[k:]:  # past the end of the object: what there is
            out[i] = bytes(memoryview(held)[max(0, lo - held_at) : max(0, hi - held_at)])

    async def _get_file(self, rpath: str, lpath: str, callback: Callback = DEFAULT_CALLBACK, **kwargs: Any) -> None:
        """Download in pieces read concurrently and written in place (memory: a few pieces)."""
        if await asyncio.to_thread(os.path.isdir, lpath):
            return
        rpath = self._strip_protocol(rpath)
        try:
            first = await self.backend.open(rpath, range=ByteRange(0, _GET_PIECE))
        except InvalidRangeError:  # an empty object
            first = await self.backend.open(rpath)
        except NotFoundError:
            if await self._is_folder(rpath):
                os.makedirs(lpath, exist_ok=True)
                return
            raise
        size = first.info.size
        callback.set_size(size)
        fd = await asyncio.to_thread(os.open, lpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
        try:
            await self._write_piece(fd, first, callback)
            if first.start == 0 and first.end < size:  # the store honoured the range: read the rest
                etag = first.info.etag or None
                limit = asyncio.Semaphore(_GET_READS)

                async def piece(offset: int) -> None:
                    async with limit:
                        span = ByteRange(offset, min(offset + _GET_PIECE, size))
                        dl = await self.backend.open(rpath, range=span, if_match=etag)
                        await self._write_piece(fd, dl, callback)

                await asyncio.gather(*(piece(o) for o in range(first.end, size, _GET_PIECE)))
        finally:
            await asyncio.to_thread(os.close, fd)

    @staticmethod
    async def _write_piece(fd: int, download: Download, callback: Callback) -> None:
        """Write a download at its offset, a few chunks per system call."""
        async with download:
            offset, held, size = download.start, [], 0
            async for chunk in download:
                held.append(chunk)
                size += len(chunk)
                if size >= 2 * _CHUNK:
                    await asyncio.to_thread(_pwrite_all, fd, held, offset)
                    callback.relative_update(size)
                    offset, held, size = offset + size, [], 0
            if held:
                await asyncio.to_thread(_pwrite_all, fd, held, offset)
                callback.relative_update(size)

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
        """Upload a local file. Without a progress callback the store reads the file itself (on S3:
        parts read from their byte ranges, several at once); with one, the file is streamed in order."""
        if await asyncio.to_thread(os.path.isdir, lpath):
            return  # folders are implicit
        rpath = self._strip_protocol(rpath)
        if callback is DEFAULT_CALLBACK or isinstance(callback, NoOpCallback):
            await self.backend.put_object(rpath, Path(lpath), mode=self._mode(mode))
            return
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


def _pwrite_all(fd: int, buffers: list[bytes], offset: int) -> None:
    written = os.pwritev(fd, buffers, offset)
    rest = memoryview(b"".join(buffers))[written:] if written < sum(map(len, buffers)) else None
    while rest:  # a short write (rare on a regular file)
        offset += written
        written = os.pwrite(fd, rest, offset)
        rest = rest[written:]


class _ReadAhead(BaseCache):  # type: ignore[misc]
    """fsspec's readahead, only while reading on from where the last read stopped (or from the
    start): a read elsewhere, as in Parquet's column chunks, fetches just the span asked for
    (at least ``_MIN_FETCH``), and a read of a block or more is fetched as asked."""

    name: ClassVar[str] = "unistore-readahead"

    def __init__(self, blocksize: int, fetcher: Any, size: int) -> None:
        super().__init__(blocksize, fetcher, size)
        self.cache, self.start, self.end = b"", 0, 0

    def _fetch(self, start: int | None, end: int | None) -> bytes:
        start = start or 0
        end = self.size if end is None or end > self.size else end
        if start >= self.size or start >= end:
            return b""
        if self.start <= start and end <= self.end:
            self.hit_count += 1
            if start == self.start and end == self.end:
                return self.cache
            return self.cache[start - self.start : end - self.start]
        self.miss_count += 1
        part = b""
        if self.start <= start < self.end:  # the head is cached: fetch the rest
            part, start = self.cache[start - self.start :], self.end
        sequential = start == self.end or start == 0
        if end - start >= self.blocksize:
            stop = end
        elif sequential:
            stop = min(self.size, end + self.blocksize)
        else:
            stop = min(self.size, max(end, start + _MIN_FETCH))
        self.total_requested_bytes += stop - start
        data = self.fetcher(start, stop)
        self.cache, self.start, self.end = data, start, start + len(data)
        got = data if stop == end else data[: end - start]
        return part + got if part else got  # type: ignore[no-any-return]


register_cache(_ReadAhead, clobber=True)


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
        if kwargs.get("cache_type") is None:
            kwargs["cache_type"] = _ReadAhead.name
        super().__init__(fs, path, mode, **kwargs)
        if mode == "rb" and self.details.get("type") == "directory":
            raise IsADirectoryError(f"{path!r} is a folder")
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
