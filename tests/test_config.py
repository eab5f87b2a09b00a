"""Configuration: auto-detection, easy_storage settings, env casting, URL forms, the public surface."""

from __future__ import annotations

import builtins
import logging
from pathlib import Path
from typing import Any

import pytest

import unistore
from unistore import (
    ConfigurationError,
    LocalBackend,
    LocalSettings,
    MemoryBackend,
    MemorySettings,
    NotFoundError,
    StorageError,
    UrlSigner,
    backend_from_url,
    detect_backend,
    easy_storage,
)

SECRET = "config-secret-0123456789abcdef"
DETECT_VARS = (
    "STORAGE_BACKEND",
    "STORAGE_BASE_PATH",
    "STORAGE_BASE_URL",
    "STORAGE_URL_SECRET",
    "STORAGE_URL_EXPIRATION",
    "STORAGE_FSYNC",
    "STORAGE_MAX_SIZE",
    "STORAGE_MAX_OBJECT_SIZE",
    "STORAGE_CHUNK_SIZE",
    "STORAGE_S3_BUCKET",
    "STORAGE_S3_REGION",
    "STORAGE_S3_ENDPOINT",
    "STORAGE_S3_ACCESS_KEY",
    "STORAGE_S3_SECRET_KEY",
    "STORAGE_GCS_BUCKET",
    "STORAGE_GCS_PROJECT",
    "RAILWAY_VOLUME_MOUNT_PATH",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "CLOUDINARY_URL",
)
ALL_SIGNALS = {
    "RAILWAY_VOLUME_MOUNT_PATH": "/data",
    "AWS_ACCESS_KEY_ID": "AKIAEXAMPLE",
    "STORAGE_S3_BUCKET": "bucket",
    "GOOGLE_APPLICATION_CREDENTIALS": "/creds.json",
    "CLOUDINARY_URL": "cloudinary://key:secret@cloud",
}


@pytest.fixture(autouse=True)
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """A process environment with no storage configuration at all."""
    for var in DETECT_VARS:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def unistore_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "unistore"]


# --- detect_backend: the spec's order ------------------------------------------------------


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (ALL_SIGNALS, "local"),  # Railway first, whatever else is set
        ({k: v for k, v in ALL_SIGNALS.items() if k != "RAILWAY_VOLUME_MOUNT_PATH"}, "s3"),
        ({"AWS_ACCESS_KEY_ID": "AKIA", "GOOGLE_APPLICATION_CREDENTIALS": "/c", "CLOUDINARY_URL": "c://"}, "s3"),
        ({"STORAGE_S3_BUCKET": "b", "GOOGLE_APPLICATION_CREDENTIALS": "/c"}, "s3"),
        ({"GOOGLE_APPLICATION_CREDENTIALS": "/c", "CLOUDINARY_URL": "cloudinary://k:s@c"}, "gcs"),
        ({"CLOUDINARY_URL": "cloudinary://k:s@c"}, "cloudinary"),
        ({}, "memory"),
        ({"AWS_SECRET_ACCESS_KEY": "only-the-secret", "STORAGE_BASE_PATH": "/x"}, "memory"),
    ],
)
def test_detection_order(present: dict[str, str], expected: str) -> None:
    kind, why = detect_backend(present)
    assert kind == expected
    if present and expected != "memory":
        assert any(var in why for var in present)  # says which variable decided it


def test_detection_names_the_deciding_variable() -> None:
    assert detect_backend({"STORAGE_S3_BUCKET": "b"})[1] == "STORAGE_S3_BUCKET is set"
    assert detect_backend({"AWS_ACCESS_KEY_ID": "a"})[1] == "AWS_ACCESS_KEY_ID is set"
    assert "RAILWAY_VOLUME_MOUNT_PATH" in detect_backend({"RAILWAY_VOLUME_MOUNT_PATH": "/d"})[1]


@pytest.mark.parametrize("choice", ["memory", "local", "s3", "gcs", "cloudinary"])
def test_storage_backend_overrides_everything(choice: str) -> None:
    kind, why = detect_backend({**ALL_SIGNALS, "STORAGE_BACKEND": choice})
    assert kind == choice
    assert "STORAGE_BACKEND" in why


def test_storage_backend_is_case_and_space_insensitive() -> None:
    assert detect_backend({"STORAGE_BACKEND": "  Local "})[0] == "local"


