#!/usr/bin/env python3
"""What a server-side copy costs SeaweedFS, by method: CopyObject of a whole object against
UploadPartCopy in parts of 8/16/32/64 MiB with K parts in flight (what ``aws s3 sync`` and
``unistore migrate`` above its multipart copy threshold send), for 1 or several objects at once.

Per method: the server's CPU time (user + system of the whole ``weed mini`` process) and the
wall time, both per GiB copied, and whether the copy's ETag is the source's (what lets a
verified copy skip reading the copy back). The source objects are written as
``bench/migrate.py`` writes them (``unistore cp``, 8 MiB parts). Deleted copies are vacuumed
after every run, so the server's disk does not fill up.

    .venv/bin/python bench/s3_copy_methods.py                         # 4 objects at once, 3 reps
    .venv/bin/python bench/s3_copy_methods.py --objects 1 --reps 5
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

from unistore.testing._s3servers import seaweedfs  # noqa: E402

MiB = 1 << 20
UNISTORE = "import sys; from unistore.cli import main; sys.argv[0]='unistore'; main()"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--objects", type=int, default=4, help="objects copied at once")
    ap.add_argument("--mib", type=int, default=256, help="size of each object")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--methods", default="copy,8x4,8x10,16x4,32x4,64x4", help="copy, or PARTMiBxINFLIGHT")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    size = a.mib * MiB
    with tempfile.TemporaryDirectory(prefix="unistore-copymethods-") as tmp, seaweedfs(Path(tmp) / "weed") as s3:
        args = Path(f"/proc/{s3.pid}/cmdline").read_bytes().decode().split("\0")
        master = next(x.split("=", 1)[1] for x in args if x.startswith("-master.port="))
        c = s3.client()
        s3.create_bucket("cm-src")
        s3.create_bucket("cm-dst")
        src_dir = Path(tmp) / "src"
        src_dir.mkdir()
        for i in range(a.objects):
            with open(src_dir / f"big{i}.bin", "wb") as f:
                for _ in range(a.mib):
                    f.write(os.urandom(MiB))
        env = {**os.environ, "AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key}
        env["PYTHONPATH"] = str(HERE.parent / "src")
        dest = f"s3://cm-src/large?endpoint={s3.endpoint}"
        subprocess.run(
            [sys.executable, "-c", UNISTORE, "cp", "-r", str(src_dir), dest, "-q", "-j", "16"], env=env, check=True
        )
        for f in src_dir.iterdir():
            f.unlink()
        keys = [f"large/big{i}.bin" for i in range(a.objects)]
        etags = {k: c.head_object(Bucket="cm-src", Key=k)["ETag"].strip('"') for k in keys}

        def server_cpu() -> float:
            fields = Path(f"/proc/{s3.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        def copy_whole(key: str, dst: str) -> str:
            r = c.copy_object(Bucket="cm-dst", Key=dst, CopySource={"Bucket": "cm-src", "Key": key})
            return str(r["CopyObjectResult"]["ETag"]).strip('"')

        def copy_parts(key: str, dst: str, step: int, k: int) -> str:
            up = c.create_multipart_upload(Bucket="cm-dst", Key=dst)["UploadId"]

            def one(n: int) -> dict[str, Any]:
                lo = (n - 1) * step
                hi = min(lo + step, size) - 1
                r = c.upload_part_copy(
                    Bucket="cm-dst",
                    Key=dst,
                    UploadId=up,
                    PartNumber=n,
                    CopySource={"Bucket": "cm-src", "Key": key},
                    CopySourceRange=f"bytes={lo}-{hi}",
                )
                return {"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]}

            with cf.ThreadPoolExecutor(k) as ex:
                parts = list(ex.map(one, range(1, -(-size // step) + 1)))
            done = c.complete_multipart_upload(Bucket="cm-dst", Key=dst, UploadId=up, MultipartUpload={"Parts": parts})
            return str(done["ETag"]).strip('"')

        methods = a.methods.split(",")
        copy_whole(keys[0], "warm-up")  # the first writes to a bucket create its volumes
        c.delete_object(Bucket="cm-dst", Key="warm-up")
        runs: list[dict[str, Any]] = []
        for rep in range(a.reps):
            for m in methods if rep % 2 == 0 else methods[::-1]:
                dsts = [f"{m}/{rep}/{i}" for i in range(a.objects)]
                cpu0, t0 = server_cpu(), time.perf_counter()
                with cf.ThreadPoolExecutor(a.objects) as ex:
                    if m == "copy":
                        got = list(ex.map(copy_whole, keys, dsts))
                    else:
                        step, k = (int(x) for x in m.split("x"))
                        got = list(ex.map(copy_parts, keys, dsts, [step * MiB] * len(keys), [k] * len(keys)))
                wall, cpu = time.perf_counter() - t0, server_cpu() - cpu0
                gib = a.objects * size / (1 << 30)
                same = all(g == etags[k] for g, k in zip(got, keys, strict=True))
                runs.append({"method": m, "rep": rep, "wall": wall / gib, "cpu": cpu / gib, "same_etag": same})
                print(
                    f"{m:6} rep {rep}: wall {wall / gib:5.2f} s/GiB  server CPU {cpu / gib:5.2f} s/GiB  "
                    f"same etag {same}"
                )
                c.delete_objects(Bucket="cm-dst", Delete={"Objects": [{"Key": d} for d in dsts]})
                with urllib.request.urlopen(f"http://127.0.0.1:{master}/vol/vacuum?garbageThreshold=0.01", timeout=120):
                    pass
    print(f"\n{a.objects} x {a.mib} MiB at once, median of {a.reps}\n")
    print("| method | wall s/GiB | server CPU s/GiB | copy's ETag = source's |")
    print("|---|---:|---:|---|")
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        name = "CopyObject" if m == "copy" else f"UploadPartCopy {m.split('x')[0]} MiB, {m.split('x')[1]} in flight"
        wall = statistics.median(r["wall"] for r in rs)
        cpu = statistics.median(r["cpu"] for r in rs)
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {'yes' if all(r['same_etag'] for r in rs) else 'no'} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"objects": a.objects, "mib": a.mib, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
