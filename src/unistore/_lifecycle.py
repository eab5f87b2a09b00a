"""Lifecycle rules: expire, transition and abort incomplete uploads after N days, by prefix.

Applied natively where the store has lifecycle management (S3's bucket lifecycle configuration,
GCS's bucket lifecycle), and otherwise kept in the store (``.unistore/lifecycle.json``) and
carried out by :func:`sweep_lifecycle`, a job to run periodically (``unistore lifecycle sweep``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal
from xml.etree import ElementTree

from ._errors import (
    InvalidArgumentError,
    NotFoundError,
    PreconditionFailedError,
    UnsupportedError,
)
from ._keys import reserved_keys, validate_prefix

if TYPE_CHECKING:
    from ._base import StorageBackend
    from .backends.gcs import GCSBackend
    from .backends.s3 import S3Backend

__all__ = [
    "LifecycleRule",
    "RULES_KEY",
    "SweepResult",
    "apply_lifecycle",
    "read_lifecycle",
    "rules_from_json",
    "rules_to_json",
    "sweep_lifecycle",
]

RULES_KEY = ".unistore/lifecycle.json"
"""Where a store without native lifecycle management keeps its rules (for :func:`sweep_lifecycle`)."""

_ID = re.compile(r"[A-Za-z0-9._-]{1,255}")
_S3NS = "http://s3.amazonaws.com/doc/2006-03-01/"


@dataclass(frozen=True, slots=True)
class LifecycleRule:
    """One rule: for objects under ``prefix``, delete them ``expire_days`` after their last write,
    move them to ``transition_class`` ``transition_days`` after it, and abort multipart uploads
    left incomplete ``abort_multipart_days`` after they started. At least one action."""

    id: str
    prefix: str = ""
    expire_days: int | None = None
    transition_days: int | None = None
    transition_class: str | None = None
    abort_multipart_days: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not _ID.fullmatch(self.id):
            raise InvalidArgumentError(f"rule id must be 1-255 of A-Z a-z 0-9 . _ -, not {self.id!r}")
        if self.prefix:
            validate_prefix(self.prefix)
        for name in ("expire_days", "transition_days", "abort_multipart_days"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise InvalidArgumentError(f"rule {self.id}: {name} must be a whole number of days >= 1")
        if (self.transition_days is None) != (self.transition_class is None):
            raise InvalidArgumentError(f"rule {self.id}: a transition needs both transition_days and transition_class")
        if self.transition_class is not None and not re.fullmatch(r"[A-Z][A-Z0-9_]{1,39}", self.transition_class):
            raise InvalidArgumentError(f"rule {self.id}: storage class {self.transition_class!r} is not a class name")
        if self.expire_days is None and self.transition_days is None and self.abort_multipart_days is None:
            raise InvalidArgumentError(f"rule {self.id} has no action (expire, transition or abort_multipart)")
        if (
            self.expire_days is not None
            and self.transition_days is not None
            and self.transition_days >= self.expire_days
        ):
            raise InvalidArgumentError(f"rule {self.id}: the transition must come before the expiry")


@dataclass(slots=True)
class SweepResult:
    """What :func:`sweep_lifecycle` did (or, with ``dry_run``, would do)."""

    examined: int = 0
    expired: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    """Keys rewritten between the listing and their delete: kept (their new version is young)."""


def rules_from_json(text: str | bytes) -> tuple[LifecycleRule, ...]:
    """Rules from ``{"rules": [{...}, ...]}`` (or a bare list); unknown fields are refused."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise InvalidArgumentError(f"lifecycle rules are not JSON: {exc}") from None
    items = doc.get("rules") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise InvalidArgumentError('lifecycle rules must be {"rules": [{"id": ..., ...}, ...]}')
    known = set(LifecycleRule.__dataclass_fields__)
    rules = []
    for item in items:
        unknown = set(item) - known
        if unknown:
            raise InvalidArgumentError(f"unknown lifecycle rule field(s): {', '.join(sorted(unknown))}")
        rules.append(LifecycleRule(**item))
    return _unique(rules)


def rules_to_json(rules: Iterable[LifecycleRule]) -> str:
    """The rules as :func:`rules_from_json` reads them (unset fields left out)."""
    out = [{k: v for k, v in asdict(r).items() if v not in (None, "")} for r in rules]
    return json.dumps({"rules": out}, indent=2) + "\n"


def _unique(rules: Iterable[LifecycleRule]) -> tuple[LifecycleRule, ...]:
    out = tuple(rules)
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        raise InvalidArgumentError("lifecycle rule ids must be unique")
    return out


# --- where the rules live ------------------------------------------------------------------------


def _native(store: StorageBackend) -> S3Backend | GCSBackend | None:
    from .backends.gcs import GCSBackend
    from .backends.s3 import S3Backend

    return store if isinstance(store, S3Backend | GCSBackend) else None


