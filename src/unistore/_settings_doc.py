"""The configuration reference, ``docs/configuration.md``, generated from the settings classes.

Every row comes from a settings dataclass: the field's name, type and default from
:func:`dataclasses.fields`, its description from the attribute docstring under it
(PEP 257), and its environment variable from the same table ``easy_storage`` reads
(``_config._SPECS``) or the ``UNISTORE_<FIELD>`` rule of ``ServiceSettings.from_env``.
The CLI's variables come from its options. Regenerate with::

    python -m unistore._settings_doc > docs/configuration.md
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from dataclasses import MISSING, Field, dataclass, fields
from typing import Any

__all__ = [
    "AUTO_DETECT_VARIABLES",
    "Row",
    "URL_FORMS",
    "backend_rows",
    "cli_rows",
    "detection_order",
    "field_docs",
    "keyring_rows",
    "kms_keyring_rows",
    "render",
    "service_rows",
    "settings_classes",
]

AUTO_DETECT_VARIABLES = (
    "RAILWAY_VOLUME_MOUNT_PATH",
    "STORAGE_S3_BUCKET",
    "STORAGE_GCS_BUCKET",
    "AWS_ACCESS_KEY_ID",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDINARY_URL",
)
"""Variables ``detect_backend`` looks at (its order is asked of it, see :func:`detection_order`)."""

URL_FORMS = (
    ("memory://", "memory", "a fresh in-memory store"),
    ("file:///srv/files", "local", "a directory (an absolute path)"),
    ("s3://bucket/prefix", "s3", "a bucket, optionally under a key prefix"),
    ("gs://bucket/prefix", "gcs", "a Google Cloud Storage bucket, optionally under a prefix"),
    ("cloudinary://api_key:api_secret@cloud_name", "cloudinary", "a Cloudinary product environment"),
    ("https://files.example.com", "http", "a unistore service (`unistore serve`)"),
)
"""Storage URL forms, their backend kind and what they name."""

_TITLES = {
    "memory": "Memory",
    "local": "Local directory",
    "s3": "S3 and S3-compatible servers",
    "gcs": "Google Cloud Storage",
    "http": "A unistore service over HTTP",
    "cloudinary": "Cloudinary",
}
_INTROS = {
    "memory": "Objects in process memory, lost on restart: tests and local development.",
    "local": "Files in a directory, written atomically.",
    "s3": "Amazon S3 or any S3-compatible server (MinIO, SeaweedFS, R2...). Credentials: "
    "`STORAGE_S3_ACCESS_KEY`/`STORAGE_S3_SECRET_KEY`, else `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/"
    "`AWS_SESSION_TOKEN`, else botocore's standard chain (profile, SSO, web identity, container, IMDS).",
    "gcs": "Google Cloud Storage. Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, else Application Default "
    "Credentials (Cloud Run, GKE, `gcloud auth application-default login`).",
    "http": "A remote unistore service (`unistore serve`), spoken to over HTTP. Chosen only by name "
    "(`STORAGE_BACKEND=http`, an `http(s)://` URL): auto-detection never picks it.",
    "cloudinary": "A Cloudinary product environment. `CLOUDINARY_URL` carries the credentials and, in its "
    "query, any setting below (`?upload_prefix=…&secure=false`); the `STORAGE_CLOUDINARY_*` variables win over it.",
}

_CLI_EXTRA = (
    ("UNISTORE_CONFIG", "all", "unset", "The named stores file; unset: `$XDG_CONFIG_HOME/unistore/stores.toml`."),
    ("XDG_CONFIG_HOME", "all", "`~/.config`", "Where the named stores file lives when `UNISTORE_CONFIG` is unset."),
)


@dataclass(frozen=True)
class Row:
    """One setting: its variable (``None``: keyword or URL query only), name, type, default, effect."""

    variable: str | None
    setting: str
    type: str
    default: str
    effect: str


def _markdown(text: str) -> str:
    """A docstring as one line of table-safe markdown."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"``\1``", " ".join(text.split()))
    return text.replace("``", "`").replace("|", "\\|")


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The attribute docstrings of ``cls``'s fields, by field name."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    assert isinstance(node, ast.ClassDef)
    docs: dict[str, str] = {}
    for stmt, after in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[stmt.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _type(annotation: Any) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    optional = text.endswith(" | None")
    text = text.removesuffix(" | None")
    if text.startswith("Literal["):
        choices = [c.strip().strip("\"'") for c in text[len("Literal[") : -1].split(",")]
        out = ", ".join(f"`{c}`" for c in choices[:-1]) + f" or `{choices[-1]}`"
    else:
        out = {"str": "text", "bytes": "text", "int": "integer", "float": "number", "bool": "boolean"}.get(text, "")
        out = out or ("list" if text.startswith("tuple[") else text)
    return out + (", optional" if optional else "")


def _size(value: int) -> str:
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if value >= scale and value % scale == 0:
            return f" ({value // scale} {unit})"
    return ""


def _duration(seconds: int) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= scale and seconds % scale == 0:
            count = seconds // scale
            return f" ({count} {'day' if unit == 'days' and count == 1 else unit})"
    return ""


def _default(f: Field[Any]) -> str:
    if f.default is MISSING:
        return "required"
    value = f.default
    if value is None or value in ("", ()):
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and ("size" in f.name or "threshold" in f.name):
        return f"`{value}`{_size(value)}"
    if isinstance(value, int) and any(w in f.name for w in ("ttl", "lease", "lifetime", "interval", "expiration")):
        return f"`{value}`{_duration(value)}"
    return f"`{value}`"


def _effect(doc: str, variable: str | None) -> str:
    """The field's description, without a leading ``VARIABLE:`` that the table already shows."""
    text = _markdown(doc)
    if variable and text.startswith(f"`{variable}`: "):
        text = text.removeprefix(f"`{variable}`: ")
        text = text[:1].upper() + text[1:]
    return text


def _secret(f: Field[Any]) -> bool:
    """Kept out of ``repr`` and unset by default: a credential, never shown."""
    return not f.repr and f.default is None


def _rows(cls: type[Any], variable_of: dict[str, str | None]) -> list[Row]:
    docs = field_docs(cls)
    return [
        Row(
            variable_of[f.name],
            f.name,
            _type(f.type) + (", secret" if _secret(f) else ""),
            _default(f),
            _effect(docs.get(f.name, ""), variable_of[f.name]),
        )
        for f in fields(cls)
    ]


def settings_classes() -> dict[str, type[Any]]:
    """Each backend kind's settings class, in ``easy_storage``'s order."""
    from ._config import _SPECS, _settings_class, backend_class

    return {kind: _settings_class(backend_class(kind)) for kind in _SPECS}


def backend_rows(kind: str) -> list[Row]:
    """The settings of backend ``kind`` and the ``STORAGE_*`` variables ``easy_storage`` reads for them."""
    from ._config import _SPECS

    cls = settings_classes()[kind]
    env = _SPECS[kind].env
    return _rows(cls, {f.name: env.get(f.name) for f in fields(cls)})


def service_rows() -> list[Row]:
    """The service's settings, each read by ``ServiceSettings.from_env`` from ``UNISTORE_<FIELD>``."""
    from .service._settings import ServiceSettings

    return _rows(ServiceSettings, {f.name: f"UNISTORE_{f.name.upper()}" for f in fields(ServiceSettings)})


KEYRING_VARIABLES = {"keys": "UNISTORE_KEYRING", "file": "UNISTORE_KEYRING_FILE", "primary": "UNISTORE_KEYRING_PRIMARY"}
"""The variables ``LocalKeyringSettings.from_env`` reads, by field."""


def keyring_rows() -> list[Row]:
    """The local keyring's settings (``unistore.encryption.LocalKeyringSettings``)."""
    from .encryption import LocalKeyringSettings

    return _rows(LocalKeyringSettings, {f.name: KEYRING_VARIABLES[f.name] for f in fields(LocalKeyringSettings)})


def cli_rows() -> list[Row]:
    """The CLI's variables: its options' ``envvar``s (with the commands taking them), then the stores file's."""
    import typer.main

    from .cli import app

    found: dict[str, tuple[list[str], Any]] = {}  # typer's (vendored) click objects

    def walk(command: Any, path: str) -> None:
        for param in command.params:
            if isinstance(param.envvar, str):
                found.setdefault(param.envvar, ([], param))[0].append(path)
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{path} {name}".strip())

    walk(typer.main.get_command(app), "")
    rows = []
    for var, (commands, param) in sorted(found.items()):
        help_text = getattr(param, "help", None) or ""
        where = ", ".join(f"`{c}`" for c in commands)
        rows.append(Row(var, where, "text", "unset", _markdown(help_text)))
    rows += [Row(var, where, "text", default, effect) for var, where, default, effect in _CLI_EXTRA]
    return rows


def kms_keyring_rows() -> list[tuple[str, type[Any], list[Row]]]:
    """The settings choosing a keyring and those of the KMS keyrings, with section titles and rows
    (a field's variable: the name its docstring starts with)."""
    from .encryption._keyring_env import KEYRING_SETTINGS

    out = []
    for title, cls in KEYRING_SETTINGS():
        docs = field_docs(cls)
        variables = {f.name: _leading_variable(docs.get(f.name, "")) for f in fields(cls)}
        out.append((title, cls, _rows(cls, variables)))
    return out


def _leading_variable(doc: str) -> str | None:
    found = re.match(r"`([A-Z][A-Z0-9_]+)`: ", doc)
    return found[1] if found else None


def detection_order() -> list[str]:
    """:data:`AUTO_DETECT_VARIABLES` as ``detect_backend`` ranks them (the first one set wins)."""
    from ._config import detect_backend

    def before(a: str, b: str) -> int:
        _kind, why = detect_backend({a: "x", b: "x"})
        return -1 if why.startswith(a) else 1

    return sorted(AUTO_DETECT_VARIABLES, key=functools.cmp_to_key(before))


def _table(rows: list[Row], setting: str) -> list[str]:
    lines = [f"| Variable | {setting} | Type | Default | Effect |", "|---|---|---|---|---|"]
    for r in rows:
        var = f"`{r.variable}`" if r.variable else "—"
        name = r.setting if setting == "Commands" else f"`{r.setting}`"
        lines.append(f"| {var} | {name} | {r.type} | {r.default} | {r.effect} |")
    return lines


_CLAMD_ROW = Row(
    "UNISTORE_CLAMD_URL",
    "url",
    "text, optional",
    "`unix:///var/run/clamav/clamd.ctl`",
    "clamd's socket: `unix:///path` or `tcp://host:port`; unset: Debian's `clamav-daemon` socket.",
)


def render() -> str:
    """``docs/configuration.md``."""
    from ._config import _SPECS, detect_backend

    order = [f"`{v}` → {detect_backend({v: 'x'})[0]}" for v in detection_order()]
    kinds = ", ".join(f"`{k}`" for k in _SPECS)
    out = [
        "# Configuration reference",
        "",
        "<!-- Generated by `python -m unistore._settings_doc > docs/configuration.md`; do not edit. -->",
        "",
        "A store is configured by `STORAGE_*` environment variables, by keyword arguments to",
        "`easy_storage()` (the setting names below), or by a storage URL whose query parameters are",
        "settings (`s3://bucket/prefix?endpoint=https://minio:9000`). Keyword arguments win over",
        "variables, variables over defaults; an empty variable counts as unset, and an unknown keyword",
        "or URL option is an error. Booleans are `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`);",
        "an optional setting is unset by an empty value, `none` or `auto`. Sizes are in bytes and",
        "durations in seconds. A setting without a variable (—) is set by keyword or URL query only.",
        "",
        "## Choosing the backend",
        "",
        f"`STORAGE_BACKEND` names it: {kinds}. Unset, the first of these variables that is set picks it:",
        ", ".join(order) + "; with none of them, a memory store, with a warning that its files are",
        "lost on restart. The choice and its reason are logged on the `unistore` logger.",
        "",
        "Storage URLs (`backend_from_url()`, the CLI's `--store`):",
        "",
    ]
    out += [f"- `{url}`: {what}." for url, _kind, what in URL_FORMS]
    for kind, cls in settings_classes().items():
        out += ["", f"## {_TITLES[kind]} (`{kind}`)", "", f"{_INTROS[kind]} Settings: `{cls.__name__}`.", ""]
        out += _table(backend_rows(kind), "Setting")
    out += [
        "",
        "## The service (`unistore serve`)",
        "",
        "The service builds its store from the `STORAGE_*` variables above (`STORAGE_BASE_URL` defaults",
        "to its own `/files` route) and reads its own settings from `UNISTORE_*` variables. The setting",
        "names are the fields of `unistore.service.ServiceSettings`.",
        "",
    ]
    out += _table(service_rows(), "Setting")
    out += [
        "",
        "## The malware scanner (`unistore.scanners`)",
        "",
        "`scan_file`, `scan_bytes`, `scan_stream` and `ClamdClient()` reach clamd here when given no URL",
        "(the service uses `UNISTORE_SCAN_URL` above; see `docs/scanning.md`).",
        "",
    ]
    out += _table([_CLAMD_ROW], "Setting")
    out += [
        "",
        "## The local encryption keyring (`LocalKeyring`)",
        "",
        "`LocalKeyring.from_env()` reads the key-encryption keys of the `Encrypt` layer",
        "(`docs/encryption.md`) from these variables. The setting names are the fields of",
        "`unistore.encryption.LocalKeyringSettings`.",
        "",
    ]
    out += _table(keyring_rows(), "Setting")
    out += [
        "",
        "## Choosing the keyring, and KMS keyrings",
        "",
        "`keyring_from_env()` (the service, `unistore keys`) builds the keyring these variables name: the",
        "local keyring above, AWS KMS or Google Cloud KMS.",
    ]
    for title, cls, rows in kms_keyring_rows():
        out += ["", f"### {title}", "", f"Settings: `{cls.__name__}`.", ""]
        out += _table(rows, "Setting")
    out += [
        "",
        "## The command line (`unistore`)",
        "",
        "Without `--store`/`UNISTORE_STORE`, a command uses the store the `STORAGE_*` variables",
        "configure, and fails when there is none. `unistore serve` reads the service's variables; its",
        "`--header-timeout`, `--body-timeout` and `--body-deadline` options win over them.",
        "",
    ]
    out += _table(cli_rows(), "Commands")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
