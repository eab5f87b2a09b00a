"""A local fake of Google Cloud KMS's REST API (``cryptoKeys.encrypt``/``decrypt``) and its OAuth token endpoint.

No emulator of Cloud KMS exists, so tests of :class:`~unistore.encryption.GcpKmsKeyring` run
against this fake, which verifies what the real service verifies:

- ``POST /token``: the OAuth 2.0 JWT-bearer grant service-account credentials use. The
  assertion's RS256 signature is checked with google-auth's own ``jwt.decode`` against the
  public key of a service account the fake issued (:meth:`FakeCloudKms.service_account`), as are
  its audience (Google's token URL) and expiry; the access token it answers is required as ``Authorization: Bearer``
  by every KMS call (else 401 ``UNAUTHENTICATED``).
- ``POST /v1/{cryptoKey}:encrypt``: encrypts under the key's primary version; answers the
  version's resource ``name`` and the ciphertext. ``additionalAuthenticatedData`` is bound to
  it; the ciphertext names its key version and only decrypts under the same crypto key.
- ``POST /v1/{cryptoKey}:decrypt``: a wrong AAD, a tampered ciphertext or another key's ciphertext
  is 400 ``INVALID_ARGUMENT`` ("Decryption failed: the ciphertext is invalid."); a disabled or
  destroyed version is 400 ``FAILED_PRECONDITION``; an unknown key 404 ``NOT_FOUND``; a key the
  caller may not use 403 ``PERMISSION_DENIED``.

Serve ``.app`` with :func:`unistore.testing.running_server`.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["FakeCloudKms"]

_KEY_NAME = re.compile(r"projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/:]+")
_SCOPES = ("https://www.googleapis.com/auth/cloudkms", "https://www.googleapis.com/auth/cloud-platform")
_MAX_PLAINTEXT = 64 * 1024
_AUDIENCE = "https://oauth2.googleapis.com/token"  # what google-auth signs for, whatever the token_uri


@dataclass
class _Version:
    number: int
    secret: bytes
    state: str = "ENABLED"


@dataclass
class _CryptoKey:
    versions: list[_Version] = field(default_factory=list)
    primary: int = 1


@dataclass
class FakeCloudKms:
    """The fake's state: crypto keys and their versions, service accounts, tokens, denied keys."""

    url: str = "http://127.0.0.1"
    """Where the fake is served (the key files' ``token_uri``); set it before issuing service accounts."""
    keys: dict[str, _CryptoKey] = field(default_factory=dict)
    denied: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)
    calls: int = 0
    _accounts: dict[str, bytes] = field(default_factory=dict, repr=False)
    _serial: itertools.count[int] = field(default_factory=itertools.count, repr=False)

    # --- administration (what the console or gcloud would do) ------------------------

    def create_key(self, name: str) -> str:
        """Create crypto key ``name`` (``projects/p/locations/l/keyRings/r/cryptoKeys/k``) with version 1."""
        if not _KEY_NAME.fullmatch(name):
            raise ValueError(f"not a crypto key name: {name!r}")
        self.keys[name] = _CryptoKey([_Version(1, os.urandom(32))], 1)
        return name

    def rotate(self, name: str) -> int:
        """Add a version to ``name`` and make it the primary; returns its number."""
        key = self.keys[name]
        number = len(key.versions) + 1
        key.versions.append(_Version(number, os.urandom(32)))
        key.primary = number
        return number

    def set_state(self, name: str, version: int, state: str) -> None:
        """Set a version's state: ``ENABLED``, ``DISABLED`` or ``DESTROYED``."""
        self.keys[name].versions[version - 1].state = state

    def service_account(self, path: Path, email: str = "kms-user@test-project.iam.gserviceaccount.com") -> Path:
        """Write a service-account key file whose ``token_uri`` is this fake's and register its public key."""
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        key_id = os.urandom(20).hex()
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ).decode()
        self._accounts[key_id] = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        doc = {
            "type": "service_account",
            "project_id": "test-project",
            "private_key_id": key_id,
            "private_key": pem,
            "client_email": email,
            "client_id": "1",
            "token_uri": f"{self.url}/token",
        }
        path.write_text(json.dumps(doc))
        return path

    # --- the HTTP API ------------------------------------------------------------------

    @property
    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/token", self.token, methods=["POST"]),
                Route("/v1/{resource:path}", self.call, methods=["POST"]),
            ]
        )

    async def token(self, request: Request) -> Response:
        from google.auth import exceptions, jwt

        form = await request.form()
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return JSONResponse({"error": "unsupported_grant_type"}, 400)
        assertion = str(form.get("assertion") or "")
        try:
            header = json.loads(base64.urlsafe_b64decode(assertion.split(".")[0] + "=="))
            public = self._accounts[header["kid"]]
            claims = jwt.decode(assertion, certs=public.decode(), audience=_AUDIENCE)  # type: ignore[no-untyped-call]
        except (KeyError, ValueError, IndexError, binascii.Error, exceptions.GoogleAuthError):
            return JSONResponse({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}, 400)
        if not set(str(claims.get("scope", "")).split()) & set(_SCOPES):
            return JSONResponse({"error": "invalid_scope"}, 400)
        token = f"fake-kms-token-{next(self._serial)}-{os.urandom(8).hex()}"
        self.tokens.add(token)
        return JSONResponse({"access_token": token, "expires_in": 3599, "token_type": "Bearer"})

    async def call(self, request: Request) -> Response:
        self.calls += 1
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        resource, _, method = request.path_params["resource"].rpartition(":")
        if method not in ("encrypt", "decrypt") or not _KEY_NAME.fullmatch(resource):
            return _error(404, "NOT_FOUND", "Method not found.")
        if resource in self.denied:
            return _error(
                403,
                "PERMISSION_DENIED",
                f"Permission 'cloudkms.cryptoKeyVersions.useTo{method.title()}' denied on resource "
                f"'{resource}' (or it may not exist).",
            )
        key = self.keys.get(resource)
        if key is None:
            return _error(404, "NOT_FOUND", f"CryptoKey {resource} not found.")
        try:
            body = await request.json()
            aad = base64.b64decode(body.get("additionalAuthenticatedData") or "", validate=True)
            data = base64.b64decode(body["plaintext" if method == "encrypt" else "ciphertext"], validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            return _error(400, "INVALID_ARGUMENT", "Invalid JSON payload received.")
        if len(aad) > _MAX_PLAINTEXT:
            return _error(400, "INVALID_ARGUMENT", "The additional authenticated data is too large.")
        if method == "encrypt":
            return self._encrypt(resource, key, data, aad)
        return self._decrypt(resource, key, data, aad)

    def _encrypt(self, name: str, key: _CryptoKey, plaintext: bytes, aad: bytes) -> Response:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(plaintext) > _MAX_PLAINTEXT:
            return _error(400, "INVALID_ARGUMENT", "The plaintext is too large.")
        version = key.versions[key.primary - 1]
        version_name = f"{name}/cryptoKeyVersions/{version.number}"
        if version.state != "ENABLED":
            return _error(
                400,
                "FAILED_PRECONDITION",
                f"The request cannot be fulfilled. Resource {version_name} is not enabled, current state is: "
                f"{version.state}.",
            )
        nonce = os.urandom(12)
        sealed = AESGCM(version.secret).encrypt(nonce, plaintext, _bound(name, aad))
        ciphertext = version.number.to_bytes(4, "big") + nonce + sealed
        return JSONResponse(
            {
                "name": version_name,
                "ciphertext": base64.b64encode(ciphertext).decode(),
                "verifiedPlaintextCrc32c": False,
                "verifiedAdditionalAuthenticatedDataCrc32c": False,
                "protectionLevel": "SOFTWARE",
            }
        )

    def _decrypt(self, name: str, key: _CryptoKey, ciphertext: bytes, aad: bytes) -> Response:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        invalid = _error(400, "INVALID_ARGUMENT", "Decryption failed: the ciphertext is invalid.")
        if len(ciphertext) < 4 + 12 + 16:
            return invalid
        number = int.from_bytes(ciphertext[:4], "big")
        if not 1 <= number <= len(key.versions):
            return invalid
        version = key.versions[number - 1]
        if version.state != "ENABLED":
            return _error(
                400,
                "FAILED_PRECONDITION",
                f"The request cannot be fulfilled. Resource {name}/cryptoKeyVersions/{number} is not enabled, "
                f"current state is: {version.state}.",
            )
        try:
            plaintext = AESGCM(version.secret).decrypt(ciphertext[4:16], ciphertext[16:], _bound(name, aad))
        except InvalidTag:
            return invalid
        return JSONResponse(
            {
                "plaintext": base64.b64encode(plaintext).decode(),
                "usedPrimary": number == key.primary,
                "protectionLevel": "SOFTWARE",
            }
        )


def _bound(name: str, aad: bytes) -> bytes:
    """What a ciphertext is bound to: its crypto key and the caller's AAD."""
    return name.encode() + b"\x00" + aad


def _error(status: int, reason: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": status, "message": message, "status": reason}}, status)
