"""Routes the contract marks "token": with ``:auth:`` configured they need a valid token.

One call for the handlers (``require_caller``), built on identity's ``optional_caller`` so that
however identity checks tokens, these routes follow.
"""

from __future__ import annotations

from chalicelib.api.http import ApiError, ApiRequest
from chalicelib.api.identity import Caller, optional_caller
from chalicelib.services import Services

AUTH_CHALLENGE = {"WWW-Authenticate": 'Basic realm="Authentication required"'}


def require_caller(services: Services, request: ApiRequest) -> Caller | None:
    """The caller, when auth is configured: a 401 without a valid token. None without auth."""
    if services.config.auth is None:
        return None
    caller = optional_caller(services, request)
    if caller is None:
        raise ApiError(401, headers=AUTH_CHALLENGE)
    return caller
