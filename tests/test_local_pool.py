"""The local backend's worker threads (``backends.local._pool``): results, errors, cancellation,
several event loops at once, and a forked child."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from pathlib import Path

import pytest

from unistore import LocalBackend
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
