"""What the CLI's arguments name: stores (URLs or named stores), objects, local files and trees.

Named stores live in a TOML file, ``~/.config/unistore/stores.toml`` (or
``$UNISTORE_CONFIG``)::

    [stores.photos]
    url = "s3://photos?endpoint=http://127.0.0.1:8333"
    token = "…"            # optional, for http(s) stores

``NAME:key`` addresses an object of a named store; ``--store NAME`` picks one.
A URL or variable given explicitly wins over the file.
"""

from __future__ import annotations

import errno
import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from .._errors import ConfigurationError, InvalidArgumentError

__all__ = [
    "HINT",
    "NamedStore",
    "Ref",
    "config_path",
    "load_stores",
    "local_target",
    "parse_ref",
    "save_stores",
    "store_path",
]

HINT = "an object is STORE_URL#KEY, NAME:KEY, s3://bucket/key, gs://bucket/key or http(s)://HOST/v1/objects/KEY"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")
_SCHEMES = ("s3", "gs", "file", "http", "https", "memory")


@dataclass(frozen=True, slots=True)
class NamedStore:
    """One entry of the stores file."""

    name: str
    url: str
    token: str | None = None

    def __repr__(self) -> str:
        return f"NamedStore(name={self.name!r}, url={self.url!r}, token={'***' if self.token else None})"


@dataclass(frozen=True, slots=True)
class Ref:
    """A store URL and a key in it, or a local path (``key is None``; ``-`` is stdio)."""

    store: str
    key: str | None
    token: str | None = None


def config_path() -> Path:
    """The stores file: ``$UNISTORE_CONFIG``, else ``$XDG_CONFIG_HOME/unistore/stores.toml``."""
    if explicit := os.environ.get("UNISTORE_CONFIG"):
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "unistore" / "stores.toml"


def load_stores(path: Path | None = None) -> dict[str, NamedStore]:
    """The named stores (none when the file does not exist)."""
    path = path or config_path()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from None
    out = {}
    for name, entry in dict(raw.get("stores", {})).items():
        if not isinstance(entry, dict) or not isinstance(entry.get("url"), str):
            raise ConfigurationError(f"{path}: store {name!r} needs a url")
        token = entry.get("token")
        out[name] = NamedStore(name, entry["url"], token if isinstance(token, str) else None)
    return out


def save_stores(stores: dict[str, NamedStore], path: Path | None = None) -> Path:
    """Write the stores file atomically, readable by its owner only (it may hold tokens)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for store in sorted(stores.values(), key=lambda s: s.name):
        lines += [f"[stores.{store.name}]", f"url = {json.dumps(store.url)}"]
        if store.token:
            lines.append(f"token = {json.dumps(store.token)}")
        lines.append("")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)
    return path


def check_name(name: str) -> str:
    """A store name: lower-case letters, digits, ``-`` and ``_``, at least two characters (so
    ``C:`` and ``s3:`` never read as one)."""
    if len(name) < 2 or not set(name) <= _NAME_CHARS or name in _SCHEMES:
        raise InvalidArgumentError(f"store names are 2+ of [a-z0-9_-] and not a URL scheme, got {name!r}")
    return name


def store_url(text: str, stores: dict[str, NamedStore] | None = None) -> tuple[str, str | None]:
    """``--store`` text (a URL or a store name) as ``(url, token)``."""
    if "://" in text:
        return text, None
    named = (load_stores() if stores is None else stores).get(text)
    if named is None:
        raise ConfigurationError(f"no store named {text!r} in {config_path()} (unistore store add NAME URL)")
    return named.url, named.token


def parse_ref(text: str, stores: dict[str, NamedStore] | None = None) -> Ref:
    """An object or a local file, from a ``cp``/``sync`` argument (see :data:`HINT`)."""
    if "#" in text and "://" in text.split("#", 1)[0]:
        store, key = text.split("#", 1)
        return Ref(store, key)
    if "://" not in text and ":" in text:
        _no_scheme_typo(*text.partition(":")[::2], text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme in ("s3", "gs"):
        if not parts.netloc:
            raise InvalidArgumentError(f"{text!r} names no bucket: {HINT}")
        return Ref(urlunsplit((scheme, parts.netloc, "", parts.query, "")), unquote(parts.path.lstrip("/")))
    if scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path:
            raise InvalidArgumentError(f"a file URL is file:///absolute/path, got {text!r}")
        return Ref(unquote(parts.path), None)
    if scheme in ("http", "https"):
        base, marker, key = (parts.path + ("/" if parts.path.endswith("/v1/objects") else "")).partition("/v1/objects/")
        if not marker:
            raise InvalidArgumentError(f"{text!r} names no object of a unistore service: {HINT}")
        return Ref(urlunsplit((scheme, parts.netloc, base, "", "")), unquote(key))
    if "://" in text:
        raise InvalidArgumentError(f"unknown URL scheme in {text!r}: {HINT}")
    name, colon, key = text.partition(":")
    if colon and "/" not in name:
        named = (load_stores() if stores is None else stores).get(name)
        if named is not None:
            return Ref(named.url, key, named.token)
        if _looks_named(name) and not os.path.lexists(text):
            raise ConfigurationError(
                f"{text!r} is ambiguous: no store named {name!r} in {config_path()} (unistore store add {name} URL),"
                f" and no such local file; for a local path write ./{text}"
            )
    return Ref(text, None)


def _looks_named(name: str) -> bool:
    return len(name) >= 2 and set(name) <= _NAME_CHARS


def _no_scheme_typo(name: str, rest: str, text: str) -> None:
    """``s3:bucket/key`` (a URL missing its ``//``) is refused with the likely meaning."""
    if name.lower() in _SCHEMES and not os.path.lexists(text):
        raise InvalidArgumentError(f"{text!r} is not a URL: did you mean {name}://{rest.lstrip('/')}? ({HINT})")


def store_path(
    text: str, store: str | None, stores: dict[str, NamedStore] | None = None
) -> tuple[str | None, str, str | None]:
    """A key argument of ``ls``/``cat``/``rm``/... as ``(store, key, name)``: ``NAME:path`` is
    ``path`` in the saved store ``NAME`` (saved names win, as rclone's remotes do), an object URL
    (``s3://bucket/path``, ``STORE_URL#path``...) its store and key; anything else is a key of
    ``store``. ``name`` is an unsaved ``NAME`` the text may have meant (for the error when no
    store is configured)."""
    if "://" in text:
        ref = parse_ref(text, stores)
        if ref.key is None:  # file:///dir: that directory as a store
            return "file://" + ref.store, "", None
        return ref.store, ref.key, None
    name, colon, key = text.partition(":")
    if colon and _looks_named(name):
        if store is None:
            _no_scheme_typo(name, key, text)
        if name in (load_stores() if stores is None else stores):
            return name, key, None
        return store, text, name
    return store, text, None


def local_target(dest: str, key: str) -> Path:
    """The local file that ``dest`` means for object ``key``: ``dest/<basename>`` when ``dest`` is a
    directory (or ends with ``/``); its directory must exist, checked before any byte moves."""
    path = Path(dest)
    if dest.endswith(("/", os.sep)) or path.is_dir():
        name = key.rstrip("/").rsplit("/", 1)[-1]
        if not name:
            raise InvalidArgumentError(f"{key!r} has no file name to create in {dest!r}")
        path = path / name
    if not path.parent.is_dir():
        raise FileNotFoundError(errno.ENOENT, f"no such local directory (for a store, {HINT})", str(path.parent))
    return path
