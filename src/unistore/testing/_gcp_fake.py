"""A local fake of Google Cloud's metadata server and IAM Credentials ``signBlob``, for tests.

What Cloud Run, GKE workload identity and GCE give a process without a key file: the metadata
server (``GCE_METADATA_HOST``/``GCE_METADATA_IP`` point google-auth at it) answers the
service account's email and short-lived access tokens, to requests carrying
``Metadata-Flavor: Google``; the IAM Credentials API signs blobs as that service account
for a bearer token it issued, with an RSA key only it holds (``public_pem`` verifies). Serve
``.app`` with :func:`unistore.testing.running_server`.
"""

from __future__ import annotations

import base64
import itertools
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

__all__ = ["FakeGoogleCloud"]

_FLAVOR = {"Metadata-Flavor": "Google"}


def _key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@dataclass
class FakeGoogleCloud:
    """The fake's state: the service account, the tokens issued, whether signing is allowed."""

    email: str = "runner@test-project.iam.gserviceaccount.com"
    project: str = "test-project"
    allow_sign: bool = True
    tokens: set[str] = field(default_factory=set)
    signed: int = 0
    _key: Any = field(default_factory=_key, repr=False)
    _serial: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    @property
    def public_pem(self) -> bytes:
        """The public half of the key ``signBlob`` signs with (PEM)."""
        from cryptography.hazmat.primitives import serialization

        pem: bytes = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return pem

    @property
    def app(self) -> Starlette:
        sa = "/computeMetadata/v1/instance/service-accounts/{account}"
        return Starlette(
            routes=[
                Route("/", self.ping),
                Route(sa + "/", self.account),
                Route(sa + "/token", self.token),
                Route("/computeMetadata/v1/project/project-id", self.project_id),
                Route("/v1/projects/-/serviceAccounts/{target}", self.sign_blob, methods=["POST"]),
            ]
        )

    def _known(self, request: Request) -> bool:
        return request.headers.get("metadata-flavor") == "Google" and request.path_params.get("account", "default") in (
            "default",
            self.email,
        )

    async def ping(self, request: Request) -> Response:
        return PlainTextResponse("ok", headers=_FLAVOR)

    async def project_id(self, request: Request) -> Response:
        if not self._known(request):
            return PlainTextResponse("missing Metadata-Flavor", status_code=403)
        return PlainTextResponse(self.project, headers=_FLAVOR)

    async def account(self, request: Request) -> Response:
        if not self._known(request):
            return PlainTextResponse("not found", status_code=404)
        scopes = ["https://www.googleapis.com/auth/cloud-platform"]
        return JSONResponse({"email": self.email, "aliases": ["default"], "scopes": scopes}, headers=_FLAVOR)

    async def token(self, request: Request) -> Response:
        if not self._known(request):
            return PlainTextResponse("not found", status_code=404)
        token = f"fake-metadata-token-{next(self._serial)}"
        self.tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}, headers=_FLAVOR)

    async def sign_blob(self, request: Request) -> Response:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        target = request.path_params["target"]
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _google_error(401, "Request had invalid authentication credentials.")
        if target != f"{self.email}:signBlob" or not self.allow_sign:
            return _google_error(403, "Permission 'iam.serviceAccounts.signBlob' denied on resource")
        payload = base64.b64decode((await request.json())["payload"])
        signature = self._key.sign(payload, padding.PKCS1v15(), hashes.SHA256())
        self.signed += 1
        return JSONResponse({"keyId": "fake-key-1", "signedBlob": base64.b64encode(signature).decode()})


def _google_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "status": "PERMISSION_DENIED"}}, status)
