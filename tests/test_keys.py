"""Key rules (``unistore._keys``): every rejected class, legitimate names, prefixes, and
property tests that no accepted key can resolve outside a local root."""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path, PurePosixPath
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unistore import InvalidKeyError, LocalBackend, StorageError, validate_key, validate_prefix
from unistore._keys import MAX_KEY_BYTES


def _nested_quote(text: str, levels: int) -> str:
    """``text`` percent-encoded ``levels`` times (dots too, which ``quote`` leaves alone)."""
    text = quote(text, safe="").replace(".", "%2E")
    for _ in range(levels - 1):
        text = quote(text, safe="")
    return text


def _key_of_bytes(n: int) -> str:
    """A valid key of exactly ``n`` UTF-8 bytes (segments kept under 255 bytes)."""
    segs, left = [], n
    while left > 200:
        segs.append("s" * 199)
        left -= 200  # segment + "/"
    segs.append("t" * left)
    key = "/".join(segs)
    assert len(key.encode()) == n
    return key


REJECTED: dict[str, list[object]] = {
    "empty": [""],
    "leading_slash": ["/", "/abs", "/a/b.txt", "//a"],
    "dot_segments": [".", "..", "./a", "a/.", "a/./b", "../etc/passwd", "a/../../b", "a/..", "../"],
    "empty_segments": ["a//b", "a/", "a/b/", "a///b"],
    "backslash": ["a\\b", "..\\x", "\\", "a\\..\\..\\b"],
    "nul_and_control": [
        "nul\x00byte",
        "\x00",
        "tab\tx",
        "new\nline",
        "cr\rx",
        "bell\x07",
        "esc\x1b[31m",
        "del\x7f",
        "c1\x85next",
        "c1\x9f",
    ],
    "windows_drive": ["C:/windows", "c:evil", "Z:", "C:", "d:/x/y"],
    "percent_encoded_traversal": [
        "%2e%2e/etc/passwd",
        "%2E%2E/x",
        "a/%2e%2e/b",
        "%2e/x",
        "a/%2E",
        "..%2fx",
        "a%2F..%2Fb",
        "%2e%2e%2f%2e%2e%2fetc",
        "%2f/abs",
        "%2fabs",
        "a%5cb",
        "a%5C..%5Cb",
        "nul%00",
        "ctrl%0a",
        "c1%c2%85",
        "C%3a/x",
        "a%2F%2Fb",
        "%2eunistore/x",
    ],
    "double_encoded_traversal": [
        "%252e%252e/x",
        "%252E%252E%252Fx",
        "a/%25252e%25252e/b",
        _nested_quote("../x", 2),
        _nested_quote("../x", 3),
        _nested_quote("..", 6) + "/x",  # deeper than any fixed decode depth
        _nested_quote("..", 12) + "/x",
    ],
    "too_long": ["x" * 1025, "é" * 513, _key_of_bytes(MAX_KEY_BYTES + 1), "a/" + "s" * 256],
    "reserved_segment": [
        ".unistore",
        ".unistore/url-secret",
        ".unistore/locks/000.lock",
        "a/.unistore.b.meta",
        ".unistore.tmp.0123456789abcdef",
        "dir/.unistore.tmp.x",
        ".unistorex",
    ],
    "lone_surrogate": ["bad\ud800", "\udcff.txt"],
    "non_str": [None, b"bytes", 123, 1.5, ["a"], PurePosixPath("a/b"), object()],
}


@pytest.mark.parametrize(
    "bad",
    [pytest.param(v, id=f"{cls}-{i}") for cls, values in REJECTED.items() for i, v in enumerate(values)],
)
def test_rejected(bad: object) -> None:
    with pytest.raises(InvalidKeyError) as exc:
        validate_key(bad)
    assert isinstance(exc.value, ValueError) and isinstance(exc.value, StorageError)
    assert exc.value.status == 400
    # the message is one line, even for keys full of control characters
    assert "\n" not in exc.value.message


