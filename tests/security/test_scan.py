"""Malware uploads: every write path of the service is scanned, and quarantined bodies are out of every
token's reach. A real service (auth on) over HTTP, a real clamd with the generated test database."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from unistore import MemoryBackend
from unistore._keys import reserved_keys
from unistore.layers import QUARANTINE_PREFIX
from unistore.service import ServiceSettings, TokenAuthority, create_app
from unistore.testing import running_server
from unistore.testing._clamd import EICAR, TEST_MARKER, ClamdServer

SECRET = b"scan-secret-0123456789abcdef"


@dataclass
class Svc:
    url: str
    backend: MemoryBackend
    authority: TokenAuthority
    mode: str

    def client(self, actions: list[str], prefix: str = "") -> httpx.Client:
        token = self.authority.issue(actions, prefix=prefix, expires_in=600)
        return httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=30)


@pytest.fixture(scope="module", params=["reject", "quarantine"])
def svc(clamd: ClamdServer, request: pytest.FixtureRequest) -> Iterator[Svc]:
    backend = MemoryBackend()
    settings = ServiceSettings(secret=SECRET, scan_url=clamd.unix_url, scan_mode=request.param)
    with running_server(create_app(backend, settings=settings)) as url:
        yield Svc(url, backend, TokenAuthority(SECRET), request.param)


def refused(r: httpx.Response) -> bool:
    return r.status_code == 422 and r.json()["error"]["type"] == "MalwareFoundError"


def test_every_write_path_is_scanned(svc: Svc) -> None:
    p = f"sec-{uuid.uuid4().hex[:8]}/"
    with svc.client(["read", "write"]) as c:
        # Disguised by name and declared type.
        assert refused(c.put(f"/v1/objects/{p}photo.png", content=EICAR, headers={"content-type": "image/png"}))
        # Buried in the middle of a larger body.
        assert refused(c.put(f"/v1/objects/{p}big.bin", content=b"\0" * 300_000 + TEST_MARKER + b"\0" * 300_000))
        # A browser form upload.
        r = c.post("/v1/upload", files={"file": ("invoice.pdf", EICAR, "application/pdf")}, data={"key": f"{p}f.pdf"})
        assert refused(r), r.text
        # An Idempotency-Key replay does not turn a refusal into a stored object.
        for _ in range(2):
            assert refused(c.put(f"/v1/objects/{p}idem.txt", content=EICAR, headers={"idempotency-key": p + "op"}))
        listed = c.get("/v1/objects", params={"prefix": p}).json()["objects"]
        assert listed == []
    assert [k for k in svc.backend._objects if k.startswith(p)] == []  # nothing under the user's keys


def test_quarantined_bodies_are_out_of_every_tokens_reach(svc: Svc) -> None:
    p = f"q-{uuid.uuid4().hex[:8]}/"
    with svc.client(["admin"]) as admin:
        assert refused(admin.put(f"/v1/objects/{p}x.exe", content=EICAR))
    qkey = QUARANTINE_PREFIX + p + "x.exe"
    with reserved_keys():
        kept = [k for k in svc.backend._objects if k == qkey]
    quarantining = kept == [qkey]
    assert quarantining == (svc.mode == "quarantine")
    for actions, prefix in ((["admin"], ""), (["read", "write", "delete"], ""), (["read"], p)):
        with svc.client(actions, prefix) as c:
            for path in (f"/v1/objects/{qkey}", "/v1/objects/%2Eunistore/quarantine/" + p + "x.exe"):
                r = c.get(path)
                assert r.status_code in (400, 403, 404) and EICAR not in r.content
                assert c.head(path).status_code in (400, 403, 404)
            assert c.get(f"/v1/urls/{qkey}").status_code in (400, 403, 404)
            listing = c.get("/v1/objects", params={"prefix": ".unistore/"})
            assert listing.status_code in (400, 403) or listing.json()["objects"] == []
            everything = c.get("/v1/objects").json().get("objects", [])
            assert all(not o["key"].startswith(".unistore") for o in everything)
            assert c.put(f"/v1/objects/{qkey}", content=b"overwrite").status_code in (400, 403)
            gone = c.delete(f"/v1/objects/{qkey}")
            assert gone.status_code in (400, 403, 404) or gone.json() == {"deleted": False}
    with reserved_keys():
        assert [k for k in svc.backend._objects if k == qkey] == ([qkey] if quarantining else [])
