"""The Chalice app class the service runs: Chalice with its per-request state kept per thread,
answering in JSON an event that is not an API Gateway request.

Chalice stores the request it is serving on the app object (``current_request``,
``lambda_context``), so two threads calling one app would read each other's request. In Lambda
one invocation runs at a time and nothing changes; the local HTTP front serves several requests
of one process on threads (their Redis waits overlap), and each thread sees only its own.

The API function's event is checked before Chalice reads it (``proxy_event.checked_event``): a
direct invoke missing a key or holding a value of the wrong type gets a JSON 400 (404, 405)
instead of an exception out of the function or Chalice's own 500. A scheduled function runs
whatever its event holds (``ScheduledEvent``).
"""

from __future__ import annotations

import contextvars
import functools
import threading
from typing import Any, Sequence

from chalice import Chalice, Response
from chalice.app import (
    CaseInsensitiveMapping,
    CloudWatchEvent,
    EventSourceHandler,
    Request,
    RestAPIEventHandler,
    error_response,
)
from chalice.app import _matches_content_type as chalice_matches_content_type

from chalicelib.api.http import JSON_HEADERS, ApiError
from chalicelib.api.proxy_event import checked_event


class ScheduledEvent(CloudWatchEvent):
    """EventBridge's scheduled event as Chalice hands it to a ``@schedule`` function, read from
    whatever the function is invoked with. The tick reads nothing from its event; Chalice's own
    class raised KeyError for an event missing any of EventBridge's keys (a direct invoke with
    ``{}``), before the function ran."""

    def _extract_attributes(self, event_dict: Any) -> None:
        fields = event_dict if isinstance(event_dict, dict) else {}
        self.version = fields.get("version", "")
        self.account = fields.get("account", "")
        self.region = fields.get("region", "")
        self.detail = fields.get("detail") or {}
        self.detail_type = fields.get("detail-type", "")
        self.source = fields.get("source", "")
        self.time = fields.get("time", "")
        self.event_id = fields.get("id", "")
        self.resources = fields.get("resources") or []


MATCHES_KEPT = 256
"""Content types and Accept headers whose match against the binary types is kept: a bound, as
callers choose their Accept headers."""


@functools.lru_cache(maxsize=MATCHES_KEPT)
def _is_binary(binary_types: tuple[str, ...], content_type: str) -> bool:
    """Chalice's own match of ``content_type`` against ``binary_types``, kept: Chalice lowered
    its 16 binary types three times a request to find a JSON answer is not binary (about a
    tenth of the app's CPU per request, docs/performance.md "Checkout CPU per cycle")."""
    return chalice_matches_content_type(content_type, list(binary_types))


class _RestHandler(RestAPIEventHandler):
    """Chalice's REST handler, its binary-type checks answered from ``_is_binary``: the same
    answers (``tests/api/test_chalice_app.py`` compares them with Chalice's own)."""

    def _binary(self, content_type: str) -> bool:
        return _is_binary(tuple(self.api.binary_types), content_type)

    def _validate_binary_response(self, request_headers: CaseInsensitiveMapping,
                                  response_headers: CaseInsensitiveMapping) -> bool:
        # As Chalice's: a binary answer needs an Accept header naming a binary type.
        if not self._binary(response_headers.get("content-type", "application/json")):
            return True
        accept = request_headers.get("accept")
        return accept is not None and self._binary(accept)

    def _main_rest_api_handler(self, event: Any, context: Any) -> Response:
        """Chalice's handling of a route, for the event ``checked_event`` passed (its resource
        and method a route of the table, the view's path parameters in it), without what cannot
        change its answer when the route has no CORS and takes any content type (``*/*``: every
        route of the service): Chalice looked the route up twice, matched the request's
        Content-Type against ``*/*`` (lowering both), and copied the answer's headers into a
        case-insensitive mapping to find its Content-Type. Any other route takes Chalice's way."""
        request_context = event["requestContext"]
        route_entry = self.routes[request_context["resourcePath"]][request_context["httpMethod"]]
        if route_entry.cors is not None or "*/*" not in route_entry.content_types:
            return super()._main_rest_api_handler(event, context)
        params = event["pathParameters"]
        function_args = {name: params[name] for name in route_entry.view_args}
        self.lambda_context = context
        response = self._get_view_function_response(route_entry.view_function, function_args)
        content_type = "application/json"  # the answer's, its header named in any case (the last)
        for name, value in response.headers.items():
            if name.lower() == "content-type":
                content_type = value
        request = self.current_request
        if request is not None and self._binary(content_type):
            # As _validate_binary_response: a binary answer needs an Accept naming a binary type.
            accept = request.headers.get("accept")
            if accept is None or not self._binary(accept):
                return error_response(
                    error_code="BadRequest", http_status_code=400,
                    message=f"Request did not specify an Accept header with {content_type}, The response has a "
                            f"Content-Type of {content_type}. If a response has a binary Content-Type then the "
                            "request must specify an Accept header that matches.")
        return response

    def __call__(self, event: Any, context: Any) -> Any:
        middleware = list(self._middleware_handlers)
        if not middleware:
            # Chalice's chain when no middleware is registered for HTTP (tracing off): its
            # global error handler around the route's handling, called without building the
            # chain's wrappers per request (five calls of Python).
            try:
                response = self._main_rest_api_handler(event, context)
            except Exception:  # noqa: BLE001 - as Chalice's _global_error_handler
                response = self._unhandled_exception_to_response()
            return answer_dict(response, self.api.binary_types)

        def wrapped_event(request: Request) -> Response:
            return self._main_rest_api_handler(event, context)

        final_handler = self._build_middleware_handlers(
            [self._global_error_handler] + middleware, original_handler=wrapped_event)
        response = final_handler(self.current_request)
        return answer_dict(response, self.api.binary_types)


