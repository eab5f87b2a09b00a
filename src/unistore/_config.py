"""Backend selection: the spec's auto-detection, ``easy_storage`` keyword settings, URL forms.

Settings come from keyword arguments first, then ``STORAGE_*`` environment
variables, then defaults. Keyword names are the variable names without the
``STORAGE_`` prefix, lower-cased (``base_path`` ↔ ``STORAGE_BASE_PATH``).
Unknown names are errors. Backends are imported lazily, so an optional SDK
is only needed for the backend actually chosen.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from ._base import BaseBackend
from ._errors import ConfigurationError

__all__ = ["backend_from_url", "detect_backend", "easy_storage"]

logger = logging.getLogger("unistore")


@dataclass(frozen=True)
class _Spec:
    cls_name: str
    module: str
    env: Mapping[str, str]  # option name -> environment variable
    extra: str | None = None  # the pip extra holding the backend's dependencies


_SPECS: dict[str, _Spec] = {
    "memory": _Spec(
        "MemoryBackend",
        "unistore.backends.memory",
        {
            "max_size": "STORAGE_MAX_SIZE",
            "base_url": "STORAGE_BASE_URL",
            "url_secret": "STORAGE_URL_SECRET",
            "url_expiration": "STORAGE_URL_EXPIRATION",
            "chunk_size": "STORAGE_CHUNK_SIZE",
        },
    ),
    "local": _Spec(
        "LocalBackend",
        "unistore.backends.local",
        {
            "base_path": "STORAGE_BASE_PATH",
            "base_url": "STORAGE_BASE_URL",
            "url_secret": "STORAGE_URL_SECRET",
            "url_expiration": "STORAGE_URL_EXPIRATION",
            "fsync": "STORAGE_FSYNC",
            "chunk_size": "STORAGE_CHUNK_SIZE",
            "max_object_size": "STORAGE_MAX_OBJECT_SIZE",
        },
    ),
    "s3": _Spec(
        "S3Backend",
        "unistore.backends.s3",
        {
            "bucket": "STORAGE_S3_BUCKET",
            "region": "STORAGE_S3_REGION",
            "endpoint": "STORAGE_S3_ENDPOINT",
            "access_key": "STORAGE_S3_ACCESS_KEY",
            "secret_key": "STORAGE_S3_SECRET_KEY",
            "session_token": "STORAGE_S3_SESSION_TOKEN",
            "addressing_style": "STORAGE_S3_ADDRESSING_STYLE",
            "prefix": "STORAGE_S3_PREFIX",
            "checksum": "STORAGE_S3_CHECKSUM",
            "equal_parts": "STORAGE_S3_EQUAL_PARTS",
            "part_size": "STORAGE_S3_PART_SIZE",
            "max_concurrency": "STORAGE_S3_MAX_CONCURRENCY",
            "sse": "STORAGE_S3_SSE",
            "sse_kms_key_id": "STORAGE_S3_SSE_KMS_KEY_ID",
            "sse_customer_key": "STORAGE_S3_SSE_CUSTOMER_KEY",
            "storage_class": "STORAGE_S3_STORAGE_CLASS",
            "conditional_delete": "STORAGE_S3_CONDITIONAL_DELETE",
            "copy_if_match": "STORAGE_S3_COPY_IF_MATCH",
            "url_expiration": "STORAGE_URL_EXPIRATION",
        },
        extra="s3",
    ),
    "gcs": _Spec(
        "GCSBackend",
        "unistore.backends.gcs",
        {
            "bucket": "STORAGE_GCS_BUCKET",
            "project": "STORAGE_GCS_PROJECT",
            "credentials": "GOOGLE_APPLICATION_CREDENTIALS",
            "emulator_host": "STORAGE_EMULATOR_HOST",
            "prefix": "STORAGE_GCS_PREFIX",
            "endpoint": "STORAGE_GCS_ENDPOINT",
            "iam_endpoint": "STORAGE_GCS_IAM_ENDPOINT",
            "chunk_size": "STORAGE_CHUNK_SIZE",
            "url_expiration": "STORAGE_URL_EXPIRATION",
        },
        extra="gcs",
    ),
    "http": _Spec(
        "HttpBackend",
        "unistore.backends.http",
        {
            "url": "STORAGE_HTTP_URL",
            "token": "STORAGE_HTTP_TOKEN",
            "url_expiration": "STORAGE_URL_EXPIRATION",
            "chunk_size": "STORAGE_CHUNK_SIZE",
        },
        extra="http",
    ),
    "cloudinary": _Spec(
        "CloudinaryBackend",
        "unistore.backends.cloudinary",
        {
            "cloud_name": "STORAGE_CLOUDINARY_CLOUD_NAME",
            "api_key": "STORAGE_CLOUDINARY_API_KEY",
            "api_secret": "STORAGE_CLOUDINARY_API_SECRET",
            "url": "CLOUDINARY_URL",
            "url_expiration": "STORAGE_URL_EXPIRATION",
            "chunk_size": "STORAGE_CHUNK_SIZE",
        },
        extra="cloudinary",
    ),
}


def backend_class(kind: str) -> type[BaseBackend]:
    """The class for backend ``kind`` ("memory", "local", ...), imported on first use."""
    spec = _SPECS.get(kind)
    if spec is None:
        raise ConfigurationError(f"unknown storage backend {kind!r}; choose one of {', '.join(_SPECS)}")
    try:
        module = importlib.import_module(spec.module)
    except ImportError as exc:
        hint = f"pip install 'unistore[{spec.extra}]'" if spec.extra else "reinstall unistore"
        raise ConfigurationError(f"{spec.cls_name} needs a missing dependency ({exc.name}): {hint}") from exc
    cls: type[BaseBackend] = getattr(module, spec.cls_name)
    return cls


def _cast(value: str, to: Any, name: str) -> Any:
    """An environment (or URL, or string keyword) value as the setting's type."""
    kind = _kind(to)
    if kind.endswith(" | None") and value.strip().lower() in ("", "none", "auto"):
        return None
    if kind in ("bool", "bool | None"):
        low = value.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigurationError(f"{name}={value!r} is not a boolean")
    if kind in ("int", "int | None"):
        try:
            return int(value)
        except ValueError:
            raise ConfigurationError(f"{name}={value!r} is not an integer") from None
    if kind == "float":
        try:
            return float(value)
        except ValueError:
            raise ConfigurationError(f"{name}={value!r} is not a number") from None
    return value


