"""One deadline for all the directory work of one request.

A request may ask the directory more than once: an admin route with ``admin_groups`` whose
token's directory answer is stale asks whether the user is still there (a user check), then
whether they are in a group (a group check). Each task was bounded by ``login_timeout`` on its
own, so such a request could hold its HTTP loop twice as long (about 40 s against a directory
trickling its answers): past the local front's 30 s watchdog (WORKERS=0 exits 3, the default
layout's arbiter kills the worker) and the API Lambda's 29 s.

``routes.handle_when_built`` opens a budget per request (``request_budget``); the first directory task of
the request starts its clock, and every task of the request ends by that task's start plus
``login_timeout`` (``task_deadline``); a task that would start after it is refused at once. With
``connect_timeout`` (the one wait not under the deadline: opening the connection) the whole
directory work of a request is at most ``connect_timeout + login_timeout``, which the config
must keep within ``REQUEST_DIRECTORY_SECONDS`` (``ldap_settings.parse_ldap_settings``).
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from typing import Callable

REQUEST_DIRECTORY_SECONDS = 25.0
"""The most one request may spend on the directory (``connect_timeout + login_timeout``): under
the local front's 30 s watchdog for a stuck loop and the API Lambda's 29 s, with room for the
request's own work."""

_BUDGET: ContextVar[list[float] | None] = ContextVar("vmpool_directory_budget", default=None)
"""The current request's deadline (monotonic), once its first directory task has started."""


class request_budget:
    """Inside, every directory task shares one deadline (the first one's). A class, not a
    generator under ``contextmanager``: every request enters one (five calls of Python less)."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = _BUDGET.set([])

    def __exit__(self, *exc: object) -> None:
        _BUDGET.reset(self._token)


def task_deadline(login_timeout: float, monotonic: Callable[[], float] = time.monotonic) -> float:
    """When a directory task starting now must end: ``login_timeout`` from now, or earlier when
    an earlier task of the same request started the request's clock."""
    now = monotonic()
    budget = _BUDGET.get()
    if budget is None:  # outside a request (a tool, a test of the authenticator alone)
        return now + login_timeout
    if not budget:
        budget.append(now + login_timeout)
    return min(now + login_timeout, budget[0])
