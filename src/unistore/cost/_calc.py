"""The price table, usage figures, a month's bill per provider, and the recommendation."""

from __future__ import annotations

import calendar
import math
import os
import time
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from .._base import StorageBackend
from .._errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "Access",
    "GB",
    "Plan",
    "Price",
    "PriceTable",
    "Projection",
    "Recommendation",
    "SMALL_OBJECT",
    "Usage",
    "access_pattern",
    "load_prices",
    "month_seconds",
    "project",
    "project_all",
    "recommend",
    "scan_usage",
    "usage_from_metrics",
]

GB = 2**30
"""The billing gigabyte: 2^30 bytes."""
SMALL_OBJECT = 128 * 1024
"""Objects smaller than this are counted apart (infrequent-access classes bill each as this size)."""
MONTH_DAYS = 30
"""A storage month, in days, for minimum-duration charges (Wasabi bills in 30-day cycles)."""

Access = Literal["hot", "warm", "cold"]
OPERATION_KIND = {
    "put": "puts",
    "copy": "puts",
    "replace_metadata": "puts",
    "open": "gets",
    "head": "gets",
    "ping": "gets",
    "list": "lists",
    "remove": "deletes",
}
"""What each operation Observe counts is billed as (``sign_url`` is local signing: no request)."""


@dataclass(frozen=True)
class Plan:
    """A credit plan (Cloudinary): ``price`` a month for ``credits`` (1 credit: 1 GB stored or sent)."""

    name: str
    price: float
    credits: float


