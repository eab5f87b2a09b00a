"""Objects as files under one directory, safe for several processes sharing it.

Layout: the object ``a/b.txt`` is the file ``ROOT/a/b.txt``. Everything the
store keeps for itself starts with ``.unistore`` (a segment prefix no key may
use): the sidecar ``ROOT/a/.unistore.b.txt.meta`` (etag, content type,
metadata, and the inode of the data file it describes), temp files
``.unistore.tmp.<random>`` beside their target, and ``ROOT/.unistore/`` for
lock stripes and the persisted URL secret.

Writes stream into a fresh temp file in the target directory (fsync'd unless
``fsync=False``), then, under a per-key-stripe lock (``fcntl.flock``, so it
holds across processes and threads), the precondition is decided and the data
file and its sidecar are renamed into place. Readers take no lock: they open
the data file, then read the sidecar and accept it only if it names that same
inode, retrying briefly while a writer is between its two renames. A file with
no valid sidecar (placed there by hand, or a crash between the renames) is
served with a stat-derived etag and a guessed content type.

Deviations: a key cannot be both an object and a "directory" (``a`` and
``a/b``): the second write raises :class:`InvalidKeyError`. Symbolic links are
neither listed nor followed: a key through a linked directory is not found,
and writing one raises :class:`InvalidKeyError`. Files placed by hand under
names no key can have (backslashes, control characters, invalid UTF-8, paths
over 1024 bytes) and special files (FIFOs, sockets) are not objects.
Cross-process locking needs POSIX ``flock``.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import secrets
import stat as stat_mod
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from .._base import (
    DEFAULT_CHUNK_SIZE,
    BaseBackend,
    check_listing_args,
    check_read_conditions,
    check_remove_condition,
    check_write_mode,
    iter_body,
)
from .._errors import (
    ConfigurationError,
    InvalidKeyError,
    NotFoundError,
    PermissionDeniedError,
    QuotaExceededError,
    StorageError,
)
from .._keys import RESERVED_PREFIX, validate_key
from .._signing import UrlSigner
from .._types import (
    Body,
    Capabilities,
    Download,
    ObjectInfo,
    Range,
    WriteMode,
    check_header_value,
    guess_content_type,
    normalize_metadata,
)
from ._localfs import (
    O_CLOEXEC,
    O_NOFOLLOW,
    O_NONBLOCK,
    TMP_PREFIX,
    StripeLocks,
    Temp,
    check_dirs,
    fsync_dir,
    load_secret,
    meta_path,
    scan_dir,
    write_all,
)

__all__ = ["LocalBackend", "LocalSettings"]

@dataclass(frozen=True, slots=True)
class LocalSettings:
    """Settings of :class:`LocalBackend`, named after ``STORAGE_*`` variables without the prefix."""

    base_path: str = "/data/uploads"
    base_url: str = "http://localhost:8000/files"
    url_secret: str | None = field(default=None, repr=False)
    url_expiration: int = 3600
    fsync: bool = True
    chunk_size: int = DEFAULT_CHUNK_SIZE
    max_object_size: int | None = None

    def __post_init__(self) -> None:
        if self.url_expiration <= 0:
            raise ConfigurationError("url_expiration must be positive")
        if self.chunk_size <= 0:
            raise ConfigurationError("chunk_size must be positive")
        if self.max_object_size is not None and self.max_object_size < 0:
            raise ConfigurationError("max_object_size must be >= 0")


@dataclass(frozen=True, slots=True)
class _Opened:
    info: ObjectInfo
    fd: int | None
    data: bytes | None


class LocalBackend(BaseBackend):
    """Files in a directory, atomic and process-safe. See the module docstring."""

    capabilities: ClassVar[Capabilities] = Capabilities(
        conditional_put=True,
        conditional_get=True,
        conditional_delete=True,
        ranges=True,
        streaming=True,
        signed_urls=True,
    )

    def __init__(self, settings: LocalSettings | None = None, **options: Any) -> None:
        if settings is not None and options:
            raise ConfigurationError("pass either settings or keyword options, not both")
        self.settings = settings if settings is not None else LocalSettings(**options)
        self.root = Path(self.settings.base_path).absolute()
        self._root = str(self.root)
        self._internal = self.root / RESERVED_PREFIX
        try:
            (self._internal / "locks").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot create base_path {str(self.root)!r} ({exc.strerror}); set STORAGE_BASE_PATH",
                backend=self.name,
            ) from exc
        secret = self.settings.url_secret.encode() if self.settings.url_secret else load_secret(self._internal)
        self._signer = UrlSigner(secret, self.settings.base_url)
        self.default_expires_in = self.settings.url_expiration
        self._locks = StripeLocks(self._internal / "locks")

    def __repr__(self) -> str:
        return f"LocalBackend(base_path={str(self.root)!r}, fsync={self.settings.fsync})"

    @property
    def signer(self) -> UrlSigner:
        """The signer the file route verifies this backend's URLs with."""
        return self._signer

    # --- setup ----------------------------------------------------------------------

    # --- paths ----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return os.path.join(self._root, key)

    # --- error boundary ---------------------------------------------------------------

    @contextlib.contextmanager
    def _translate(self, operation: str, key: str | None) -> Iterator[None]:
        """Map ``OSError`` to the error tree; every file-system call runs inside it."""
        try:
            yield
        except StorageError as exc:
            exc.backend = exc.backend or self.name
            exc.operation = exc.operation or operation
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
            raise NotFoundError("no such object", key=key, backend=self.name, operation=operation) from exc
        except PermissionError as exc:
            raise PermissionDeniedError(
                f"permission denied ({exc.strerror})", key=key, backend=self.name, operation=operation
            ) from exc
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise QuotaExceededError(
                    f"no space left ({exc.strerror})", key=key, backend=self.name, operation=operation
                ) from exc
            if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symbolic link: not an object
                raise NotFoundError("no such object", key=key, backend=self.name, operation=operation) from exc
            if exc.errno == errno.ENAMETOOLONG:
                raise InvalidKeyError("key is too long for the file system", key=key) from exc
            if exc.errno == errno.EROFS:
                raise PermissionDeniedError(
                    "file system is read-only", key=key, backend=self.name, operation=operation
                ) from exc
            raise StorageError(
                f"I/O error ({exc.strerror or exc})", key=key, backend=self.name, operation=operation
            ) from exc

    async def _run(self, operation: str, key: str | None, fn: Any, *args: Any) -> Any:
        with self._translate(operation, key):
            return await asyncio.to_thread(fn, *args)

    # --- reading state ----------------------------------------------------------------

    def _info_from(self, key: str, path: str, st: os.stat_result) -> ObjectInfo:
        """Info for the data file ``st``: from its sidecar if that names this inode."""
        meta = None
        with contextlib.suppress(OSError, ValueError), open(meta_path(path), "rb") as f:
            meta = json.loads(f.read())
        mtime = datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC)
        if meta is not None and meta.get("ino") == st.st_ino and meta.get("size") == st.st_size:
            return ObjectInfo(
                key=key,
                size=st.st_size,
                etag=meta["etag"],
                last_modified=mtime,
                content_type=meta.get("ct") or guess_content_type(key),
                metadata=meta.get("meta") or {},
                cache_control=meta.get("cc"),
                content_disposition=meta.get("cd"),
            )
        if meta is not None and meta.get("ino") == st.st_ino:
            raise _Torn  # data rewritten in place? treat as torn, re-check
        if meta is not None:
            raise _Torn
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"s{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}",
            last_modified=mtime,
            content_type=guess_content_type(key),
        )

    def _consistent(self, key: str, path: str, read: Any) -> Any:
        """Run ``read`` (which calls ``_info_from``) until it sees a data file and sidecar of
        the same write; after a few tries, take the key's lock so no writer is mid-commit.
        A mismatch that survives the lock is a crash leftover: served without its sidecar."""
        for attempt in range(4):
            try:
                return read(False)
            except _Torn:
                time.sleep(0.0005 * attempt)
        with self._locks.hold(key):
            try:
                return read(False)
            except _Torn:
                return read(True)

    def _stat_info(self, key: str, path: str, ignore_sidecar: bool) -> ObjectInfo:
        st = os.stat(path, follow_symlinks=False)
        if not stat_mod.S_ISREG(st.st_mode):
            raise FileNotFoundError(path)
        if ignore_sidecar:
            return self._fallback_info(key, st)
        return self._info_from(key, path, st)

    def _fallback_info(self, key: str, st: os.stat_result) -> ObjectInfo:
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=f"s{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}",
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
            content_type=guess_content_type(key),
        )

    def _head_sync(self, key: str) -> ObjectInfo:
        check_dirs(self._root, key)
        path = self._path(key)
        info: ObjectInfo = self._consistent(key, path, lambda ign: self._stat_info(key, path, ign))
        return info

    def _open_sync(self, key: str, rng: Range | None, small: int) -> tuple[_Opened, int, int]:
        check_dirs(self._root, key)
        path = self._path(key)

        def attempt(ignore_sidecar: bool) -> tuple[ObjectInfo, int]:
            fd = os.open(path, os.O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if not stat_mod.S_ISREG(st.st_mode):
                    raise FileNotFoundError(path)
                info = self._fallback_info(key, st) if ignore_sidecar else self._info_from(key, path, st)
            except BaseException:
                os.close(fd)
                raise
            return info, fd

        info, fd = self._consistent(key, path, attempt)
        try:
            start, end = (0, info.size) if rng is None else rng.resolve(info.size)
            if end - start <= small:
                data = os.pread(fd, end - start, start) if end > start else b""
                os.close(fd)
                return _Opened(info, None, data), start, end
        except BaseException:
            os.close(fd)
            raise
        return _Opened(info, fd, None), start, end

    # --- primitives -------------------------------------------------------------------

    async def head(self, key: str) -> ObjectInfo:
        validate_key(key)
        info: ObjectInfo = await self._run("head", key, self._head_sync, key)
        return info

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        validate_key(key)
        chunk = self.settings.chunk_size
        opened, start, end = await self._run("open", key, self._open_sync, key, range, chunk)
        try:
            check_read_conditions(opened.info, if_match, if_none_match, self.name)
        except BaseException:
            if opened.fd is not None:
                os.close(opened.fd)
            raise
        if opened.data is not None:
            return Download(
                opened.info, _once(opened.data), start=start, end=end, range_requested=range is not None
            )
        return Download(
            opened.info,
            self._stream(opened.fd, key, start, end),
            start=start,
            end=end,
            range_requested=range is not None,
        )

    async def _stream(self, fd: int, key: str, start: int, end: int) -> AsyncIterator[bytes]:
        try:
            pos, step = start, self.settings.chunk_size
            while pos < end:
                with self._translate("read", key):
                    chunk = await asyncio.to_thread(os.pread, fd, min(step, end - pos), pos)
                if not chunk:
                    raise StorageError("object shrank while reading", key=key, backend=self.name)
                pos += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def put_object(
        self,
        key: str,
        body: Body,
        *,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        mode: WriteMode = "overwrite",
        cache_control: str | None = None,
        content_disposition: str | None = None,
    ) -> ObjectInfo:
        validate_key(key)
        meta = {
            "ct": check_header_value("content_type", content_type) or guess_content_type(key),
            "meta": normalize_metadata(metadata),
            "cc": check_header_value("cache_control", cache_control),
            "cd": check_header_value("content_disposition", content_disposition),
        }
        if isinstance(mode, str) and mode not in ("overwrite", "create"):
            raise TypeError(f"invalid write mode {mode!r}")
        if isinstance(body, bytes | bytearray | memoryview):
            data = bytes(body) if not isinstance(body, bytes) else body
            self._check_size(key, len(data))
            info: ObjectInfo = await self._run("put", key, self._put_bytes_sync, key, data, meta, mode)
            return info
        path = self._path(key)
        temp: Temp = await self._run("put", key, self._create_temp, key, path)
        committed = False
        try:
            size = 0
            buf: list[bytes] = []
            buffered = 0
            async for chunk in iter_body(body, self.settings.chunk_size):
                size += len(chunk)
                self._check_size(key, size)
                buf.append(chunk)
                buffered += len(chunk)
                if buffered >= self.settings.chunk_size:
                    await self._run("put", key, write_all, temp.fd, buf)
                    buf, buffered = [], 0
            if buf:
                await self._run("put", key, write_all, temp.fd, buf)
            info = await self._run("put", key, self._commit, key, path, temp, size, meta, mode)
            committed = True
            return info
        finally:
            if not committed:
                await asyncio.to_thread(temp.discard)

    def _check_size(self, key: str, size: int) -> None:
        limit = self.settings.max_object_size
        if limit is not None and size > limit:
            raise QuotaExceededError(
                f"object is larger than max_object_size={limit}", key=key, backend=self.name, operation="put"
            )

    def _create_temp(self, key: str, path: str) -> Temp:
        parent = os.path.dirname(path)
        try:
            check_dirs(self._root, key)
        except FileNotFoundError:
            pass  # created below; only directories that exist can be symbolic links
        except NotADirectoryError as exc:
            raise InvalidKeyError(
                "key passes through an existing object or a symbolic link", key=key
            ) from exc
        for _ in range(32):
            tmp = os.path.join(parent, TMP_PREFIX + secrets.token_hex(8))
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
                return Temp(fd, tmp)
            except FileNotFoundError:
                self._make_parents(key, parent)
            except NotADirectoryError as exc:
                raise InvalidKeyError(
                    "key conflicts with an existing object used as a directory", key=key
                ) from exc
        raise StorageError("could not create a temp file", key=key, backend=self.name)

    def _make_parents(self, key: str, parent: str) -> None:
        try:
            os.makedirs(parent, exist_ok=True)
        except FileNotFoundError:
            pass  # a delete removed an emptied ancestor while we created its child: retried
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidKeyError(
                "key conflicts with an existing object used as a directory", key=key
            ) from exc

    def _put_bytes_sync(self, key: str, data: bytes, meta: dict[str, Any], mode: WriteMode) -> ObjectInfo:
        path = self._path(key)
        temp = self._create_temp(key, path)
        try:
            write_all(temp.fd, [data])
            return self._commit(key, path, temp, len(data), meta, mode)
        except BaseException:
            temp.discard()
            raise

    def _commit(
        self, key: str, path: str, temp: Temp, size: int, meta: dict[str, Any], mode: WriteMode
    ) -> ObjectInfo:
        """Make the temp file ``key``'s new version: sidecar, precondition, renames."""
        fsync = self.settings.fsync
        if fsync:
            os.fsync(temp.fd)
        st = os.fstat(temp.fd)
        temp.close()
        tmp = temp.path
        etag = secrets.token_hex(8)
        record = dict(meta, v=1, etag=etag, ino=st.st_ino, size=size)
        sidecar = meta_path(path)
        mtmp = os.path.join(os.path.dirname(path), TMP_PREFIX + secrets.token_hex(8))
        mfd = os.open(mtmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, 0o644)
        try:
            os.write(mfd, json.dumps(record, separators=(",", ":")).encode())
            if fsync:
                os.fsync(mfd)
        finally:
            os.close(mfd)
        try:
            with self._locks.hold(key):
                if mode != "overwrite":
                    try:
                        current: ObjectInfo | None = self._stat_info(key, path, False)
                    except FileNotFoundError:
                        current = None
                    except _Torn:  # a crash leftover; we hold the lock, so it is not a writer
                        current = self._fallback_info(key, os.stat(path))
                    check_write_mode(current, mode, key, self.name)
                try:
                    os.replace(tmp, path)
                except IsADirectoryError:
                    with contextlib.suppress(OSError):
                        os.rmdir(path)  # an empty leftover directory
                    try:
                        os.replace(tmp, path)
                    except IsADirectoryError as exc:
                        raise InvalidKeyError(
                            "key is a directory of other objects", key=key
                        ) from exc
                os.replace(mtmp, sidecar)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(mtmp)
            raise
        if fsync:
            fsync_dir(os.path.dirname(path))
        return ObjectInfo(
            key=key,
            size=size,
            etag=etag,
            last_modified=datetime.fromtimestamp(st.st_mtime_ns / 1e9, UTC),
            content_type=meta["ct"],
            metadata=meta["meta"],
            cache_control=meta["cc"],
            content_disposition=meta["cd"],
        )

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        validate_key(key)
        removed: bool = await self._run("delete", key, self._remove_sync, key, if_match)
        return removed

    def _remove_sync(self, key: str, if_match: str | None) -> bool:
        path = self._path(key)
        try:
            check_dirs(self._root, key)
        except (FileNotFoundError, NotADirectoryError):
            check_remove_condition(None, if_match, key, self.name)
            return False
        with self._locks.hold(key):
            if if_match is not None:
                try:
                    current: ObjectInfo | None = self._stat_info(key, path, False)
                except (FileNotFoundError, NotADirectoryError):
                    current = None
                except _Torn:
                    current = self._fallback_info(key, os.stat(path))
                check_remove_condition(current, if_match, key, self.name)
            try:
                st = os.stat(path, follow_symlinks=False)
                if not stat_mod.S_ISREG(st.st_mode):
                    return False
                os.unlink(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta_path(path))
        # Drop now-empty parent directories (writers recreate them if they race us).
        parent = os.path.dirname(path)
        root = str(self.root)
        while parent != root and parent.startswith(root):
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)
        return True

    # --- listing ----------------------------------------------------------------------

    async def _walk(self, prefix: str, start_after: str | None) -> AsyncIterator[str]:
        check_listing_args(prefix, start_after)
        dir_rel, _, name_prefix = prefix.rpartition("/")

        async def walk(d: str, name_prefix: str) -> AsyncIterator[str]:
            entries = await self._run("list", prefix, scan_dir, self._root, d, name_prefix, start_after)
            for i, (_, k, is_dir) in enumerate(entries):
                if i % 500 == 499:
                    await asyncio.sleep(0)  # a huge directory must not hold the event loop
                if is_dir:
                    async for sub in walk(k, ""):
                        yield sub
                else:
                    yield k

        async for k in walk(dir_rel, name_prefix):
            yield k

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for k in self._walk(prefix, start_after):
            yield k

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        batch: list[str] = []
        async for k in self._walk(prefix, start_after):
            batch.append(k)
            if len(batch) >= 256:
                for info in await self._run("list", prefix, self._infos, batch):
                    yield info
                batch = []
        if batch:
            for info in await self._run("list", prefix, self._infos, batch):
                yield info

    def _infos(self, keys: list[str]) -> list[ObjectInfo]:
        out = []
        for k in keys:
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                out.append(self._head_sync(k))  # deleted since the scan: skip
        return out

    # --- URLs, health -------------------------------------------------------------------

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        validate_key(key)
        return self._signer.sign(
            key, expires_in=expires_in or self.default_expires_in, download=download, method=method
        )

    async def ping(self) -> None:
        await self._run("ping", None, self._ping_sync)

    def _ping_sync(self) -> None:
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "base_path is not writable")

    async def aclose(self) -> None:
        self._locks.close()


class _Torn(Exception):
    """The sidecar read does not describe the data file read (a writer is mid-commit)."""


async def _once(data: bytes) -> AsyncIterator[bytes]:
    if data:
        yield data


