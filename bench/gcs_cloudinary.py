"""GCSBackend and CloudinaryBackend against the raw HTTP calls they are built on.

Servers run in their own processes (fake-gcs-server; the Cloudinary fake under
uvicorn), so client CPU (``time.process_time``) is the client's alone.

    .venv/bin/python bench/gcs_cloudinary.py [--quick] [--markdown FILE]

Measures 4 KiB put/get ops/s and client CPU µs/op (medians of several reps),
and the peak RSS of a 64 MiB streamed upload + download (fresh process each).
"Raw" is the same request made directly with one pooled ``httpx.AsyncClient``:
a GCS multipart upload / ``alt=media`` GET, a Cloudinary signed upload POST /
signed delivery GET. PASS when the layer's overhead over raw is ≤ 1.2x.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

SIZE = 4096
BIG = 64 * 1024 * 1024
LIMIT = 1.2


def _serve_cloudinary(port: int) -> None:
    import uvicorn

    from unistore.testing._cloudinary_fake import FakeCloudinary

    uvicorn.run(FakeCloudinary().app, host="127.0.0.1", port=port, log_level="error")


def _wait(url: str) -> None:
    for _ in range(200):
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not start")


async def _timed(op: Callable[[int], Awaitable[Any]], n: int, reps: int) -> tuple[float, float]:
    """Median ops/s and CPU µs/op over ``reps`` runs of ``n`` sequential operations."""
    rates, cpus = [], []
    for _ in range(reps):
        w, c = time.perf_counter(), time.process_time()
        for i in range(n):
            await op(i)
        rates.append(n / (time.perf_counter() - w))
        cpus.append((time.process_time() - c) / n * 1e6)
    return statistics.median(rates), statistics.median(cpus)


# --- GCS ----------------------------------------------------------------------------------------


def _gcs_backend(url: str) -> Any:
    from unistore.backends.gcs import GCSBackend

    return GCSBackend(bucket="bench", emulator_host=url)


async def gcs_ops(url: str, n: int, reps: int) -> dict[str, tuple[float, float]]:
    data = os.urandom(SIZE)
    backend = _gcs_backend(url)
    raw = httpx.AsyncClient()
    upload = f"{url}/upload/storage/v1/b/bench/o"

    async def raw_put(i: int) -> None:
        boundary = secrets.token_hex(16)
        meta = json.dumps({"name": f"raw/{i}", "contentType": "application/octet-stream"}).encode()
        body = b"".join([f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(), meta,
                         f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        r = await raw.post(upload, params={"uploadType": "multipart"}, content=body,
                           headers={"Content-Type": f"multipart/related; boundary={boundary}"})
        r.raise_for_status()
        r.json()

    async def raw_get(i: int) -> None:
        r = await raw.get(f"{url}/storage/v1/b/bench/o/raw%2F{i % n}", params={"alt": "media"})
        r.raise_for_status()

    out = {
        "put raw": await _timed(raw_put, n, reps),
        "put unistore": await _timed(lambda i: backend.put_object(f"uni/{i}", data), n, reps),
        "get raw": await _timed(raw_get, n, reps),
        "get unistore": await _timed(lambda i: backend.get(f"uni/{i % n}"), n, reps),
    }

    async def stream_read(i: int) -> None:
        async with await backend.open(f"uni/{i % n}") as dl:
            await dl.read()

    out["open+read unistore"] = await _timed(stream_read, n, reps)
    await raw.aclose()
    await backend.aclose()
    return out


# --- Cloudinary -----------------------------------------------------------------------------------


def _cld_backend(url: str) -> Any:
    from unistore.backends.cloudinary import CloudinaryBackend
    from unistore.testing._cloudinary_fake import FakeCloudinary

    f = FakeCloudinary()
    return CloudinaryBackend(cloud_name=f.cloud_name, api_key=f.api_key, api_secret=f.api_secret, upload_prefix=url,
                             cname=url.split("//")[1], secure=False, chunk_size=8 * 1024 * 1024)


async def cld_ops(url: str, n: int, reps: int) -> dict[str, tuple[float, float]]:
    from unistore.backends._cloudinary_api import api_signature, url_signature
    from unistore.testing._cloudinary_fake import FakeCloudinary

    f = FakeCloudinary()
    data = os.urandom(SIZE)
    backend = _cld_backend(url)
    raw = httpx.AsyncClient()
    versions: dict[int, int] = {}

    async def raw_put(i: int) -> None:
        params = {"public_id": f"raw/{i}.bin", "type": "authenticated", "overwrite": "true",
                  "timestamp": str(int(time.time()))}
        params["signature"] = api_signature(params, f.api_secret)
        params["api_key"] = f.api_key
        r = await raw.post(f"{url}/v1_1/{f.cloud_name}/raw/upload", data=params, files={"file": ("b", data)})
        r.raise_for_status()
        versions[i] = r.json()["version"]

    async def raw_get(i: int) -> None:  # a signed delivery GET for a known asset (version from the upload)
        source = f"raw/{i % n}.bin"
        r = await raw.get(f"{url}/{f.cloud_name}/raw/authenticated/{url_signature(source, f.api_secret)}/"
                          f"v{versions[i % n]}/{source}")
        r.raise_for_status()

    out = {
        "put raw": await _timed(raw_put, n, reps),
        "put unistore": await _timed(lambda i: backend.put_object(f"uni/{i}.bin", data), n, reps),
        "get raw": await _timed(raw_get, n, reps),
        "get unistore": await _timed(lambda i: backend.get(f"uni/{i % n}.bin"), n, reps),
    }
    await raw.aclose()
    await backend.aclose()
    return out


# --- 64 MiB streamed transfer, fresh process each -------------------------------------------------


def _rss_child(kind: str, url: str, which: str, q: Any) -> None:
    import psutil

    async def run() -> None:
        async def body() -> Any:
            chunk = b"\x5a" * (1 << 20)
            for _ in range(BIG >> 20):
                yield chunk

        if which == "unistore":
            b = _gcs_backend(url) if kind == "gcs" else _cld_backend(url)
            key = f"big/{os.getpid()}.bin"
            await b.put_object(key, body())
            async with await b.open(key) as dl:
                async for _ in dl:
                    pass
            await b.aclose()
        else:  # raw: GCS resumable session in 8 MiB chunks / Cloudinary chunked upload, then a streamed GET
            async with httpx.AsyncClient(timeout=120) as c:
                if kind == "gcs":
                    r = await c.post(f"{url}/upload/storage/v1/b/bench/o", params={"uploadType": "resumable"},
                                     json={"name": "rawbig"})
                    loc, off, buf = r.headers["location"], 0, bytearray()
                    async for chunk in body():
                        buf += chunk
                        if len(buf) == 8 << 20:
                            last = off + len(buf) == BIG
                            total = str(BIG) if last else "*"
                            await c.put(loc, content=bytes(buf),
                                        headers={"Content-Range": f"bytes {off}-{off + len(buf) - 1}/{total}"})
                            off += len(buf)
                            buf.clear()
                    get = c.stream("GET", f"{url}/storage/v1/b/bench/o/rawbig", params={"alt": "media"})
                else:
                    from unistore.backends._cloudinary_api import api_signature, url_signature
                    from unistore.testing._cloudinary_fake import FakeCloudinary

                    f = FakeCloudinary()
                    params = {"public_id": "rawbig.bin", "type": "authenticated", "timestamp": str(int(time.time()))}
                    params["signature"] = api_signature(params, f.api_secret)
                    params["api_key"] = f.api_key
                    off, buf, uid, res = 0, bytearray(), secrets.token_hex(8), {}
                    async for chunk in body():
                        buf += chunk
                        if len(buf) == 8 << 20:
                            r = await c.post(f"{url}/v1_1/{f.cloud_name}/raw/upload", data=params,
                                             files={"file": ("b", bytes(buf))},
                                             headers={"Content-Range": f"bytes {off}-{off + len(buf) - 1}/{BIG}",
                                                      "X-Unique-Upload-Id": uid})
                            res = r.json()
                            off += len(buf)
                            buf.clear()
                    src = "rawbig.bin"
                    get = c.stream("GET", f"{url}/{f.cloud_name}/raw/authenticated/"
                                   f"{url_signature(src, f.api_secret)}/v{res['version']}/{src}")
                async with get as resp:
                    async for _ in resp.aiter_bytes():
                        pass

    asyncio.run(run())
    q.put(psutil.Process().memory_info().rss if sys.platform != "linux" else _peak_rss())


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_rss(kind: str, url: str, which: str, reps: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    values = []
    for _ in range(reps):
        q = ctx.Queue()
        p = ctx.Process(target=_rss_child, args=(kind, url, which, q))
        p.start()
        values.append(q.get(timeout=300))
        p.join()
    return statistics.median(values) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--markdown")
    args = ap.parse_args()
    n, reps, rss_reps = (100, 3, 1) if args.quick else (300, 5, 3)
    from unistore.testing._gcs_server import create_bucket, running_fake_gcs
    from unistore.testing._server import free_port

    rows: list[tuple[str, str, str, str, str]] = []
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    cld_proc = ctx.Process(target=_serve_cloudinary, args=(port,), daemon=True)
    cld_proc.start()
    cld_url = f"http://127.0.0.1:{port}"
    try:
        with running_fake_gcs() as gcs_url:
            create_bucket(gcs_url, "bench")
            _wait(cld_url)
            for kind, url, ops in (("GCS", gcs_url, gcs_ops), ("Cloudinary", cld_url, cld_ops)):
                res = asyncio.run(ops(url, n, reps))
                for op in ("put", "get"):
                    (r_rate, r_cpu), (u_rate, u_cpu) = res[f"{op} raw"], res[f"{op} unistore"]
                    ratio = max(r_rate / u_rate, u_cpu / r_cpu)
                    rows.append((f"{kind} 4 KiB {op}", f"{r_rate:,.0f} ops/s, {r_cpu:,.0f} µs CPU",
                                 f"{u_rate:,.0f} ops/s, {u_cpu:,.0f} µs CPU", f"{ratio:.2f}x",
                                 "PASS" if ratio <= LIMIT else "MISS"))
                if "open+read unistore" in res:
                    u_rate, u_cpu = res["open+read unistore"]
                    r_rate, r_cpu = res["get raw"]
                    ratio = max(r_rate / u_rate, u_cpu / r_cpu)
                    rows.append((f"{kind} 4 KiB open+read (streamed)", f"{r_rate:,.0f} ops/s, {r_cpu:,.0f} µs CPU",
                                 f"{u_rate:,.0f} ops/s, {u_cpu:,.0f} µs CPU", f"{ratio:.2f}x",
                                 "PASS" if ratio <= LIMIT else "MISS"))
                key = "gcs" if kind == "GCS" else "cloudinary"
                raw_rss, uni_rss = peak_rss(key, url, "raw", rss_reps), peak_rss(key, url, "unistore", rss_reps)
                ratio = uni_rss / raw_rss
                rows.append((f"{kind} 64 MiB streamed put+get, peak RSS", f"{raw_rss:.0f} MiB", f"{uni_rss:.0f} MiB",
                             f"{ratio:.2f}x", "PASS" if ratio <= LIMIT else "MISS"))
    finally:
        cld_proc.terminate()
        cld_proc.join(5)
    header = "| measure | raw httpx | unistore | overhead | ≤1.2x |\n|---|---|---|---|---|\n"
    table = header + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")


if __name__ == "__main__":
    main()
