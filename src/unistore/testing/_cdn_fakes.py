"""Local fakes of a CDN edge and of the BunnyCDN and Cloudflare purge APIs, with independent
verifiers of CloudFront signatures and BunnyCDN tokens.

No emulator of a CDN exists. :class:`FakeCDN` is an edge that serves a store (its origin)
and caches what it served, so a test sees a stale copy until a purge reaches it; it verifies
every request as the real service does:

- CloudFront (:func:`verify_cloudfront`, written from AWS's documented algorithm, not from
  botocore): the ``Expires`` (canned) or ``Policy`` (custom) query parameters or the
  ``CloudFront-*`` cookies; the policy is the canned JSON rebuilt from the URL, or the custom
  one decoded from CloudFront's base64 alphabet (``-``/``_``/``~`` for ``+``/``=``/``/``);
  the RSA-SHA1 PKCS#1 v1.5 signature is checked with the public key named by ``Key-Pair-Id``;
  then ``Resource`` (``*`` and ``?`` wildcards), ``DateLessThan``, ``DateGreaterThan`` and
  ``IpAddress`` (CIDR) against the request.
- BunnyCDN (:func:`verify_bunny`, from Bunny's documented formulas): ``HS256-`` tokens
  (HMAC-SHA256 of the signed path or ``token_path`` prefix, expiry, packed client IP and the
  sorted parameters), in the query or in the path (``/bcdn_token=…``), and the basic MD5 token.

The purge APIs follow the documented REST calls and check their authentication:
``POST /purge?url=…`` with ``AccessKey`` (Bunny; 401 otherwise) and
``POST /client/v4/zones/{zone}/purge_cache`` with ``Authorization: Bearer`` (Cloudflare; 403
with ``success: false`` otherwise; at most 100 ``files``) and
``DELETE /v2/cdn/endpoints/{id}/cache`` with ``Authorization: Bearer`` (Spaces CDN; 401
otherwise; at most 50 relative ``files``). ``fail_next`` answers the next
purges with 503 (or 429 with ``Retry-After``) to exercise retries. Serve ``.edge_app`` and
``.api_app`` with :func:`unistore.testing.running_server`.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import hashlib
import hmac
import ipaddress
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .._base import StorageBackend
from .._errors import NotFoundError

__all__ = ["FakeCDN", "SignatureRejected", "verify_bunny", "verify_cloudfront"]

_CF_PARAMS = ("Expires", "Policy", "Signature", "Key-Pair-Id")


class SignatureRejected(Exception):
    """The request's signature or token does not grant it (the edge answers 403)."""


def _cf_b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text.translate(str.maketrans("-_~", "+=/")), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRejected("not CloudFront base64") from exc


def _drop_params(raw_query: str, names: tuple[str, ...]) -> str:
    kept = [p for p in raw_query.split("&") if p and p.split("=", 1)[0] not in names]
    return "&".join(kept)


def _resource_matches(pattern: str, url: str) -> bool:
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, url, flags=re.DOTALL) is not None


