"""The :class:`CDN` layer: CDN URLs for reads, cache purges after writes."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

from .._base import StorageBackend
from .._errors import ConfigurationError, InvalidArgumentError, StorageError, UnsupportedError
from .._keys import RESERVED_PREFIX, reserved_keys, validate_key, validate_prefix
from .._types import Body, CommonPrefix, ObjectInfo, WriteMode
from ..cdn._purge import Purger
from ..cdn._urls import CDNUrls, CloudFrontURLs, attachment, cdn_path
from ._layer import Layer
from ._retry import Retry

__all__ = ["CDN"]

log = logging.getLogger("unistore.layers.cdn")

PURGE_OUTBOX = RESERVED_PREFIX + "/cdn-purges/"


_T = TypeVar("_T")
_METRICS: weakref.WeakKeyDictionary[Any, tuple[Any, Any, Any]] = weakref.WeakKeyDictionary()


def _metrics(option: Any) -> tuple[Any, Any, Any] | None:
    """(purged URLs, failed URLs, queue depth) in ``option``'s registry (see :class:`CDN`)."""
    if option is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        if option is None:
            return None
        raise ConfigurationError("metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if option is None or option is True else option
    found = _METRICS.get(registry)
    if found is None:
        purged = prometheus_client.Counter(
            "unistore_cdn_purged_urls", "CDN URLs (or wildcards) purged.", ["backend"], registry=registry
        )
        failed = prometheus_client.Counter(
            "unistore_cdn_purge_failures",
            "CDN URLs whose purge failed (retried later).",
            ["backend"],
            registry=registry,
        )
        depth = prometheus_client.Gauge(
            "unistore_cdn_purge_queue",
            "CDN URLs queued or failed, waiting for a purge.",
            ["backend"],
            registry=registry,
        )
        found = _METRICS[registry] = (purged, failed, depth)
    return found


async def _hide(found: AsyncIterator[_T], name: Callable[[_T], str]) -> AsyncIterator[_T]:
    async for item in found:
        if not name(item).startswith(RESERVED_PREFIX):
            yield item


class CDN(Layer):
    """Serves a store through a CDN: ``get_url``/``sign_url`` (and so ``put``) answer the CDN URL
    that ``urls`` makes, and writes purge the CDN's cached copy through ``purger``.

    URLs: a public store (``private=False``) gets the plain CDN URL; a private one a signed CDN
    URL (CloudFront, BunnyCDN) valid for ``expires_in``, or, when the CDN cannot sign (a plain
    R2 or Spaces domain), the store's own signed URL. ``download=True`` adds ``urls.download_param``
    (an ``attachment`` disposition with the key's file name) and raises :class:`UnsupportedError`
    where the CDN has none. URLs for other methods than GET and HEAD (uploads) are the store's.

    Purges: an overwrite (any write but ``mode="create"``), a copy onto a key, a metadata change
    and a delete that removed something queue the key's CDN URL. The queue is flushed
    ``batch_delay`` seconds after the first write (or by :meth:`flush`): URLs are de-duplicated;
    with ``wildcard_after``, more than that many under one folder are one ``folder/*``
    (CloudFront bills per path); past ``max_queue`` queued URLs, one ``{base_url}/*``; batches
    are the purger's ``max_batch``. Each batch is retried on :class:`TransientError` with
    :class:`Retry`'s schedule (``attempts``; ``sleep`` replaces its ``asyncio.sleep``), with the
    same ``reference`` each time. A batch that still fails never fails the write: its URLs are
    kept in :attr:`failed_purges`, logged, and tried again ``retry_interval`` seconds later and
    on every flush; with an ``outbox`` store they are also recorded there (under
    ``.unistore/cdn-purges/``, hidden from this layer's listings), so a restarted process
    retries them. :meth:`aclose` flushes what is left (for at most ``close_timeout`` seconds)
    and closes the purger. ``metrics`` (a Prometheus registry, ``True`` for the global one,
    ``None`` for the global one if prometheus_client is installed, or ``False``) counts purged
    and failed URLs and gauges the queue.

    Where it belongs: outside Retry and RateLimit, inside Observe; never above a layer that changes
    bytes (Compress, Encrypt: the CDN would serve the stored bytes), which raises
    :class:`ConfigurationError`.
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        urls: CDNUrls,
        purger: Purger | None = None,
        private: bool = False,
        batch_delay: float = 0.5,
        wildcard_after: int | None = None,
        attempts: int = 5,
        retry_interval: float = 60.0,
        close_timeout: float = 10.0,
        max_queue: int = 100_000,
        outbox: StorageBackend | None = None,
        metrics: Any = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(inner)
        if not isinstance(urls, CDNUrls):
            raise ConfigurationError("urls must be a CDN URL maker (CloudFrontURLs, BunnyURLs, PlainCDN)")
        below = inner.layers() if isinstance(inner, Layer) else [inner]
        if any(getattr(node, "transforms_bodies", False) for node in below):
            raise ConfigurationError(
                "a CDN serves the bytes the store holds: put CDN below Compress and Encrypt, not above"
            )
        if batch_delay < 0 or retry_interval <= 0 or close_timeout < 0:
            raise ConfigurationError("batch_delay and close_timeout must be >= 0, retry_interval > 0")
        if max_queue < 1:
            raise ConfigurationError("max_queue must be >= 1")
        if wildcard_after is not None and wildcard_after < 1:
            raise ConfigurationError("wildcard_after must be >= 1")
        self.urls = urls
        self.purger = purger
        self.private = private
        self.batch_delay = batch_delay
        self.wildcard_after = wildcard_after
        self.retry_interval = retry_interval
        self.close_timeout = close_timeout
        self._clock = clock
        self._retry = Retry(inner, attempts=attempts, sleep=sleep)
        self._pending: dict[str, None] = {}
        self._failed: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self.max_queue = max_queue
        self.outbox = outbox
        self._metrics = _metrics(metrics)
        self._outbox_loaded = False
        self._recorded: set[str] = set()
        self.purged = 0
        """URLs (or wildcards) purged so far."""
        self.purge_requests = 0
        """Batches sent to the purger so far (what CloudFront bills by path is :attr:`purged`)."""

    def __repr__(self) -> str:
        return f"CDN({self.inner!r}, base_url={self.urls.base_url!r})"

    # --- URLs ---------------------------------------------------------------------------

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        if method.upper() not in ("GET", "HEAD") or (self.private and not self.urls.signs):
            return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)
        validate_key(key)
        url = self.urls.url(key)
        if download:
            if self.urls.download_param is None:
                raise UnsupportedError(
                    "this CDN has no download parameter: set download_param to one an edge rule answers",
                    key=key,
                    operation="sign_url",
                )
            url += f"?{quote(self.urls.download_param, safe='')}={quote(attachment(key), safe='')}"
        if not self.private:
            return url
        seconds = self.default_expires_in if expires_in is None else expires_in
        if seconds <= 0:
            raise InvalidArgumentError("expires_in must be > 0", key=key, operation="sign_url")
        return self.urls.sign(url, expires_at=int(self._clock()) + int(seconds))

    def signed_cookies(self, prefix: str = "", *, expires_in: int | None = None) -> dict[str, str]:
        """CloudFront signed cookies granting every key under ``prefix`` (a ``*`` policy)."""
        if not isinstance(self.urls, CloudFrontURLs):
            raise UnsupportedError("signed cookies are CloudFront's", operation="signed_cookies")
        validate_prefix(prefix)
        seconds = self.default_expires_in if expires_in is None else expires_in
        resource = self.urls.base_url + cdn_path(prefix) + "*"
        return self.urls.cookies(resource, expires_at=int(self._clock()) + int(seconds))

    # --- writes that purge --------------------------------------------------------------

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
        info = await self.inner.put_object(
            key,
            body,
            content_type=content_type,
            metadata=metadata,
            mode=mode,
            cache_control=cache_control,
            content_disposition=content_disposition,
        )
        if mode != "create":
            self._enqueue(key)
        return info

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        removed = await self.inner.remove(key, if_match=if_match)
        if removed:
            self._enqueue(key)
        return removed

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        info = await self.inner.copy(src, dst, mode=mode)
        if mode != "create":
            self._enqueue(dst)
        return info

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        info = await self.inner.replace_metadata(key, metadata, if_match=if_match)
        self._enqueue(key)
        return info

    # --- listings: the store's, without the purge outbox -------------------------------

    def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        found = self.inner.iter_objects(prefix, start_after=start_after)
        return found if self.outbox is None else _hide(found, lambda info: info.key)

    def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        found = self.inner.iter_keys(prefix, start_after=start_after)
        return found if self.outbox is None else _hide(found, lambda key: key)

    def iter_entries(
        self, prefix: str = "", *, delimiter: str = "/", start_after: str | None = None
    ) -> AsyncIterator[ObjectInfo | CommonPrefix]:
        found = self.inner.iter_entries(prefix, delimiter=delimiter, start_after=start_after)
        if self.outbox is None:
            return found
        return _hide(found, lambda e: e.prefix if isinstance(e, CommonPrefix) else e.key)

    # --- the purge queue ----------------------------------------------------------------

    @property
    def pending_purges(self) -> tuple[str, ...]:
        """CDN URLs queued for the next flush."""
        return tuple(self._pending)

    @property
    def failed_purges(self) -> dict[str, str]:
        """CDN URLs whose purge failed, with the last error; retried on the next flush."""
        return dict(self._failed)

    def _enqueue(self, key: str) -> None:
        if self.purger is None:
            return
        everything = self.urls.base_url + "/*"
        if everything not in self._pending:
            self._pending[self.urls.url(key)] = None
        if len(self._pending) + len(self._failed) > self.max_queue and self.purger.wildcards:
            self._failed.clear()  # too many to track one by one: purge the whole distribution once
            self._pending = {everything: None}
        self._gauge()
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._run(), name="unistore-cdn-purge")

    async def _run(self) -> None:
        delay = self.batch_delay
        while True:
            await asyncio.sleep(delay)
            try:
                await self.flush()
            except Exception:  # a bug must not kill the queue silently
                log.exception("CDN purge flush failed")
            if not self._pending and not self._failed:
                return
            delay = self.batch_delay if self._pending else self.retry_interval

    def _coalesce(self, urls: list[str]) -> list[str]:
        assert self.purger is not None
        everything = self.urls.base_url + "/*"
        if everything in urls:
            return [everything]
        if not self.purger.wildcards or self.wildcard_after is None:
            return urls
        folders: dict[str, list[str]] = {}
        for url in urls:
            folders.setdefault(url.rsplit("/", 1)[0] + "/", []).append(url)
        out: list[str] = []
        for folder, members in folders.items():
            out.extend([folder + "*"] if len(members) > self.wildcard_after else members)
        return out

    async def flush(self) -> None:
        """Purge every queued and every failed URL now; failures are recorded, never raised."""
        if self.purger is None:
            return
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        purger = self.purger
        async with self._lock:
            if self.outbox is not None and not self._outbox_loaded:
                await self._load_outbox()
            urls = list(dict.fromkeys([*self._failed, *self._pending]))
            self._failed = {}
            self._pending.clear()
            batches = self._coalesce(urls)
            done = 0
            try:
                for done in range(0, len(batches), purger.max_batch):
                    batch = batches[done : done + purger.max_batch]
                    try:
                        await self._retry._around(
                            "purge", None, functools.partial(purger.purge, batch, reference=uuid.uuid4().hex)
                        )
                    except StorageError as exc:
                        for url in batch:
                            self._failed[url] = str(exc)
                        log.warning("CDN purge of %d URL(s) failed, will retry: %s", len(batch), exc)
                        if self._metrics is not None:
                            self._metrics[1].labels(self.name).inc(len(batch))
                        continue
                    self.purge_requests += 1
                    self.purged += len(batch)
                    if self._metrics is not None:
                        self._metrics[0].labels(self.name).inc(len(batch))
            except BaseException:  # cancelled (a close that timed out): keep what was not purged
                for url in batches[done:]:
                    self._failed.setdefault(url, "interrupted")
                raise
            finally:
                self._gauge()
                if self.outbox is not None:
                    await asyncio.shield(self._sync_outbox())

    def _gauge(self) -> None:
        if self._metrics is not None:
            self._metrics[2].labels(self.name).set(len(self._pending) + len(self._failed))

    # --- the durable record of failed purges ----------------------------------------------

    def _entry_key(self, url: str) -> str:
        return PURGE_OUTBOX + hashlib.sha256(url.encode("utf-8", "surrogatepass")).hexdigest()

    async def _load_outbox(self) -> None:
        """Take the failed purges recorded by an earlier process into :attr:`failed_purges`."""
        assert self.outbox is not None
        self._outbox_loaded = True
        try:
            with reserved_keys():
                keys = [k async for k in self.outbox.iter_keys(PURGE_OUTBOX)]
                for entry_key in keys:
                    doc = json.loads(await self.outbox.get(entry_key))
                    self._failed.setdefault(str(doc["url"]), str(doc.get("error", "")))
                    self._recorded.add(str(doc["url"]))
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            log.error("could not read the CDN purge outbox: %s", exc)

    async def _sync_outbox(self) -> None:
        """Record the URLs still failing and forget the ones purged since."""
        assert self.outbox is not None
        try:
            with reserved_keys():
                for url in [u for u in self._failed if u not in self._recorded]:
                    doc = {"url": url, "error": self._failed[url][:500], "since": time.time()}
                    await self.outbox.put_object(
                        self._entry_key(url), json.dumps(doc).encode(), content_type="application/json"
                    )
                    self._recorded.add(url)
                for url in [u for u in self._recorded if u not in self._failed]:
                    await self.outbox.remove(self._entry_key(url))
                    self._recorded.discard(url)
        except StorageError as exc:
            log.error("could not update the CDN purge outbox: %s", exc)

    async def aclose(self) -> None:
        """Flush the purge queue (for at most ``close_timeout`` seconds), close the purger and the store."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self.purger is not None:
            if self._pending or self._failed:
                try:
                    await asyncio.wait_for(self.flush(), self.close_timeout)
                except TimeoutError:
                    log.warning("CDN purge flush on close timed out")
            if self._failed:
                where = "kept in the outbox" if self.outbox is not None else "lost"
                log.warning("CDN purges not done on close (%s): %s", where, sorted(self._failed))
            await self.purger.aclose()
        await self.inner.aclose()
