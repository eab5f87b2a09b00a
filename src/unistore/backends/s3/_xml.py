"""S3's XML answers: parsing (a malformed body becomes a :class:`StorageError` here) and
URL-encoded listings.

Listings are requested with ``encoding-type=url``: XML 1.0 cannot carry most control
characters, so a key such as ``a\\x01b`` (which other clients can write) would otherwise make
the whole answer unparsable (moto) or come back altered (SeaweedFS writes U+FFFD). The
answer's ``EncodingType`` says whether the names in it are encoded; they are decoded with
``unquote_plus``, as botocore does (AWS writes a space as ``+``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from urllib.parse import unquote_plus
from xml.etree import ElementTree

from ..._errors import InvalidKeyError, UnavailableError
from ..._keys import validate_key
from ._wire import error_from_response, xml_find

__all__ = ["ENCODED", "ListPage", "name_decoder", "parse_xml", "usable_key", "xml_result"]

ENCODED = "url"
"""The ``encoding-type`` every listing asks for."""

# What a URL encoder writes: printable ASCII without a space, ``%`` only as an escape. A name
# outside this form in an answer that claims ``EncodingType=url`` was not encoded after all
# (SeaweedFS's ListMultipartUploads echoes the parameter without encoding) and is taken as is.
_ENCODED_FORM = re.compile(r"(?:[!-$&-~]|%[0-9A-Fa-f]{2})*")
# A listed name with one of these may not be a valid key: checked in full.
_SUSPECT = re.compile(r"[\\%:\x00-\x1f\x7f-\x9f\ud800-\udfff]|//|/\.|^[/.]|/$")


def parse_xml(body: bytes, *, operation: str, backend: str, key: str | None = None) -> ElementTree.Element:
    """Parse an S3 XML answer; a body that is not XML is an :class:`UnavailableError` (a bad
    gateway's page, a truncated answer)."""
    try:
        return ElementTree.fromstring(body)
    except ElementTree.ParseError as exc:
        raise UnavailableError(
            f"the server's answer is not valid XML ({exc})", key=key, operation=operation, backend=backend
        ) from exc


class ListPage:
    """One ListObjectsV2 answer, read in one pass over its top-level elements (in any or no
    namespace): its ``Contents`` and ``CommonPrefixes`` elements, the text of the others
    (``fields``: ``IsTruncated``, ``NextContinuationToken``...) and its name decoder."""

    __slots__ = ("contents", "fields", "name", "prefixes")

    def __init__(self, root: ElementTree.Element) -> None:
        self.contents: list[ElementTree.Element] = []
        self.prefixes: list[ElementTree.Element] = []
        self.fields: dict[str, str] = {}
        contents, prefixes, fields = self.contents, self.prefixes, self.fields
        for child in root:
            tag = child.tag
            tag = tag[tag.rfind("}") + 1 :]
            if tag == "Contents":
                contents.append(child)
            elif tag == "CommonPrefixes":
                prefixes.append(child)
            elif tag not in fields:
                fields[tag] = child.text or ""
        self.name: Callable[[str], str] = _decode if fields.get("EncodingType") == ENCODED else _raw


def name_decoder(root: ElementTree.Element) -> Callable[[str], str]:
    """How to read key names (``Key``, ``Prefix``, ``NextKeyMarker``...) of the answer ``root``."""
    if xml_find(root, "EncodingType") != ENCODED:
        return _raw
    return _decode


def _raw(value: str) -> str:
    return value


def _decode(value: str) -> str:
    if "%" not in value and "+" not in value:
        return value  # nothing to decode (most names)
    if not _ENCODED_FORM.fullmatch(value):
        return value
    return unquote_plus(value, errors="surrogateescape")


def usable_key(key: str) -> bool:
    """Whether a listed name is a key unistore can address (other clients can write names no
    key can have, e.g. with control characters or ``//``: those are not listed, as local's
    files placed by hand are not)."""
    if len(key) <= 250 and _SUSPECT.search(key) is None:
        return True
    try:
        validate_key(key)
    except InvalidKeyError:
        return False
    return True


def xml_result(
    body: bytes,
    headers: Mapping[str, str],
    *,
    key: str,
    operation: str,
    backend: str,
    bucket: str,
    create: bool = False,
) -> ElementTree.Element:
    """The XML of a 200 answer to CopyObject or CompleteMultipartUpload, which S3 may use for an error."""
    root = parse_xml(body, operation=operation, backend=backend, key=key)
    if root.tag.rpartition("}")[2] == "Error":
        raise error_from_response(
            500, headers, body, key=key, operation=operation, backend=backend, bucket=bucket, create=create
        )
    return root