def _kind(to: Any) -> str:
    """A settings field's type as written (``"int"``, ``"bool"``, ``"str | None"``...)."""
    return to if isinstance(to, str) else getattr(to, "__name__", str(to))


def _coerce(value: Any, to: Any, name: str) -> Any:
    """A keyword setting as the field's type: strings are cast like environment values;
    other values must already have the type (``True`` is not an integer)."""
    kind = _kind(to)
    if isinstance(value, str):
        return _cast(value, to, name)
    if value is None and kind.endswith("| None"):
        return value
    expected: tuple[type, ...] = {
        "bool": (bool,),
        "bool | None": (bool,),
        "float": (int, float),
        "int": (int,),
        "int | None": (int,),
        "str": (str,),
        "str | None": (str,),
    }.get(kind, (object,))
    if not isinstance(value, expected) or (expected == (int,) and isinstance(value, bool)):
        raise ConfigurationError(f"{name} must be {kind}, not {type(value).__name__}")
    return value


def _settings_for(kind: str, options: Mapping[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    spec = _SPECS.get(kind)
    if spec is None:
        raise ConfigurationError(f"unknown storage backend {kind!r}; choose one of {', '.join(_SPECS)}")
    cls = backend_class(kind)
    settings_cls = _settings_class(cls)
    known = {f.name: f for f in fields(settings_cls)}
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigurationError(
            f"unknown option(s) for {spec.cls_name}: {', '.join(unknown)}; known: {', '.join(known)}"
        )
    resolved: dict[str, Any] = {}
    for name, f in known.items():
        if name in options:
            resolved[name] = _coerce(options[name], f.type, name)
            continue
        var = spec.env.get(name)
        if var and env.get(var):
            resolved[name] = _cast(env[var], f.type, var)
    if kind == "local" and "base_path" not in resolved and env.get("RAILWAY_VOLUME_MOUNT_PATH"):
        resolved["base_path"] = env["RAILWAY_VOLUME_MOUNT_PATH"]
    return resolved


def _settings_class(cls: type[BaseBackend]) -> type[Any]:
    module = importlib.import_module(cls.__module__)
    settings_cls: type[Any] = getattr(module, cls.__name__.replace("Backend", "Settings"))
    return settings_cls


def detect_backend(env: Mapping[str, str] | None = None) -> tuple[str, str]:
    """The backend kind the spec's auto-detection picks, and why (for the log line)."""
    env = os.environ if env is None else env
    explicit = env.get("STORAGE_BACKEND", "").strip().lower()
    if explicit:
        return explicit, f"STORAGE_BACKEND={explicit}"
    if env.get("RAILWAY_VOLUME_MOUNT_PATH"):
        return "local", "RAILWAY_VOLUME_MOUNT_PATH is set"
    # A bucket variable names the store; credentials variables only hint at it (Cloud Run and GKE
    # have no key file, and AWS_ACCESS_KEY_ID may be set for other uses).
    for var, kind in (
        ("STORAGE_S3_BUCKET", "s3"),
        ("STORAGE_GCS_BUCKET", "gcs"),
        ("AWS_ACCESS_KEY_ID", "s3"),
        ("GOOGLE_APPLICATION_CREDENTIALS", "gcs"),
    ):
        if env.get(var):
            return kind, f"{var} is set"
    if env.get("CLOUDINARY_URL"):
        return "cloudinary", "CLOUDINARY_URL is set"
    return "memory", "no storage configuration found"


def easy_storage(backend: str | None = None, **kwargs: Any) -> BaseBackend:
    """Create a backend: ``backend`` by name, or auto-detected from the environment.

    Keyword arguments are the backend's settings, named after its environment
    variables without the ``STORAGE_`` prefix (``base_path``, ``base_url``,
    ``url_secret``, ``url_expiration``, ``max_size``, ...); unknown names raise
    :class:`ConfigurationError`.
    """
    return _build(backend, kwargs, os.environ)


def _build(backend: str | None, options: Mapping[str, Any], env: Mapping[str, str]) -> BaseBackend:
    if backend is not None:
        kind, why = backend.strip().lower(), "requested by name"
    else:
        kind, why = detect_backend(env)
    settings = _settings_for(kind, options, env)
    cls = backend_class(kind)
    instance = cls(**settings)
    if kind == "memory" and backend is None and not env.get("STORAGE_BACKEND"):
        logger.warning(
            "unistore: using MemoryBackend (%s): stored files are lost on restart. "
            "Set STORAGE_BACKEND explicitly in production.",
            why,
        )
    else:
        logger.info("unistore: using %s (%s)", cls.__name__, why)
    return instance


def backend_from_url(url: str, **overrides: Any) -> BaseBackend:
    """Build a backend from a URL: ``memory://``, ``file:///abs/path`` (``?fsync=false``...),
    ``s3://bucket[/prefix]``, ``gs://bucket[/prefix]``, ``cloudinary://…``, ``http(s)://…``.

    Query parameters and ``overrides`` are settings (strings cast like environment variables).
    For ``s3://`` and ``gs://`` the URL names the bucket and prefix and the environment supplies
    the rest, as for :func:`easy_storage` (``STORAGE_S3_ENDPOINT``, ``STORAGE_S3_ACCESS_KEY``,
    ``STORAGE_S3_REGION``…, ``STORAGE_EMULATOR_HOST``…); the URL's options win over it.
    """
    kind, options = url_settings(url)
    options.update(overrides)
    return _build(kind, options, _url_env(kind))


def _url_env(kind: str) -> Mapping[str, str]:
    """The environment a storage URL of ``kind`` draws its other settings from: for bucket stores,
    every variable but those naming a location (the URL names it); none for the others."""
    if kind not in ("s3", "gcs"):
        return {}
    location = {_SPECS[kind].env["bucket"], _SPECS[kind].env["prefix"]}
    return {k: v for k, v in os.environ.items() if k not in location}


def url_settings(url: str) -> tuple[str, dict[str, Any]]:
    """The backend kind a storage URL names and its settings: the one URL parser, also used for
    ``CLOUDINARY_URL`` (whose query options, ``?upload_prefix=…&secure=false``, are settings too).

    Query parameters are cast like environment variables; unknown ones raise :class:`ConfigurationError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    query = dict(parse_qsl(parts.query))
    if scheme == "memory":
        kind, options = "memory", dict[str, Any]()
    elif scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigurationError(f"file URL must be file:///absolute/path, got {url!r}")
        kind, options = "local", {"base_path": unquote(parts.path)}
    elif scheme in ("s3", "gs"):  # bucket stores: scheme://bucket[/prefix][?options]
        if not parts.netloc:
            raise ConfigurationError(f"{scheme} URL must be {scheme}://bucket[/prefix], got {url!r}")
        kind, options = ("s3" if scheme == "s3" else "gcs"), {"bucket": parts.netloc}
        if parts.path.strip("/"):
            options["prefix"] = unquote(parts.path.strip("/")) + "/"
    elif scheme == "cloudinary":
        kind, options = "cloudinary", {"url": urlunsplit((parts.scheme, parts.netloc, "", "", ""))}
    elif scheme in ("http", "https"):
        kind, options = "http", {"url": urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))}
    else:
        raise ConfigurationError(f"unsupported storage URL scheme {scheme!r}")
    settings_cls = _settings_class(backend_class(kind))
    types = {f.name: f.type for f in fields(settings_cls)}
    for name, value in query.items():
        if name not in types or name == "url":
            raise ConfigurationError(f"unknown option {name!r} in storage URL")
        options[name] = _cast(value, types[name], name)
    return kind, options
