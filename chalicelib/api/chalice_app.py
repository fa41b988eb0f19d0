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

import threading
from typing import Any

from chalice import Chalice, Response
from chalice.app import CloudWatchEvent, EventSourceHandler, Request

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
        """The API function: Chalice's routing of the event once it is checked."""
        try:
            event = checked_event(event, self.routes)
        except ApiError as refused:
            headers: dict[str, str | list[str]] = {**JSON_HEADERS, **refused.headers}
            answer = Response(body=refused.body, status_code=refused.status, headers=headers)
            return answer.to_dict(self.api.binary_types)
        return super().__call__(event, context)

    def _wrap_handler(self, handler_type: str, handler_name: str, user_handler: Any) -> Any:
        wrapped = super()._wrap_handler(handler_type, handler_name, user_handler)
        if handler_type == "schedule" and isinstance(wrapped, EventSourceHandler):
            wrapped.event_class = ScheduledEvent
        return wrapped
