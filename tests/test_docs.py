"""Every code block in the README and ``docs/`` runs, so the docs cannot drift from the code.

- ```` ```python ```` blocks of one page run in order in one namespace (later blocks use
  earlier names), with top-level ``await``, in a fresh directory, with no ``STORAGE_*`` or
  ``UNISTORE_*`` variables from the machine. A block without top-level ``await`` runs in a
  thread of its own, so a complete script ending in ``asyncio.run(main())`` runs as written.
- ```` ```bash ```` blocks of one page run in order in one fresh directory, each under
  ``bash -euo pipefail``, with the project's ``unistore`` on ``PATH`` and ``PORT`` set to a
  free port; ``make`` lines are checked with ``make -n`` in the project root (running them
  for real is what CI does); processes a block starts in the background are stopped when it
  ends.
- A page that needs a store server runs against the suite's own servers: ``SERVERS`` names
  them per page, and ``_server_env`` turns each into the ``STORAGE_*`` variables a reader
  would set (SeaweedFS for S3, fake-gcs-server for GCS, the Cloudinary fake, a unistore
  service, clamd). Python and bash blocks of that page both see them.
- A block that cannot run here (real cloud accounts, a long-running server in the
  foreground) says so in its fence, ```` ```bash not-run: REASON ````; the reason is required.
- Other fences (```` ```text ````, plain ```` ``` ````) show output or wire formats, not code;
  ``sh``/``shell``/``console``/``py`` fences are refused, so nothing escapes by its spelling.
- Every relative link and ``#anchor`` in the README and ``docs/`` resolves, and the docs
  index (``docs/README.md``) links every page.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import pytest

from unistore import MemoryBackend
from unistore.testing import free_port, running_server

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```([\w-]*)([^\n]*)\n(.*?)^```\s*$", re.S | re.M)
RUN = ("python", "bash")
REFUSED = ("sh", "shell", "console", "zsh", "shell-session", "py", "python3", "pycon", "ipython")
NOT_RUN = re.compile(r"^\s*not-run:\s*(?P<reason>.*\S)?\s*$")

SERVERS: dict[str, tuple[str, ...]] = {
    # page: the session servers its blocks run against (turned into variables by _server_env)
    "docs/backend-s3.md": ("seaweed",),
    "docs/migrations.md": ("seaweed",),
    "docs/backend-gcs.md": ("fake_gcs",),
    "docs/backend-cloudinary.md": ("fake_cloudinary",),
    "docs/backend-http.md": ("docs_service",),
    "docs/scanning.md": ("clamd",),
}
SERVICE_SECRET = "docs-service-secret-0123456789abcdef"


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    info: str = ""

    @property
    def runs(self) -> bool:
        return self.lang in RUN and NOT_RUN.match(self.info) is None

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Block]:
    """Every fenced block of ``page``, whatever its language."""
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(3), m.group(2).strip())
        for m in FENCE.finditer(text)
    ]


def blocks(page: Path) -> list[Block]:
    """The blocks of ``page`` that the suite runs."""
    return [b for b in fences(page) if b.runs]


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.fixture(scope="session")
def docs_service() -> Iterator[str]:
    """A unistore service (auth on, over memory) for the HttpBackend page."""
    from unistore.service import ServiceSettings, create_app

    port = free_port()
    backend = MemoryBackend(base_url=f"http://127.0.0.1:{port}/files")
    app = create_app(backend, settings=ServiceSettings(secret=SERVICE_SECRET.encode()))
    with running_server(app, port) as url:
        yield url


def _server_env(name: str, server: Any) -> dict[str, str]:
    """The variables a reader would set to use ``server``, on a fresh bucket where it has them."""
    bucket = f"docs-{uuid.uuid4().hex[:12]}"
    if name == "seaweed":
        server.create_bucket(bucket)
        return {
            "STORAGE_S3_BUCKET": bucket,
            "STORAGE_S3_ENDPOINT": server.endpoint,
            "STORAGE_S3_REGION": server.region,
            "STORAGE_S3_ACCESS_KEY": server.access_key,
            "STORAGE_S3_SECRET_KEY": server.secret_key,
        }
    if name == "fake_gcs":
        from unistore.testing._gcs_server import create_bucket

        create_bucket(server["url"], bucket)
        return {
            "STORAGE_GCS_BUCKET": bucket,
            "STORAGE_EMULATOR_HOST": server["url"],
            "GOOGLE_APPLICATION_CREDENTIALS": server["credentials"],
        }
    if name == "fake_cloudinary":
        fake, url = server
        query = f"upload_prefix={quote(url, safe=':/')}&cname={urlsplit(url).netloc}&secure=false"
        return {"CLOUDINARY_URL": f"cloudinary://{fake.api_key}:{fake.api_secret}@{fake.cloud_name}?{query}"}
    if name == "docs_service":
        from unistore.service import TokenAuthority

        token = TokenAuthority(SERVICE_SECRET.encode()).issue(["admin"], expires_in=3600)
        return {"STORAGE_HTTP_URL": server, "STORAGE_HTTP_TOKEN": token}
    if name == "clamd":
        return {"UNISTORE_CLAMD_URL": server.unix_url}
    raise AssertionError(f"no such docs server {name!r}")


def _page_env(page: Path, tmp: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    env = _clean_env(tmp)
    for name in SERVERS.get(_rel(page), ()):
        env.update(_server_env(name, request.getfixturevalue(name)))
    return env


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_", "AWS_", "CLOUDINARY"))}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp)
    env["PORT"] = str(free_port())
    return env


async def _run_python(code: str, namespace: dict[str, Any], where: str) -> None:
    """Run one block: with top-level ``await`` on the test's loop (as ``python -m asyncio`` or a
    notebook would), without it in a worker thread, so a script's ``asyncio.run(main())`` runs
    as it does for a reader."""
    compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if compiled.co_flags & inspect.CO_COROUTINE:
        await eval(compiled, namespace)
    else:
        await asyncio.to_thread(exec, compiled, namespace)


def _run_bash(code: str, env: dict[str, str], cwd: Path, where: str) -> None:
    script = "\n".join(
        f"make -n -C {ROOT} {line.split('#')[0].strip()[5:]} >/dev/null" if line.strip().startswith("make ") else line
        for line in code.replace("\\\n", " ").splitlines()
    )
    stop = "for p in $(jobs -p); do kill $p 2>/dev/null || true; done; wait || true"
    wrapped = f"trap '{stop}' EXIT\n{script}\n"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", wrapped], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{where} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}"


PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]
BASH_PAGES = [p for p in PAGES if any(b.lang == "bash" for b in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
async def test_python_blocks_run(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    env = _page_env(page, tmp_path, request)
    for name in list(os.environ):
        if name not in env:
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang == "python":
            await _run_python(block.code, namespace, str(block))
    for value in namespace.values():  # close what the page opened
        close = getattr(value, "aclose", None)
        if inspect.ismethod(close) and not isinstance(value, type):  # a bound method: an open object
            result = close()
            if asyncio.iscoroutine(result):
                await result


@pytest.mark.parametrize("page", BASH_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_blocks_run(page: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    env = _page_env(page, tmp_path, request)
    for block in blocks(page):
        if block.lang == "bash":
            _run_bash(block.code, env, tmp_path, str(block))


def test_every_page_with_code_is_covered() -> None:
    assert {b.page for p in PAGES for b in blocks(p)} <= set(PYTHON_PAGES) | set(BASH_PAGES)
    assert ROOT / "README.md" in BASH_PAGES
    assert ROOT / "README.md" in PYTHON_PAGES
    assert set(SERVERS) <= {_rel(p) for p in PAGES}, "a SERVERS entry names a page that does not exist"


def test_no_code_escapes_by_its_fence() -> None:
    """Shell and Python blocks are spelt ``bash``/``python`` (so they run), or say why they do not."""
    wrong = [f"{b} ({b.lang})" for p in PAGES for b in fences(p) if b.lang in REFUSED]
    assert not wrong, f"spell these fences bash or python: {wrong}"
    unexplained = []
    for p in PAGES:
        for b in fences(p):
            if b.lang in RUN and b.info:
                m = NOT_RUN.match(b.info)
                if m is None or len(m.group("reason") or "") < 10:
                    unexplained.append(f"{b}: {b.info!r}")
    assert not unexplained, f"a block that does not run says why (not-run: REASON): {unexplained}"


def test_not_run_blocks_are_few() -> None:
    """Skipping is the exception: most code on every page runs."""
    for p in PAGES:
        code = [b for b in fences(p) if b.lang in RUN]
        skipped = [b for b in code if not b.runs]
        assert len(skipped) <= max(2, len(code) // 3), f"{_rel(p)}: {len(skipped)} of {len(code)} blocks do not run"


def test_install_page_lists_every_extra() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    page = (ROOT / "docs" / "install.md").read_text()
    missing = [name for name in extras if f"| `{name}` |" not in page]
    assert not missing, f"docs/install.md has no row for the extras {missing}"


# --- links ---------------------------------------------------------------------------------------

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def _prose(text: str) -> str:
    """``text`` without fenced blocks and inline code (links there are examples, not links)."""
    text = re.sub(r"^```.*?^```\s*$", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """The ``#fragment``s GitHub gives ``page``'s headings (lower case, punctuation dropped,
    spaces to hyphens, repeats numbered), plus explicit ``<a id=…>``."""
    text = re.sub(r"^```.*?^```\s*$", "", page.read_text(), flags=re.S | re.M)
    seen: dict[str, int] = {}
    out: set[str] = set(HTML_ANCHOR.findall(text))
    for m in HEADING.finditer(text):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(2))  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", title.replace("`", "").lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(page: Path) -> list[str]:
    text = _prose(page.read_text())
    return LINK.findall(text) + REF_LINK.findall(text)


def test_links_and_anchors_resolve() -> None:
    broken = []
    for page in PAGES:
        for target in links(page):
            scheme = urlsplit(target).scheme
            if scheme in ("http", "https", "mailto"):
                continue
            assert not scheme, f"{_rel(page)}: link {target!r} has an unexpected scheme"
            path, _, fragment = target.partition("#")
            dest = (page.parent / unquote(path)).resolve() if path else page
            if not dest.exists():
                broken.append(f"{_rel(page)}: {target} (no such file)")
            elif not dest.is_relative_to(ROOT):
                broken.append(f"{_rel(page)}: {target} (outside the repository)")
            elif fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
                broken.append(f"{_rel(page)}: {target} (no heading #{fragment} in {_rel(dest)})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_docs_index_links_every_page() -> None:
    index = ROOT / "docs" / "README.md"
    linked = {(index.parent / t.partition("#")[0]).resolve() for t in links(index) if not urlsplit(t).scheme}
    missing = [_rel(p) for p in sorted((ROOT / "docs").glob("*.md")) if p != index and p not in linked]
    assert not missing, f"docs/README.md does not link {missing}"
    assert any(t.startswith("docs/README.md") for t in links(ROOT / "README.md")), "README.md links the docs index"


MAINTAINER_VOICE = re.compile(r"\bthe (spec|issue)\b|\bspec's\b|\bissue \d+", re.I)


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if p.name not in ("design.md",)],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_user_pages_speak_to_users(page: Path) -> None:
    """User pages never send readers to the project's internal spec or issues."""
    hits = [m.group(0) for m in MAINTAINER_VOICE.finditer(_prose(page.read_text()))]
    assert not hits, f"{_rel(page)} cites {hits}"
