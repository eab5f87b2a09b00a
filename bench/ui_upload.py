#!/usr/bin/env python3
"""The web UI's upload from a real browser vs ``unistore put`` of the same file, in one run.

One file (1 GiB; ``--quick``: 128 MiB) is uploaded, repetitions interleaved with the order rotated:

- ``browser-sessions``: Chromium (Playwright, loopback) picks the file in ``/ui/``; the page sends
  it in 8 MiB parts, each with its Web Crypto SHA-256, through the service's upload session into
  a local directory store.
- ``cli-service-local``: ``unistore put FILE KEY -s http://service --token T`` into the same service.
- ``browser-direct``: the same page against a service over SeaweedFS (``checksum="sha256"``): parts
  go straight to SeaweedFS on presigned URLs, the service only signs and completes.
- ``cli-service-s3``: ``unistore put`` into that service.
- ``cli-s3``: ``unistore put`` straight to SeaweedFS (``s3://`` store URL), the CLI's own fastest path there.

Measured: wall time from picking the file to the stored object (MiB/s), and the page's JS heap
(peak ``JSHeapUsedSize`` from CDP ``Performance.getMetrics``, polled every 100 ms). Targets:
browser >= 0.5x ``unistore put`` on the same service, heap < 200 MiB.

    .venv/bin/python bench/ui_upload.py --quick
    .venv/bin/python bench/ui_upload.py --markdown bench/UI_RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "src"))

from _common import log, machine_busy_cores, rotate  # noqa: E402

from unistore import LocalBackend, StorageBackend  # noqa: E402
from unistore.service import ServiceSettings, create_app  # noqa: E402
from unistore.service._auth import TokenAuthority  # noqa: E402
from unistore.testing import running_server  # noqa: E402
from unistore.testing._s3servers import seaweedfs  # noqa: E402

MiB = 1 << 20
SECRET = "ui-bench-secret-0123456789abcdef0123"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
BROWSER_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run"]
CASES = ["browser-sessions", "cli-service-local", "browser-direct", "cli-service-s3", "cli-s3"]
HEAP_TARGET = 200 * MiB
CLI = "import sys; from unistore.cli import main; sys.argv[0] = 'unistore'; main()"


@contextmanager
def service(store: StorageBackend) -> Iterator[tuple[str, str]]:
    """A service with auth on over ``store``: its URL and an admin token."""
    app = create_app(store, settings=ServiceSettings(secret=SECRET.encode()))
    with running_server(app) as url:
        yield url, TokenAuthority(SECRET).issue(["admin"], expires_in=4 * 3600, subject="bench")


def browser_upload(browser: Any, url: str, token: str, path: Path, key: str) -> tuple[float, int]:
    """Upload ``path`` from a fresh page; (seconds, peak JSHeapUsedSize)."""
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{url}/ui/#token={token}")
        page.get_by_role("button", name="Upload files").wait_for(timeout=30_000)
        cdp = context.new_cdp_session(page)
        cdp.send("Performance.enable")

        def heap() -> int:
            metrics = cdp.send("Performance.getMetrics")["metrics"]
            return int(next(m["value"] for m in metrics if m["name"] == "JSHeapUsedSize"))

        peak = heap()
        t0 = time.perf_counter()
        page.get_by_label("Files to upload").set_input_files(path)
        while True:
            state = page.evaluate(
                "() => { const r = document.querySelector('#uploads li.upload-row'); return r && r.dataset.state; }"
            )
            peak = max(peak, heap())
            if state in ("done", "failed", "cancelled"):
                break
            time.sleep(0.1)
        seconds = time.perf_counter() - t0
        if state != "done":
            raise RuntimeError(f"the browser upload ended {state}: {page.locator('#uploads').inner_text()}")
        return seconds, peak
    finally:
        context.close()


def cli_put(url: str, token: str, path: Path, key: str, extra_env: dict[str, str] | None = None) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STORAGE_", "UNISTORE_", "AWS_"))}
    env.update(PYTHONPATH=str(REPO / "src"), UNISTORE_TOKEN=token, **(extra_env or {}))
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", CLI, "put", key, str(path), "-s", url, "-q"],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        cwd=path.parent,
    )
    return time.perf_counter() - t0


def check(url: str, token: str, key: str, size: int) -> None:
    r = httpx.head(f"{url}/v1/objects/{key}", headers={"Authorization": f"Bearer {token}"})
    if r.status_code != 200 or int(r.headers["content-length"]) != size:
        raise RuntimeError(f"{key}: {r.status_code} {r.headers.get('content-length')} (wanted {size} bytes)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mib", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=None, help="repetitions (3; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="128 MiB, 2 repetitions")
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args()
    if a.quick:
        a.mib = 128
    a.reps = a.reps or (2 if a.quick else 3)
    from playwright.sync_api import sync_playwright

    results: dict[str, list[float]] = {c: [] for c in a.cases}
    heaps: dict[str, list[int]] = {c: [] for c in a.cases}
    load: list[float] = []
    chromium, s3_url, s3_env = "?", "", {}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ui-bench-")))
        path = work / "upload.bin"
        with path.open("wb") as f:
            for _ in range(a.mib):
                f.write(os.urandom(MiB))
        size = path.stat().st_size
        local = service(LocalBackend(base_path=str(work / "store")))
        services = {"local": stack.enter_context(local)}
        if any(c.endswith(("direct", "s3")) for c in a.cases):
            weed = stack.enter_context(seaweedfs(work / "weed"))
            weed.create_bucket("ui-bench")
            services["s3"] = stack.enter_context(service(weed.backend("ui-bench", checksum="sha256")))
            s3_url = f"s3://ui-bench?endpoint={weed.endpoint}"
            s3_env = {
                "AWS_ACCESS_KEY_ID": weed.access_key,
                "AWS_SECRET_ACCESS_KEY": weed.secret_key,
                "AWS_REGION": weed.region,
            }
        p = stack.enter_context(sync_playwright())
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        stack.callback(browser.close)
        chromium = browser.version
        log(f"{a.mib} MiB file, {a.reps} repetitions, cases {a.cases}")
        for rep in range(a.reps):
            for case in rotate(list(a.cases), rep):
                url, token = services["local" if case.endswith(("sessions", "local")) else "s3"]
                load.append(machine_busy_cores(0.3))
                if case.startswith("browser"):
                    seconds, heap = browser_upload(browser, url, token, path, "upload.bin")
                    heaps[case].append(heap)
                elif case == "cli-s3":
                    seconds = cli_put(s3_url, "", path, "upload.bin", s3_env)
                else:
                    seconds = cli_put(url, token, path, "upload.bin")
                check(url, token, "upload.bin", size)
                results[case].append(seconds)
                log(f"rep {rep} {case}: {seconds:.2f} s, {a.mib / seconds:.0f} MiB/s")

    rate = {c: a.mib / statistics.median(v) for c, v in results.items()}
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    lines = [
        "# Web UI uploads: the browser vs `unistore put`",
        "",
        f"{stamp}, {platform.python_version()}, Chromium {chromium}, {a.mib} MiB of random bytes, "
        f"{a.reps} interleaved repetitions (medians), {os.cpu_count()} cores; the machine was shared "
        f"(median {statistics.median(load):.1f} busy cores before each upload). Loopback.",
        "",
        "| path | store | MiB/s | ratio to `unistore put` (target >= 0.5x) | JS heap peak (target < 200 MiB) |",
        "|---|---|---:|---:|---:|",
    ]
    pairs = {"browser-sessions": ["cli-service-local"], "browser-direct": ["cli-service-s3", "cli-s3"]}
    stores = {"browser-sessions": "local", "cli-service-local": "local"}
    for case in a.cases:
        ratio, heap = "", ""
        ratios = [f"{rate[case] / rate[peer]:.2f}x vs {peer}" for peer in pairs.get(case, []) if peer in rate]
        if ratios:
            worst = min(rate[case] / rate[peer] for peer in pairs[case] if peer in rate)
            ratio = ", ".join(ratios) + (" PASS" if worst >= 0.5 else " MISS")
        if heaps[case]:
            h = max(heaps[case])
            heap = f"{h / MiB:.1f} MiB {'PASS' if h < HEAP_TARGET else 'MISS'}"
        store = stores.get(case, "SeaweedFS")
        lines.append(f"| {case} | {store} | {rate[case]:.0f} | {ratio} | {heap} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text)


if __name__ == "__main__":
    main()
