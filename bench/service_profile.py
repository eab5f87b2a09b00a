"""Where a 4 KiB request's server CPU goes: load-independent counts for the service's hot path.

One service (``python -m unistore.service``, one worker, local store, ``STORAGE_FSYNC=false``, auth on
unless ``--no-auth``) per source tree given with ``--src`` (default this tree's ``src``), over 1,000
4 KiB objects, and a client that makes exactly ``--requests`` requests over 64 keep-alive connections
(after as many warm-up requests), cycling through the keys. Modes:

* ``cpu``: the server pinned to CPU 0, ``wrk -t1 -c64`` pinned to CPU 1 for ``--seconds`` (as
  bench/service.py runs it); the server process's CPU time (user and system, all threads) per
  request. Trees are measured interleaved, ``--rounds`` times; medians.
* ``callgrind``: the server under ``valgrind --tool=callgrind`` with instrumentation switched on only
  for the measured requests: user-space instructions per request (all threads), and the profile
  (``--out DIR``: ``callgrind.out.<tree>.<op>``, read it with ``callgrind_annotate --inclusive=yes``).
* ``cprofile``: the server's event-loop thread under :mod:`cProfile` for the measured requests;
  prints the functions with the most own time and the cumulative time of the main stages
  (``--out DIR`` keeps the ``.pstats`` files).

    PYTHONPATH=$PWD/src .venv/bin/python bench/service_profile.py cpu --src src --src /other/tree/src
    PYTHONPATH=$PWD/src .venv/bin/python bench/service_profile.py callgrind --requests 2000 --out /tmp/cg
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
KEYS = 1000
SIZE = 4096
CONNECTIONS = 64
SERVER_CPU, CLIENT_CPU = "0", "1"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def proc_cpu(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of ``pid`` and its descendants (granian's worker), all threads."""
    user = system = 0.0
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
        user += int(fields[11]) / TICKS
        system += int(fields[12]) / TICKS
    return user, system


# ----------------------------------------------------------------------------- client