ACCEPTED = [
    "a",
    "a..b.txt",
    "...",
    "...dots",
    "trailing.",
    ".hidden",
    "a/.hidden/b",
    "with space.txt",
    " leading and trailing ",
    "ünïcödé/файл/文件.bin",
    "emoji 🎉.png",
    "!@#$%^&()_+-=;',",
    "!@#$%^&()_+-=;',.txt",
    "100%",
    "%",
    "%zz",
    "%2",
    "50%off",
    "q?uestion#hash",
    "~tilde",
    "x.meta.json",
    "x.meta",
    "y.tmp",
    "unistore",
    "x.unistore",
    ".unistor",
    "a/unistore/.unistor",
    "ab:c",
    "1:x",
    "a/C:/b",
    "uploads/2024/01/report.pdf",
    "s" * 255,
    _key_of_bytes(MAX_KEY_BYTES),
    "/".join(["é" * 127] * 4) + "/xxxx",  # exactly 1024 bytes in 2-byte characters
]


@pytest.mark.parametrize("good", ACCEPTED, ids=repr)
def test_accepted_unchanged(good: str) -> None:
    assert len(good.encode()) <= MAX_KEY_BYTES
    assert validate_key(good) is good  # never normalised


def test_length_is_counted_in_utf8_bytes() -> None:
    at_limit = "/".join(["é" * 127] * 4) + "/xxxx"
    assert len(at_limit) < 600 and len(at_limit.encode()) == MAX_KEY_BYTES
    assert validate_key(at_limit) == at_limit
    with pytest.raises(InvalidKeyError):
        validate_key(at_limit + "x")  # 1025 bytes, far fewer than 1024 characters
    with pytest.raises(InvalidKeyError):
        validate_key("é" * 128)  # one 256-byte segment


def test_worst_case_decoding_is_cheap() -> None:
    import time

    seg = "%" + "25" * 125 + "41"  # 125 levels of encoding per segment, 4 segments
    key = "/".join([seg] * 4)
    assert len(key) <= MAX_KEY_BYTES
    start = time.perf_counter()
    assert validate_key(key) == key
    assert time.perf_counter() - start < 0.5


# --- prefixes --------------------------------------------------------------------------

PREFIX_OK = ["", "a", "a/", "a/b/", "rep", ".", "a/.", "..", "a/..", "a/.unistore", "100%", "ünï/", "a..b"]
PREFIX_BAD: list[object] = [
    "../",
    "./",
    "a/../",
    "a/./b",
    "/",
    "/etc",
    "a//",
    "a//b",
    "..\\",
    "a\\",
    "%2e%2e/",
    "%252e%252e/",
    _nested_quote("..", 7) + "/",
    "a%2F..%2F",
    "C:",
    "c:/",
    ".unistore/",
    "a/.unistore.b/",
    "\x00",
    "a\x1f",
    "\ud800/",
    "a/\udcff",
    "x" * 1025,
    None,
    b"a/",
    3,
]


@pytest.mark.parametrize("prefix", PREFIX_OK, ids=repr)
def test_prefix_accepted(prefix: str) -> None:
    assert validate_prefix(prefix) is prefix


@pytest.mark.parametrize("prefix", PREFIX_BAD, ids=repr)
def test_prefix_rejected(prefix: object) -> None:
    with pytest.raises(InvalidKeyError):
        validate_prefix(prefix)


def test_every_valid_key_is_a_valid_prefix() -> None:
    for k in ACCEPTED:
        assert validate_prefix(k) == k
        if len(k.encode()) < MAX_KEY_BYTES:
            assert validate_prefix(k + "/") == k + "/"


# --- properties ----------------------------------------------------------------------

_TOKENS = [
    "/", "//", ".", "..", "%", "%2e", "%2E", "%2f", "%2F", "%25", "%252e", "%5c", "%5C", "%00",
    "%0a", "%c2%85", "%3a", "\\", ":", "C:", "c", "\x00", "\x1f", "\x7f", "\x85", "\u2028", "\ud800",
    "a", "b", "é", "文", "🎉", " ", ".unistore", "unistore", "~", "..a", "a..", "%2e%2e",
]  # fmt: skip

