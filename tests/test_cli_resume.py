"""``unistore get`` / ``put`` resume interrupted transfers: real CLI processes are killed mid-transfer and rerun.

What a rerun sends is measured on the wire by a TCP proxy between the CLI and the
store (the service or SeaweedFS); for a ``file://`` store by the bytes the store served.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from typer.testing import CliRunner

import unistore
from unistore import LocalBackend, MemoryBackend
from unistore._types import Download
from unistore.cli import app
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server
from unistore.testing._s3servers import S3Server

MiB = 1024 * 1024
SECRET = b"cli-resume-secret-0123456789abcdef"
OVERHEAD = 64 * 1024  # request lines, headers, listings and manifests of one rerun, at most
SRC = str(Path(unistore.__file__).parents[1])
CLI = "from unistore.cli import main; main()"
SLOW_LOCAL_CLI = """
import asyncio
import zlib
from unistore._types import Download
from unistore.backends.local import LocalBackend
from unistore.cli import main

opened = LocalBackend.open

async def slow_open(self, key, **options):  # a slow disk, so the test can interrupt the download
    dl = await opened(self, key, **options)

    async def slow():
        async for chunk in dl:
            await asyncio.sleep(0.05)
            yield chunk

    return Download(dl.info, slow(), start=dl.start, end=dl.end, range_requested=dl.range_requested, close=dl.aclose)

