"""The local backend's worker threads (``backends.local._pool``): results, errors, cancellation,
several event loops at once, and a forked child."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from unistore import LocalBackend, PreconditionFailedError, QuotaExceededError
from unistore.backends.local._pool import run_in_thread


async def test_results_and_exceptions_come_back() -> None:
    assert await run_in_thread(pow, 2, 10) == 1024
    with pytest.raises(ZeroDivisionError):
        await run_in_thread(divmod, 1, 0)
    assert await asyncio.gather(*(run_in_thread(pow, i, 2) for i in range(50))) == [i * i for i in range(50)]


async def test_work_runs_off_the_loop_thread() -> None:
    assert await run_in_thread(threading.get_ident) != threading.get_ident()


async def test_a_call_cancelled_before_it_starts_is_skipped() -> None:
    gate, ran = threading.Event(), []
    blockers = [run_in_thread(gate.wait) for _ in range(64)]  # more than there are threads
    late = run_in_thread(ran.append, 1)
    late.cancel()
    gate.set()
    await asyncio.gather(*blockers)
    await run_in_thread(lambda: None)
    assert ran == [] and late.cancelled()


def test_several_event_loops_at_once(tmp_path: Path) -> None:
    backend = LocalBackend(base_path=str(tmp_path), fsync=False)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        async def main() -> None:
            for i in range(40):
                await backend.put_object(f"t{n}/{i}", b"x" * i)
            assert [len(await backend.get(f"t{n}/{i}")) for i in range(40)] == list(range(40))

        try:
            asyncio.run(main())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork only")
async def test_a_forked_child_gets_its_own_threads(tmp_path: Path) -> None:
    backend = LocalBackend(base_path=str(tmp_path), fsync=False)
    await backend.put_object("parent", b"p")  # the parent's threads exist now
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            asyncio.set_event_loop(None)
            asyncio.run(backend.put_object("child", b"c"))
            code = 0
        finally:
            os._exit(code)
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert await backend.get("child") == b"c"
    assert sys.modules["unistore.backends.local._pool"]._POOL.threads >= 1


async def test_a_short_stream_is_written_in_one_worker_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import unistore.backends.local as local

    calls: list[str] = []

    def counting(fn: object, *args: object) -> object:
        calls.append(getattr(fn, "__name__", "?"))
        return run_in_thread(fn, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(local, "run_in_thread", counting)
    monkeypatch.setattr(local, "run_write", counting)
    backend = LocalBackend(base_path=str(tmp_path), fsync=False, chunk_size=1024)

    async def body(parts: list[bytes]) -> Any:
        for part in parts:
            yield part

    info = await backend.put_object("s/short", body([b"ab", b"", b"cd"]))
    assert calls == ["_put_chunks_sync"] and info.size == 4
    assert await backend.get("s/short") == b"abcd"
    calls.clear()
    long = [bytes([i]) * 700 for i in range(5)]  # past one chunk: a temp file, then the rest streamed
    info = await backend.put_object("s/long", body(long), mode="create")
    assert calls[0] == "_create_temp" and calls[-1] == "_commit" and info.size == 3500
    assert await backend.get("s/long") == b"".join(long)
    assert not [p for p in await asyncio.to_thread(lambda: list(tmp_path.rglob("*"))) if ".tmp." in p.name]


async def test_a_short_stream_keeps_the_size_limit_and_leaves_nothing(tmp_path: Path) -> None:
    backend = LocalBackend(base_path=str(tmp_path), fsync=False, chunk_size=1 << 20, max_object_size=10)

    async def body(parts: list[bytes], fail: bool = False) -> Any:
        for part in parts:
            yield part
        if fail:
            raise ConnectionResetError("client went away")

    with pytest.raises(QuotaExceededError):
        await backend.put_object("s/big", body([b"x" * 6, b"y" * 6]))
    with pytest.raises(ConnectionResetError):
        await backend.put_object("s/cut", body([b"x" * 6], fail=True))
    await backend.put_object("s/once", body([b"1"]), mode="create")
    with pytest.raises(PreconditionFailedError):
        await backend.put_object("s/once", body([b"2"]), mode="create")
    assert await backend.get("s/once") == b"1"
    assert not await backend.exists("s/big") and not await backend.exists("s/cut")
    assert await asyncio.to_thread(lambda: [p.name for p in (tmp_path / "s").iterdir()]) == ["once"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork only")
async def test_a_forked_child_locks_against_its_parent_and_names_temp_files_by_its_own_pid(tmp_path: Path) -> None:
    """The process id is kept across ``fork`` without a ``getpid()`` per write: a child must
    still reopen the key locks (an inherited descriptor would share the parent's lock, so both
    would hold it at once) and name its temp files by its own pid."""
    backend = LocalBackend(base_path=str(tmp_path), fsync=False)
    await backend.put_object("k", b"p")  # the parent has opened (and cached) k's lock file
    held, done = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            stripe = backend._locks.acquire("k")
            name = backend._temp_name()
            os.write(held[1], b"x")
            os.read(done[0], 1)  # hold the lock until the parent has tried it
            backend._locks.release(stripe)
            code = 0 if name.startswith(f".unistore.tmp.{os.getpid():x}.") else 2
        finally:
            os._exit(code)
    try:
        assert await asyncio.to_thread(os.read, held[0], 1) == b"x"
        got = threading.Event()

        def take() -> None:
            backend._locks.release(backend._locks.acquire("k"))
            got.set()

        taker = threading.Thread(target=take, daemon=True)
        taker.start()
        assert not await asyncio.to_thread(got.wait, 0.3)  # the child holds it: we wait
    finally:
        os.write(done[1], b"x")
    _, status = await asyncio.to_thread(os.waitpid, pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert await asyncio.to_thread(got.wait, 10)
    assert backend._temp_name().startswith(f".unistore.tmp.{os.getpid():x}.")


async def test_fsyncing_writes_wait_for_the_disk_many_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes that fsync run in a pool of their own with more threads than the CPU-sized one,
    so more of them wait for the disk at once (one journal commit makes them all durable)."""
    import unistore.backends.local as local
    from unistore.backends.local._pool import _LIMIT, WRITE_LIMIT

    assert WRITE_LIMIT > _LIMIT
    together = threading.Barrier(_LIMIT + 4, timeout=20)

    def at(step: str, key: str) -> None:
        if step == "temp-synced":
            together.wait()  # every write stops here until all of them have got this far

    monkeypatch.setattr(local, "_crash_hook", at)
    backend = LocalBackend(base_path=str(tmp_path), fsync=True)
    infos = await asyncio.gather(*(backend.put_object(f"d/{i}", b"x" * i) for i in range(_LIMIT + 4)))
    assert [i.size for i in infos] == list(range(_LIMIT + 4))
