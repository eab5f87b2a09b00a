"""``docs/configuration.md`` is generated from the settings classes and names only variables that are read."""

from __future__ import annotations

import re
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import pytest

from unistore._config import _settings_for, detect_backend, url_settings
from unistore._settings_doc import (
    AUTO_DETECT_VARIABLES,
    URL_FORMS,
    backend_rows,
    cli_rows,
    field_docs,
    render,
    service_rows,
    settings_classes,
)
from unistore.service import ServiceSettings

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "configuration.md"
KINDS = list(settings_classes())
REQUIRED: dict[str, dict[str, str]] = {  # what each backend needs to build at all
    "memory": {},
    "local": {},
    "s3": {"STORAGE_S3_BUCKET": "b"},
    "gcs": {"STORAGE_GCS_BUCKET": "b"},
    "http": {"STORAGE_HTTP_URL": "http://127.0.0.1:1"},
    "cloudinary": {"CLOUDINARY_URL": "cloudinary://k:s@c"},
}
SAMPLES = {  # values the settings' checks accept, where a generic one would not do
    "UNISTORE_SCAN_URL": "unix:///run/clamav/clamd.ctl",
    "STORAGE_S3_ENDPOINT": "http://127.0.0.1:1",
    "STORAGE_S3_PREFIX": "app/",
    "STORAGE_S3_SSE": "aws:kms",
    "STORAGE_S3_SSE_KMS_KEY_ID": "alias/k",
    "STORAGE_S3_SSE_CUSTOMER_KEY": "A" * 43 + "=",
    "STORAGE_S3_PART_SIZE": str(16 * 1024 * 1024),
    "STORAGE_GCS_PREFIX": "app/",
    "STORAGE_EMULATOR_HOST": "http://127.0.0.1:1",
    "STORAGE_GCS_ENDPOINT": "http://127.0.0.1:1",
    "STORAGE_GCS_IAM_ENDPOINT": "http://127.0.0.1:2",
    "STORAGE_HTTP_URL": "http://127.0.0.1:2",
    "CLOUDINARY_URL": "cloudinary://k2:s2@c2",
    "UNISTORE_AUTH": "off",
    "UNISTORE_SECRET": "s" * 20,
    "UNISTORE_WEBHOOKS": "http://127.0.0.1:1/hook",
    "UNISTORE_UPLOAD_RULES": '[{"prefix": "img/", "max_size": 10}]',
    "UNISTORE_WEBHOOK_SECRET": "w" * 20,
    "UNISTORE_ACCEPTED_SECRETS": "o" * 20,
    "UNISTORE_METRICS": "open",
    "UNISTORE_METRICS_KEY_LABELS": "raw",
    "UNISTORE_REDIS_URL": "redis://127.0.0.1:1",
    "UNISTORE_MAX_LIST_LIMIT": "50",
    "STORAGE_S3_CHECKSUM": "sha256",  # "auto" is crc32 on AWS, the first alternative
}


def _sample(var: str, annotation: Any, default: Any) -> str:
    """A value for ``var`` that differs from the field's default."""
    if var in SAMPLES:
        return SAMPLES[var]
    kind = str(annotation)
    if kind.startswith("Literal["):
        return next(c for c in re.findall(r"['\"]([^'\"]+)['\"]", kind) if c != default)
    if kind.startswith("bool"):
        return "false" if default else "true"
    if kind.startswith(("int", "float")):
        return str(2 * default if default else 3)
    return f"/tmp/{var.lower()}"


def _variables(text: str) -> set[str]:
    return set(re.findall(r"\b(?:STORAGE|UNISTORE)_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_committed_doc_is_generated() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: regenerate it with "
        "`PYTHONPATH=src python -m unistore._settings_doc > docs/configuration.md`"
    )


@pytest.mark.parametrize("cls", [*settings_classes().values(), ServiceSettings], ids=lambda c: c.__name__)
def test_every_field_is_described(cls: type[Any]) -> None:
    docs = field_docs(cls)
    missing = [f.name for f in fields(cls) if not docs.get(f.name, "").strip()]
    assert not missing, f"{cls.__name__}: add an attribute docstring under {', '.join(missing)}"


@pytest.mark.parametrize("kind", KINDS)
def test_backend_variables_are_read(kind: str) -> None:
    cls = settings_classes()[kind]
    by_name = {f.name: f for f in fields(cls)}
    base = REQUIRED[kind]
    built = cls(**_settings_for(kind, {}, base))
    rows = [r for r in backend_rows(kind) if r.variable]
    assert rows
    for row in rows:
        assert row.variable is not None
        f = by_name[row.setting]
        value = _sample(row.variable, f.type, f.default if f.default is not MISSING else None)
        env = {**base, row.variable: value}
        if row.variable == "STORAGE_S3_SSE_KMS_KEY_ID":
            env["STORAGE_S3_SSE"] = "aws:kms"
        changed = cls(**_settings_for(kind, {}, env))
        assert getattr(changed, row.setting) != getattr(built, row.setting), f"{row.variable} did not change {kind}"


def test_service_variables_are_read() -> None:
    base = {"UNISTORE_SECRET": "s" * 16}
    built = ServiceSettings.from_env(base)
    by_name = {f.name: f for f in fields(ServiceSettings)}
    for row in service_rows():
        assert row.variable is not None
        f = by_name[row.setting]
        env = {**base, row.variable: _sample(row.variable, f.type, f.default if f.default is not MISSING else ())}
        changed = ServiceSettings.from_env(env)
        assert getattr(changed, row.setting) != getattr(built, row.setting), f"{row.variable} is not read"


def test_cli_variables_are_options_or_read() -> None:
    names = {r.variable for r in cli_rows()}
    assert {"UNISTORE_STORE", "UNISTORE_TOKEN", "UNISTORE_STATE_DIR", "UNISTORE_SECRET", "UNISTORE_CONFIG"} <= names


def test_config_file_variables_are_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from unistore.cli._refs import config_path

    monkeypatch.delenv("UNISTORE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    assert config_path() == tmp_path / "unistore" / "stores.toml"
    monkeypatch.setenv("UNISTORE_CONFIG", str(tmp_path / "s.toml"))
    assert config_path() == tmp_path / "s.toml"


def test_every_variable_the_code_names_is_documented() -> None:
    """A ``STORAGE_*``/``UNISTORE_*`` name in the source but not in the reference is an undocumented knob."""
    named = set().union(*(_variables(p.read_text()) for p in (ROOT / "src" / "unistore").rglob("*.py")))
    named -= {"STORAGE_CLOUDINARY"}  # the error message's prefix of the STORAGE_CLOUDINARY_* variables
    assert sorted(named - _variables(DOC.read_text())) == []


def test_detection_and_url_forms_hold() -> None:
    assert {detect_backend({v: "x"})[0] for v in AUTO_DETECT_VARIABLES} == {"local", "s3", "gcs", "cloudinary"}
    assert detect_backend({})[0] == "memory"
    for url, kind, _what in URL_FORMS:
        assert url_settings(url)[0] == kind, url


def test_docs_name_only_documented_variables() -> None:
    """A ``STORAGE_*``/``UNISTORE_*`` name in the README or another page must be one the reference lists."""
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    named = set().union(*(_variables(p.read_text()) for p in pages))
    assert sorted(named - _variables(DOC.read_text())) == []
