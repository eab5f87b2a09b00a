"""GCS without a key file, as on Cloud Run / GKE workload identity: metadata-server credentials
(google-auth) and URLs signed through IAM Credentials ``signBlob``.

Regression for issue 11 item 11: ``put()`` stored the object, then raised ``ConfigurationError``
because it could not sign the URL; and ``STORAGE_GCS_BUCKET`` alone did not select GCS.

Each case runs in a fresh process configured only by environment variables, as on those
platforms (google-auth reads ``GCE_METADATA_HOST`` when it is imported), against a local fake
metadata server + IAM endpoint and fake-gcs-server. Signatures are checked with google-auth's
RSA verifier over the canonical request rebuilt from the URL (Google's V4 signing process).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest

from unistore.testing import running_server
from unistore.testing._gcp_fake import FakeGoogleCloud

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from unistore import easy_storage, StorageError

    async def main(key):
        backend = easy_storage()  # auto-detected: only STORAGE_GCS_BUCKET names the store
        out = {"class": type(backend).__name__, "kind": backend._creds.kind}
        try:
            out["put_url"] = await backend.put(key, b"stored without a key file", "text/plain")
            out["get"] = (await backend.get(key)).decode()
            try:
                out["get_url"] = await backend.get_url(key, expires_in=600, download=True)
            except StorageError as exc:
                out["get_url_error"] = type(exc).__name__
        finally:
            await backend.aclose()
        print(json.dumps(out))

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.fixture
def cloud() -> Iterator[tuple[FakeGoogleCloud, str]]:
    fake = FakeGoogleCloud()
    with running_server(fake.app) as url:
        yield fake, url


def _run(cloud_url: str, fake_gcs: dict[str, str], tmp_path: Path, key: str) -> dict[str, Any]:
    host = urlsplit(cloud_url).netloc
    keep = ("PATH", "PYTHONPATH", "LANG", "SYSTEMROOT")
    env = {k: v for k, v in os.environ.items() if k in keep}
    env.update(
        {
            "HOME": str(tmp_path),  # no gcloud application-default file
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "GCE_METADATA_HOST": host,
            "GCE_METADATA_IP": host,
            "STORAGE_GCS_BUCKET": fake_gcs["bucket"],
            "STORAGE_GCS_ENDPOINT": fake_gcs["url"],
            "STORAGE_GCS_IAM_ENDPOINT": cloud_url,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, key], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _verify(url: str, public_pem: bytes, email: str, method: str = "GET") -> dict[str, str]:
    from google.auth.crypt import RSAVerifier

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = bytes.fromhex(query.pop("X-Goog-Signature"))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    canonical = f"{method}\n{parts.path}\n{canonical_query}\nhost:{parts.netloc}\n\nhost\nUNSIGNED-PAYLOAD"
    credential, _, scope = query["X-Goog-Credential"].partition("/")
    assert credential == email
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    to_sign = f"GOOG4-RSA-SHA256\n{query['X-Goog-Date']}\n{scope}\n{digest}"
    assert RSAVerifier.from_string(public_pem).verify(to_sign.encode(), signature)
    return query


def test_put_on_metadata_credentials_returns_a_url_signed_through_iam(
    cloud: tuple[FakeGoogleCloud, str], fake_gcs: dict[str, str], tmp_path: Path
) -> None:
    fake, url = cloud
    key = f"id-{uuid.uuid4().hex[:8]}/report é.txt"
    out = _run(url, fake_gcs, tmp_path, key)
    assert (out["class"], out["kind"], out["get"]) == ("GCSBackend", "default", "stored without a key file")
    assert fake.tokens and fake.signed == 2  # put's URL and get_url's, each one signBlob call
    _verify(out["put_url"], fake.public_pem, fake.email)
    query = _verify(out["get_url"], fake.public_pem, fake.email)
    assert query["X-Goog-Expires"] == "600" and query["response-content-disposition"].startswith("attachment;")
    assert httpx.get(out["put_url"]).content == b"stored without a key file"  # the URL names the store
    tampered = out["put_url"].replace("report", "rep0rt")
    with pytest.raises(AssertionError):  # the signature does not verify for another object
        _verify(tampered, fake.public_pem, fake.email)


def test_put_never_fails_after_the_write_when_signing_is_denied(
    cloud: tuple[FakeGoogleCloud, str], fake_gcs: dict[str, str], tmp_path: Path
) -> None:
    fake, url = cloud
    fake.allow_sign = False  # the service account lacks iam.serviceAccounts.signBlob on itself
    key = f"id-{uuid.uuid4().hex[:8]}/plain.txt"
    out = _run(url, fake_gcs, tmp_path, key)
    assert out["get"] == "stored without a key file"
    assert out["put_url"] == f"{fake_gcs['url']}/{fake_gcs['bucket']}/{key}"  # unsigned, not an error
    assert out["get_url_error"] == "PermissionDeniedError"  # get_url promises a signed URL: it says why not


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"STORAGE_GCS_BUCKET": "b"}, ("gcs", "STORAGE_GCS_BUCKET is set")),
        ({"STORAGE_GCS_BUCKET": "b", "AWS_ACCESS_KEY_ID": "AKIA"}, ("gcs", "STORAGE_GCS_BUCKET is set")),
        ({"STORAGE_GCS_BUCKET": "b", "STORAGE_S3_BUCKET": "s"}, ("s3", "STORAGE_S3_BUCKET is set")),
        ({"AWS_ACCESS_KEY_ID": "AKIA", "GOOGLE_APPLICATION_CREDENTIALS": "/c"}, ("s3", "AWS_ACCESS_KEY_ID is set")),
    ],
)
def test_a_bucket_variable_names_the_store(variables: dict[str, str], expected: tuple[str, str]) -> None:
    from unistore import detect_backend

    assert detect_backend(variables) == expected
