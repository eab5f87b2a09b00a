"""S3 credentials, presigned URLs and forms, and the raw botocore client escape hatch."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from ..._errors import ConfigurationError, InvalidArgumentError
from ..._keys import validate_key
from ..._types import check_content_type, guess_content_type
from ._settings import MAX_PRESIGN, S3Settings
from ._wire import Credentials

if TYPE_CHECKING:
    from . import S3Backend

__all__ = ["BotoProxy", "boto_client", "presign", "presign_post", "static_credentials"]


def static_credentials(s: S3Settings) -> Credentials | None:
    if s.access_key and s.secret_key:
        return Credentials(s.access_key, s.secret_key, s.session_token)
    if s.access_key or s.secret_key:
        raise ConfigurationError("set both the S3 access key and secret key, or neither")
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return Credentials(env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN"))
    return None


async def presign(
    backend: S3Backend,
    key: str,
    *,
    method: str = "GET",
    expires_in: int | None = None,
    download: bool = False,
    content_type: str | None = None,
) -> str:
    """A SigV4 presigned URL for ``method`` (GET, HEAD, PUT, DELETE) on ``key``.

    GET: ``download=True`` adds an attachment disposition and ``content_type``
    overrides the response's Content-Type. PUT: ``content_type`` is signed, so the
    uploader must send exactly that ``Content-Type``.
    """
    validate_key(key)
    expires = backend.default_expires_in if expires_in is None else expires_in
    if not 0 < expires <= MAX_PRESIGN:
        raise InvalidArgumentError(
            f"expires_in must be between 1 and {MAX_PRESIGN} seconds (S3's limit)", key=key, backend=backend.name
        )
    method = method.upper()
    if method not in ("GET", "HEAD", "PUT", "DELETE"):
        raise InvalidArgumentError(f"cannot presign {method}", key=key, backend=backend.name)
    query: dict[str, str] = {}
    signed: dict[str, str] = {}
    if method in ("GET", "HEAD"):
        if download:
            query["response-content-disposition"] = _attachment(key)
        if content_type:
            query["response-content-type"] = check_content_type(content_type) or ""
    elif method == "PUT" and content_type:
        signed["content-type"] = check_content_type(content_type) or ""
    creds = await backend.credentials()
    path = backend._object_path(key)
    qs = backend._signer.presign(creds, method, backend._host, path, expires, query, signed)
    return f"{backend._origin}{path}?{qs}"


async def presign_post(
    backend: S3Backend,
    key: str,
    *,
    expires_in: int | None = None,
    content_type: str | None = None,
    content_type_prefix: str | None = None,
    max_size: int | None = None,
    min_size: int = 0,
) -> tuple[str, dict[str, str]]:
    """A browser upload form: POST ``fields`` plus the file (field ``file``, last) to the URL.

    The policy pins the key, and limits the size to ``[min_size, max_size]`` and the
    content type to ``content_type`` exactly or to ``content_type_prefix`` (``"image/"``).
    ``fields`` always carry ``Content-Type``: with a prefix, the key's type where it starts with the
    prefix, else the prefix itself; a form may replace it with any type under the prefix.
    """
    validate_key(key)
    expires = backend.default_expires_in if expires_in is None else expires_in
    if not 0 < expires <= MAX_PRESIGN:
        raise InvalidArgumentError(f"expires_in must be between 1 and {MAX_PRESIGN} seconds", key=key)
    full_key = backend.settings.prefix + key
    fields = {"key": full_key}
    conditions: list[Any] = [{"bucket": backend.bucket}, ["eq", "$key", full_key]]
    if content_type is not None:
        fields["Content-Type"] = check_content_type(content_type) or ""
        conditions.append(["eq", "$Content-Type", fields["Content-Type"]])
    elif content_type_prefix is not None:
        # A form must send Content-Type for the condition to hold: give it the key's type when that
        # fits the prefix (a browser may replace it with the file's own type under the prefix).
        guessed = guess_content_type(key)
        fields["Content-Type"] = guessed if guessed.startswith(content_type_prefix) else content_type_prefix
        conditions.append(["starts-with", "$Content-Type", content_type_prefix])
    if max_size is not None:
        conditions.append(["content-length-range", min_size, max_size])
    for name, value in backend._write_extra.items():
        if not name.startswith("x-amz-server-side-encryption-customer"):
            fields[name] = value
            conditions.append({name: value})
    expiration = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + expires))
    creds = await backend.credentials()
    fields.update(backend._signer.post_policy(creds, {"expiration": expiration, "conditions": conditions}))
    return backend._origin + backend._bucket_path, fields


def _attachment(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


async def boto_client(backend: S3Backend) -> Any:
    """The raw aiobotocore S3 client of ``backend`` (created once, closed by its ``aclose``)."""
    if backend._boto_client is None:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import AioSession

        s = backend.settings
        creds = await backend.credentials()
        style = "path" if backend._bucket_path != "/" else "virtual"
        ctx = AioSession().create_client(
            "s3",
            region_name=s.region,
            endpoint_url=s.endpoint,
            aws_access_key_id=creds.access_key,
            aws_secret_access_key=creds.secret_key,
            aws_session_token=creds.token,
            config=AioConfig(
                s3={"addressing_style": style},
                max_pool_connections=s.max_connections,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        backend._boto_client = await ctx.__aenter__()
        backend._boto = ctx
    return backend._boto_client


class BotoProxy:
    """``backend._client``: the raw aiobotocore client's methods, awaitable before it exists."""

    def __init__(self, backend: S3Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        async def call(*args: Any, **kwargs: Any) -> Any:
            client = await self._backend.boto_client()
            return await getattr(client, name)(*args, **kwargs)

        call.__name__ = name
        return call