def answer_dict(response: Response, binary_types: Sequence[str]) -> dict[str, Any]:
    """``response.to_dict(binary_types)``: the body base64-encoded only for a binary Content-Type
    (which Chalice looks up without regard to the header name's case, "" when there is none)."""
    content_type = ""
    for name, value in response.headers.items():  # the last single value, as Chalice's mapping keeps
        if not isinstance(value, list) and name.lower() == "content-type":
            content_type = value
    binary = isinstance(content_type, str) and _is_binary(tuple(binary_types), content_type)
    return response.to_dict(list(binary_types) if binary else None)


class RequestLocalChalice(Chalice):
    """Chalice whose ``current_request`` and ``lambda_context`` belong to the calling thread."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._request_state = threading.local()
        super().__init__(*args, **kwargs)

    @property
    def current_request(self) -> Request | None:
        return getattr(self._request_state, "request", None)

    @current_request.setter
    def current_request(self, request: Request | None) -> None:
        self._request_state.request = request

    @property
    def lambda_context(self) -> Any:
        return getattr(self._request_state, "context", None)

    @lambda_context.setter
    def lambda_context(self, context: Any) -> None:
        self._request_state.context = context

    def __call__(self, event: Any, context: Any) -> dict[str, Any]:
        """The API function: Chalice's routing of the event once it is checked, in a context of
        its own (``contextvars``): each request starts with none of another's keys (its log lines'
        ``correlation_id``), and what it sets ends with it. A Lambda serves its invocations in one
        context, and the local front starts a pipelined request's task inside the previous
        request's answer (uvicorn), so the request before's id was on every line logged before
        the view set its own, and on the front's lines about what the connection sent next."""
        return contextvars.Context().run(self._serve, event, context)

    def _serve(self, event: Any, context: Any) -> dict[str, Any]:
        try:
            event = checked_event(event, self.routes)
        except ApiError as refused:
            headers: dict[str, str | list[str]] = {**JSON_HEADERS, **refused.headers}
            answer = Response(body=refused.body, status_code=refused.status, headers=headers)
            return answer_dict(answer, self.api.binary_types)
        # Chalice.__call__, with its handler's binary-type checks kept (``_RestHandler``).
        self.lambda_context = context
        handler = _RestHandler(self.routes, self.api, self.log, self.debug,
                               middleware_handlers=self._get_middleware_handlers("http"))
        self.current_request = handler.create_request_object(event, context)
        return handler(event, context)

    def _wrap_handler(self, handler_type: str, handler_name: str, user_handler: Any) -> Any:
        wrapped = super()._wrap_handler(handler_type, handler_name, user_handler)
        if handler_type == "schedule" and isinstance(wrapped, EventSourceHandler):
            wrapped.event_class = ScheduledEvent
        return wrapped
