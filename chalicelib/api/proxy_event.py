"""The API function's event, checked before Chalice reads it.

API Gateway's REST proxy integration always sends every key of the event (``null`` when empty)
with values of the right types. A direct invoke (the Lambda console's test, a script, a
``lambda:InvokeFunction`` grant in the wrong hands) may send anything: Chalice then raises out
of the function (``KeyError: 'pathParameters'``) or answers its own 500 or 405 body. Here the
event is checked and completed once, at the entry point, so everything after it (Chalice's
routing, ``routes.request_from_chalice``) reads the shape API Gateway sends:

- keys API Gateway always sends are filled in when missing (``null``, ``False`` for
  ``isBase64Encoded``); ``headers`` and ``queryStringParameters`` are derived from their
  multi-value forms (and back) when only one is given;
- a value of the wrong type is a 400 naming the key;
- headers, query parameters and path parameters larger than any API Gateway sends are refused
  before they are read (431 for headers, 414 for the rest), as the local front refuses them;
- a resource the API does not have is a 404 ``{"ok": false}`` (API Gateway's answer), a method
  the resource does not have a 405 naming the allowed ones (the local front's answer), a route
  whose path parameters are not all in the event a 400 naming the missing one.
"""

from __future__ import annotations

from typing import Any, Mapping

from chalicelib.api.http import ApiError, bad_request, shown

OPTIONAL_KEYS = ("headers", "multiValueHeaders", "queryStringParameters", "multiValueQueryStringParameters",
                 "pathParameters", "stageVariables", "body")
"""Keys API Gateway always sends, ``null`` when the request has none."""


CONTEXT_TEXT = ("requestId", "path")
"""Request context values the API reads as text (``identity.sourceIp`` too)."""

MAX_EVENT_FIELDS = 10_240
"""Most entries (names, or values of the multi-value forms) one of the event's headers, query or
path parameters may hold. API Gateway passes at most 10,240 bytes of request line and header
values, so never more entries than that; only a direct invoke sends more: 500,000 headers took
the API function 7 s and 87 MB to answer, 500,000 query parameters 3 s."""
MAX_EVENT_CHARS = 1024 * 1024
"""Most characters (names and values) one of those may hold: a hundred times what API Gateway
passes; the handlers bound what they read of each value themselves."""
OVERSIZE_STATUS = {"headers": 431, "multiValueHeaders": 431, "queryStringParameters": 414,
                   "multiValueQueryStringParameters": 414, "pathParameters": 414}
"""Headers too large are HTTP's 431; query and path parameters make the request target too long
(414); anything else (stage variables) is a 400."""


def oversized(key: str) -> ApiError:
    """The answer to an event whose ``key`` holds more than MAX_EVENT_FIELDS entries or
    MAX_EVENT_CHARS characters (the local gateway's too, for a query string that would)."""
    return ApiError(OVERSIZE_STATUS.get(key, 400), {
        "error": f"The event's {key} hold more than any API Gateway request "
                 f"(at most {MAX_EVENT_FIELDS} entries and {MAX_EVENT_CHARS} characters)"})


def _text_mapping(event: Mapping[str, Any], key: str) -> dict[str, str] | None:
    value = event.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(f"The event's {key} must be null or an object of strings")
    if len(value) > MAX_EVENT_FIELDS:  # before anything is walked: its size alone
        raise oversized(key)
    # One loop, not generators, and the bounds compared here, not in a function of their own:
    # this runs four times a request (docs/performance.md, "Checkout CPU per cycle").
    chars = 0
    for name, text in value.items():
        if not isinstance(name, str) or not isinstance(text, str):
            raise bad_request(f"The event's {key} must be null or an object of strings")
        chars += len(name) + len(text)
    if chars > MAX_EVENT_CHARS:
        raise oversized(key)
    return value


