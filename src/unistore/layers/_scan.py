"""Malware scanning of every write with ClamAV (``clamd``), before anything is committed.

``Scan(inner, scanner="unix:///run/clamav/clamd.ctl")`` streams each body to
clamd (``INSTREAM``) while it streams into the store. Two modes:

- ``"reject"`` (default): the body streams to clamd and into the inner
  store's write at the same time; the verdict is awaited before the body's end
  is handed over, and an infected body fails the inner write, which stores
  nothing (every store's writes are atomic). The caller gets
  :class:`MalwareFoundError` (422) with the signature name.
- ``"quarantine"``: the body is spooled (memory up to 1 MiB, then a temporary
  file) while it is scanned; a clean body is then stored under its key, an
  infected one under ``quarantine_prefix`` + key (the caller still gets
  :class:`MalwareFoundError`, with ``quarantine_key``). Every object written
  records the verdict in its metadata: ``scan-verdict`` (``clean``,
  ``infected`` or ``unscanned``), ``scan-signature`` and ``scan-engine``; callers cannot set ``scan-*``
  names, and ``replace_metadata`` keeps them.

When clamd is down or times out the write fails with
:class:`ScannerUnavailableError` (503 with ``Retry-After``) and stores nothing
(fail-closed). With ``fail_open=True`` it is stored unscanned instead, logged,
and counted in ``unscanned_writes`` and the Prometheus counter
``unistore_scan_unscanned_writes_total``.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import weakref
from collections.abc import AsyncIterator, Mapping
from typing import IO, Any, Literal

from .._base import StorageBackend, iter_body
from .._errors import (
    ConfigurationError,
    InvalidMetadataError,
    NotFoundError,
    PermissionDeniedError,
    UnsupportedError,
)
from .._keys import RESERVED_PREFIX, reserved_keys, validate_key
from .._types import Body, Download, ObjectInfo, Range, WriteMode
from ..scanners._clamd import (
    ClamdClient,
    InstreamSession,
    MalwareFoundError,
    ScannerUnavailableError,
    ScanResult,
)
from ._layer import Layer, replace_keeping

__all__ = ["QUARANTINE_PREFIX", "Scan", "ScanMode"]

LOGGER = logging.getLogger("unistore.scan")

ScanMode = Literal["reject", "quarantine"]

QUARANTINE_PREFIX = RESERVED_PREFIX + "/quarantine/"
"""Where quarantine mode keeps infected bodies by default: in the reserved namespace no user key can name."""

_SPOOL_IN_MEMORY = 1024 * 1024

VERDICT = "scan-verdict"
SIGNATURE = "scan-signature"
ENGINE = "scan-engine"
ORIGINAL_KEY = "scan-key"


def _owned_by_scan(name: str) -> bool:
    """Whether a metadata name holds a scan verdict."""
    return name.lower().startswith(_SCAN_PREFIX)


class Scan(Layer):
    """Scans every write with ``scanner`` (a :class:`ClamdClient` or its URL); see the module docs for modes.

    Where it belongs: under Observe (refusals are measured) and Validate (cheap
    refusals and the size limit come before a scan), above Idempotency, Cache,
    Compress and Encrypt: it must see the bytes the client sent, and it refuses
    a write before anything below it stores it. Keys under ``quarantine_prefix``
    cannot be read, listed, written, copied or signed through this layer (they
    answer :class:`NotFoundError`); review them with :meth:`iter_quarantined` and
    :meth:`open_quarantined`. ``copy`` forwards (the source was scanned when it
    was written); signed ``PUT``/``POST`` URLs would skip the scan, so they are
    refused (:class:`UnsupportedError`). ``metrics`` is a Prometheus
    ``CollectorRegistry`` for the counters (``None``: the default registry,
    ``False``: none).
    """

    def __init__(
        self,
        inner: StorageBackend,
        *,
        scanner: ClamdClient | str | None = None,
        mode: ScanMode = "reject",
        fail_open: bool = False,
        quarantine_prefix: str = QUARANTINE_PREFIX,
        metrics: Any = False,
    ) -> None:
        super().__init__(inner)
        if mode not in ("reject", "quarantine"):
            raise ConfigurationError("Scan mode must be 'reject' or 'quarantine'")
        if not quarantine_prefix.endswith("/") or quarantine_prefix.startswith("/"):
            raise ConfigurationError("quarantine_prefix must be a key prefix ending in '/'")
        self.scanner = scanner if isinstance(scanner, ClamdClient) else ClamdClient(scanner)
        self.mode: ScanMode = mode
        self.fail_open = fail_open
        self.quarantine_prefix = quarantine_prefix
        self.unscanned_writes = 0
        self._counters = _counters(metrics)

    def __repr__(self) -> str:
        return f"Scan({self.inner!r}, mode={self.mode!r})"

    # --- the quarantine is out of reach ---------------------------------------------------

    def _hidden(self, key: str) -> bool:
        return key.startswith(self.quarantine_prefix)

    def _guard(self, key: str, operation: str) -> None:
        if self._hidden(key):
            raise NotFoundError("no such object", key=key, operation=operation)

    async def head(self, key: str) -> ObjectInfo:
        self._guard(key, "head")
        return await self.inner.head(key)

    async def open(
        self,
        key: str,
        *,
        range: Range | None = None,
        if_match: str | None = None,
        if_none_match: str | None = None,
    ) -> Download:
        self._guard(key, "open")
        return await self.inner.open(key, range=range, if_match=if_match, if_none_match=if_none_match)

    async def remove(self, key: str, *, if_match: str | None = None) -> bool:
        if self._hidden(key):
            return False
        return await self.inner.remove(key, if_match=if_match)

    async def iter_objects(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[ObjectInfo]:
        async for info in self.inner.iter_objects(prefix, start_after=start_after):
            if not self._hidden(info.key):
                yield info

    async def iter_keys(self, prefix: str = "", *, start_after: str | None = None) -> AsyncIterator[str]:
        async for key in self.inner.iter_keys(prefix, start_after=start_after):
            if not self._hidden(key):
                yield key

    async def copy(self, src: str, dst: str, *, mode: WriteMode = "overwrite") -> ObjectInfo:
        self._guard(src, "copy")
        if self._hidden(dst):
            raise PermissionDeniedError("the quarantine is not writable", key=dst, operation="copy")
        return await self.inner.copy(src, dst, mode=mode)

    async def replace_metadata(
        self, key: str, metadata: Mapping[str, Any] | None, *, if_match: str | None = None
    ) -> ObjectInfo:
        self._guard(key, "replace_metadata")
        if self.mode == "reject":
            return await self.inner.replace_metadata(key, metadata, if_match=if_match)
        # The verdict stays as the scan recorded it: callers cannot set it, and a replacement keeps it.
        _check_metadata(key, metadata)
        return await replace_keeping(
            self.inner, key, metadata or {}, _owned_by_scan, if_match=if_match, layer=self.name
        )

    async def sign_url(
        self, key: str, *, expires_in: int | None = None, download: bool = False, method: str = "GET"
    ) -> str:
        self._guard(key, "sign_url")
        if method.upper() not in ("GET", "HEAD"):
            raise UnsupportedError(
                f"a signed {method.upper()} URL would bypass malware scanning", key=key, operation="sign_url"
            )
        return await self.inner.sign_url(key, expires_in=expires_in, download=download, method=method)

    async def ping(self) -> None:
        await self.inner.ping()
        if not self.fail_open:
            await self.scanner.ping()

    # --- writes -----------------------------------------------------------------------------

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
        if self._hidden(key):
            raise PermissionDeniedError("the quarantine is not writable", key=key, operation="put")
        validate_key(key)
        options: dict[str, Any] = {
            "content_type": content_type,
            "mode": mode,
            "cache_control": cache_control,
            "content_disposition": content_disposition,
        }
        if self.mode == "quarantine":
            _check_metadata(key, metadata)
        if self.mode == "reject":
            session = await self._session(key)
            try:
                return await self.inner.put_object(key, self._scanned(key, body, session), metadata=metadata, **options)
            finally:
                if session is not None:
                    await session.aclose()
        return await self._quarantine_put(key, body, metadata, options)

    async def _session(self, key: str) -> InstreamSession | None:
        """A new scan, or ``None`` (fail-open, scanner down)."""
        try:
            return await self.scanner.session()
        except ScannerUnavailableError as exc:
            self._unscanned(key, exc)
            return None

    def _unscanned(self, key: str, exc: ScannerUnavailableError) -> None:
        """Fail closed (raise) or count a write stored unscanned."""
        if not self.fail_open:
            raise ScannerUnavailableError(exc.message, key=key, operation="put", retry_after=exc.retry_after) from exc
        self.unscanned_writes += 1
        if self._counters is not None:
            self._counters[0].inc()
        LOGGER.warning("stored %r unscanned: %s", key, exc.message)

    def _refuse(self, key: str, result: ScanResult, quarantine_key: str | None = None) -> MalwareFoundError:
        if self._counters is not None:
            self._counters[1].inc()
        LOGGER.warning("refused %r: %s found by %s", key, result.signature, result.scanner)
        where = f"; quarantined as {quarantine_key!r}" if quarantine_key else ""
        return MalwareFoundError(
            f"malware found: {result.signature}{where}",
            signature=result.signature or "",
            quarantine_key=quarantine_key,
            key=key,
            operation="put",
        )

    async def _scanned(self, key: str, body: Body, session: InstreamSession | None) -> AsyncIterator[bytes]:
        """``body``, each chunk sent to clamd before it is passed on; the verdict comes before the end."""
        async for chunk in iter_body(body):
            if session is not None:
                try:
                    await session.send(chunk)
                except ScannerUnavailableError as exc:
                    self._unscanned(key, exc)
                    session = None
            yield chunk
        if session is not None:
            try:
                result = await session.finish()
            except ScannerUnavailableError as exc:
                self._unscanned(key, exc)
                return
            if result.is_infected:
                raise self._refuse(key, result)

    async def _quarantine_put(
        self, key: str, body: Body, metadata: Mapping[str, Any] | None, options: dict[str, Any]
    ) -> ObjectInfo:
        session = await self._session(key)
        spool: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=_SPOOL_IN_MEMORY)  # noqa: SIM115 - closed below
        try:
            result = await self._scan_spooling(key, body, session, spool)
            spool.seek(0)
            meta = dict(metadata or {})
            if result is None:
                meta.update({VERDICT: "unscanned"})
            else:
                meta.update({VERDICT: "infected" if result.is_infected else "clean", ENGINE: result.scanner})
            if result is None or result.is_clean:
                return await self.inner.put_object(key, spool, metadata=meta, **options)
            meta.update({SIGNATURE: result.signature or "", ORIGINAL_KEY: key})
            target = self.quarantine_prefix + key
            with reserved_keys():
                await self.inner.put_object(target, spool, metadata=meta, content_type="application/octet-stream")
            raise self._refuse(key, result, target)
        finally:
            spool.close()
            if session is not None:
                await session.aclose()

    async def _scan_spooling(
        self, key: str, body: Body, session: InstreamSession | None, spool: IO[bytes]
    ) -> ScanResult | None:
        """Spool ``body`` while scanning it; the verdict (``None`` when it went unscanned)."""
        async for chunk in iter_body(body):
            spool.write(chunk)
            if session is not None:
                try:
                    await session.send(chunk)
                except ScannerUnavailableError as exc:
                    self._unscanned(key, exc)
                    session = None
        if session is not None:
            try:
                return await session.finish()
            except ScannerUnavailableError as exc:
                self._unscanned(key, exc)
        return None

    # --- reviewing the quarantine --------------------------------------------------------------

    async def iter_quarantined(self) -> AsyncIterator[ObjectInfo]:
        """Every quarantined object (full keys; ``metadata`` holds the verdict and the original key)."""
        with reserved_keys():
            async for info in self.inner.iter_objects(self.quarantine_prefix):
                yield info

    async def open_quarantined(self, quarantine_key: str) -> Download:
        """Read a quarantined object (for review; handle its bytes as malware)."""
        if not self._hidden(quarantine_key):
            raise NotFoundError("not a quarantined key", key=quarantine_key, operation="open")
        with reserved_keys():
            return await self.inner.open(quarantine_key)

    async def remove_quarantined(self, quarantine_key: str) -> bool:
        """Delete a quarantined object."""
        if not self._hidden(quarantine_key):
            raise NotFoundError("not a quarantined key", key=quarantine_key, operation="remove")
        with reserved_keys():
            return await self.inner.remove(quarantine_key)


_SCAN_PREFIX = "scan-"


def _check_metadata(key: str, metadata: Mapping[str, Any] | None) -> None:
    """Refuse caller metadata that would pass for a recorded verdict."""
    for name in metadata or {}:
        if str(name).lower().startswith(_SCAN_PREFIX):
            raise InvalidMetadataError(f"metadata names starting with {_SCAN_PREFIX!r} belong to Scan", key=key)


_REGISTRIES: weakref.WeakKeyDictionary[Any, tuple[Any, Any]] = weakref.WeakKeyDictionary()


def _counters(metrics: Any) -> tuple[Any, Any] | None:
    """``(unscanned, refused)`` Prometheus counters in ``metrics`` (one pair per registry), or ``None``."""
    if metrics is False:
        return None
    try:
        import prometheus_client
    except ImportError as exc:
        raise ConfigurationError("Scan metrics need prometheus_client: pip install 'unistore[observe]'") from exc
    registry = prometheus_client.REGISTRY if metrics is None else metrics
    with contextlib.suppress(KeyError):
        return _REGISTRIES[registry]
    pair = (
        prometheus_client.Counter(
            "unistore_scan_unscanned_writes",
            "Writes stored without a malware scan because the scanner was unavailable (fail-open).",
            registry=registry,
        ),
        prometheus_client.Counter(
            "unistore_scan_refused_writes", "Writes refused because malware was found.", registry=registry
        ),
    )
    _REGISTRIES[registry] = pair
    return pair
