"""The HTTP vocabulary the handlers speak, independent of Chalice: requests, responses, errors.

Handlers are plain functions ``(services, request) -> ApiResponse`` so they can be tested without
a framework; ``routes.dispatch`` adapts them to Chalice and turns every failure into JSON.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii as _encode_text
from typing import Any, Mapping, Sequence

MAX_BODY_BYTES = 64 * 1024
MAX_BASE64_BODY_CHARS = 4 * math.ceil(MAX_BODY_BYTES / 3)
"""The longest base64 text of a body within MAX_BODY_BYTES (an event's body when
``isBase64Encoded``): a longer one is refused before it is decoded."""
ANSWER_BUDGET_BYTES = 4 * 1024 * 1024
"""What an answer that grows with the pools may take: Lambda returns at most 6 MB (API Gateway
answers 502 beyond), and the JSON of the body is escaped once more inside Lambda's answer."""

MAX_NUMBER_DIGITS = 18
"""The longest whole number any input may spell out. Longer ones are refused before they are
converted: Python's int() fails past 4,300 digits (a 500) and is slow well before that."""
TOO_LARGE = 10**MAX_NUMBER_DIGITS
"""What ``whole_number`` answers for a number with more digits: larger than any maximum, so the
caller's own range check refuses it with its own message."""

