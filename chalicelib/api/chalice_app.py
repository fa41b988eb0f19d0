"""The Chalice app class the service runs: Chalice with its per-request state kept per thread.

Chalice stores the request it is serving on the app object (``current_request``,
``lambda_context``), so two threads calling one app would read each other's request. In Lambda
one invocation runs at a time and nothing changes; the local HTTP front serves several requests
of one process on threads (their Redis waits overlap), and each thread sees only its own.
"""

from __future__ import annotations

import threading
from typing import Any

from chalice import Chalice
from chalice.app import Request


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
