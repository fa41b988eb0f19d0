"""Conditional answers for the dashboard's page and the feeds it polls: an ``ETag`` on each 200,
``304 Not Modified`` without a body to a caller whose ``If-None-Match`` names it, and
``Vary: Accept-Encoding`` on every answer the front may compress.

An open dashboard polls the feeds of every pool (at 1,000 pools the hour's history is 1.25 MB):
when an answer did not change since the page's last poll, the page gets 304 and keeps what it
has. The tag is the SHA-256 of the answer's bytes (the first 128 bits, strong: the same bytes,
whichever Lambda or worker computed them, or a shared answer kept in Redis, get the same tag;
~2.5 ms per MB). The answer is computed either way: what is saved is the wire, API Gateway's
bytes out and the browser's parse and redraw.

Compression is the front's (API Gateway's ``minimumCompressionSize``, the local gateway's
``local.gateway.compressed``: answers of ``COMPRESS_FROM_BYTES`` or more, to callers whose
preferred coding is gzip or deflate); the app says here which answers may differ by
``Accept-Encoding`` (``Vary``), so no cache between the caller and the API serves a compressed
answer to a caller that did not ask for one.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Callable

from chalicelib.api.http import ApiRequest

COMPRESS_FROM_BYTES = 1024
"""The smallest answer the front compresses (API Gateway's ``minimumCompressionSize``,
infra/sync_config.py; the local gateway's too). Smaller ones fit a packet or two either way, and
are what vmpooler's clients mostly get (a checkout, a VM's record, ``{"ok": true}``): they stay
as they were, byte for byte."""

MAX_TAGS = 64
"""The most entity tags of an ``If-None-Match`` compared; more never match (a browser sends one)."""


def entity_tag(body: bytes) -> str:
    """The strong ETag of an answer's bytes."""
    digest = hashlib.sha256(body).digest()[:16]
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'


def _opaque(tag: str) -> str:
    """A tag without its weakness mark: If-None-Match compares weakly (RFC 9110, 13.1.2), so
    ``W/"x"`` (what a front that compresses may turn ``"x"`` into) names the same answer."""
    tag = tag.strip()
    return tag[2:] if tag[:2] in ("W/", "w/") else tag


def not_modified(if_none_match: str | None, tag: str) -> bool:
    """Whether ``If-None-Match`` names ``tag`` (or is ``*``)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    wanted = _opaque(tag)
    return any(_opaque(sent) == wanted for sent in if_none_match.split(",", MAX_TAGS)[:MAX_TAGS])


def conditional(request: ApiRequest, status: int, body: str, headers: dict[str, str],
                basis: Callable[[str], str] | None = None) -> tuple[int, str, dict[str, str]]:
    """A rendered 200 with its ETag (and ``Vary`` when it may be compressed), or the 304 that
    replaces it: the same headers, no body. Any other answer as it is. ``basis``: the part of
    the body that matters (``Route.tag_basis``: /status without its uptime); the tag is then a
    weak one over it when it leaves something out."""
    if status != 200:
        return status, body, headers
    data = body.encode("utf-8", "surrogatepass")
    shown = basis(body) if basis is not None else body
    tag = entity_tag(data) if shown == body else "W/" + entity_tag(shown.encode("utf-8", "surrogatepass"))
    tagged = {**headers, "ETag": tag}
    if len(data) >= COMPRESS_FROM_BYTES:
        tagged["Vary"] = "Accept-Encoding"
    if not_modified(request.header("if-none-match"), tagged["ETag"]):
        return 304, "", tagged
    return 200, body, tagged