LocalBackend.open = slow_open
main()
"""


class Proxy:
    """A TCP proxy in front of ``target`` counting the bytes sent each way (``up``: to the store);
    ``rate`` (bytes/s, all connections together) throttles both directions while set."""

    def __init__(self, target: str, rate: float | None = None) -> None:
        parts = urlsplit(target)
        self.host, self.port, self.rate = parts.hostname or "127.0.0.1", parts.port or 80, rate
        self.up = self.down = 0
        self._generation = 0  # connections of an earlier generation are no longer counted
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._loop = asyncio.new_event_loop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listen_port}"

    def __enter__(self) -> Proxy:
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", 0))
            self.listen_port = self._server.sockets[0].getsockname()[1]
            self._locks = {"up": asyncio.Lock(), "down": asyncio.Lock()}
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="counting-proxy", daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def unthrottle(self) -> None:
        """No throttling, counters back to zero, and bytes of connections open so far (a killed
        client's, still draining) no longer counted. The address stays: it is part of a resume's key."""
        self.rate, self.up, self.down, self._generation = None, 0, 0, self._generation + 1

    async def _close(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)  # type: ignore[arg-type]
        self._writers.append(writer)
        try:
            upstream_reader, upstream = await asyncio.open_connection(self.host, self.port)
            self._writers.append(upstream)
            generation = self._generation
            await asyncio.gather(
                self._pipe(reader, upstream, "up", generation),
                self._pipe(upstream_reader, writer, "down", generation),
                return_exceptions=True,
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in self._writers[-2:]:
                w.close()
            self._tasks.discard(task)  # type: ignore[arg-type]

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, generation: int
    ) -> None:
        try:
            while data := await reader.read(64 * 1024):
                if self.rate:
                    async with self._locks[direction]:
                        await asyncio.sleep(len(data) / self.rate)
                writer.write(data)
                await writer.drain()
                if generation != self._generation:
                    pass
                elif direction == "up":
                    self.up += len(data)
                else:
                    self.down += len(data)
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            if direction == "down":
                writer.close()


def env(**extra: str) -> dict[str, str]:
    """The environment of a CLI process: this checkout's code, no ambient store settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("UNISTORE_", "STORAGE_", "AWS_"))}
    return {**base, "PYTHONPATH": SRC, **extra}


def interrupt(
    args: list[str], ready: Callable[[], bool], environ: dict[str, str], sig: int = signal.SIGKILL, code: str = CLI
) -> int:
    """Start ``unistore ARGS``, send ``sig`` once ``ready()``, return its exit status."""
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=environ, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not ready():
            assert proc.poll() is None, f"finished before it could be interrupted: {proc.stderr.read()!r}"  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "never got far enough to be interrupted"
            time.sleep(0.02)
        proc.send_signal(sig)
        return proc.wait(30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def unistore(*args: str, environ: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", CLI, *args], env=environ, capture_output=True, text=True, timeout=120)


def size_of(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def report(name: str, **numbers: int) -> None:
    """Print the measured numbers (shown with ``pytest -s``/``-rP``)."""
    print(f"{name}: " + ", ".join(f"{k}={v}" for k, v in numbers.items()))


@pytest.fixture(scope="module")
def service() -> Iterator[tuple[MemoryBackend, str, str]]:
    """A unistore service (auth on) over a memory store: the store, its URL and an admin token."""
    backend = MemoryBackend()
    with running_server(create_app(backend, settings=ServiceSettings(secret=SECRET))) as url:
        yield backend, url, TokenAuthority(SECRET).issue(["admin"], expires_in=3600)


def put_direct(backend: Any, key: str, data: bytes) -> str:
    async def go() -> str:
        return str((await backend.put_object(key, data)).etag)

    return asyncio.run(go())


# --- get --------------------------------------------------------------------------------------


def test_get_interrupted_on_a_file_store_resumes_from_the_partial_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "store"
    data = os.urandom(12 * MiB + 7)
    local = LocalBackend(base_path=str(root), fsync=False)
    put_direct(local, "big.bin", data)
    store = f"file://{root}?chunk_size={256 * 1024}"
    dest = tmp_path / "out.bin"
    part = tmp_path / "out.bin.part"
    status = interrupt(
        ["get", "big.bin", str(dest), "-s", store],
        lambda: size_of(part) >= 3 * MiB,
        env(),
        sig=signal.SIGINT,
        code=SLOW_LOCAL_CLI,
    )
    assert status == 130  # Ctrl-C: exit 130, the partial download kept for the rerun
    have = size_of(part)
    assert 3 * MiB <= have < len(data) and not dest.exists()
    assert json.loads((tmp_path / "out.bin.part.json").read_text())["size"] == len(data)

    served: list[tuple[int, int]] = []  # (range start, bytes) of every read of the rerun
    opened = LocalBackend.open

    async def counted_open(self: LocalBackend, key: str, **options: Any) -> Download:
        dl = await opened(self, key, **options)
        served.append((dl.start, dl.content_length))
        return dl

    monkeypatch.setattr(LocalBackend, "open", counted_open)
    result = CliRunner().invoke(app, ["get", "big.bin", str(dest), "-s", store])
    assert result.exit_code == 0, result.output
    assert served == [(have, len(data) - have)]  # only the remainder was read
    report("get file:// rerun", object=len(data), partial=have, read_on_rerun=served[0][1])
    assert sha256(dest.read_bytes()) == sha256(data)
    assert not part.exists() and not (tmp_path / "out.bin.part.json").exists()


def test_get_killed_over_a_service_resumes_with_a_ranged_read(
    service: tuple[MemoryBackend, str, str], tmp_path: Path
) -> None:
    backend, url, token = service
    data = os.urandom(16 * MiB + 3)
    put_direct(backend, "resume/get.bin", data)
    dest, part = tmp_path / "get.bin", tmp_path / "get.bin.part"
    with Proxy(url, rate=4 * MiB) as wire:
        status = interrupt(
            ["get", "resume/get.bin", str(dest), "-s", wire.url],
            lambda: size_of(part) >= 4 * MiB,
            env(UNISTORE_TOKEN=token),
        )
        assert status == -signal.SIGKILL
        have = size_of(part)
        assert 4 * MiB <= have < len(data)
        wire.unthrottle()
        done = unistore("get", "resume/get.bin", str(dest), "-s", wire.url, environ=env(UNISTORE_TOKEN=token))
    assert done.returncode == 0, done.stderr
    rest = len(data) - have
    report("get service rerun", object=len(data), partial=have, remainder=rest, bytes_received=wire.down)
    assert rest <= wire.down < rest + OVERHEAD
    assert sha256(dest.read_bytes()) == sha256(data)
    assert not part.exists()


@pytest.mark.parametrize("where", ["file", "service"])
def test_get_starts_over_when_the_object_changed_between_runs(
    where: str, service: tuple[MemoryBackend, str, str], tmp_path: Path
) -> None:
    old, new = os.urandom(3 * MiB), os.urandom(3 * MiB)
    if where == "file":
        backend: Any = LocalBackend(base_path=str(tmp_path / "store"), fsync=False)
        store, environ = f"file://{tmp_path / 'store'}", env()
    else:
        backend, store, token = service
        environ = env(UNISTORE_TOKEN=token)
    key = f"changed/{where}.bin"
    etag = put_direct(backend, key, old)
    dest = tmp_path / "out.bin"
    # what an interrupted run leaves: a prefix of the old version and its record
    (tmp_path / "out.bin.part").write_bytes(old[: MiB + 11])
    (tmp_path / "out.bin.part.json").write_text(json.dumps({"key": key, "etag": etag, "size": len(old)}))
    put_direct(backend, key, new)
    done = unistore("get", key, str(dest), "-s", store, environ=environ)
    assert done.returncode == 0, done.stderr
    assert done.stderr == f"unistore: {key} changed since the partial download; starting over\n"
    assert sha256(dest.read_bytes()) == sha256(new)  # never the old prefix spliced onto the new object
    assert not (tmp_path / "out.bin.part").exists() and not (tmp_path / "out.bin.part.json").exists()


def test_get_no_resume_discards_the_partial_download_and_errors_stay_one_line(tmp_path: Path) -> None:
    root = tmp_path / "store"
    data = os.urandom(MiB + 1)
    etag = put_direct(LocalBackend(base_path=str(root), fsync=False), "a.bin", data)
    store, dest = f"file://{root}", tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(b"\0" * 1000)  # not a prefix of the object: only --no-resume can tell
    (tmp_path / "a.bin.part.json").write_text(json.dumps({"key": "a.bin", "etag": etag, "size": len(data)}))
    runner = CliRunner()
    assert runner.invoke(app, ["get", "a.bin", str(dest), "-s", store, "--no-resume"]).exit_code == 0
    assert dest.read_bytes() == data and not (tmp_path / "a.bin.part").exists()
    # a complete partial (killed before the rename) is checked against the object, then renamed
    (tmp_path / "b.bin.part").write_bytes(data)
    (tmp_path / "b.bin.part.json").write_text(json.dumps({"key": "a.bin", "etag": etag, "size": len(data)}))
    assert runner.invoke(app, ["get", "a.bin", str(tmp_path / "b.bin"), "-s", store]).exit_code == 0
    assert (tmp_path / "b.bin").read_bytes() == data and not (tmp_path / "b.bin.part.json").exists()
    for args, code, kind in (
        (["get", "missing", str(tmp_path / "m.bin")], 3, "NotFoundError"),
        (["get", "a.bin", str(tmp_path / "no" / "dir" / "x.bin")], 3, "FileNotFoundError"),
    ):
        result = runner.invoke(app, [*args, "-s", store])
        assert result.exit_code == code and result.stderr.count("\n") == 1 and kind in result.stderr
    assert not (tmp_path / "m.bin.part").exists() and not (tmp_path / "m.bin.part.json").exists()


# --- put --------------------------------------------------------------------------------------


class S3Put:
    """``unistore put`` of a six-part file to a fresh prefix of SeaweedFS, with its state dir."""

    def __init__(self, seaweed: S3Server, tmp_path: Path) -> None:
        self.seaweed, self.data = seaweed, os.urandom(5 * 5 * MiB + 5)
        self.path, self.state = tmp_path / "big.bin", tmp_path / "state"
        self.path.write_bytes(self.data)
        self.prefix = f"cli-{os.urandom(4).hex()}/"
        self.environ = env(
            AWS_ACCESS_KEY_ID=seaweed.access_key,
            AWS_SECRET_ACCESS_KEY=seaweed.secret_key,
            UNISTORE_STATE_DIR=str(self.state),
        )

    checksum = "auto"

    def store(self, endpoint: str) -> str:
        return (
            f"s3://unistore-tests/{self.prefix}?endpoint={endpoint}&part_size={5 * MiB}&max_concurrency=1"
            f"&checksum={self.checksum}"
        )

    def recorded(self) -> dict[str, Any]:
        files = list(self.state.glob("s3-*.json")) if self.state.exists() else []
        return json.loads(files[0].read_text()) if files else {"parts": {}}

    def kill_after_two_parts(self, wire: Proxy) -> int:
        """Kill a put throttled by ``wire`` once it has recorded two stored parts; the bytes it recorded."""
        args = ["put", "big.bin", str(self.path), "-s", self.store(wire.url)]
        status = interrupt(args, lambda: len(self.recorded()["parts"]) >= 2, self.environ)
        assert status == -signal.SIGKILL
        wire.unthrottle()
        return sum(p[0] for p in self.recorded()["parts"].values())

    def run(self, endpoint: str) -> subprocess.CompletedProcess[str]:
        return unistore("put", "big.bin", str(self.path), "-s", self.store(endpoint), environ=self.environ)

    async def check(self, abort_sessions: bool = False) -> None:
        backend = self.seaweed.backend(prefix=self.prefix)
        try:
            if abort_sessions:
                for session, _ in await backend.uploads.list():
                    await backend.uploads.abort(session)
                return
            assert sha256(await backend.get("big.bin")) == sha256(self.data)
            assert await backend.uploads.list() == []  # no session left behind
        finally:
            await backend.aclose()


def test_put_killed_over_s3_resumes_the_session_and_sends_only_missing_parts(seaweed: S3Server, tmp_path: Path) -> None:
    up = S3Put(seaweed, tmp_path)
    with Proxy(seaweed.endpoint, rate=8 * MiB) as wire:
        stored = up.kill_after_two_parts(wire)  # what the killed run recorded as stored
        assert 2 * 5 * MiB <= stored < len(up.data)
        done = up.run(wire.url)
    assert done.returncode == 0, done.stderr
    missing = len(up.data) - stored
    report("put s3 rerun", object=len(up.data), recorded=stored, missing=missing, bytes_sent=wire.up)
    assert missing <= wire.up < missing + OVERHEAD  # only the missing parts went again
    assert json.loads(done.stdout)["size"] == len(up.data)
    assert list(up.state.glob("*.json")) == []
    asyncio.run(up.check())  # the killed run's session was the one completed


def test_put_to_a_crc32_store_sends_crc32_parts_and_resumes_them(seaweed: S3Server, tmp_path: Path) -> None:
    """With ``checksum=crc32`` the CLI's session keeps CRC-32 (it hashes its parts itself, no MD5):
    the server checks each part's x-amz-checksum-crc32, and a killed put resumes that session."""
    up = S3Put(seaweed, tmp_path)
    up.checksum = "crc32"
    with Proxy(seaweed.endpoint, rate=8 * MiB) as wire:
        stored = up.kill_after_two_parts(wire)
        token = up.recorded()["token"]
        assert json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))["c"] == "crc32"
        crc = {int(n): p[2] for n, p in up.recorded()["parts"].items()}
        assert crc[1] == base64.b64encode(zlib.crc32(up.data[: 5 * MiB]).to_bytes(4, "big")).decode()
        done = up.run(wire.url)
    assert done.returncode == 0, done.stderr
    missing = len(up.data) - stored
    assert missing <= wire.up < missing + OVERHEAD  # only the missing parts went again
    assert list(up.state.glob("*.json")) == []
    asyncio.run(up.check())


def test_put_to_s3_starts_over_when_the_recorded_session_is_gone(seaweed: S3Server, tmp_path: Path) -> None:
    up = S3Put(seaweed, tmp_path)
    with Proxy(seaweed.endpoint, rate=8 * MiB) as wire:
        up.kill_after_two_parts(wire)
        asyncio.run(up.check(abort_sessions=True))  # expired, or cleaned up by a lifecycle rule
        done = up.run(wire.url)
    assert done.returncode == 0, done.stderr
    assert len(up.data) <= wire.up < len(up.data) + OVERHEAD  # every part again, in a new session
    assert list(up.state.glob("*.json")) == []
    asyncio.run(up.check())


def test_put_killed_over_a_service_resumes_its_upload_session(
    service: tuple[MemoryBackend, str, str], tmp_path: Path
) -> None:
    backend, url, token = service
    data = os.urandom(12 * MiB + 5)  # 13 parts of 1 MiB
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    state = tmp_path / "state"
    environ = env(UNISTORE_TOKEN=token, UNISTORE_STATE_DIR=str(state))
    options = f"multipart_threshold={MiB}&upload_part_size={MiB}&upload_concurrency=1"

    def recorded() -> dict[str, Any]:
        files = list(state.glob("*.json")) if state.exists() else []
        return json.loads(files[0].read_text()) if files else {"parts": {}}

    with Proxy(url, rate=3 * MiB) as wire:
        args = ["put", "resume/put.bin", str(path), "-s", f"{wire.url}?{options}"]
        status = interrupt(args, lambda: len(recorded()["parts"]) >= 3, environ)
        assert status == -signal.SIGKILL
        parts = len(recorded()["parts"])
        assert 3 <= parts < 13
        wire.unthrottle()
        done = unistore(*args, environ=environ)
    assert done.returncode == 0, done.stderr
    missing = len(data) - parts * MiB
    report("put service rerun", object=len(data), recorded=parts * MiB, missing=missing, bytes_sent=wire.up)
    assert missing <= wire.up < missing + OVERHEAD
    assert sha256(asyncio.run(backend.get("resume/put.bin"))) == sha256(data)
    assert list(state.glob("*.json")) == []


def test_a_second_transfer_of_the_same_destination_is_refused_while_the_first_runs(tmp_path: Path) -> None:
    from unistore._records import exclusive

    root = tmp_path / "store"
    data = os.urandom(1000)
    put_direct(LocalBackend(base_path=str(root), fsync=False), "a.bin", data)
    dest = tmp_path / "a.bin"
    with exclusive(tmp_path / "a.bin.part.lock", str(dest)):  # what a running `get` of a.bin holds
        result = CliRunner().invoke(app, ["get", "a.bin", str(dest), "-s", f"file://{root}"])
        assert result.exit_code == 7  # busy: retry later
        assert "another process is already transferring" in result.output and "Traceback" not in result.output
        assert not dest.exists()
    result = CliRunner().invoke(app, ["get", "a.bin", str(dest), "-s", f"file://{root}"])
    assert result.exit_code == 0 and dest.read_bytes() == data
    assert not (tmp_path / "a.bin.part.lock").exists()  # the lock file goes with the transfer
