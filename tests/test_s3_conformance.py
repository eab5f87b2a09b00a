"""The conformance suite against real S3 servers: SeaweedFS (checks signatures) and moto."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from unistore.backends.s3 import S3Backend
from unistore.testing import BackendConformance
from unistore.testing._s3servers import S3Server

_WALK_ORDER = pytest.mark.xfail(
    strict=True,
    reason="SeaweedFS lists in its filer's directory-walk order ('a/b/c' before 'a-b'), not S3's "
    "lexicographic key order, and start-after follows the same walk",
)
_MOTO_RACES = pytest.mark.xfail(
    run=False,
    reason="moto's server does not serialise concurrent writes to one key (random 500s, lost If-Match "
    "updates); SeaweedFS runs these races",
)


class _SeaweedGaps(BackendConformance):
    @_WALK_ORDER
    async def test_list_order_and_prefix_boundaries(self, backend: S3Backend, prefix: str) -> None:
        await super().test_list_order_and_prefix_boundaries(backend, prefix)

    @_WALK_ORDER
    async def test_list_start_after(self, backend: S3Backend, prefix: str) -> None:
        await super().test_list_start_after(backend, prefix)

    @_WALK_ORDER
    async def test_tricky_keys_round_trip(self, backend: S3Backend, prefix: str) -> None:
        await super().test_tricky_keys_round_trip(backend, prefix)

    @_WALK_ORDER
    async def test_delimited_listing_is_one_level_with_cursors(self, backend: S3Backend, prefix: str) -> None:
        await super().test_delimited_listing_is_one_level_with_cursors(backend, prefix)


class TestS3SeaweedFS(_SeaweedGaps):
    @pytest.fixture
    async def backend(self, seaweed: S3Server) -> AsyncIterator[S3Backend]:
        backend = seaweed.backend()
        yield backend
        await backend.aclose()


class TestS3SeaweedFSChecksumSha256(_SeaweedGaps):
    """The newer x-amz-checksum-sha256 on every upload and part, and a key prefix."""

    list_count = 300

    @pytest.fixture
    async def backend(self, seaweed: S3Server) -> AsyncIterator[S3Backend]:
        backend = seaweed.backend(checksum="sha256", prefix="app-sha/", part_size=5 * 1024 * 1024)
        yield backend
        await backend.aclose()


class TestS3Moto(BackendConformance):
    list_count = 1200

    @pytest.fixture
    async def backend(self, moto: S3Server) -> AsyncIterator[S3Backend]:
        backend = moto.backend()
        yield backend
        await backend.aclose()

    @pytest.mark.xfail(strict=True, reason="moto does not verify presigned URL signatures or expiry (SeaweedFS does)")
    async def test_signed_url_round_trip(self, backend: S3Backend, prefix: str) -> None:
        await super().test_signed_url_round_trip(backend, prefix)

    @_MOTO_RACES
    async def test_if_match_counter_race(self, backend: S3Backend, prefix: str) -> None:
        await super().test_if_match_counter_race(backend, prefix)

    @_MOTO_RACES
    async def test_concurrent_overwrites_never_mix(self, backend: S3Backend, prefix: str) -> None:
        await super().test_concurrent_overwrites_never_mix(backend, prefix)

    @_MOTO_RACES
    async def test_create_only_race_has_one_winner(self, backend: S3Backend, prefix: str) -> None:
        await super().test_create_only_race_has_one_winner(backend, prefix)

    @_MOTO_RACES
    async def test_replace_metadata_races_writers_without_losing_a_write(self, backend: S3Backend, prefix: str) -> None:
        await super().test_replace_metadata_races_writers_without_losing_a_write(backend, prefix)
