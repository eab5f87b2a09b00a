"""The chaos stack the conformance suite runs over: every layer, faults injected next to the store."""

from __future__ import annotations

from typing import Any

from .._base import StorageBackend
from ..layers import Cache, Faults, Observe, RateLimit, Retry

__all__ = ["chaos_stack", "no_sleep"]


async def no_sleep(_: float) -> None:
    """A ``sleep`` that returns at once: retries and injected latency cost no time in tests."""


def chaos_stack(
    backend: StorageBackend,
    *,
    seed: int = 0,
    error_rate: float = 0.2,
    cut_rate: float = 0.2,
    metrics: Any = False,
) -> Observe:
    """``Observe → RateLimit → Cache → Retry → Faults(seeded) → backend``, with sleeping off.

    Faults injects ``error_rate`` transient errors on every operation and cuts
    ``cut_rate`` of the downloads mid-stream; Retry (20 attempts: a read fails ~36% of tries) hides them
    all, so the stack must pass the whole conformance suite.
    """
    faults = Faults(backend, seed=seed, error_rate=error_rate, cut_rate=cut_rate, sleep=no_sleep)
    retry = Retry(faults, attempts=20, deadline=60.0, sleep=no_sleep, seed=seed)
    cache = Cache(retry, ttl=0.5)
    limit = RateLimit(cache, max_concurrency=16, rate=100_000.0, burst=1_000)
    return Observe(limit, metrics=metrics)
