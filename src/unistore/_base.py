"""The ``StorageBackend`` protocol and the base class that gives every backend the spec's seven methods.

Backends implement a few **primitives** (``head``, ``open``, ``put_object``,
``remove``, ``iter_objects``, ``sign_url``, ``ping``, ``aclose``; optionally
``iter_keys`` and ``copy`` where they do them natively better). The spec's
methods (``put``, ``get``, ``delete``, ``exists``, ``get_url``, ``list_keys``,
``get_metadata``) are **conveniences** written once here on top of them.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from ._errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidArgumentError,
    InvalidKeyError,
    NotFoundError,
    NotModifiedError,
    PreconditionFailedError,
    StorageError,
    UnsupportedError,
)
from ._keys import validate_prefix
from ._types import (
    Body,
    Capabilities,
    CommonPrefix,
    Download,
    IfMatch,
    ObjectInfo,
    Range,
    WriteMode,
    current_storage_class,
    normalize_metadata,
)

__all__ = ["BaseBackend", "StorageBackend", "iter_body", "signing_for_put"]

_FOR_PUT: ContextVar[bool] = ContextVar("unistore_signing_for_put", default=False)


def signing_for_put() -> bool:
    """Whether the ``sign_url`` running now makes the URL that ``put`` returns.

    The write and its URL are one operation for the caller: layers that count operations
    (RateLimit's tokens, Observe's metrics and logs) count the write and not this URL, wherever
    they sit in a stack (the layers above them call ``put_object`` and ``sign_url`` apart).
    """
    return _FOR_PUT.get()


DEFAULT_CHUNK_SIZE = 1024 * 1024
_PAST = "\U0010ffff"  # sorts after every character a key can hold: folder + _PAST skips the folder


@runtime_checkable
class StorageBackend(Protocol):
    """What every unistore backend and layer provides.

    The first seven methods are the spec's public API; the rest are the
    primitives they are built on, available to callers that need streaming,
    ranges, preconditions or lazy listing.
    """

    @property
    def capabilities(self) -> Capabilities: ...
    @property
    def name(self) -> str: ...

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str: ...
    async def get(self, key: str) -> bytes: ...
    async def delete(self, key: str) -> bool: ...
    async def exists(self, key: str) -> bool: ...
    async def get_url(self, key: str, expires_in: int | None = 3600, download: bool = False) -> str: ...
    async def list_keys(self, prefix: str = "", limit: int = 1000) -> list[str]: ...
    async def get_metadata(self, key: str) -> dict[str, Any]: ...

    async def head(self, key: str) -> ObjectInfo: ...
    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download: ...
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
    ) -> ObjectInfo: ...
    async def remove(self, key: str, *, if_match: str | None = None) -> bool: ...
    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]: ...
    def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]: ...
    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]: ...
    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str: ...
    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo: ...
    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo: ...
    async def ping(self) -> None: ...
    async def aclose(self) -> None: ...


class BaseBackend(ABC):
    """Base class of every backend and layer: primitives abstract, the spec's methods concrete."""

    capabilities: ClassVar[Capabilities] = Capabilities()
    default_expires_in: int = 3600

    @property
    def name(self) -> str:
        """The backend's class name, as the health check reports it."""
        return type(self).__name__

    # --- primitives ---------------------------------------------------------------

    @abstractmethod
    async def head(self, key: str) -> ObjectInfo:
        """Behavior: return the object's :class:`ObjectInfo`; :class:`NotFoundError` if absent."""

    @abstractmethod
    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        """Behavior: start a streaming read of one consistent version of the object.

        ``range`` selects a half-open span (clamped at the end; a start past the
        end raises :class:`InvalidRangeError`). ``if_match`` raises
        :class:`PreconditionFailedError` unless it equals the etag;
        ``if_none_match`` raises :class:`NotModifiedError` if it equals the etag
        (``"*"`` matches any). A missing object raises :class:`NotFoundError`.
        """

    @abstractmethod
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
        """Behavior: store ``body`` atomically and return the new object's info.

        Readers see the old object or the new one, never a mix. ``mode="create"``
        raises :class:`AlreadyExistsError` if the key exists; ``IfMatch(etag)``
        raises :class:`PreconditionFailedError` unless the stored etag is
        ``etag``. Both are decided atomically with the write. Metadata is
        validated (see ``normalize_metadata``) before anything is written. A
        missing ``content_type`` is guessed from the key's extension. A failure
        while reading ``body`` leaves the stored object untouched.
        """

    @abstractmethod
    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        """Behavior: delete the object; ``True`` if it existed, ``False`` if not (never raises
        for a missing key). ``if_match`` raises :class:`PreconditionFailedError` on mismatch."""

    @abstractmethod
    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        """Behavior: lazily yield every object whose key starts with ``prefix`` and sorts
        after ``start_after``, in ascending code-point order, fetching pages as needed."""

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        """Behavior: the keys of :meth:`iter_objects`, in the same order. Backends that can
        list names more cheaply than full infos override it."""
        async for info in self.iter_objects(prefix, start_after=start_after):
            yield info.key

    async def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        """Behavior: one level of the listing under ``prefix``: each object whose key has no
        ``delimiter`` after ``prefix``, and one :class:`CommonPrefix` per distinct
        ``prefix + segment + delimiter`` standing for every key below it. Entries come in
        ascending code-point order of their key or prefix, only those sorting after
        ``start_after`` (so the last entry's name is a resumable cursor), fetched lazily.
        The default jumps over each folder with a new :meth:`iter_objects` from past it;
        backends with a native delimiter listing override it."""
        check_listing_args(prefix, start_after)
        if not isinstance(delimiter, str) or not delimiter:
            raise InvalidArgumentError("delimiter must be a non-empty str")
        after, last = start_after, None
        while True:
            folder = None
            async for info in self.iter_objects(prefix, start_after=after):
                cut = info.key.find(delimiter, len(prefix))
                if cut < 0:
                    yield info
                    after = info.key
                    continue
                folder = info.key[: cut + len(delimiter)]
                if folder == last:  # a key past the jump target but still inside the folder
                    after = info.key
                    continue
                break
            if folder is None or folder == last:
                return
            if start_after is None or folder > start_after:
                yield CommonPrefix(folder)
            after, last = folder + _PAST, folder

    @abstractmethod
    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        """Behavior: a URL granting ``method`` on ``key`` for ``expires_in`` seconds
        (default: the backend's ``default_expires_in``); ``download=True`` makes the
        response an attachment. Does not check that the object exists."""

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        """Behavior: copy ``src`` to ``dst`` with content type and metadata, streaming.
        Backends with a native copy override this (``capabilities.server_side_copy``)."""
        async with await self.open(src) as dl:
            info = dl.info
            return await self.put_object(
                dst,
                dl,
                content_type=info.content_type,
                metadata=info.metadata,
                mode=mode,
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        """Behavior: replace the custom metadata of ``key``, keeping its body, content type,
        cache-control and content-disposition, and return the new info. ``if_match`` raises
        :class:`PreconditionFailedError` unless it equals the current etag, decided atomically
        with the update; a missing object raises :class:`NotFoundError`. Readers see the old
        metadata or the new, never a mix. The default streams the object onto itself with
        ``IfMatch`` (so a concurrent write is never overwritten); backends that can change
        metadata alone override it."""
        meta = normalize_metadata(metadata)
        # "*" asks only that the object exist, which the read checks anyway (not every S3 server takes it on GET)
        async with await self.open(key, if_match=None if if_match == "*" else if_match) as dl:
            info = dl.info
            return await self.put_object(
                key,
                dl,
                content_type=info.content_type,
                metadata=meta,
                mode=IfMatch(info.etag),
                cache_control=info.cache_control,
                content_disposition=info.content_disposition,
            )

    @abstractmethod
    async def ping(self) -> None:
        """Behavior: return if the store is reachable and usable; raise a StorageError if not."""

    async def aclose(self) -> None:  # noqa: B027 - a no-op default is the right default
        """Behavior: release clients and handles; safe to call twice."""

    async def __aenter__(self) -> BaseBackend:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the spec's methods ---------------------------------------------------------

    async def put(
        self,
        key: str,
        data: Body,
        content_type: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> str:
        """Store ``data`` under ``key`` and return a URL for it (signed, default expiry).

        A write that succeeded never fails for want of a URL: if none can be signed (e.g. GCS
        credentials without the right to sign), the store's unsigned URL is returned (it serves
        public objects; ``get_url`` gives a signed one when signing works), with a warning.
        """
        await self.put_object(key, data, content_type=content_type, metadata=metadata)
        return await url_after_put(self, key)

    async def get(self, key: str) -> bytes:
        """The object's bytes; :class:`NotFoundError` (a ``FileNotFoundError``) if absent."""
        return await (await self.open(key)).read()

    async def delete(self, key: str) -> bool:
        """Delete ``key``: ``True`` if it was deleted, ``False`` if it did not exist."""
        return await self.remove(key)

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists. An invalid key raises :class:`InvalidKeyError`."""
        try:
            await self.head(key)
        except NotFoundError:
            return False
        return True

    async def get_url(self, key: str, expires_in: int | None = 3600, download: bool = False) -> str:
        """A signed URL for an existing object; :class:`NotFoundError` if absent."""
        await self.head(key)
        return await self.sign_url(key, expires_in=expires_in, download=download)

    async def list_keys(self, prefix: str = "", limit: int = 1000) -> list[str]:
        """Up to ``limit`` keys starting with ``prefix``, in ascending order."""
        if limit <= 0:
            return []
        keys: list[str] = []
        async for key in self.iter_keys(prefix):
            keys.append(key)
            if len(keys) >= limit:
                break
        return keys

    async def get_metadata(self, key: str) -> dict[str, Any]:
        """Custom metadata at the top level plus the system fields of :meth:`ObjectInfo.as_dict`."""
        return (await self.head(key)).as_dict()


async def url_after_put(store: StorageBackend, key: str) -> str:
    """The URL ``put`` returns for ``key`` just stored in ``store``: signed, else (with a warning)
    the store's unsigned URL when it has one. Signed under :func:`signing_for_put`."""
    marker = _FOR_PUT.set(True)
    try:
        return await store.sign_url(key)
    except StorageError as exc:
        plain = _unsigned_url(store, key)
        if plain is None:
            raise
        logging.getLogger("unistore").warning("stored %r but could not sign a URL for it (%s)", key, exc)
        return plain
    finally:
        _FOR_PUT.reset(marker)


def check_listing_args(prefix: str, start_after: str | None) -> None:
    """Shared validation of listing arguments."""
    validate_prefix(prefix)
    if start_after is not None and not isinstance(start_after, str):
        raise InvalidKeyError("start_after must be a str")


async def iter_body(body: Body, chunk_size: int = DEFAULT_CHUNK_SIZE) -> AsyncIterator[bytes]:
    """Yield ``body`` as chunks of bytes, reading files in a thread.

    Accepts bytes-likes, async iterables of bytes, binary file objects (sync
    ``read`` in a thread, or an async ``read`` such as FastAPI's ``UploadFile``)
    and paths.
    """
    if isinstance(body, bytes):
        yield body
    elif isinstance(body, bytearray | memoryview):
        yield bytes(body)
    elif isinstance(body, str):
        raise TypeError("body must be bytes, not str: encode it first")
    elif isinstance(body, os.PathLike):
        f = await asyncio.to_thread(open, os.fspath(body), "rb")
        try:
            while chunk := await asyncio.to_thread(f.read, chunk_size):
                yield chunk
        finally:
            await asyncio.to_thread(f.close)
    elif isinstance(body, AsyncIterable):
        async for chunk in body:
            if not isinstance(chunk, bytes | bytearray | memoryview):
                raise TypeError(f"body chunks must be bytes, not {type(chunk).__name__}")
            if chunk:
                yield bytes(chunk) if not isinstance(chunk, bytes) else chunk
    elif hasattr(body, "read"):
        read: Any = body.read
        if inspect.iscoroutinefunction(read):
            while chunk := await read(chunk_size):
                yield chunk
        else:
            while chunk := await asyncio.to_thread(read, chunk_size):
                yield chunk
    else:
        raise TypeError(f"unsupported body type {type(body).__name__}")


_S = TypeVar("_S")


def _unsigned_url(store: object, key: str) -> str | None:
    """The unsigned URL of ``key`` from the innermost store that has one (``unsigned_url``), if any."""
    node: object | None = store
    while node is not None:
        method = getattr(node, "unsigned_url", None)
        if callable(method):
            url: str = method(key)
            return url
        node = getattr(node, "inner", None)
    return None


def settings_from(cls: Callable[..., _S], settings: _S | None, options: Mapping[str, Any]) -> _S:
    """``settings``, else ``cls(**options)`` (a backend's or layer's two ways to be configured; not both)."""
    if settings is None:
        return cls(**options)
    if options:
        raise ConfigurationError("pass either settings or keyword options, not both")
    if isinstance(cls, type) and not isinstance(settings, cls):
        hint = f"; for a URL pass url={settings!r}" if isinstance(settings, str) else ""
        raise ConfigurationError(
            f"settings must be a {cls.__name__}, not {type(settings).__name__} (or pass keyword options){hint}"
        )
    return settings


def quote_etag(etag: str) -> str:
    """An etag as an HTTP entity tag (RFC 9110 §8.8.3); ``*`` and quoted or weak tags unchanged."""
    etag = etag.strip()
    if etag == "*" or etag.startswith(('"', 'W/"')) or '"' in etag:
        return etag
    return f'"{etag}"'


async def path_size(path: os.PathLike[str]) -> int:
    """The size of the file at ``path`` (stat in a thread), or -1 if it cannot be read:
    the caller's streaming path then raises the file's own error."""
    try:
        return (await asyncio.to_thread(os.stat, path)).st_size
    except OSError:
        return -1


def _bare(etag: str) -> str:
    """An etag without HTTP quoting (``W/"x"`` and ``"x"`` → ``x``)."""
    if etag.startswith("W/"):
        etag = etag[2:]
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


def check_read_conditions(info: ObjectInfo, if_match: str | None, if_none_match: str | None, backend: str) -> None:
    """Apply read preconditions to the current version (RFC 9110 §13.1.1, §13.1.2)."""
    if if_match is not None and if_match != "*" and _bare(if_match) != info.etag:
        raise PreconditionFailedError(
            "if_match does not match the current etag", key=info.key, backend=backend, operation="open"
        )
    if if_none_match is not None and (if_none_match == "*" or _bare(if_none_match) == info.etag):
        raise NotModifiedError(etag=info.etag, key=info.key, backend=backend, operation="open")


def check_write_mode(current: ObjectInfo | None, mode: WriteMode, key: str, backend: str) -> None:
    """Decide a conditional write against the current version (``None`` if absent).

    Callers hold whatever makes the check and the write one atomic step.
    """
    if mode == "overwrite":
        return
    if mode == "create":
        if current is not None:
            raise AlreadyExistsError("key already exists", key=key, backend=backend, operation="put")
        return
    if isinstance(mode, IfMatch):
        if current is None:
            raise PreconditionFailedError("if_match write on a missing key", key=key, backend=backend, operation="put")
        if mode.etag != "*" and _bare(mode.etag) != current.etag:
            raise PreconditionFailedError(
                "if_match does not match the current etag", key=key, backend=backend, operation="put"
            )
        return
    raise TypeError(f"invalid write mode {mode!r}")


def check_remove_condition(current: ObjectInfo | None, if_match: str | None, key: str, backend: str) -> None:
    """``if_match`` on delete: a missing key or another etag fails (412)."""
    if if_match is None:
        return
    if current is None or (if_match != "*" and _bare(if_match) != current.etag):
        raise PreconditionFailedError(
            "if_match does not match the current etag", key=key, backend=backend, operation="delete"
        )


def refuse_storage_class(backend: str, key: str) -> None:
    """:class:`UnsupportedError` when a write is asked for a storage class (:func:`~unistore.storage_class`)
    on a store that has none, before a byte is read: a silently ignored class would cost money later."""
    wanted = current_storage_class()
    if wanted is not None:
        raise UnsupportedError(
            f"{backend} has no storage classes (asked for {wanted})", key=key, backend=backend, operation="put"
        )