def _list_mapping(event: Mapping[str, Any], key: str) -> dict[str, list[str]] | None:
    value = event.get(key)
    refusal = f"The event's {key} must be null or an object of lists of strings"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request(refusal)
    if len(value) > MAX_EVENT_FIELDS:
        raise oversized(key)
    entries = 0
    for name, values in value.items():
        if not isinstance(name, str) or not isinstance(values, list):
            raise bad_request(refusal)
        entries += len(values)
    if entries > MAX_EVENT_FIELDS:  # before the values are walked: their count alone
        raise oversized(key)
    chars = 0
    for name, values in value.items():
        chars += len(name)
        for item in values:
            if not isinstance(item, str):
                raise bad_request(refusal)
            chars += len(item)
    if chars > MAX_EVENT_CHARS:
        raise oversized(key)
    return value


def _single_and_multi(event: Mapping[str, Any], single_key: str,
                      multi_key: str) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    """Both forms of headers or query parameters, each derived from the other when missing
    (the single form holds the last value, as API Gateway's does)."""
    # A form the event does not hold is not looked at by a call (a request without a query:
    # docs/performance.md, "Checkout CPU per cycle").
    single = None if event.get(single_key) is None else _text_mapping(event, single_key)
    multi = None if event.get(multi_key) is None else _list_mapping(event, multi_key)
    if multi is None and single is not None:
        multi = {name: [value] for name, value in single.items()}
    if single is None and multi is not None:
        single = {name: values[-1] for name, values in multi.items() if values}
    return single, multi


def checked_event(event: Any, routes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The event with every key API Gateway sends, of the types it sends; ApiError (400, 404 or
    405, JSON) when it cannot be one. ``routes`` is Chalice's route table (resource path ->
    method -> route entry, whose ``view_args`` name the path parameters its view takes)."""
    if not isinstance(event, dict):
        raise bad_request("The event is not an API Gateway proxy request")
    context = event.get("requestContext")
    if context is not None and not isinstance(context, dict):
        raise bad_request("The event's requestContext must be an object")
    context = dict(context or {})
    identity = context.get("identity")
    if identity is not None and not isinstance(identity, dict):
        raise bad_request("The event's requestContext.identity must be an object")
    # The request context's values the API reads as text.
    texts = (("requestId", context.get("requestId")), ("path", context.get("path")),
             ("identity.sourceIp", (identity or {}).get("sourceIp")))
    for key, value in texts:
        if value is not None and not isinstance(value, str):
            raise bad_request(f"The event's requestContext.{key} must be text")
    resource = context.get("resourcePath") or event.get("resource")
    method = context.get("httpMethod") or event.get("httpMethod")
    if not isinstance(resource, str) or not isinstance(method, str):
        raise bad_request("The event is not an API Gateway proxy request: it names no resource and method")
    methods = routes.get(resource) or {}
    if not methods:
        raise ApiError(404)
    if method not in methods:
        allowed = ", ".join(sorted(methods))
        raise ApiError(405, {"error": f"method {shown(method, 20)} not allowed; use {allowed}"}, {"Allow": allowed})
    headers, multi_headers = _single_and_multi(event, "headers", "multiValueHeaders")
    query, multi_query = _single_and_multi(event, "queryStringParameters", "multiValueQueryStringParameters")
    params = _text_mapping(event, "pathParameters")
    for name in methods[method].view_args:
        if name not in (params or {}):
            raise bad_request(f"The event has no path parameter {name!r} for {shown(resource, 100)}")
    base64_body = event.get("isBase64Encoded", False)
    if not isinstance(base64_body, bool):
        raise bad_request("The event's isBase64Encoded must be true or false")
    context.update(resourcePath=resource, httpMethod=method)
    return {**dict.fromkeys(OPTIONAL_KEYS), **event, "resource": resource, "httpMethod": method,
            "requestContext": context, "headers": headers, "multiValueHeaders": multi_headers,
            "queryStringParameters": query, "multiValueQueryStringParameters": multi_query,
            "pathParameters": params,
            "stageVariables": None if event.get("stageVariables") is None else _text_mapping(event, "stageVariables"),
            "isBase64Encoded": base64_body}