def test_detect_backend_reads_os_environ(env: pytest.MonkeyPatch) -> None:
    assert detect_backend()[0] == "memory"
    env.setenv("CLOUDINARY_URL", "cloudinary://k:s@c")
    assert detect_backend()[0] == "cloudinary"
    env.setenv("STORAGE_BACKEND", "memory")
    assert detect_backend()[0] == "memory"


# --- easy_storage: what gets built, and the log line ------------------------------------------


def test_default_is_memory_with_a_data_loss_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="unistore"):
        backend = easy_storage()
    assert type(backend) is MemoryBackend
    records = unistore_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    message = records[0].getMessage()
    assert "MemoryBackend" in message
    assert "lost" in message  # data loss on restart
    assert "STORAGE_BACKEND" in message  # what to do about it


def test_railway_volume_builds_local_and_logs_why(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("RAILWAY_VOLUME_MOUNT_PATH", str(tmp_path / "vol"))
    with caplog.at_level(logging.INFO, logger="unistore"):
        backend = easy_storage()
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "vol"  # the mount path is the base path when STORAGE_BASE_PATH is unset
    records = unistore_records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "LocalBackend" in records[0].getMessage()
    assert "RAILWAY_VOLUME_MOUNT_PATH" in records[0].getMessage()


def test_storage_base_path_wins_over_railway_mount(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("RAILWAY_VOLUME_MOUNT_PATH", str(tmp_path / "vol"))
    env.setenv("STORAGE_BASE_PATH", str(tmp_path / "vol" / "uploads"))
    backend = easy_storage()
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "vol" / "uploads"


def test_explicit_backend_is_logged_at_info(
    env: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env.setenv("STORAGE_BACKEND", "local")
    env.setenv("STORAGE_BASE_PATH", str(tmp_path / "s"))
    env.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")  # would pick s3 without the override
    with caplog.at_level(logging.INFO, logger="unistore"):
        backend = easy_storage()
    assert isinstance(backend, LocalBackend)
    (record,) = unistore_records(caplog)
    assert record.levelno == logging.INFO
    assert "LocalBackend" in record.getMessage()
    assert "STORAGE_BACKEND" in record.getMessage()


def test_explicit_memory_does_not_warn(env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    env.setenv("STORAGE_BACKEND", "memory")
    with caplog.at_level(logging.INFO, logger="unistore"):
        assert type(easy_storage()) is MemoryBackend
    assert [r.levelno for r in unistore_records(caplog)] == [logging.INFO]


@pytest.mark.parametrize(
    ("variables", "cls_name"),
    [
        ({"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}, "S3Backend"),
        ({"STORAGE_S3_BUCKET": "uploads"}, "S3Backend"),
        ({"GOOGLE_APPLICATION_CREDENTIALS": "/creds.json"}, "GCSBackend"),
        ({"CLOUDINARY_URL": "cloudinary://key:topsecret@cloud"}, "CloudinaryBackend"),
    ],
)
def test_detected_backends_with_missing_settings_never_fall_back(
    env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, variables: dict[str, str], cls_name: str
) -> None:
    """A half-configured cloud backend is an error naming it, never a silent MemoryBackend."""
    for name, value in variables.items():
        env.setenv(name, value)
    with caplog.at_level(logging.INFO, logger="unistore"):
        outcome: object
        try:
            outcome = type(easy_storage()).__name__
        except ConfigurationError as exc:
            outcome = str(exc)
    assert cls_name in str(outcome) and "topsecret" not in str(outcome)
    assert not any("MemoryBackend" in r.getMessage() for r in unistore_records(caplog))


def test_unknown_backend_names_the_choices(env: pytest.MonkeyPatch) -> None:
    env.setenv("STORAGE_BACKEND", "ftp")
    with pytest.raises(ConfigurationError, match="ftp") as info:
        easy_storage()
    for choice in ("local", "memory", "s3"):
        assert choice in str(info.value)
    with pytest.raises(ConfigurationError, match="ftp"):
        easy_storage("ftp")


# --- easy_storage keyword settings ---------------------------------------------------------------


def test_local_keywords_are_env_names_without_prefix(tmp_path: Path) -> None:
    backend = easy_storage(
        "local",
        base_path=str(tmp_path / "kw"),
        base_url="https://cdn.example.com/f",
        url_secret=SECRET,
        url_expiration=60,
        max_object_size=1000,
        fsync=False,
    )
    assert isinstance(backend, LocalBackend)
    s = backend.settings
    assert (s.base_path, s.base_url, s.url_secret, s.url_expiration, s.max_object_size, s.fsync) == (
        str(tmp_path / "kw"),
        "https://cdn.example.com/f",
        SECRET,
        60,
        1000,
        False,
    )
    assert backend.root == tmp_path / "kw"
    assert backend.default_expires_in == 60


async def test_keyword_settings_take_effect(tmp_path: Path) -> None:
    backend = easy_storage(
        "local", base_path=str(tmp_path / "kw"), base_url="https://cdn.example.com/f", max_object_size=4, fsync=False
    )
    url = await backend.put("a.txt", b"1234")
    assert url.startswith("https://cdn.example.com/f/a.txt?")
    with pytest.raises(unistore.QuotaExceededError):
        await backend.put("b.txt", b"12345")
    assert not await backend.exists("b.txt")


def test_memory_keywords() -> None:
    backend = easy_storage("memory", max_size=10, url_secret=SECRET, url_expiration=5, base_url="http://h/x")
    assert isinstance(backend, MemoryBackend)
    assert backend.settings.max_size == 10
    assert backend.default_expires_in == 5
    assert backend.signer.base_url == "http://h/x"


@pytest.mark.parametrize(
    ("kind", "bad"), [("local", "bucket"), ("memory", "base_path"), ("memory", "fsync"), ("local", "basepath")]
)
def test_unknown_keywords_are_rejected_listing_the_known_ones(kind: str, bad: str, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {bad: "x"}
    if kind == "local":
        kwargs.setdefault("base_path", str(tmp_path))
    with pytest.raises(ConfigurationError) as info:
        easy_storage(kind, **kwargs)
    message = str(info.value)
    assert bad in message
    known = ["base_url", "url_secret", "url_expiration"]
    known += ["base_path", "fsync", "max_object_size"] if kind == "local" else ["max_size"]
    for name in known:
        assert name in message


def test_unknown_keyword_with_auto_detection(env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        easy_storage(colour="blue")


@pytest.mark.parametrize(
    ("kwargs", "field", "expected"),
    [
        ({"fsync": "false"}, "fsync", False),
        ({"fsync": "0"}, "fsync", False),
        ({"fsync": "yes"}, "fsync", True),
        ({"url_expiration": "90"}, "url_expiration", 90),
        ({"max_object_size": "2048"}, "max_object_size", 2048),
        ({"max_object_size": None}, "max_object_size", None),
    ],
)
def test_string_keywords_are_cast_like_env(tmp_path: Path, kwargs: dict[str, Any], field: str, expected: Any) -> None:
    backend = easy_storage("local", base_path=str(tmp_path), **kwargs)
    assert isinstance(backend, LocalBackend)
    assert getattr(backend.settings, field) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {"fsync": "sometimes"},
        {"url_expiration": "abc"},
        {"url_expiration": 1.5},
        {"url_expiration": True},
        {"url_expiration": None},
        {"fsync": 1},
        {"base_url": 42},
        {"url_expiration": 0},
        {"url_expiration": -5},
        {"max_object_size": -1},
        {"url_secret": "too-short"},
    ],
)
def test_bad_keyword_values_are_configuration_errors(tmp_path: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        easy_storage("local", base_path=str(tmp_path), **kwargs)


def test_short_url_secret_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        MemoryBackend(url_secret="short-one")
    assert "short-one" not in str(info.value)
    with pytest.raises(ConfigurationError):
        UrlSigner(b"x" * 15, "http://h/f")


# --- environment variables and their casting ---------------------------------------------------


def test_env_settings_for_local(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STORAGE_BACKEND", "local")
    env.setenv("STORAGE_BASE_PATH", str(tmp_path / "env"))
    env.setenv("STORAGE_BASE_URL", "https://files.example.com/x")
    env.setenv("STORAGE_URL_SECRET", SECRET)
    env.setenv("STORAGE_URL_EXPIRATION", "120")
    env.setenv("STORAGE_FSYNC", "false")
    env.setenv("STORAGE_MAX_OBJECT_SIZE", "4096")
    backend = easy_storage()
    assert isinstance(backend, LocalBackend)
    s = backend.settings
    assert s == LocalSettings(
        base_path=str(tmp_path / "env"),
        base_url="https://files.example.com/x",
        url_secret=SECRET,
        url_expiration=120,
        fsync=False,
        max_object_size=4096,
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("false", False),
        ("0", False),
        ("OFF", False),
        ("no", False),
        ("true", True),
        ("1", True),
        ("On", True),
        ("YES", True),
    ],
)
def test_env_booleans(env: pytest.MonkeyPatch, tmp_path: Path, value: str, expected: bool) -> None:
    env.setenv("STORAGE_FSYNC", value)
    backend = easy_storage("local", base_path=str(tmp_path))
    assert isinstance(backend, LocalBackend)
    assert backend.settings.fsync is expected


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("STORAGE_URL_EXPIRATION", "abc"),
        ("STORAGE_URL_EXPIRATION", "1.5"),
        ("STORAGE_MAX_OBJECT_SIZE", "10MB"),
        ("STORAGE_FSYNC", "maybe"),
        ("STORAGE_URL_EXPIRATION", "-1"),
    ],
)
def test_bad_env_values_name_the_variable(env: pytest.MonkeyPatch, tmp_path: Path, var: str, value: str) -> None:
    env.setenv(var, value)
    with pytest.raises(ConfigurationError) as info:
        easy_storage("local", base_path=str(tmp_path))
    message = str(info.value)
    assert var in message or var.removeprefix("STORAGE_").lower() in message


def test_env_secret_never_in_bad_value_errors(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STORAGE_URL_SECRET", "tiny")
    with pytest.raises(ConfigurationError) as info:
        easy_storage("local", base_path=str(tmp_path))
    assert "tiny" not in str(info.value)


def test_keywords_override_env(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STORAGE_BASE_PATH", str(tmp_path / "from-env"))
    env.setenv("STORAGE_URL_EXPIRATION", "10")
    env.setenv("STORAGE_FSYNC", "true")
    env.setenv("STORAGE_BASE_URL", "http://env/files")
    backend = easy_storage(
        "local", base_path=str(tmp_path / "from-kw"), url_expiration=20, fsync=False, base_url="http://kw/f"
    )
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "from-kw"
    assert (backend.settings.url_expiration, backend.settings.fsync) == (20, False)
    assert backend.signer.base_url == "http://kw/f"
    assert not (tmp_path / "from-env").exists()


def test_empty_env_values_are_unset(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STORAGE_URL_EXPIRATION", "")
    env.setenv("STORAGE_BACKEND", "")
    env.setenv("RAILWAY_VOLUME_MOUNT_PATH", "")
    assert detect_backend()[0] == "memory"
    backend = easy_storage("local", base_path=str(tmp_path))
    assert isinstance(backend, LocalBackend)
    assert backend.settings.url_expiration == 3600


# --- URL forms ---------------------------------------------------------------------------------


def test_memory_url() -> None:
    backend = backend_from_url("memory://")
    assert type(backend) is MemoryBackend
    assert backend_from_url("memory://", max_size=5).settings.max_size == 5  # type: ignore[attr-defined]


def test_file_url_with_query_settings(tmp_path: Path) -> None:
    root = tmp_path / "x y"
    backend = backend_from_url(f"file://{root.as_posix().replace(' ', '%20')}?fsync=false&url_expiration=30")
    assert isinstance(backend, LocalBackend)
    assert backend.root == root
    assert backend.settings.fsync is False
    assert backend.settings.url_expiration == 30
    assert root.is_dir()


def test_file_url_defaults_and_localhost(tmp_path: Path) -> None:
    backend = backend_from_url(f"file://localhost{tmp_path}/y")
    assert isinstance(backend, LocalBackend)
    assert backend.root == tmp_path / "y"
    assert backend.settings.fsync is True


async def test_file_url_round_trip(tmp_path: Path) -> None:
    backend = backend_from_url(f"file://{tmp_path}/rt?fsync=false", url_secret=SECRET)
    await backend.put("k.txt", b"v")
    assert (tmp_path / "rt" / "k.txt").read_bytes() == b"v"
    assert await backend.get("k.txt") == b"v"


@pytest.mark.parametrize(
    "url",
    [
        "file://remotehost/data",
        "ftp://host/x",
        "memory://?colour=blue",
        "file:///tmp/unistore-never?fsync=perhaps",
        "nonsense",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        backend_from_url(url)


def test_url_form_ignores_env(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("STORAGE_BACKEND", "s3")
    env.setenv("STORAGE_URL_EXPIRATION", "77")
    backend = backend_from_url(f"file://{tmp_path}/u")
    assert isinstance(backend, LocalBackend)
    assert backend.settings.url_expiration == 3600


# --- the public surface ---------------------------------------------------------------------------


def test_all_is_sorted_unique_and_resolves() -> None:
    names = unistore.__all__
    assert names == sorted(names)
    assert len(names) == len(set(names))
    for name in names:
        assert getattr(unistore, name) is not None, name


def test_star_import() -> None:
    namespace: dict[str, Any] = {}
    exec("from unistore import *", namespace)
    assert set(unistore.__all__) <= set(namespace)
    assert namespace["add_storage"] is unistore.add_storage
    assert namespace["FileNotFoundError"] is NotFoundError


def test_spec_names_are_exported() -> None:
    for name in (
        "add_storage",
        "easy_storage",
        "get_storage",
        "StorageBackend",
        "StorageError",
        "FileNotFoundError",
        "PermissionDeniedError",
        "QuotaExceededError",
        "InvalidKeyError",
        "LocalBackend",
        "MemoryBackend",
        "S3Backend",
        "GCSBackend",
        "CloudinaryBackend",
    ):
        assert name in unistore.__all__, name


def test_unknown_attribute_is_attribute_error() -> None:
    with pytest.raises(AttributeError):
        _ = unistore.NoSuchThing  # type: ignore[attr-defined]


def test_file_not_found_is_the_builtin_too() -> None:
    assert unistore.FileNotFoundError is unistore.NotFoundError
    assert issubclass(unistore.FileNotFoundError, builtins.FileNotFoundError)
    assert issubclass(unistore.FileNotFoundError, StorageError)
    with pytest.raises(builtins.FileNotFoundError) as info:  # the spec's `except FileNotFoundError:`
        raise unistore.NotFoundError("gone", key="k")
    assert isinstance(info.value, StorageError)
    assert info.value.key == "k"


async def test_spec_style_except_catches_a_missing_object() -> None:
    backend = MemoryBackend()
    with pytest.raises(builtins.FileNotFoundError):
        await backend.get("missing")


# --- secrets never in reprs ------------------------------------------------------------------------


async def test_secrets_never_in_repr(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    secret = "Sup3r-Secret-Value-0123456789"
    local = LocalBackend(base_path=str(tmp_path / "a"), url_secret=secret, fsync=False)
    memory = MemoryBackend(url_secret=secret)
    env.setenv("STORAGE_URL_SECRET", secret)
    env.setenv("STORAGE_BACKEND", "local")
    env.setenv("STORAGE_BASE_PATH", str(tmp_path / "b"))
    from_env = easy_storage()
    things: list[object] = [
        local,
        memory,
        from_env,
        local.settings,
        memory.settings,
        from_env.settings,  # type: ignore[attr-defined]
        local.signer,
        memory.signer,
        LocalSettings(url_secret=secret),
        MemorySettings(url_secret=secret),
        UrlSigner(secret.encode(), "http://h/f"),
    ]
    for thing in things:
        assert secret not in repr(thing), type(thing).__name__
        assert secret not in str(thing), type(thing).__name__
    # The URL secret is not recoverable from a signed URL either.
    assert secret not in await local.sign_url("k")


def test_generated_secret_is_persisted_and_never_shown(tmp_path: Path) -> None:
    backend = LocalBackend(base_path=str(tmp_path / "p"), fsync=False)
    assert backend.signer  # the secret is created when first needed
    files = list((tmp_path / "p").rglob("*secret*"))
    assert len(files) == 1
    secret = files[0].read_text().strip()
    assert len(secret) >= 32
    assert files[0].stat().st_mode & 0o777 == 0o600
    for thing in (backend, backend.settings, backend.signer):
        assert secret not in repr(thing)
    again = LocalBackend(base_path=str(tmp_path / "p"), fsync=False)
    assert again.signer.sign("k", expires_in=60, now=0) == backend.signer.sign("k", expires_in=60, now=0)


def test_settings_and_keyword_options_together_are_refused(tmp_path: Path) -> None:
    from unistore.backends.http import HttpBackend, HttpSettings
    from unistore.backends.local import LocalBackend, LocalSettings
    from unistore.backends.memory import MemoryBackend, MemorySettings
    from unistore.backends.s3 import S3Backend, S3Settings
    from unistore.layers import Faults
    from unistore.layers._faults import FaultSettings

    cases: list[tuple[Any, Any, dict[str, Any]]] = [
        (MemoryBackend, MemorySettings(), {"max_size": 1}),
        (LocalBackend, LocalSettings(base_path=str(tmp_path)), {"fsync": False}),
        (S3Backend, S3Settings(bucket="b"), {"region": "eu-west-1"}),
        (HttpBackend, HttpSettings(url="http://127.0.0.1:1"), {"timeout": 1.0}),
    ]
    for cls, settings, options in cases:
        with pytest.raises(ConfigurationError, match="not both"):
            cls(settings, **options)
        assert cls(settings).settings is settings
    with pytest.raises(ConfigurationError, match="not both"):
        Faults(MemoryBackend(), FaultSettings(), seed=1)
