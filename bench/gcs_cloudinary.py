"""GCSBackend and CloudinaryBackend against the raw HTTP calls they are built on.

Servers run in their own processes (fake-gcs-server; the Cloudinary fake under
uvicorn), so client CPU (``time.process_time``) is the client's alone.

    .venv/bin/python bench/gcs_cloudinary.py [--quick] [--markdown FILE]

Measures 4 KiB put/get ops/s and client CPU µs/op, and the peak RSS of a
64 MiB streamed upload + download (fresh process each). "Raw" is the same
request made directly with one pooled ``httpx.AsyncClient`` (what the SDKs do):
a GCS multipart upload / ``alt=media`` GET, a Cloudinary signed upload POST
(same parameters: context, overwrite, invalidate) / signed delivery GET of a
known version. Raw and unistore use the same keys (same bucket state) and run in
alternating blocks of ``n`` operations, the order rotating every repetition, so
drift and load from other processes hit both alike. The overhead is the median
over repetitions of max(raw ops/s ÷ unistore ops/s, unistore CPU ÷ raw CPU) of
adjacent blocks; PASS when it is ≤ 1.2x. The load average is printed with the table.
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


Op = Callable[[int], Awaitable[Any]]
Samples = dict[str, list[tuple[float, float]]]


async def _interleaved(ops: dict[str, Op], n: int, reps: int) -> Samples:
    """(ops/s, CPU µs/op) of every block of ``n`` sequential operations, ``reps`` blocks per op,
    the ops run in turn and the order rotated every repetition."""
    names = list(ops)
    out: Samples = {name: [] for name in names}
    for rep in range(reps):
        for name in names[rep % len(names) :] + names[: rep % len(names)]:
            op = ops[name]
            w, c = time.perf_counter(), time.process_time()
            for i in range(n):
                await op(i)
            out[name].append((n / (time.perf_counter() - w), (time.process_time() - c) / n * 1e6))
    return out


def _row(label: str, raw: list[tuple[float, float]], uni: list[tuple[float, float]]) -> tuple[str, ...]:
    ratio = statistics.median(max(r[0] / u[0], u[1] / r[1]) for r, u in zip(raw, uni, strict=True))
    r_rate, r_cpu = statistics.median(x[0] for x in raw), statistics.median(x[1] for x in raw)
    u_rate, u_cpu = statistics.median(x[0] for x in uni), statistics.median(x[1] for x in uni)
    return (label, f"{r_rate:,.0f} ops/s, {r_cpu:,.0f} µs CPU", f"{u_rate:,.0f} ops/s, {u_cpu:,.0f} µs CPU",
            f"{ratio:.2f}x", "PASS" if ratio <= LIMIT else "MISS")


# --- GCS ----------------------------------------------------------------------------------------


def _gcs_backend(url: str) -> Any:
    from unistore.backends.gcs import GCSBackend

    return GCSBackend(bucket="bench", emulator_host=url)


async def gcs_ops(url: str, n: int, reps: int) -> list[tuple[str, ...]]:
    data = os.urandom(SIZE)
    backend = _gcs_backend(url)
    raw = httpx.AsyncClient()
    upload = f"{url}/upload/storage/v1/b/bench/o"

    async def raw_put(i: int) -> None:
        boundary = secrets.token_hex(16)
        meta = json.dumps({"name": f"obj/{i}", "contentType": "application/octet-stream"}).encode()
        body = b"".join([f"--{boundary}\r\nContent-Type: application/json\r\n\r\n".encode(), meta,
                         f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(), data,
                         f"\r\n--{boundary}--\r\n".encode()])
        r = await raw.post(upload, params={"uploadType": "multipart"}, content=body,
                           headers={"Content-Type": f"multipart/related; boundary={boundary}"})
        r.raise_for_status()
        r.json()

    async def raw_get(i: int) -> None:
        r = await raw.get(f"{url}/storage/v1/b/bench/o/obj%2F{i}", params={"alt": "media"})
        r.raise_for_status()

    async def open_read(i: int) -> None:
        async with await backend.open(f"obj/{i}") as dl:
            await dl.read()

    for i in range(n):  # same objects for every get, written before any timing
        await raw_put(i)
    puts = await _interleaved({"raw": raw_put, "uni": lambda i: backend.put_object(f"obj/{i}", data)}, n, reps)
    gets = await _interleaved({"raw": raw_get, "uni": lambda i: backend.get(f"obj/{i}"), "open": open_read}, n, reps)
    await raw.aclose()
    await backend.aclose()
    return [
        _row("GCS 4 KiB put", puts["raw"], puts["uni"]),
        _row("GCS 4 KiB get", gets["raw"], gets["uni"]),
        _row("GCS 4 KiB open+read", gets["raw"], gets["open"]),
    ]


# --- Cloudinary -----------------------------------------------------------------------------------


def _cld_backend(url: str) -> Any:
    from unistore.backends.cloudinary import CloudinaryBackend
    from unistore.testing._cloudinary_fake import FakeCloudinary

    f = FakeCloudinary()
    return CloudinaryBackend(cloud_name=f.cloud_name, api_key=f.api_key, api_secret=f.api_secret, upload_prefix=url,
                             cname=url.split("//")[1], secure=False, chunk_size=8 * 1024 * 1024)


async def cld_ops(url: str, n: int, reps: int) -> list[tuple[str, ...]]:
    from unistore.backends.cloudinary._api import api_signature, url_signature
    from unistore.testing._cloudinary_fake import FakeCloudinary

    f = FakeCloudinary()
    data = os.urandom(SIZE)
    backend = _cld_backend(url)
    raw = httpx.AsyncClient()
    versions: dict[int, int] = {}

    async def raw_put(i: int) -> None:  # the SDK's uploader.upload with the parameters unistore sends
        params = {"public_id": f"obj/{i}.bin", "type": "authenticated", "overwrite": "true", "invalidate": "true",
                  "context": "_ct=application/octet-stream", "timestamp": str(int(time.time()))}
        params["signature"] = api_signature(params, f.api_secret)
        params["api_key"] = f.api_key
        r = await raw.post(f"{url}/v1_1/{f.cloud_name}/raw/upload", data=params, files={"file": ("b", data)})
        r.raise_for_status()
        versions[i] = r.json()["version"]

    async def raw_get(i: int) -> None:  # a signed delivery GET for a known asset (version from the upload)
        source = f"obj/{i}.bin"
        r = await raw.get(f"{url}/{f.cloud_name}/raw/authenticated/{url_signature(source, f.api_secret)}/"
                          f"v{versions[i]}/{source}")
        r.raise_for_status()

    async def open_read(i: int) -> None:
        async with await backend.open(f"obj/{i}.bin") as dl:
            await dl.read()

    puts = await _interleaved({"raw": raw_put, "uni": lambda i: backend.put_object(f"obj/{i}.bin", data)}, n, reps)
    gets = await _interleaved(
        {"raw": raw_get, "uni": lambda i: backend.get(f"obj/{i}.bin"), "open": open_read}, n, reps
    )
    await raw.aclose()
    await backend.aclose()
    return [
        _row("Cloudinary 4 KiB put", puts["raw"], puts["uni"]),
        _row("Cloudinary 4 KiB get", gets["raw"], gets["uni"]),
        _row("Cloudinary 4 KiB open+read (lookup + delivery)", gets["raw"], gets["open"]),
    ]


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
                    from unistore.backends.cloudinary._api import api_signature, url_signature
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
    values: list[int] = []
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
    n, reps, rss_reps = (50, 5, 1) if args.quick else (100, 11, 3)
    from unistore.testing._gcs_server import create_bucket, running_fake_gcs
    from unistore.testing._server import free_port

    load_before = os.getloadavg()
    rows: list[tuple[str, ...]] = []
    port = free_port()
    ctx = multiprocessing.get_context("spawn")
    cld_proc = ctx.Process(target=_serve_cloudinary, args=(port,), daemon=True)
    cld_proc.start()
    cld_url = f"http://127.0.0.1:{port}"
    try:
        with running_fake_gcs() as gcs_url:
            create_bucket(gcs_url, "bench")
            _wait(cld_url)
            for kind, url, ops in (("gcs", gcs_url, gcs_ops), ("cloudinary", cld_url, cld_ops)):
                rows += asyncio.run(ops(url, n, reps))
                raw_rss, uni_rss = peak_rss(kind, url, "raw", rss_reps), peak_rss(kind, url, "unistore", rss_reps)
                ratio = uni_rss / raw_rss
                label = "GCS" if kind == "gcs" else "Cloudinary"
                rows.append((f"{label} 64 MiB streamed put+get, peak RSS", f"{raw_rss:.0f} MiB", f"{uni_rss:.0f} MiB",
                             f"{ratio:.2f}x", "PASS" if ratio <= LIMIT else "MISS"))
    finally:
        cld_proc.terminate()
        cld_proc.join(5)
    header = "| measure | raw httpx | unistore | overhead | ≤1.2x |\n|---|---|---|---|---|\n"
    table = header + "\n".join("| " + " | ".join(r) + " |" for r in rows)
    load = f"{n} ops x {reps} interleaved blocks; load average (1 min) {load_before[0]:.1f} before, " \
        f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} CPUs"
    print(table)
    print(load)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n\n" + load + "\n")


if __name__ == "__main__":
    main()
