"""Signed parameters and URLs of one Cloudinary product environment (for :mod:`unistore.backends.cloudinary`).

Delivery URLs (``/{type}/{delivery}/s--SIG--/{transformation}/v{version}/{public id}``)
are signed as the SDKs sign them; Download API URLs (``private_download_url``)
are signed API calls that expire. Both are built locally, without a request.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode

from ._api import Transform, api_signature, smart_escape, url_signature

__all__ = ["Urls"]


@dataclass(frozen=True, slots=True)
class Urls:
    """Signing and URL building. ``api`` is ``{upload_prefix}/v1_1/{cloud}``, ``delivery`` is
    ``{scheme}://{host}/{cloud}``; ``res`` arguments are Admin/Upload API asset resources."""

    api: str
    delivery: str
    api_key: str
    api_secret: str = field(repr=False)
    algorithm: str
    delivery_type: str

    def signed(self, params: dict[str, str]) -> dict[str, str]:
        """``params`` without empty values, plus ``signature`` and ``api_key``."""
        params = {k: v for k, v in params.items() if v != ""}
        params["signature"] = api_signature(params, self.api_secret, self.algorithm)
        params["api_key"] = self.api_key
        if self.algorithm != "sha1":
            params["signature_algorithm"] = self.algorithm
        return params

    def delivery_url(self, res: Mapping[str, Any], transform: Transform | None, download: bool) -> str:
        """A delivery URL, signed unless the asset is public and untransformed."""
        rtype, pid = str(res["resource_type"]), str(res["public_id"])
        source = smart_escape(pid)
        if rtype != "raw" and res.get("format"):
            source += f".{res['format']}"
        parts = [str(transform)] if transform is not None else []
        if download:
            parts.append("fl_attachment")
        transformation = "/".join(parts)
        signature = ""
        if self.delivery_type != "upload" or transformation:
            to_sign = "/".join(p for p in (transformation, source) if p)
            signature = url_signature(to_sign, self.api_secret, self.algorithm) + "/"
        trail = f"{transformation}/" if transformation else ""
        dtype = res.get("type", self.delivery_type)
        return f"{self.delivery}/{rtype}/{dtype}/{signature}{trail}v{res['version']}/{source}"

    def download_url(self, res: Mapping[str, Any], expires_in: int, download: bool) -> str:
        """A Download API URL (``private_download_url``): signed, expiring, for any delivery type."""
        now = int(time.time())
        params = {
            "public_id": str(res["public_id"]),
            "format": str(res.get("format") or "") if res["resource_type"] != "raw" else "",
            "type": str(res.get("type", self.delivery_type)),
            "attachment": "1" if download else "",  # as the SDK sends (and signs) it
            "expires_at": str(now + expires_in),
            "timestamp": str(now),
        }
        query = urlencode(self.signed(params), quote_via=quote)
        return f"{self.api}/{res['resource_type']}/download?{query}"

    def media_url(self, res: Mapping[str, Any]) -> str:
        """Where the asset's bytes are served: the Download API for private assets, else delivery."""
        if self.delivery_type == "private":
            return self.download_url(res, 300, False)
        return self.delivery_url(res, None, False)

    def url_for(self, res: Mapping[str, Any], expires_in: int, download: bool, transform: Transform | None) -> str:
        """``get_url``'s answer: transformed or public → delivery URL; else an expiring Download API URL."""
        if transform is not None or (self.delivery_type == "upload" and not download):
            return self.delivery_url(res, transform, download)
        return self.download_url(res, expires_in, download)
