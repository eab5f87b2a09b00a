"""GCS custom metadata: one source (the JSON resource) for head, open and get_metadata.

Regression for issue 11 item 10: ``open()`` read ``x-goog-meta-*`` headers, percent-decoded and
lower-cased them (``"50%25 off"`` came back ``"50% off"``, ``CamelKey`` as ``camelkey``) while
``head()`` read the JSON resource.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from unistore import ByteRange, GCSBackend

FOREIGN_META = {"CamelKey": "50%25 off", "Upper-Dash": "a+b %41 é"}


def _make(fake_gcs: dict[str, str], cls: type[GCSBackend] = GCSBackend) -> GCSBackend:
    return cls(bucket=fake_gcs["bucket"], emulator_host=fake_gcs["url"], credentials=fake_gcs["credentials"])


@pytest.fixture
async def gcs(fake_gcs: dict[str, str]) -> AsyncIterator[GCSBackend]:
    backend = _make(fake_gcs)
    yield backend
    await backend.aclose()


def _write_foreign(fake_gcs: dict[str, str], name: str, data: bytes, metadata: dict[str, str]) -> None:
    """Write an object as another client would (JSON API multipart upload), names' case kept."""
    resource = {"name": name, "contentType": "text/plain", "metadata": metadata}
    boundary = "b" + uuid.uuid4().hex
    body = (
        (
            f"--{boundary}\r\nContent-Type: application/json\r\n\r\n{json.dumps(resource)}\r\n"
            f"--{boundary}\r\nContent-Type: text/plain\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    url = f"{fake_gcs['url']}/upload/storage/v1/b/{quote(fake_gcs['bucket'], safe='')}/o"
    r = httpx.post(
        url,
        params={"uploadType": "multipart"},
        content=body,
        headers={"Content-Type": f"multipart/related; boundary={boundary}"},
    )
    r.raise_for_status()


@pytest.mark.parametrize("size", [10, 300_000])  # read at once / streamed
async def test_open_and_head_agree_on_metadata_written_by_another_client(
    gcs: GCSBackend, fake_gcs: dict[str, str], size: int
) -> None:
    key = f"meta-{uuid.uuid4().hex[:8]}/obj.txt"
    _write_foreign(fake_gcs, key, b"x" * size, FOREIGN_META)
    head = await gcs.head(key)
    assert dict(head.metadata) == FOREIGN_META
    for rng in (None, ByteRange(1, 4)):
        download = await gcs.open(key, range=rng)
        try:
            assert dict(download.info.metadata) == FOREIGN_META
            assert download.info.etag == head.etag
        finally:
            await download.aclose()
    md = await gcs.get_metadata(key)
    assert {k: md[k] for k in FOREIGN_META} == FOREIGN_META


async def test_open_without_metadata_is_one_request(gcs: GCSBackend, fake_gcs: dict[str, str]) -> None:
    key = f"meta-{uuid.uuid4().hex[:8]}/plain"
    await gcs.put_object(key, b"plain")
    sent: list[str] = []

    async def count(request: httpx.Request) -> None:
        sent.append(request.url.path)

    gcs._client.event_hooks["request"].append(count)
    download = await gcs.open(key)
    assert (await download.read(), dict(download.info.metadata)) == (b"plain", {})
    assert len(sent) == 1


class _Overwriting(GCSBackend):
    """Replaces the object between open()'s media and metadata requests, ``times`` times: an
    interleaving no server can be asked to produce on cue."""

    times = 1

    async def _metadata_of(self, key: str, generation: str) -> dict[str, str] | None:
        if self.times > 0:
            self.times -= 1
            await self.put_object(key, b"second", metadata={"v": "2"})
        return await super()._metadata_of(key, generation)


async def test_metadata_belongs_to_the_generation_served(fake_gcs: dict[str, str]) -> None:
    backend: Any = _make(fake_gcs, _Overwriting)
    key = f"meta-{uuid.uuid4().hex[:8]}/raced"
    try:
        await backend.put_object(key, b"first", metadata={"v": "1"})
        download = await backend.open(key)
        assert (await download.read(), dict(download.info.metadata)) == (b"second", {"v": "2"})
        assert download.info.etag == (await backend.head(key)).etag
    finally:
        await backend.aclose()
