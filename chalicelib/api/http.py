"""The HTTP vocabulary the handlers speak, independent of Chalice: requests, responses, errors.

Handlers are plain functions ``(services, request) -> ApiResponse`` so they can be tested without
a framework; ``routes.dispatch`` adapts them to Chalice and turns every failure into JSON.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

MAX_BODY_BYTES = 64 * 1024

HOSTNAME_PATTERN = re.compile(
    r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.IGNORECASE
)


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

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class ApiResponse:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)


class ApiError(Exception):
    """An answer other than success: rendered as JSON with ``ok: false``."""

    def __init__(
        self, status: int, body: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = {"ok": False, **(body or {})}
        self.headers = dict(headers or {})


def ok(status: int = 200, **fields: Any) -> ApiResponse:
    return ApiResponse(status, {"ok": True, **fields})


def not_found(**fields: Any) -> ApiError:
    return ApiError(404, fields)


def bad_request(message: str) -> ApiError:
    return ApiError(400, {"error": message})


def json_body(request: ApiRequest, empty: Any = None) -> Any:
    """The request body as JSON; ``empty`` when there is none. Bad JSON is a 400."""
    if len(request.body) > MAX_BODY_BYTES:
        raise bad_request("Request body too large")
    text = request.body.strip()
    if not text:
        return empty
    try:
        return json.loads(text)
    except (ValueError, UnicodeDecodeError) as error:
        raise bad_request(f"Invalid JSON: {error}") from None
    except RecursionError:
        # Deeply nested arrays/objects exhaust the decoder's stack: bad input, not a server error.
        raise bad_request("Request body too complex") from None


def json_object(request: ApiRequest, empty: Any = None) -> Any:
    """The body as a JSON object (``empty`` when there is none)."""
    body = json_body(request, empty)
    if body is not empty and not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    return body


def short_hostname(raw: str) -> str:
    """A hostname from a path, short or fully qualified, cut to its first label. Anything that
    is not a hostname (slashes, ``..``, spaces) is a 400 before any lookup."""
    if not raw:
        raise bad_request("Hostname is required")
    if len(raw) > 253:
        raise bad_request("Hostname too long")
    if not HOSTNAME_PATTERN.match(raw):
        raise bad_request("Invalid hostname format")
    return raw.split(".", 1)[0].lower()
