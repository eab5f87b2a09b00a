"""Every code block in the README and ``docs/`` runs, so the docs cannot drift from the code.

- ```` ```python ```` blocks of one page run in order in one namespace (later blocks use
  earlier names), with top-level ``await``, in a fresh directory, with no ``STORAGE_*`` or
  ``UNISTORE_*`` variables from the machine.
- ```` ```bash ```` blocks of one page run in order in one fresh directory, each under
  ``bash -euo pipefail``, with the project's ``unistore`` on ``PATH`` and ``PORT`` set to a
  free port; ``make`` lines are checked with ``make -n`` in the project root (running them
  for real is what CI does); processes a block starts in the background are stopped when it
  ends.
- Other fences (```` ```text ````, plain ```` ``` ````) show output or wire formats, not code.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from unistore.testing import free_port

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```\s*$", re.S | re.M)
RUN = ("python", "bash")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str

    def __str__(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    return [
        Block(page, text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) in RUN
    ]


def _clean_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_", "AWS_", "CLOUDINARY"))}
    env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HOME"] = str(tmp)
    env["PORT"] = str(free_port())
    return env


async def _run_python(code: str, namespace: dict[str, Any], where: str) -> None:
    compiled = compile(code, where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    result = eval(compiled, namespace)
    if asyncio.iscoroutine(result):
        await result


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
async def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = _clean_env(tmp_path)
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
        if close is not None and callable(close) and not isinstance(value, type):
            result = close()
            if asyncio.iscoroutine(result):
                await result


@pytest.mark.parametrize("page", BASH_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_bash_blocks_run(page: Path, tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    for block in blocks(page):
        if block.lang == "bash":
            _run_bash(block.code, env, tmp_path, str(block))


def test_every_page_with_code_is_covered() -> None:
    assert {b.page for p in PAGES for b in blocks(p)} <= set(PYTHON_PAGES) | set(BASH_PAGES)
    assert ROOT / "README.md" in BASH_PAGES