def verify_cloudfront(
    url: str,
    public_keys: dict[str, Any],
    *,
    cookies: dict[str, str] | None = None,
    client_ip: str = "127.0.0.1",
    now: float | None = None,
) -> None:
    """Raise :class:`SignatureRejected` unless ``url`` (as requested: scheme, host, raw path and
    query) is granted by its signed-URL parameters or by ``cookies``."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    now = time.time() if now is None else now
    base, _, raw_query = url.partition("?")
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    cookies = cookies or {}
    if "Signature" in query:
        signature, pair_id = query["Signature"], query.get("Key-Pair-Id", "")
        expires, encoded_policy = query.get("Expires"), query.get("Policy")
    elif "CloudFront-Signature" in cookies:
        signature, pair_id = cookies["CloudFront-Signature"], cookies.get("CloudFront-Key-Pair-Id", "")
        expires, encoded_policy = cookies.get("CloudFront-Expires"), cookies.get("CloudFront-Policy")
    else:
        raise SignatureRejected("no signature")
    if pair_id not in public_keys:
        raise SignatureRejected("unknown key pair")
    rest = _drop_params(raw_query, _CF_PARAMS)
    resource_url = base + ("?" + rest if rest else "")
    if encoded_policy is not None:
        policy = _cf_b64decode(encoded_policy)
    elif expires is not None and expires.isdigit():
        canned = {"Statement": [{"Resource": resource_url, "Condition": {"DateLessThan": {"AWS:EpochTime": 0}}}]}
        text = json.dumps(canned, separators=(",", ":")).replace('"AWS:EpochTime":0', f'"AWS:EpochTime":{expires}')
        policy = text.encode()
    else:
        raise SignatureRejected("neither Expires nor Policy")
    try:
        public_keys[pair_id].verify(_cf_b64decode(signature), policy, padding.PKCS1v15(), hashes.SHA1())
    except InvalidSignature as exc:
        raise SignatureRejected("bad signature") from exc
    try:
        statement = json.loads(policy)["Statement"][0]
        resource = statement.get("Resource", "*")
        condition = statement["Condition"]
        less_than = int(condition["DateLessThan"]["AWS:EpochTime"])
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise SignatureRejected("malformed policy") from exc
    if not _resource_matches(resource, resource_url):
        raise SignatureRejected("resource not granted")
    if now >= less_than:
        raise SignatureRejected("expired")
    if "DateGreaterThan" in condition and now < int(condition["DateGreaterThan"]["AWS:EpochTime"]):
        raise SignatureRejected("not yet valid")
    if "IpAddress" in condition:
        network = ipaddress.ip_network(condition["IpAddress"]["AWS:SourceIp"], strict=False)
        if ipaddress.ip_address(client_ip) not in network:
            raise SignatureRejected("source IP not granted")


def verify_bunny(
    url: str, security_key: str, *, client_ip: str = "127.0.0.1", now: float | None = None
) -> tuple[str, dict[str, str]]:
    """The content path and remaining parameters of Bunny-signed ``url``; raise
    :class:`SignatureRejected` unless its token is valid for that path, now, from ``client_ip``."""
    now = time.time() if now is None else now
    parts = urlsplit(url)
    path, raw_query = parts.path or "/", parts.query
    params = dict(parse_qsl(raw_query, keep_blank_values=True))
    if path.startswith("/bcdn_token="):
        head, slash, content = path[1:].partition("/")
        params.update(parse_qsl("token=" + head[len("bcdn_token=") :], keep_blank_values=True))
        path = "/" + content if slash else "/"
    token, expires = params.pop("token", ""), params.pop("expires", "")
    if not token or not expires.isdigit():
        raise SignatureRejected("no token")
    if not token.startswith("HS256-"):  # the basic (MD5) token: key, path, expiry, optional IP
        candidates = [security_key + path + expires, security_key + path + expires + client_ip]
        digests = [base64.urlsafe_b64encode(hashlib.md5(c.encode()).digest()).decode().rstrip("=") for c in candidates]
        if not any(hmac.compare_digest(token, d) for d in digests):
            raise SignatureRejected("bad token")
    else:
        rest = token[len("HS256-") :]
        ip = b""
        if rest.startswith("1-"):
            rest = rest[2:]
            ip = ipaddress.ip_address(client_ip).packed
            if len(ip) == 16:
                ip = ip[:8] + bytes(8)
        signed_path = params.get("token_path") or path
        if not path.startswith(signed_path):
            raise SignatureRejected("path outside token_path")
        data = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
        message = signed_path.encode() + expires.encode() + ip + data.encode()
        expected = base64.urlsafe_b64encode(hmac.new(security_key.encode(), message, hashlib.sha256).digest())
        if not hmac.compare_digest(rest, expected.decode().rstrip("=")):
            raise SignatureRejected("bad token")
    if now >= int(expires):
        raise SignatureRejected("expired")
    return path, params


@dataclass
class FakeCDN:
    """An edge serving ``origin`` (private when a verifier is set) and the two purge APIs."""

    origin: StorageBackend
    public_keys: dict[str, Any] | None = None
    """CloudFront key pair IDs → RSA public keys: requests must be CloudFront-signed."""
    bunny_key: str | None = None
    """A Bunny zone security key: requests must carry a Bunny token."""
    download_param: str = "response-content-disposition"
    bunny_api_key: str = "bunny-api-key"
    cloudflare_zone: str = "zone-1"
    cloudflare_token: str = "cf-token"
    spaces_endpoint: str = "19f06b6a-3ace-4315-b086-499a0e521b76"
    spaces_token: str = "do-token"
    url: str = "http://127.0.0.1"
    """Where ``edge_app`` is served (set it before use: signed resources name it)."""
    cache: dict[str, tuple[bytes, dict[str, str]]] = field(default_factory=dict)
    purges: list[list[str]] = field(default_factory=list)
    """Each accepted purge request's URLs, in order."""
    rejected: int = 0
    """Purge requests refused for their authentication."""
    fail_next: list[int] = field(default_factory=list)
    """Statuses (503, 429) the next purge requests answer, one each."""
    clock: Callable[[], float] = time.time

    # --- the edge ---------------------------------------------------------------------

    @property
    def edge_app(self) -> Starlette:
        return Starlette(routes=[Route("/{path:path}", self._serve, methods=["GET", "HEAD"])])

    async def _serve(self, request: Request) -> Response:
        raw_path = request.scope.get("raw_path", b"").decode() or request.url.path
        raw_query = request.scope.get("query_string", b"").decode()
        full = self.url + raw_path + ("?" + raw_query if raw_query else "")
        client_ip = request.client.host if request.client else "127.0.0.1"
        path, params = raw_path, dict(parse_qsl(raw_query, keep_blank_values=True))
        try:
            if self.public_keys is not None:
                verify_cloudfront(full, self.public_keys, cookies=dict(request.cookies), client_ip=client_ip,
                                  now=self.clock())  # fmt: skip
            elif self.bunny_key is not None:
                path, params = verify_bunny(full, self.bunny_key, client_ip=client_ip, now=self.clock())
        except SignatureRejected as exc:
            return Response(f"forbidden: {exc}", status_code=403)
        key = unquote(path[1:])
        disposition = params.get(self.download_param)
        cache_key = path + "\n" + (disposition or "")
        if cache_key not in self.cache:
            try:
                async with await self.origin.open(key) as dl:
                    body = await dl.read()
                    info = dl.info
            except NotFoundError:
                return Response("not found", status_code=404)
            headers = {"content-type": info.content_type or "application/octet-stream", "etag": f'"{info.etag}"'}
            if disposition:
                headers["content-disposition"] = disposition
            self.cache[cache_key] = (body, headers)
        body, headers = self.cache[cache_key]
        return Response(body, headers={**headers, "x-cache": "edge"})

    def _evict(self, url: str) -> None:
        path = urlsplit(url).path
        for cache_key in list(self.cache):
            cached = cache_key.split("\n", 1)[0]
            if cached == path or (path.endswith("*") and fnmatch.fnmatchcase(cached, path)):
                del self.cache[cache_key]

    # --- the purge APIs ---------------------------------------------------------------

    @property
    def api_app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/purge", self._bunny_purge, methods=["POST", "GET"]),
                Route("/client/v4/zones/{zone}/purge_cache", self._cloudflare_purge, methods=["POST"]),
                Route("/v2/cdn/endpoints/{endpoint}/cache", self._spaces_purge, methods=["DELETE"]),
            ]
        )

    def _injected(self) -> Response | None:
        if not self.fail_next:
            return None
        status = self.fail_next.pop(0)
        return Response("injected", status_code=status, headers={"retry-after": "0"} if status == 429 else {})

    async def _bunny_purge(self, request: Request) -> Response:
        if not hmac.compare_digest(request.headers.get("accesskey", ""), self.bunny_api_key):
            self.rejected += 1
            return Response(status_code=401)
        url = request.query_params.get("url")
        if not url:
            return JSONResponse({"Message": "url is required"}, status_code=400)
        if (injected := self._injected()) is not None:
            return injected
        self.purges.append([url])
        self._evict(url)
        return Response(status_code=200)

    async def _spaces_purge(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if not hmac.compare_digest(auth, f"Bearer {self.spaces_token}"):
            self.rejected += 1
            return JSONResponse({"id": "unauthorized", "message": "Unable to authenticate you"}, 401)
        if request.path_params["endpoint"] != self.spaces_endpoint:
            return JSONResponse({"id": "not_found", "message": "The resource you requested could not be found."}, 404)
        try:
            files = (await request.json())["files"]
            paths = [str(f) for f in files]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"id": "bad_request", "message": "files is required"}, 400)
        if not paths or len(paths) > 50 or any(p.startswith(("/", "http")) for p in paths):
            return JSONResponse({"id": "bad_request", "message": "invalid files"}, 400)
        if (injected := self._injected()) is not None:
            return injected
        self.purges.append(paths)
        for path in paths:
            self._evict("/" + quote(path, safe="/*"))
        return Response(status_code=204)

    async def _cloudflare_purge(self, request: Request) -> Response:
        auth = request.headers.get("authorization", "")
        if request.path_params["zone"] != self.cloudflare_zone or not hmac.compare_digest(
            auth, f"Bearer {self.cloudflare_token}"
        ):
            self.rejected += 1
            error = {"code": 10000, "message": "Authentication error"}
            return JSONResponse({"success": False, "errors": [error], "messages": [], "result": None}, 403)
        try:
            files = (await request.json())["files"]
            urls = [f if isinstance(f, str) else f["url"] for f in files]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"success": False, "errors": [{"code": 1012, "message": "bad body"}]}, 400)
        if not urls or len(urls) > 100 or any("*" in u or not u.startswith("http") for u in urls):
            return JSONResponse({"success": False, "errors": [{"code": 1015, "message": "bad files"}]}, 400)
        if (injected := self._injected()) is not None:
            return injected
        self.purges.append(urls)
        for url in urls:
            self._evict(url)
        return JSONResponse({"success": True, "errors": [], "messages": [], "result": {"id": "purge-1"}})