keyish = st.lists(
    st.one_of(st.sampled_from(_TOKENS), st.characters(), st.text(max_size=4)), max_size=24
).map("".join)


def _full_unquote(text: str) -> str:
    while True:
        decoded = unquote(text, errors="surrogateescape")
        if decoded == text:
            return text
        text = decoded


def _inside(root: str, key: str) -> bool:
    resolved = os.path.realpath(os.path.join(root, key))
    return resolved.startswith(root + os.sep) and resolved != root


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(keyish)
@example("%2e%2e/x")
@example(_nested_quote("..", 9) + "/x")
@example("a/.")
@example(".")
def test_accepted_keys_resolve_inside_root(tmp_path_factory: pytest.TempPathFactory, key: str) -> None:
    try:
        validate_key(key)
    except InvalidKeyError:
        return
    root = os.path.realpath(str(tmp_path_factory.getbasetemp() / "never-created-root"))
    assert _inside(root, key), key
    assert _inside(root, unquote(key, errors="surrogateescape")), key
    assert _inside(root, _full_unquote(key)), key
    # and as a prefix it names nothing outside the root either
    assert validate_prefix(key) == key


@settings(max_examples=2000, deadline=None)
@given(keyish)
def test_accepted_prefixes_stay_inside_root(tmp_path_factory: pytest.TempPathFactory, prefix: str) -> None:
    try:
        validate_prefix(prefix)
    except InvalidKeyError:
        return
    root = os.path.realpath(str(tmp_path_factory.getbasetemp() / "never-created-root"))
    for form in (prefix, _full_unquote(prefix)):
        directory = form.rpartition("/")[0]  # the part a listing walks into
        resolved = os.path.realpath(os.path.join(root, directory))
        assert resolved == root or resolved.startswith(root + os.sep), prefix


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(keyish)
@example("x.meta.json")
@example("%2e%2e")
@example("a..b")
def test_local_writes_land_inside_root(tmp_path: Path, key: str) -> None:
    """What LocalBackend actually writes for an accepted key is inside its root, and
    nothing ever appears beside the root."""
    sandbox = tmp_path / "sandbox"
    root = sandbox / "store"
    full = f"{uuid.uuid4().hex[:8]}/{key}"  # fresh directory per example: no file/dir conflicts
    try:
        validate_key(full)
    except InvalidKeyError:
        return
    backend = LocalBackend(base_path=str(root), fsync=False, url_secret="s" * 32)

    async def go() -> bytes:
        try:
            await backend.put_object(full, b"payload")
            assert [k async for k in backend.iter_keys(full.split("/")[0] + "/")] == [full]
            return await backend.get(full)
        finally:
            await backend.aclose()

    assert asyncio.run(go()) == b"payload"
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, full))
    assert target.startswith(real_root + os.sep) and os.path.isfile(target)
    with open(target, "rb") as f:
        assert f.read() == b"payload"
    assert sorted(os.listdir(sandbox)) == ["store"]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(st.text(alphabet="ab-_.:/%\\\x01.unistore", max_size=40) | st.sampled_from(["a/.unistore/b", "a//b", "a/./b"]))
def test_plain_key_shortcut_agrees_with_every_rule(key: str) -> None:
    """The one-regex shortcut for common keys decides exactly as the full rules do."""
    from unistore import _keys

    def full(k: str) -> bool:
        real = _keys._PLAIN
        _keys._PLAIN = __import__("re").compile(r"(?!)")  # never matches: the full rules decide
        try:
            validate_key(k)
            return True
        except InvalidKeyError:
            return False
        finally:
            _keys._PLAIN = real

    try:
        validate_key(key)
        fast = True
    except InvalidKeyError:
        fast = False
    assert fast == full(key)