async def _drive(port: int, op: str, count: int, headers: dict[str, str], start: int) -> None:
    body = b"x" * SIZE
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    per = [count // CONNECTIONS + (1 if i < count % CONNECTIONS else 0) for i in range(CONNECTIONS)]

    async def conn(i: int, n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for j in range(n):
                k = (start + i * 7919 + j) % KEYS
                if op == "GET":
                    head = f"GET /v1/objects/small/k{k} HTTP/1.1\r\nHost: x\r\n{extra}\r\n"
                    writer.write(head.encode())
                else:
                    head = (
                        f"PUT /v1/objects/put/k{k} HTTP/1.1\r\nHost: x\r\n{extra}"
                        f"Content-Length: {SIZE}\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    writer.write(head.encode() + body)
                status = await reader.readline()
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                code = int(status.split()[1])
                if code >= 300:
                    raise RuntimeError(f"{op} answered {status!r}")
        finally:
            writer.close()

    await asyncio.gather(*(conn(i, n) for i, n in enumerate(per)))


def client_main(argv: list[str]) -> None:
    port, op, count, start = int(argv[0]), argv[1], int(argv[2]), int(argv[3])
    headers = dict(h.split(": ", 1) for h in argv[4:])
    asyncio.run(_drive(port, op, count, headers, start))


LUA = """\
local headers = {%s}
local body = %s
local i = %d
request = function()
    i = (i + 1) %% %d
    return wrk.format("%s", "/v1/objects/%s" .. i, headers, body)
end
"""


def run_wrk(port: int, op: str, seconds: float, headers: dict[str, str], start: int, script: Path) -> int:
    """``wrk -t1 -c64`` for ``seconds`` (as bench/service.py runs it); the requests it completed."""
    import re

    hdrs = ", ".join(f'["{k}"] = "{v}"' for k, v in headers.items())
    body = f'string.rep("x", {SIZE})' if op == "PUT" else "nil"
    prefix = "small/k" if op == "GET" else "put/k"
    script.write_text(LUA % (hdrs, body, start, KEYS, op, prefix))
    cmd = ["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{CONNECTIONS}", f"-d{max(1, round(seconds))}s"]
    cmd += ["-s", str(script), f"http://127.0.0.1:{port}/"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError("wrk saw errors:\n" + out)
    found = re.search(r"(\d+) requests in", out)
    if found is None:
        raise RuntimeError("unexpected wrk output:\n" + out)
    return int(found.group(1))


def run_client(port: int, op: str, count: int, headers: dict[str, str], start: int = 0) -> None:
    cmd = ["taskset", "-c", CLIENT_CPU, sys.executable, __file__, "_client", str(port), op, str(count), str(start)]
    cmd += [f"{k}: {v}" for k, v in headers.items()]
    subprocess.run(cmd, check=True, timeout=3600)


# ----------------------------------------------------------------------------- server side


def serve_main(argv: list[str]) -> None:
    """The service, with cProfile switched on by SIGUSR1 and off (and dumped to ``$PROFILE_OUT``) by SIGUSR2."""
    import cProfile

    from unistore.service.__main__ import main

    prof = [cProfile.Profile()]

    def on(*_: Any) -> None:
        prof[0] = cProfile.Profile()
        prof[0].enable()

    def off(*_: Any) -> None:
        prof[0].disable()
        prof[0].dump_stats(os.environ["PROFILE_OUT"])

    signal.signal(signal.SIGUSR1, on)
    signal.signal(signal.SIGUSR2, off)
    variant = os.environ.get("PROFILE_VARIANT", "full")
    if variant == "bare":
        bare_main(argv)
        return
    if variant == "nolog":  # no access line (the service logger above INFO)
        import logging

        _quiet = logging.getLogger("unistore.service")
        _quiet.setLevel(logging.WARNING)
    if variant == "inline":  # the local backend's file calls on the event loop, no worker thread
        import unistore.backends.local as local

        def inline(fn: Any, *args: Any) -> Any:
            fut = asyncio.get_running_loop().create_future()
            try:
                fut.set_result(fn(*args))
            except BaseException as exc:
                fut.set_exception(exc)
            return fut

        local.run_in_thread = inline  # type: ignore[attr-defined]
    if variant == "gcfreeze":  # the start-up heap out of the collector's way, fewer young collections
        import gc

        import unistore.service.__main__ as entry

        real = entry.configure_logging

        def configure(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            gc.set_threshold(10_000, 20, 20)

        entry.configure_logging = configure  # type: ignore[assignment]
        import uvicorn

        run = uvicorn.run

        def run_frozen(*args: Any, **kwargs: Any) -> None:
            gc.collect()
            gc.freeze()
            run(*args, **kwargs)

        uvicorn.run = run_frozen  # type: ignore[assignment]
    main(argv)


def bare_app() -> Any:
    """The floor: a bare ASGI app (GET: 4 KiB from memory with the service's headers; PUT: the body
    read, a 201 with a JSON body)."""
    data = os.urandom(SIZE)
    get_headers = [
        (b"content-type", b"application/octet-stream"),
        (b"etag", b'"0123456789abcdef0123456789abcdef"'),
        (b"last-modified", b"Sun, 06 Dec 2026 04:00:00 GMT"),
        (b"accept-ranges", b"bytes"),
        (b"cache-control", b"private, no-cache"),
        (b"content-length", str(SIZE).encode()),
        (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    ]
    created = b'{"key":"put/k1","size":4096,"etag":"0123456789abcdef0123456789abcdef"}'
    put_headers = [
        (b"etag", b'"0123456789abcdef0123456789abcdef"'),
        (b"content-length", str(len(created)).encode()),
        (b"content-type", b"application/json"),
        (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
    ]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["method"] == "PUT":
            more = True
            while more:
                message = await receive()
                more = message.get("more_body", False)
            await send({"type": "http.response.start", "status": 201, "headers": put_headers})
            await send({"type": "http.response.body", "body": created})
            return
        await send({"type": "http.response.start", "status": 200, "headers": get_headers})
        await send({"type": "http.response.body", "body": data})

    return app


def bare_main(argv: list[str]) -> None:
    """:func:`bare_app` under the service's uvicorn settings."""
    import uvicorn

    from unistore.service._server import http_protocol

    port = int(argv[argv.index("--port") + 1])
    uvicorn.run(
        bare_app(),
        host="127.0.0.1",
        port=port,
        http=http_protocol(10.0),
        ws="none",
        log_level="warning",
        access_log=False,
        log_config=None,
    )


GRANIAN = [
    "--interface",
    "asgi",
    "--loop",
    "uvloop",
    "--runtime-mode",
    "st",
    "--no-ws",
    "--http",
    "1",
    "--http1-header-read-timeout",
    "10000",
    "--log-level",
    "warning",
    "--factory",
]


class Service:
    def __init__(
        self, src: Path, root: Path, *, mode: str, auth: bool, log: Path, profile_out: Path | None, variant: str
    ) -> None:
        self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = str(src)
        env.update(
            STORAGE_BACKEND="local",
            STORAGE_BASE_PATH=str(root),
            STORAGE_BASE_URL=f"http://127.0.0.1:{self.port}/files",
            STORAGE_FSYNC="false",
            UNISTORE_AUTH="on" if auth else "off",
            PROFILE_VARIANT=variant,
        )
        self.headers: dict[str, str] = {}
        if auth:
            from unistore.service._auth import TokenAuthority

            secret = os.urandom(24).hex()
            env["UNISTORE_SECRET"] = secret
            token = TokenAuthority(secret.encode()).issue(["read", "write"], expires_in=24 * 3600, subject="bench")
            self.headers["Authorization"] = f"Bearer {token}"
        args = ["--host", "127.0.0.1", "--port", str(self.port)] + ([] if auth else ["--no-auth"])
        if mode == "cprofile":
            assert profile_out is not None
            env["PROFILE_OUT"] = str(profile_out)
        if variant.startswith("granian"):  # the service's own app factory (or the bare app) under granian
            env["PYTHONPATH"] = os.pathsep.join((str(src), str(HERE)))
            target = "unistore.service._server:app_from_env"
            if variant == "granian-bare":
                target = "service_profile:bare_app"
            cmd = [sys.executable, "-m", "granian", *GRANIAN, "--port", str(self.port), target]
        elif mode == "cprofile" or variant != "full":
            cmd = [sys.executable, __file__, "_serve", *args]
        else:
            cmd = [sys.executable, "-m", "unistore.service", *args]
        if mode == "callgrind":
            assert profile_out is not None
            cmd = [
                "valgrind",
                "--tool=callgrind",
                "--instr-atstart=no",
                f"--callgrind-out-file={profile_out}",
                *cmd,
            ]
        self.mode = mode
        self.logf = open(log, "wb")  # noqa: SIM115 (closed by stop)
        self.proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, *cmd], stdout=self.logf, stderr=subprocess.STDOUT, env=env
        )
        deadline = time.monotonic() + (300 if mode == "callgrind" else 60)
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: see {log}") from None
                time.sleep(0.3)
        raise RuntimeError("server did not start")

    def measure(self, op: str, count: int, start: int, seconds: float | None = None) -> dict[str, float]:
        pid = self.proc.pid
        if self.mode == "callgrind":
            subprocess.run(["callgrind_control", "--zero", str(pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "-i", "on", str(pid)], check=True, capture_output=True)
        elif self.mode == "cprofile":
            os.kill(pid, signal.SIGUSR1)
            time.sleep(0.2)
        u0, s0 = proc_cpu(pid)
        t0 = time.monotonic()
        if seconds is not None:  # wrk for a fixed time, as the service bench runs it
            count = run_wrk(self.port, op, seconds, self.headers, start, Path(self.logf.name + ".lua"))
        else:
            run_client(self.port, op, count, self.headers, start)
        wall = time.monotonic() - t0
        u1, s1 = proc_cpu(pid)
        if self.mode == "callgrind":
            subprocess.run(["callgrind_control", "-i", "off", str(pid)], check=True, capture_output=True)
            subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
        elif self.mode == "cprofile":
            os.kill(pid, signal.SIGUSR2)
            time.sleep(1.0)
        return {"user_us": (u1 - u0) / count * 1e6, "sys_us": (s1 - s0) / count * 1e6, "rps": count / wall}

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.logf.close()


def make_data(root: Path) -> None:
    from unistore.backends.local import LocalBackend

    async def fill() -> None:
        store = LocalBackend(base_path=str(root), fsync=False)
        try:
            for i in range(KEYS):
                await store.put_object(f"small/k{i}", os.urandom(SIZE))
        finally:
            await store.aclose()

    asyncio.run(fill())


def callgrind_total(path: Path) -> int:
    """The instructions a callgrind output file counts (its ``totals`` lines, one per part, summed)."""
    return sum(
        int(line.split()[1]) for line in path.read_text(errors="replace").splitlines() if line.startswith("totals:")
    )


GROUPS = (  # (label, substring of the file path or of the builtin's name), first match wins
    ("uvicorn (httptools protocol, proxy headers)", "/uvicorn/"),
    ("starlette (Request, Headers, Response)", "/starlette/"),
    ("unistore service: access log (logging)", "/logging/"),
    ("unistore service: metrics (prometheus_client)", "/prometheus_client/"),
    ("unistore service (middleware, routes, auth)", "/unistore/service/"),
    ("unistore.fastapi (serve_object)", "/unistore/fastapi.py"),
    ("unistore layers (Observe, Idempotency)", "/unistore/layers/"),
    ("local backend (event-loop side, thread hand-off)", "/unistore/backends/local/"),
    ("unistore other (keys, mime, types, request limits)", "/unistore/"),
    ("asyncio / contextvars / stdlib", "/python3.11/"),
)


def report_pstats(path: Path, count: int) -> None:
    """Own time of the event-loop thread per request, grouped by where the code lives, and the top functions."""
    import pstats

    st = pstats.Stats(str(path))
    stats: dict[Any, Any] = st.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in stats.values())
    print(f"  own time of the loop thread under cProfile: {total / count * 1e6:.0f} µs/request (inflated)")
    groups: dict[str, float] = {}
    for (file, _line, _fn), v in stats.items():
        label = "builtins (C functions: socket, queue, str, json...)" if file == "~" else "other"
        for name, needle in GROUPS:
            if needle in file:
                label = name
                break
        groups[label] = groups.get(label, 0.0) + v[2]
    for label, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"    {t / count * 1e6:7.1f} µs {t / total:6.1%}  {label}")
    print("  top own time:")
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:30]
    for (file, line, fn), v in rows:
        where = f"{'/'.join(Path(file).parts[-2:])}:{line}({fn})"
        print(f"    {v[2] / count * 1e6:7.2f} µs {v[2] / total:6.1%} {v[0] / count:5.1f} calls  {where}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", choices=["cpu", "callgrind", "cprofile"])
    p.add_argument("--src", action="append", help="a tree's src directory (repeatable) [this tree's]")
    p.add_argument("--ops", default="GET,PUT")
    p.add_argument("--requests", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=5.0, help="cpu mode: each wrk run's length")
    p.add_argument("--no-auth", action="store_true")
    p.add_argument(
        "--variant",
        action="append",
        help="full (as served), nolog (no access line), inline (the local backend's file calls on the loop,"
        " no worker thread), gcfreeze (gc.freeze after start-up, threshold 10,000), bare (a bare ASGI app"
        " under the same uvicorn settings: the protocol's floor), granian (the app under granian's ASGI"
        " server, single-threaded runtime, uvloop), granian-bare; repeatable [full]",
    )
    p.add_argument("--out", help="directory for profiles and server logs [a temporary one]")
    a = p.parse_args()
    srcs = [Path(s).resolve() for s in (a.src or [str(HERE.parent / "src")])]
    if a.mode == "callgrind" and not shutil.which("valgrind"):
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    work = Path(tempfile.mkdtemp(prefix="unistore-svc-profile-", dir="/var/tmp"))
    out = Path(a.out) if a.out else work
    out.mkdir(parents=True, exist_ok=True)
    root = work / "data"
    make_data(root)
    ops = a.ops.split(",")
    rounds = a.rounds if a.mode == "cpu" else 1
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    services = {}
    try:
        variants = a.variant or ["full"]
        for i, src in enumerate(srcs):
            for variant in variants:
                tag = f"t{i}-{variant}"
                profile = out / f"callgrind.out.{tag}" if a.mode == "callgrind" else out / f"{tag}.pstats"
                services[tag] = Service(
                    src,
                    root,
                    mode=a.mode,
                    auth=not a.no_auth,
                    log=out / f"{tag}.log",
                    profile_out=profile,
                    variant=variant,
                )
                print(f"{tag}: {src} (pid {services[tag].proc.pid}, port {services[tag].port})", flush=True)
        for svc in services.values():  # warm-up: every op, as many requests as measured (callgrind: fewer)
            for op in ops:
                run_client(svc.port, op, min(a.requests, 2000), svc.headers)
        for r in range(rounds):
            for op in ops:
                for tag, svc in services.items() if r % 2 == 0 else reversed(services.items()):
                    seconds = a.seconds if a.mode == "cpu" else None
                    m = svc.measure(op, a.requests, start=r * 37, seconds=seconds)
                    results.setdefault((tag, op), []).append(m)
                    line = f"round {r + 1} {tag} {op}: {m['user_us'] + m['sys_us']:.0f} µs/request CPU"
                    print(f"{line} (user {m['user_us']:.0f}, sys {m['sys_us']:.0f}), {m['rps']:.0f} req/s", flush=True)
                    if a.mode == "callgrind":
                        produced = sorted(out.glob(f"callgrind.out.{tag}*"))
                        newest = max(produced, key=lambda f: f.stat().st_mtime)
                        target = out / f"callgrind.out.{tag}.{op}"
                        newest.rename(target)
                        instr = callgrind_total(target)
                        print(f"  {instr / a.requests:,.0f} instructions/request ({target})", flush=True)
                    elif a.mode == "cprofile":
                        target = out / f"{tag}.{op}.pstats"
                        (out / f"{tag}.pstats").rename(target)
                        report_pstats(target, a.requests)
    finally:
        for svc in services.values():
            svc.stop()
        if not a.out:
            shutil.rmtree(work, ignore_errors=True)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if a.mode == "cpu":
        print("\nmedian server CPU µs/request (user+sys):")
        for (tag, op), ms in results.items():
            total = statistics.median(m["user_us"] + m["sys_us"] for m in ms)
            user = statistics.median(m["user_us"] for m in ms)
            print(f"  {tag} {op}: {total:.0f} (user {user:.0f}) over {len(ms)} rounds")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_client":
        client_main(sys.argv[2:])
    elif len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_main(sys.argv[2:])
    else:
        main()
