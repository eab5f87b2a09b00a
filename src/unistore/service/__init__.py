"""The unistore storage service: an HTTP object API over any backend (``unistore serve``).

Routes (JSON unless serving bytes; every error is ``{"error": {"type", "message", "key"}}``):

- ``PUT /v1/objects/{key}``: store the streamed body. ``Content-Type``,
  ``Cache-Control``, ``Content-Disposition`` and ``X-Meta-<name>`` (percent-encoded
  UTF-8) are stored with it; ``If-None-Match: *`` makes it create-only and
  ``If-Match: "etag"`` conditional (412); ``Content-MD5`` and ``Repr-Digest``
  (RFC 9530, sha-256/sha-512) are verified while streaming (400, nothing stored);
  ``Idempotency-Key`` (scoped to the token) makes a replay return the first response
  without a second write (410 if the object was deleted since); a body over
  ``max_body_size`` is 413. 201 with the object info and ``ETag``.
- ``GET``/``HEAD /v1/objects/{key}``: the object, streamed, with ``Range`` (206/416),
  ``ETag``, ``If-None-Match`` (304), ``If-Match`` (412), metadata as ``X-Meta-*``.
- ``DELETE /v1/objects/{key}``: ``{"deleted": true|false}``; honours ``If-Match``.
- ``GET /v1/objects?prefix=&limit=&cursor=``: a page and its opaque ``next_cursor``.
- ``POST /v1/upload``: a browser form upload (``file`` field, optional ``key``).
- ``GET /v1/urls/{key}?expires_in=&download=``: a signed URL for one object.
- ``POST /v1/uploads`` → ``PUT /v1/uploads/{id}/parts/{n}`` → ``GET /v1/uploads/{id}/parts``
  → ``POST /v1/uploads/{id}/complete`` (manifest of part checksums) or ``DELETE /v1/uploads/{id}``:
  multipart upload sessions kept in the backend (see ``UploadSessions``). With
  ``"direct": true`` (S3-compatible backends) ``POST /v1/uploads/{id}/part-urls``
  hands out presigned part URLs, so parts go straight to the store. Completion
  events go to the app's hooks and to ``UNISTORE_WEBHOOKS`` (signed, see :class:`Webhook`).
- ``POST /v1/copy``: copy (or, with ``delete_source``, move) an object; answered like a ``PUT``.
- ``GET /v1/whoami``: what the presented token may do (actions, prefix, expiry, backend).
- ``POST /v1/tokens``: issue a scoped token (``admin``).
- ``GET /files/{key}?...signature``: signed URLs (local and memory backends).
- ``GET /_ops/health``, ``GET /metrics`` (Prometheus; needs a ``metrics`` token unless
  ``UNISTORE_METRICS`` says otherwise), ``GET /openapi.json``.

Auth: ``Authorization: Bearer <token>`` (see :class:`TokenAuthority`); 401
without a valid token, 403 outside its actions or key prefix, 429 with
``Retry-After`` over a rate limit, 503 with ``Retry-After`` when the backend is
overloaded. JSON bodies are read only after the token is checked, and at most
``max_json_size`` bytes (413); a body that stalls gets 408 (``body_timeout``), and
``python -m unistore.service`` closes a connection that does not send its headers within
``header_timeout``. Every response has ``X-Request-Id``. The service keeps no state of
its own: everything lives in the backend.
"""

from __future__ import annotations

from ._app import create_app
from ._auth import ACTIONS, Grant, TokenAuthority, UnauthorizedError
from ._hooks import Hook, Webhook, verify_signature
from ._ops import RequestIdFilter
from ._server import http_protocol
from ._settings import ServiceSettings
from ._uploads import SCHEMA_VERSION, UploadSessions

__all__ = [
    "ACTIONS",
    "Grant",
    "Hook",
    "RequestIdFilter",
    "SCHEMA_VERSION",
    "ServiceSettings",
    "TokenAuthority",
    "UnauthorizedError",
    "UploadSessions",
    "Webhook",
    "create_app",
    "http_protocol",
    "verify_signature",
]
