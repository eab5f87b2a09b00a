#!/usr/bin/env python3
"""Cost of one signed CDN URL, side by side in one run: the hand-written CloudFront recipe
(policy JSON, PEM read and parsed for each URL, RSA-SHA1), the same recipe with the key loaded
once, the CDN layer over memory with CloudFront (canned policy, botocore's signer) and with
BunnyCDN (HS256 token), and the memory store's own HMAC URL. Repetitions are interleaved;
medians of microseconds per URL and the ratio to the layer's CloudFront URL.

    .venv/bin/python bench/cdn_sign.py [--urls 200] [--reps 3]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from unistore import MemoryBackend
from unistore.cdn import BunnyURLs, CloudFrontURLs
from unistore.layers import CDN

DOMAIN = "https://d111111abcdef8.cloudfront.net"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().replace("+", "-").replace("=", "_").replace("/", "~")


def recipe(url: str, key_pair_id: str, key: Any, expires_at: datetime) -> str:
    """The usual hand-written signer: a custom-policy JSON signed RSA-SHA1."""
    statement = {"Resource": url, "Condition": {"DateLessThan": {"AWS:EpochTime": int(expires_at.timestamp())}}}
    policy = json.dumps({"Statement": [statement]}, separators=(",", ":")).encode()
    signature = key.sign(policy, padding.PKCS1v15(), hashes.SHA1())
    return f"{url}?Policy={_b64(policy)}&Signature={_b64(signature)}&Key-Pair-Id={key_pair_id}"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--urls", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="20 URLs, one repetition")
    args = parser.parse_args()
    if args.quick:
        args.urls, args.reps = 20, 1

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    pem_file = Path(tempfile.mkdtemp()) / "cloudfront.pem"
    pem_file.write_bytes(pem)
    memory = MemoryBackend(base_url="http://127.0.0.1/files", url_secret="s" * 32)
    cloudfront = CDN(memory, urls=CloudFrontURLs(DOMAIN, "K2JCJMDEHXQW5F", pem), private=True, metrics=False)
    bunny = CDN(memory, urls=BunnyURLs("https://myzone.b-cdn.net", "zone-key"), private=True, metrics=False)
    later = datetime.now(UTC) + timedelta(hours=1)

    async def recipe_pem_per_url(i: int) -> None:
        loaded = serialization.load_pem_private_key(pem_file.read_bytes(), password=None)
        recipe(f"{DOMAIN}/k{i}", "K2JCJMDEHXQW5F", loaded, later)

    async def recipe_key_once(i: int) -> None:
        recipe(f"{DOMAIN}/k{i}", "K2JCJMDEHXQW5F", key, later)

    async def layer_cloudfront(i: int) -> None:
        await cloudfront.sign_url(f"k{i}")

    async def layer_bunny(i: int) -> None:
        await bunny.sign_url(f"k{i}")

    async def memory_hmac(i: int) -> None:
        await memory.sign_url(f"k{i}")

    clients: dict[str, Callable[[int], Awaitable[None]]] = {
        "recipe, PEM read per URL": recipe_pem_per_url,
        "recipe, key loaded once": recipe_key_once,
        "CDN layer, CloudFront (botocore signer)": layer_cloudfront,
        "CDN layer, BunnyCDN HS256": layer_bunny,
        "MemoryBackend.sign_url (HMAC)": memory_hmac,
    }
    runs: dict[str, list[float]] = {name: [] for name in clients}
    for _ in range(args.reps):
        for name, one in clients.items():
            start = time.perf_counter()
            for i in range(args.urls):
                await one(i)
            runs[name].append((time.perf_counter() - start) / args.urls * 1e6)
    base = statistics.median(runs["CDN layer, CloudFront (botocore signer)"])
    print(f"{args.urls} URLs x {args.reps} repetitions, interleaved\n")
    print("| client | µs per URL (median) | ratio to the layer's CloudFront URL |")
    print("|---|---|---|")
    for name, values in runs.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    asyncio.run(main())
