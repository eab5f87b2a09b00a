"""A 200 answer whose body is not the JSON the API promises (a proxy's or captive portal's page,
a cut body) is an ``UnavailableError``, never a parser exception (the class of issue 11 item 9)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, Request, Response

from unistore import GCSBackend, UnavailableError
from unistore.backends.cloudinary import CloudinaryBackend
from unistore.testing import running_server


def _portal() -> FastAPI:
    app = FastAPI()

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE"])
    async def reply(request: Request, path: str) -> Response:
        return Response(b"<html>Sign in to the Wi-Fi</html>", media_type="text/html")

    return app


async def test_gcs_answers_that_are_not_json() -> None:
    with running_server(_portal()) as url:
        backend = GCSBackend(bucket="b", emulator_host=url)
        try:
            for call in (backend.head("k"), backend.list_keys("p/"), backend.put_object("k", b"x")):
                with pytest.raises(UnavailableError, match="not valid JSON"):
                    await call
        finally:
            await backend.aclose()


async def test_cloudinary_answers_that_are_not_json() -> None:
    with running_server(_portal()) as url:
        backend = CloudinaryBackend(cloud_name="c", api_key="k", api_secret="s", upload_prefix=url)
        try:
            for call in (backend.head("k.txt"), backend.list_keys("p/"), backend.put_object("k.txt", b"x")):
                with pytest.raises(UnavailableError, match="not valid JSON"):
                    await call
        finally:
            await backend.aclose()