JSON_POLICY = "default-src 'none'; frame-ancestors 'none'"
"""The Content-Security-Policy of a JSON answer: a browser that opens one loads nothing for it and
lets no page frame it (the dashboard's page has a policy of its own)."""
JSON_HEADERS = {"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                "X-Frame-Options": "DENY", "Content-Security-Policy": JSON_POLICY}
"""Every JSON answer: it carries tokens, owners and live pool state, none of which a browser or a
proxy between the caller and API Gateway may keep (``no-store``), read as anything but JSON
(``nosniff``), or show inside another site's page (``frame-ancestors``, and ``X-Frame-Options``
for browsers without CSP): the dashboard's page had these, the JSON answers only the first two."""


def json_text(body: Any, pretty: bool = False) -> str:
    """A JSON answer's body as every answer has it: compact, as Chalice renders a route's body
    (the local front's own refusals, rendered with ``json.dumps``'s spaces, differed). ``pretty``:
    laid out as vmpooler's ``JSON.pretty_generate`` lays out every answer (two-space indent, one
    key per line, ``"key": value``), for the answers scripts read line by line."""
    if pretty:
        try:
            return _pretty(body, "\n")
        except _NotPlain:
            return json.dumps(body, indent=2)
    return _COMPACT.encode(body)


_COMPACT = json.JSONEncoder(separators=(",", ":"))
"""``json.dumps(body, separators=(",", ":"))``'s encoder, built once: ``dumps`` builds one per
call when given separators (its ``__init__`` was a fifth of rendering a short answer)."""


class _NotPlain(Exception):
    """A value ``_pretty`` leaves to ``json.dumps``."""


_PRETTY_DEPTH = 32
"""Deeper than any answer nests: left to ``json.dumps`` (which reports a cycle)."""


def _pretty(value: Any, newline: str) -> str:
    """``json.dumps(value, indent=2)`` for objects with text keys, lists, text, whole numbers,
    booleans and null, character for character: its encoder is pure Python when it indents
    (about 45 calls for a checkout's answer, a tenth of the request's Python); here each
    container is one call and each string C's own escaping. ``newline``: a line break and the
    current indent. Anything else raises ``_NotPlain``."""
    if isinstance(value, str):
        return _encode_text(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if len(newline) > 2 * _PRETTY_DEPTH:
        raise _NotPlain()
    inner = newline + "  "
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = []
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotPlain()
            items.append(f"{_encode_text(key)}: {_pretty(item, inner)}")
        return "{" + inner + ("," + inner).join(items) + newline + "}"
    if isinstance(value, (list, tuple)):
        if not value:
            return "[]"
        return "[" + inner + ("," + inner).join([_pretty(item, inner) for item in value]) + newline + "]"
    raise _NotPlain()

HOSTNAME_PATTERN = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\Z", re.IGNORECASE | re.ASCII
)
"""A DNS name in ASCII, in either case. ``re.ASCII``: with IGNORECASE alone, ``[a-z]`` also matches
the Kelvin sign, the long s and the dotless i, and ``str.lower`` makes the Kelvin sign a ``k``
(``/vm/\u212akvm`` found and returned the VM ``kkvm``)."""


@dataclass(frozen=True)
class ApiRequest:
    """One API call. ``version`` is 1, 2 or 3 (unversioned paths behave as v1)."""

    method: str
    version: int
    params: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    """Header names lower-cased."""
    body: bytes = b""
    source_ip: str = ""
    request_id: str = ""
    context_path: str = ""
    """The path as the client sent it, with API Gateway's stage (``/prod/...``) when it has one."""
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """What handling this request works out once and reads again (the check of its token, which
    the rate limit and the handler both need: api/identity.py). This request's alone."""

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    pretty: bool = False
    """Rendered as vmpooler renders it (``json_text``'s ``pretty``): a checkout's answer, which
    CI scripts match with a regular expression (``/"hostname": "(.*)"/``)."""


class ApiError(Exception):
    """An answer other than success: rendered as JSON with ``ok: false``."""

    def __init__(
        self, status: int, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = {"ok": False, **(body or {})}
        self.headers = dict(headers or {})

    def response(self) -> ApiResponse:
        """The answer this error is."""
        return ApiResponse(self.status, self.body, self.headers)


def ok(status: int = 200, **fields: Any) -> ApiResponse:
    return ApiResponse(status, {"ok": True, **fields})


def not_found(**fields: Any) -> ApiError:
    return ApiError(404, fields)


def bad_request(message: str) -> ApiError:
    return ApiError(400, {"error": message})


def too_large(message: str) -> ApiError:
    """413: the request is well formed but bigger than we accept (HTTP's Content Too Large)."""
    return ApiError(413, {"error": message})


def whole_number(value: Any) -> int | None:
    """A whole number >= 0 given as a JSON integer or a string of ASCII digits; None for anything
    else (signs, spaces, fractions, booleans). A number of more than MAX_NUMBER_DIGITS digits is
    TOO_LARGE, decided by its length alone."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < TOO_LARGE else (TOO_LARGE if value > 0 else None)
    if not isinstance(value, str) or not value or not value.isascii() or not value.isdigit():
        return None
    return int(value) if len(value) <= MAX_NUMBER_DIGITS else TOO_LARGE


CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f\u00ad\u061c\u180e\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff"
                                r"\ufff9-\ufffb\U000e0000-\U000e007f]")
"""Characters an error message shows as escapes: C0 and C1 controls, and the invisible ones that
change how a terminal lays out what follows them (bidirectional overrides and isolates, which
reorder the rest of the line, "Trojan Source"; zero-width characters; line and paragraph
separators; the tag characters, invisible letters)."""


def shown(value: Any, limit: int = 40) -> str:
    """A client's value for an error message, cut short: a message never echoes a megabyte. A
    value of a JSON body that is not a string is spelt as the client sent it (``true``, ``null``,
    ``["a"]``), not as Python prints it (``True``, ``None``, ``['a']``): vmfloaty prints the
    message to its user, who wrote JSON. Control characters are written as their escapes (``\n``,
    ``\x1b``): printed, a CR/LF sent in a value began a line the API seemed to have written, and
    an escape sequence ran in the terminal; so are the invisible characters that reorder or hide
    text (``\u202e``: the rest of the message, the API's words too, printed right to left)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    # Cut after whole escapes only (a cut inside one showed "\x1" for an ESC), and escaping no
    # more of the value than is shown.
    pieces: list[str] = []
    used = 0
    for character in text[:limit + 1]:
        piece = repr(character)[1:-1] if CONTROL_CHARACTERS.match(character) else character
        used += len(piece)
        if used > limit:
            return "".join(pieces) + "..."
        pieces.append(piece)
    return "".join(pieces)


MAX_FAILURES_LISTED = 20
"""The most messages a 400's ``failure`` list shows, or names an error's list of names; then how
many more there were."""
MAX_LISTED_NAME = 100
"""The characters of each name an error's list of names shows (a pool name has at most 100)."""


def _first_listed(items: Sequence[str]) -> tuple[list[str], int]:
    """The first MAX_FAILURES_LISTED of ``items``, and how many are left out."""
    return list(items[:MAX_FAILURES_LISTED]), max(len(items) - MAX_FAILURES_LISTED, 0)


def capped_failures(failures: Sequence[str]) -> list[str]:
    """``failures`` for a 400's ``failure`` list: the first MAX_FAILURES_LISTED, then "and K more
    problems." (a body of 6,000 unknown keys listed each: a 155 KB answer to a 60 KB request)."""
    listed, more = _first_listed(failures)
    return listed + [f"and {more} more problem{'s' if more > 1 else ''}."] if more else listed


def capped_names(key: str, names: Sequence[str]) -> dict[str, Any]:
    """An error's list of names under ``key`` (vmpooler's ``bad_templates``, ``not_configured``,
    ``bad_pools``): the first MAX_FAILURES_LISTED, each cut to MAX_LISTED_NAME characters, and
    when there were more, how many under ``<key>_not_listed``. The list holds names only, as
    clients read it (a body of 3,000 unknown pool names listed each: a 40 KB answer)."""
    listed, more = _first_listed(names)
    answer: dict[str, Any] = {key: [shown(name, MAX_LISTED_NAME) for name in listed]}
    if more:
        answer[f"{key}_not_listed"] = more
    return answer


def json_length(text: str) -> int:
    """The characters ``text`` takes in a JSON answer, its quotes left out: a line break, tab or
    form feed takes two (``\\n``), a vertical tab or another control character six
    (``\\u000b``), a quote or backslash two."""
    return len(json.dumps(text)) - 2


MAX_JSON_INTEGER_DIGITS = 100

UTF8_BOM = b"\xef\xbb\xbf"


def _json_integer(digits: str) -> int:
    """JSON's integer parser, bounded: a 5,000-digit integer is bad input, not a 500."""
    if len(digits.lstrip("-")) > MAX_JSON_INTEGER_DIGITS:
        raise ValueError(f"a number has more than {MAX_JSON_INTEGER_DIGITS} digits")
    return int(digits)


def _json_fraction(text: str) -> float:
    """JSON's parser of numbers with a fraction or exponent, finite only: Python reads ``1e309``
    as infinity, which no lifetime, size or tag may be."""
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"the number {shown(text)} is too large")
    return number


def _json_constant(name: str) -> Any:
    """``NaN``, ``Infinity`` and ``-Infinity``: Python's json reads them, JSON has no such values."""
    raise ValueError(f"{name} is not a JSON value")


def _json_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members; a name given twice is refused. Python keeps the last value, other
    parsers (a proxy, a WAF checking the body) the first: each would act on a different request."""
    members: dict[str, Any] = {}
    for name, value in pairs:
        if name in members:
            raise ValueError(f"the name {shown(name)!r} is given more than once in an object")
        members[name] = value
    return members


def unsupported_coding(request: ApiRequest) -> ApiError | None:
    """415 for a body sent with a content coding (``Content-Encoding: gzip``...): the API reads
    bodies as sent (``identity``), and a compressed one is not bad JSON but a coding it does not
    take (RFC 9110, 15.5.16: the answer names the codings it takes in ``Accept-Encoding``)."""
    codings = [coding.strip().lower() for coding in (request.header("Content-Encoding") or "").split(",")]
    refused = [coding for coding in codings if coding not in ("", "identity")]
    if not refused:
        return None
    return ApiError(415, {"error": f"Content-Encoding {shown(refused[0])} is not supported: "
                                   "send the body uncompressed"}, {"Accept-Encoding": "identity"})


def body_too_large() -> ApiError:
    """The 413 of a body over MAX_BODY_BYTES."""
    return too_large(f"Request body too large (at most {MAX_BODY_BYTES} bytes)")


REPLACEMENT_CHARACTER = "\ufffd"


def json_body(request: ApiRequest, empty: Any = None) -> Any:
    """The request body as JSON; ``empty`` when there is none. Bad JSON is a 400, a body over
    MAX_BODY_BYTES a 413 (before it is parsed), one sent with a content coding (gzip) a 415.
    JSON is read as RFC 8259 has it, not as Python's json module allows: UTF-8 only (a byte
    order mark is skipped), no NaN or Infinity, no number too large for a float, no name twice
    in one object."""
    if len(request.body) > MAX_BODY_BYTES:
        raise body_too_large()
    raw = request.body.removeprefix(UTF8_BOM).strip()
    if not raw:
        return empty
    coding_error = unsupported_coding(request)
    if coding_error is not None:
        raise coding_error
    try:
        # Decoded here: given bytes, json.loads also takes UTF-16 and UTF-32, which a proxy or a
        # WAF reading the body as UTF-8 sees as something else.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("Invalid JSON: the body is not UTF-8 text") from None
    if REPLACEMENT_CHARACTER in text:
        # What a body that is not UTF-8 becomes on its way through API Gateway (a text media
        # type: each bad byte U+FFFD), as the local front hands it over too: refused as such, not
        # read as a value (a Latin-1 clone target set a cluster named U+FFFD). A U+FFFD a client
        # means is sent as the JSON escape \ufffd, which is read.
        raise bad_request("Invalid JSON: the body is not UTF-8 text") from None
    try:
        body = json.loads(text, parse_int=_json_integer, parse_float=_json_fraction,
                          parse_constant=_json_constant, object_pairs_hook=_json_members)
        if not _is_unicode(body):
            raise ValueError("a string holds half of a UTF-16 surrogate pair (such as \\ud800)")
    except ValueError as error:
        raise bad_request(f"Invalid JSON: {error}") from None
    except RecursionError:
        # Deeply nested arrays/objects exhaust the decoder's stack: bad input, not a server error.
        raise bad_request("Request body too complex") from None
    return body


def _is_unicode(body: Any) -> bool:
    """Whether every string of a parsed body is Unicode text. JSON's ``\\ud800`` escape makes a
    lone surrogate, which no UTF-8 encoder (Redis's client's, a log's) accepts."""
    try:
        json.dumps(body, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


UNPARSABLE = {"message": "JSON payload could not be parsed"}
"""vmpooler's answer (400) to a body that is not JSON, on the routes its clients parse it from."""


def vmpooler_json_body(request: ApiRequest) -> Any:
    """``json_body`` with vmpooler's 400 (``UNPARSABLE``) for a body that cannot be parsed; a body
    over MAX_BODY_BYTES stays the 413 every route answers, refused before parsing, and one sent
    compressed the 415."""
    try:
        return json_body(request)
    except ApiError as error:
        if error.status in (413, 415):
            raise
        raise ApiError(400, UNPARSABLE) from None


def json_object(request: ApiRequest, empty: Any = None) -> Any:
    """The body as a JSON object (``empty`` when there is none)."""
    body = json_body(request, empty)
    if body is not empty and not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def short_hostnames(raw: str) -> tuple[str, ...]:
    """The VM names a hostname from a path (short or fully qualified) may mean: its first label
    as written, as vmpooler looks it up (a VM made by hand in a pool folder, or named under an
    upper-case prefix of old, has capitals of its own), then lower-cased, the names the service
    makes (DNS names ignore case: ``HOST1`` is ``host1``). One name when they are the same.
    An absolute name's one trailing dot (``host.example.com.``) is dropped, as DNS reads it.
    Anything that is not a hostname (slashes, ``..``, spaces) is a 400 before any lookup."""
    if not raw:
        raise bad_request("Hostname is required")
    name = raw[:-1] if raw.endswith(".") else raw
    if len(name) > 253:
        raise bad_request("Hostname too long")
    if not HOSTNAME_PATTERN.match(name):
        raise bad_request("Invalid hostname format")
    label = name.split(".", 1)[0]
    return tuple(dict.fromkeys((label, label.lower())))