async def apply_lifecycle(store: StorageBackend, rules: Sequence[LifecycleRule]) -> Literal["native", "sweeper"]:
    """Make ``rules`` the store's lifecycle (an empty list removes it). S3 and GCS apply them
    natively (on S3 with a key prefix, rules for other prefixes of the bucket are kept); any other
    store keeps them for :func:`sweep_lifecycle`, which expires objects but cannot transition them
    or abort uploads it does not see: such rules are refused there (:class:`UnsupportedError`)."""
    rules = _unique(rules)
    native = _native(store)
    if native is None:
        for r in rules:
            if r.transition_days is not None or r.abort_multipart_days is not None:
                raise UnsupportedError(
                    f"{store.name} has no storage classes or multipart uploads of its own: rule {r.id} can "
                    "only expire objects there",
                    backend=store.name,
                    operation="lifecycle",
                )
        with reserved_keys():
            if rules:
                await store.put_object(RULES_KEY, rules_to_json(rules).encode(), content_type="application/json")
            else:
                await store.remove(RULES_KEY)
        return "sweeper"
    from .backends.s3 import S3Backend

    if isinstance(native, S3Backend):
        await _s3_put(native, rules)
    else:
        await _gcs_put(native, rules)
    return "native"


async def read_lifecycle(store: StorageBackend) -> tuple[tuple[LifecycleRule, ...], Literal["native", "sweeper"]]:
    """The store's rules, and whether the store applies them itself."""
    from .backends.s3 import S3Backend

    native = _native(store)
    if native is None:
        try:
            with reserved_keys():
                text = await store.get(RULES_KEY)
            return rules_from_json(text), "sweeper"
        except NotFoundError:
            return (), "sweeper"
    if isinstance(native, S3Backend):
        return await _s3_get(native), "native"
    return await _gcs_get(native), "native"


async def sweep_lifecycle(
    store: StorageBackend,
    rules: Sequence[LifecycleRule] | None = None,
    *,
    now: datetime | None = None,
    dry_run: bool = False,
) -> SweepResult:
    """Delete the objects whose rule says they expired (``rules``, or those :func:`apply_lifecycle`
    kept in the store), as of ``now`` (default: the current time). Each delete is conditional on
    the listed etag, so an object rewritten meanwhile is kept; ``.unistore/`` is never touched."""
    if rules is None:
        rules, _ = await read_lifecycle(store)
    now = now or datetime.now(UTC)
    result = SweepResult()
    seen: set[str] = set()
    for rule in rules:
        if rule.expire_days is None:
            continue
        cutoff = now - timedelta(days=rule.expire_days)
        async for info in store.iter_objects(rule.prefix):
            if info.key.startswith(".unistore/") or info.key in seen:
                continue
            result.examined += 1
            if info.last_modified > cutoff:
                continue
            seen.add(info.key)
            if dry_run:
                result.expired.append(info.key)
                continue
            try:
                if await store.remove(info.key, if_match=info.etag):
                    result.expired.append(info.key)
            except PreconditionFailedError:
                result.changed.append(info.key)
            except NotFoundError:
                pass
    return result


# --- S3: the bucket's lifecycle configuration ----------------------------------------------------


def _sub(parent: ElementTree.Element, tag: str, text: str | None = None) -> ElementTree.Element:
    el = ElementTree.SubElement(parent, tag)
    if text is not None:
        el.text = text
    return el


def _s3_rule_xml(root: ElementTree.Element, rule: LifecycleRule, base: str) -> None:
    el = _sub(root, "Rule")
    _sub(el, "ID", rule.id)
    _sub(_sub(el, "Filter"), "Prefix", base + rule.prefix)
    _sub(el, "Status", "Enabled")
    if rule.transition_days is not None:
        t = _sub(el, "Transition")
        _sub(t, "Days", str(rule.transition_days))
        _sub(t, "StorageClass", rule.transition_class)
    if rule.expire_days is not None:
        _sub(_sub(el, "Expiration"), "Days", str(rule.expire_days))
    if rule.abort_multipart_days is not None:
        _sub(_sub(el, "AbortIncompleteMultipartUpload"), "DaysAfterInitiation", str(rule.abort_multipart_days))


async def _s3_config(store: S3Backend) -> ElementTree.Element | None:
    try:
        r = await store._send("GET", store._bucket_path, op="lifecycle", query={"lifecycle": ""})
    except NotFoundError:  # NoSuchLifecycleConfiguration
        return None
    return ElementTree.fromstring(r.body)


def _text(el: ElementTree.Element, path: str) -> str | None:
    found = el.find("/".join("{*}" + part for part in path.split("/")))
    return found.text if found is not None and found.text is not None else None


def _int(el: ElementTree.Element, path: str) -> int | None:
    value = _text(el, path)
    return int(value) if value is not None and value.isdigit() else None


def _s3_prefix(rule: ElementTree.Element) -> str:
    return _text(rule, "Filter/Prefix") or _text(rule, "Filter/And/Prefix") or _text(rule, "Prefix") or ""


