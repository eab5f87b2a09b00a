"""Limits that hold across replicas: token buckets and hot-key counts in one Redis (``UNISTORE_REDIS_URL``).

Replicas are real ``python -m unistore.service`` processes over one SeaweedFS
bucket, or two apps in this process; Redis is Debian ``redis-server`` (fixture
``redis``, or a private one where a test stops it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from unistore import MemoryBackend
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import RedisServer, S3Server, free_port, redis_server, running_server

pytestmark = pytest.mark.xdist_group("scaleout")

SECRET = b"redis-limits-secret-0123456789"


@contextlib.contextmanager
def replicas(env: dict[str, str], logs: Path, n: int = 2) -> Iterator[list[str]]:
    """``n`` service processes with ``env``, each on its own port, until the block exits."""
    ports = [free_port() for _ in range(n)]
    files = [(logs / f"replica-{i}.log").open("wb") for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "unistore.service", "--port", str(port)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
            stderr=file,
        )
        for port, file in zip(ports, files, strict=True)
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        for i, (url, proc) in enumerate(zip(urls, procs, strict=True)):
            deadline = time.monotonic() + 30
            while True:
                assert proc.poll() is None, (logs / f"replica-{i}.log").read_text()
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(url + "/_ops/health").status_code == 200:
                        break
                assert time.monotonic() < deadline, f"replica {url} did not start"
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc, file in zip(procs, files, strict=True):
            proc.wait(10)
            file.close()


def _hot_value(text: str, key: str) -> float:
    label = "sha256:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "unistore_hot_key_requests" and sample.labels.get("key") == label:
                return sample.value
    return 0.0


def test_two_replicas_over_one_bucket_and_one_redis_hold_one_global_limit(
    seaweed: S3Server, redis: RedisServer, tmp_path: Path
) -> None:
    rate, burst = 2, 2
    env = {
        **seaweed.env(prefix=f"redis-{uuid.uuid4().hex[:8]}/"),
        "UNISTORE_SECRET": SECRET.decode(),
        "UNISTORE_REDIS_URL": redis.url,
        "UNISTORE_REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}",
        "UNISTORE_GLOBAL_RATE": str(rate),
        "UNISTORE_GLOBAL_BURST": str(burst),
    }
    authority = TokenAuthority(SECRET)
    key = "hot/doc.txt"
    clients = 6
    with replicas(env, tmp_path) as urls:
        headers = [{"authorization": "Bearer " + authority.issue(["admin"], subject=f"c{i}")} for i in range(clients)]
        codes: list[int] = []
        stop = threading.Event()

        def hammer(i: int) -> None:
            with httpx.Client(headers=headers[i], timeout=20) as c:
                n = i
                while not stop.is_set():
                    codes.append(c.get(f"{urls[n % 2]}/v1/objects/{key}").status_code)
                    n += 1

        started = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            for i in range(clients):
                pool.submit(hammer, i)
            # at least 3 s, and enough requests to ask for far more than twice the budget (a loaded machine is slow)
            while time.monotonic() - started < 3 or (len(codes) < 60 and time.monotonic() - started < 20):
                time.sleep(0.05)
            stop.set()
        elapsed = time.monotonic() - started
        # the object does not exist, so an admitted request is a 404 (or a 503 if the loaded store gave up)
        admitted = len(codes) - codes.count(429)
        assert 404 in codes and 429 in codes and set(codes) <= {404, 429, 503}, codes
        budget = burst + rate * elapsed
        logs = "".join((tmp_path / f"replica-{i}.log").read_text() for i in range(2))
        if "Redis unavailable" in logs:  # a Redis call outlasted its timeout (a loaded machine): per-replica buckets
            assert budget * 0.5 <= admitted <= 2 * budget + 2, (admitted, budget, len(codes))
        else:  # one shared bucket: about the configured budget, far from the 2x two separate replicas would admit
            assert budget * 0.5 <= admitted <= budget + 1, (admitted, budget, len(codes))
        assert len(codes) > 2 * budget + 2, (len(codes), budget)  # the clients really did ask for more
        # hot-key counts are summed over both replicas: either replica's /metrics shows every admitted GET
        deadline = time.monotonic() + 5
        while True:
            seen = [_hot_value(httpx.get(url + "/metrics", headers=headers[0]).text, key) for url in urls]
            if seen == [admitted, admitted] or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert seen == [admitted, admitted]


def test_per_token_buckets_are_shared_by_every_app_on_one_redis(redis: RedisServer) -> None:
    settings = ServiceSettings(
        secret=SECRET, token_rate=0.2, token_burst=4, redis_url=redis.url, redis_prefix=f"t-{uuid.uuid4().hex[:8]}"
    )
    token = TokenAuthority(SECRET).issue(["read"])
    one, two = create_app(MemoryBackend(), settings=settings), create_app(MemoryBackend(), settings=settings)
    auth = {"authorization": f"Bearer {token}"}
    with running_server(one) as a, running_server(two) as b, httpx.Client(headers=auth) as c:
        codes = [c.get(f"{(a, b)[i % 2]}/v1/objects").status_code for i in range(12)]
    assert codes.count(200) in (4, 5) and codes[:4] == [200] * 4, codes  # 4 + at most one refill, not 8


def test_redis_outage_falls_back_to_per_replica_limits(caplog: pytest.LogCaptureFixture) -> None:
    """Decided: neither fail closed (every request refused) nor open (no limit): each replica limits on its own."""
    with redis_server() as private:
        settings = ServiceSettings(auth=False, token_rate=0.2, token_burst=3, redis_url=private.url)
        app = create_app(MemoryBackend(), settings=settings)
        with running_server(app) as url, httpx.Client(base_url=url, timeout=10) as c:
            assert [c.get("/v1/objects").status_code for _ in range(4)] == [200, 200, 200, 429]
            os.kill(private.pid, 9)
            time.sleep(0.2)
            with caplog.at_level(logging.WARNING, logger="unistore.service"):
                started = time.monotonic()
                codes = [c.get("/v1/objects").status_code for _ in range(5)]
                elapsed = time.monotonic() - started
    assert codes == [200, 200, 200, 429, 429]  # this replica's own bucket, still a limit
    assert elapsed < 2.0  # one bounded attempt, then Redis is skipped for the cooldown
    assert any("Redis unavailable" in r.getMessage() for r in caplog.records)


def test_redis_unreachable_from_the_start_still_serves_with_local_limits() -> None:
    settings = ServiceSettings(auth=False, token_rate=0.2, token_burst=2, redis_url=f"redis://127.0.0.1:{free_port()}")
    with running_server(create_app(MemoryBackend(), settings=settings)) as url, httpx.Client(base_url=url) as c:
        assert [c.get("/v1/objects").status_code for _ in range(3)] == [200, 200, 429]