@dataclass(frozen=True)
class Price:
    """One provider's list prices (units in ``prices.toml``)."""

    key: str
    name: str
    source: str = ""
    region: str = ""
    storage: float = 0.0
    put: float = 0.0
    get: float = 0.0
    list: float = 0.0
    delete: float = 0.0
    egress: float = 0.0
    free_egress: float = 0.0
    free_egress_ratio: float = 0.0
    fair_egress_ratio: float = 0.0
    retrieval: float = 0.0
    min_days: float = 0.0
    min_object: int = 0
    min_storage: float = 0.0
    base: float = 0.0
    included_storage: float = 0.0
    included_egress: float = 0.0
    free_storage: float = 0.0
    free_put: float = 0.0
    free_get: float = 0.0
    plans: tuple[Plan, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class PriceTable:
    """The providers' prices, as of ``checked`` (an ISO date)."""

    checked: str
    currency: str
    providers: Mapping[str, Price]
    sources: tuple[str, ...] = ()
    """The files read, packaged table first."""


@dataclass(frozen=True)
class Usage:
    """A month of use: what is stored, and the requests and egress of the month.

    ``small_objects``/``small_bytes``: the objects under :data:`SMALL_OBJECT` and their bytes.
    ``deleted_bytes``: bytes deleted during the month, ``deleted_age_days`` old on average
    (for minimum storage durations).
    """

    stored_bytes: float = 0
    objects: float = 0
    small_objects: float = 0
    small_bytes: float = 0
    puts: float = 0
    gets: float = 0
    lists: float = 0
    deletes: float = 0
    egress_bytes: float = 0
    deleted_bytes: float = 0
    deleted_age_days: float = 30.0

    @property
    def stored_gb(self) -> float:
        return self.stored_bytes / GB

    @property
    def egress_gb(self) -> float:
        return self.egress_bytes / GB


@dataclass(frozen=True)
class Projection:
    """A provider's projected bill for one month; ``total`` is ``None`` when no plan fits."""

    key: str
    name: str
    storage: float
    requests: float
    egress: float
    other: float
    total: float | None
    fits: bool = True
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Recommendation:
    """The provider to use and why."""

    key: str
    name: str
    access: Access
    reason: str
    total: float | None = None
    alternatives: tuple[str, ...] = field(default=())


# --- prices --------------------------------------------------------------------------------


def _price(key: str, raw: Mapping[str, Any], base: Price | None = None) -> Price:
    known = {f.name for f in fields(Price)} - {"key"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigurationError(f"price table: provider {key!r} has unknown fields {', '.join(unknown)}")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name == "plans":
            try:
                values[name] = tuple(Plan(str(p["name"]), float(p["price"]), float(p["credits"])) for p in value)
            except (KeyError, TypeError, ValueError) as exc:
                raise ConfigurationError(f"price table: provider {key!r}: plans need name, price, credits") from exc
        elif name in ("name", "source", "region", "note"):
            values[name] = str(value)
        else:
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or math.isinf(value):
                raise ConfigurationError(f"price table: {key}.{name} must be a number >= 0, got {value!r}")
            values[name] = int(value) if name == "min_object" else float(value)
    if base is not None:
        return replace(base, **values)
    if "name" not in values:
        raise ConfigurationError(f"price table: provider {key!r} needs a name")
    return Price(key=key, **values)


def _read(path: Path | None) -> dict[str, Any]:
    try:
        if path is None:
            text = resources.files("unistore.cost").joinpath("prices.toml").read_text("utf-8")
        else:
            text = path.read_text("utf-8")
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"price table {path}: {exc}") from exc
    except OSError as exc:
        raise ConfigurationError(f"price table {path}: {exc.strerror or exc}") from exc


def load_prices(path: str | os.PathLike[str] | None = None) -> PriceTable:
    """The packaged price table, overridden by ``path`` (else ``UNISTORE_PRICES``) when given:
    its providers replace the packaged ones field by field, or add new ones; its ``checked``
    date wins."""
    packaged = _read(None)
    providers = {k: _price(k, v) for k, v in packaged["providers"].items()}
    checked, currency = str(packaged["checked"]), str(packaged["currency"])
    sources = ["(packaged)"]
    override = path if path is not None else os.environ.get("UNISTORE_PRICES") or None
    if override is not None:
        user = _read(Path(override))
        if not isinstance(user.get("providers", {}), dict):
            raise ConfigurationError(f"price table {override}: [providers.NAME] tables expected")
        for key, raw in user.get("providers", {}).items():
            if not isinstance(raw, dict):
                raise ConfigurationError(f"price table {override}: providers.{key} must be a table")
            providers[key] = _price(key, raw, providers.get(key))
        checked = str(user.get("checked", checked))
        currency = str(user.get("currency", currency))
        sources.append(str(override))
    return PriceTable(checked=checked, currency=currency, providers=providers, sources=tuple(sources))


# --- usage -----------------------------------------------------------------------------------


async def scan_usage(store: StorageBackend, prefix: str = "") -> Usage:
    """Bytes and objects under ``prefix``, from a listing of ``store`` (one list request per page)."""
    total = objects = small = small_bytes = 0
    async for info in store.iter_objects(prefix):
        total += info.size
        objects += 1
        if info.size < SMALL_OBJECT:
            small += 1
            small_bytes += info.size
    return Usage(stored_bytes=total, objects=objects, small_objects=small, small_bytes=small_bytes)


def month_seconds(month: str | None = None) -> float:
    """Seconds in ``month`` (``YYYY-MM``; the current month when ``None``)."""
    if month is None:
        now = datetime.now(UTC)
        year, number = now.year, now.month
    else:
        try:
            year_text, number_text = month.split("-")
            year, number = int(year_text), int(number_text)
            if not 1 <= number <= 12 or len(year_text) != 4:
                raise ValueError(month)
        except ValueError:
            raise InvalidArgumentError(f"month must be YYYY-MM, got {month!r}") from None
    return calendar.monthrange(year, number)[1] * 86400.0


def usage_from_metrics(
    text: str,
    *,
    backend: str | None = None,
    window: float | None = None,
    month: str | None = None,
    now: float | None = None,
) -> tuple[Usage, float]:
    """A month of use from a scrape of Observe's metrics (Prometheus text format), and the
    seconds the counters covered.

    Counters cover ``window`` seconds, else the time since ``process_start_time_seconds``,
    else a whole month; they are scaled to ``month``. Stored bytes and objects come from
    ``unistore_stored_bytes``/``unistore_stored_objects`` (set by ``Observe.measure_usage``).
    ``backend``: only that backend's series (else all summed).
    """
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError as exc:
        raise ConfigurationError("reading metrics needs prometheus_client: pip install 'unistore[observe]'") from exc
    seconds = month_seconds(month)
    counts = {"puts": 0.0, "gets": 0.0, "lists": 0.0, "deletes": 0.0}
    egress = stored = objects = 0.0
    start: float | None = None
    try:
        families = list(text_string_to_metric_families(text))
    except ValueError as exc:
        raise InvalidArgumentError(f"not Prometheus metrics text: {exc}") from exc
    for family in families:
        for s in family.samples:
            if s.name == "process_start_time_seconds":
                start = s.value
                continue
            if backend is not None and s.labels.get("backend") != backend:
                continue
            if s.name == "unistore_requests_total":
                kind = OPERATION_KIND.get(s.labels.get("operation", ""))
                if kind is not None:
                    counts[kind] += s.value
            elif s.name == "unistore_bytes_total" and s.labels.get("direction") == "out":
                egress += s.value
            elif s.name == "unistore_stored_bytes":
                stored += s.value
            elif s.name == "unistore_stored_objects":
                objects += s.value
    if window is None:
        window = (now if now is not None else time.time()) - start if start is not None else seconds
    if window <= 0:
        raise InvalidArgumentError(f"the metrics window must be > 0 seconds, got {window}")
    scale = seconds / window
    usage = Usage(
        stored_bytes=stored,
        objects=objects,
        egress_bytes=egress * scale,
        **{k: v * scale for k, v in counts.items()},
    )
    return usage, window


# --- projection ------------------------------------------------------------------------------


def _money(value: float) -> str:
    return f"${value:,.2f}"


def project(usage: Usage, price: Price) -> Projection:
    """``price``'s bill for a month of ``usage``."""
    stored_gb, egress_gb = usage.stored_gb, usage.egress_gb
    notes: list[str] = []
    if price.plans:
        needed = stored_gb + egress_gb
        for plan in sorted(price.plans, key=lambda p: p.credits):
            if plan.credits >= needed:
                notes.append(f"{plan.name} plan: {needed:,.1f} of {plan.credits:,.0f} credits")
                return Projection(price.key, price.name, 0.0, 0.0, 0.0, plan.price, plan.price, True, tuple(notes))
        top = max(price.plans, key=lambda p: p.credits)
        notes.append(f"needs {needed:,.0f} credits, over the {top.name} plan's {top.credits:,.0f}: a custom quote")
        return Projection(price.key, price.name, 0.0, 0.0, 0.0, 0.0, None, False, tuple(notes))
    padding = 0.0
    if price.min_object and usage.small_objects:
        padding = max(usage.small_objects * price.min_object - usage.small_bytes, 0.0) / GB
        notes.append(f"objects under {price.min_object // 1024} KiB billed as {price.min_object // 1024} KiB")
    billed = stored_gb + padding
    billed = max(billed - price.free_storage - price.included_storage, 0.0)
    if price.min_storage and billed < price.min_storage:
        notes.append(f"billed for at least {price.min_storage:,.0f} GB")
        billed = price.min_storage
    storage = billed * price.storage
    free_a = price.free_put
    class_a = usage.puts * price.put + usage.lists * price.list
    if free_a and usage.puts + usage.lists:
        class_a *= max(usage.puts + usage.lists - free_a, 0.0) / (usage.puts + usage.lists)
    gets = max(usage.gets - price.free_get, 0.0)
    requests = (class_a + gets * price.get + usage.deletes * price.delete) / 1000
    free_egress = price.free_egress + price.free_egress_ratio * stored_gb + price.included_egress
    egress = max(egress_gb - free_egress, 0.0) * price.egress
    other = price.base + egress_gb * price.retrieval
    if price.retrieval and egress_gb:
        notes.append(f"retrieval {_money(egress_gb * price.retrieval)}")
    early = 0.0
    if price.min_days and usage.deleted_bytes:
        left = max(price.min_days - usage.deleted_age_days, 0.0)
        early = usage.deleted_bytes / GB * left / MONTH_DAYS * price.storage
        if early:
            notes.append(f"{price.min_days:.0f}-day minimum on deleted data {_money(early)}")
    other += early
    fits = True
    if price.fair_egress_ratio and egress_gb > price.fair_egress_ratio * stored_gb:
        fits = False
        notes.append("egress above the stored volume: outside the free-egress policy")
    total = storage + requests + egress + other
    return Projection(price.key, price.name, storage, requests, egress, other, total, fits, tuple(notes))


def project_all(usage: Usage, prices: PriceTable) -> list[Projection]:
    """Every provider's projection, cheapest first (those without a total last)."""
    out = [project(usage, p) for p in prices.providers.values()]
    return sorted(out, key=lambda p: (p.total is None, not p.fits, p.total or 0.0, p.key))


def access_pattern(usage: Usage) -> Access:
    """``hot`` when a month sends at least the stored volume, ``cold`` when it sends under a tenth
    of it and reads fewer objects than are stored, else ``warm``."""
    stored, egress = usage.stored_gb, usage.egress_gb
    if egress > 0 and egress >= stored:
        return "hot"
    if stored > 0 and egress < 0.1 * stored and usage.gets < usage.objects:
        return "cold"
    return "warm"


def _cheapest(projections: Iterable[Projection], keys: Iterable[str] | None = None) -> Projection | None:
    wanted = None if keys is None else set(keys)
    usable = [p for p in projections if p.fits and p.total is not None and (wanted is None or p.key in wanted)]
    return min(usable, key=lambda p: p.total or 0.0) if usable else None


def recommend(usage: Usage, projections: list[Projection], access: Access | None = None) -> Recommendation:
    """The provider for ``usage``: high egress of hot data → R2 (no egress fees); cold data →
    the cheaper of Wasabi and S3 Glacier IR (mind their 90-day minimum); a small store (under
    50 GB stored and 100 GB sent a month) → DigitalOcean Spaces (one flat fee); otherwise the
    cheapest projection. A rule whose provider is missing from the table falls through."""
    pattern = access or access_pattern(usage)
    by_key = {p.key: p for p in projections}
    stored, egress = usage.stored_gb, usage.egress_gb
    cheapest = _cheapest(projections)
    if cheapest is None:
        raise ConfigurationError("no provider in the price table fits this usage")

    def made(p: Projection, reason: str) -> Recommendation:
        others = tuple(q.key for q in projections if q.key != p.key and q.total is not None and q.fits)
        return Recommendation(p.key, p.name, pattern, reason, p.total, others)

    r2 = by_key.get("r2")
    if pattern == "hot" and egress > 100 and r2 is not None and r2.fits:
        s3 = by_key.get("s3-standard")
        versus = f"; S3 Standard would charge {_money(s3.egress)} for it" if s3 is not None else ""
        if cheapest.key != r2.key and (cheapest.total or 0.0) < (r2.total or 0.0):
            versus += f" ({cheapest.name} projects less, {_money(cheapest.total or 0.0)}, while its terms hold)"
        return made(r2, f"hot data sending {egress:,.0f} GB a month: R2 charges nothing for egress{versus}")
    if pattern == "cold":
        archive = _cheapest(projections, ("wasabi", "s3-glacier-ir"))
        if archive is not None:
            return made(
                archive,
                f"cold data (sends {egress:,.1f} GB a month of {stored:,.1f} GB stored): archive storage costs"
                " the least; objects are billed for 90 days even when deleted sooner",
            )
    spaces = by_key.get("spaces")
    if stored < 50 and egress < 100 and spaces is not None and spaces.fits:
        return made(spaces, "a small store: one flat monthly fee covers 250 GB stored and 1 TB sent, requests included")
    return made(cheapest, f"{pattern} data: the cheapest projection")