async def _s3_get(store: S3Backend) -> tuple[LifecycleRule, ...]:
    root = await _s3_config(store)
    base = store.settings.prefix
    out: list[LifecycleRule] = []
    for el in root.findall("{*}Rule") if root is not None else []:
        prefix = _s3_prefix(el)
        if not prefix.startswith(base) or _text(el, "Status") != "Enabled":
            continue
        out.append(
            LifecycleRule(
                id=_text(el, "ID") or f"rule-{len(out) + 1}",
                prefix=prefix[len(base) :],
                expire_days=_int(el, "Expiration/Days"),
                transition_days=_int(el, "Transition/Days"),
                transition_class=_text(el, "Transition/StorageClass"),
                abort_multipart_days=_int(el, "AbortIncompleteMultipartUpload/DaysAfterInitiation"),
            )
        )
    return tuple(out)


async def _s3_put(store: S3Backend, rules: Sequence[LifecycleRule]) -> None:
    from .backends._s3settings import check_s3_class

    for r in rules:
        if r.transition_class is not None:
            check_s3_class(r.transition_class)
    base = store.settings.prefix
    current = await _s3_config(store)
    ElementTree.register_namespace("", _S3NS)
    root = ElementTree.Element(f"{{{_S3NS}}}LifecycleConfiguration")
    kept = 0
    for el in current.findall("{*}Rule") if current is not None else []:
        if base and not _s3_prefix(el).startswith(base):  # another prefix's rule of a shared bucket
            root.append(el)
            kept += 1
    for rule in rules:
        _s3_rule_xml(root, rule, base)
    if not rules and not kept:
        if current is not None:
            await store._send("DELETE", store._bucket_path, op="lifecycle", query={"lifecycle": ""})
        return
    body = ElementTree.tostring(root, xml_declaration=True, encoding="UTF-8")
    headers = {
        "Content-Type": "application/xml",
        "Content-MD5": base64.b64encode(hashlib.md5(body).digest()).decode(),
    }
    await store._send("PUT", store._bucket_path, op="lifecycle", query={"lifecycle": ""}, body=body, headers=headers)


# --- GCS: the bucket resource's lifecycle --------------------------------------------------------


def _gcs_rules(rule: LifecycleRule, base: str) -> list[dict[str, Any]]:
    cond: dict[str, Any] = {"matchesPrefix": [base + rule.prefix]} if base + rule.prefix else {}
    out: list[dict[str, Any]] = []
    if rule.transition_days is not None:
        action = {"type": "SetStorageClass", "storageClass": rule.transition_class}
        out.append({"action": action, "condition": {**cond, "age": rule.transition_days}})
    if rule.expire_days is not None:
        out.append({"action": {"type": "Delete"}, "condition": {**cond, "age": rule.expire_days}})
    if rule.abort_multipart_days is not None:
        out.append(
            {
                "action": {"type": "AbortIncompleteMultipartUpload"},
                "condition": {**cond, "age": rule.abort_multipart_days},
            }
        )
    return out


async def _gcs_bucket(store: GCSBackend, method: str, **kw: Any) -> dict[str, Any]:
    from .backends._gcs_wire import json_of

    r = await store._send(method, store._bucket_path, "lifecycle", None, params={"fields": "lifecycle"}, **kw)
    res = json_of(r, "lifecycle", None)
    return res if isinstance(res, dict) else {}


async def _gcs_get(store: GCSBackend) -> tuple[LifecycleRule, ...]:
    base = store.settings.prefix
    out: list[LifecycleRule] = []
    for item in (await _gcs_bucket(store, "GET")).get("lifecycle", {}).get("rule", []):
        cond, action = item.get("condition", {}), item.get("action", {})
        prefixes = cond.get("matchesPrefix") or [""]
        if len(prefixes) != 1 or not prefixes[0].startswith(base) or not isinstance(cond.get("age"), int):
            continue
        age, kind = cond["age"], action.get("type")
        common: dict[str, Any] = {"id": f"rule-{len(out) + 1}", "prefix": prefixes[0][len(base) :]}
        if kind == "Delete":
            out.append(LifecycleRule(**common, expire_days=age))
        elif kind == "SetStorageClass":
            out.append(LifecycleRule(**common, transition_days=age, transition_class=action.get("storageClass")))
        elif kind == "AbortIncompleteMultipartUpload":
            out.append(LifecycleRule(**common, abort_multipart_days=age))
    return tuple(out)


async def _gcs_put(store: GCSBackend, rules: Sequence[LifecycleRule]) -> None:
    from .backends._gcs_wire import check_gcs_class

    base = store.settings.prefix
    kept = []
    for item in (await _gcs_bucket(store, "GET")).get("lifecycle", {}).get("rule", []):
        prefixes = item.get("condition", {}).get("matchesPrefix") or [""]
        if base and not all(p.startswith(base) for p in prefixes):  # another prefix's rule of a shared bucket
            kept.append(item)
    for r in rules:
        if r.transition_class is not None:
            check_gcs_class(r.transition_class)
        kept.extend(_gcs_rules(r, base))
    await _gcs_bucket(store, "PATCH", json={"lifecycle": {"rule": kept}})
