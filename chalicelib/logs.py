"""Loggers for the service's modules that do not import Powertools (auth, vSphere).

Each is a child of Powertools' logger ``vmpool``, named ``vmpool.<module>``: its lines go out
through that logger's handler as JSON, with the request's correlation id and the secret mask, at
``POWERTOOLS_LOG_LEVEL``; Powertools keeps its children's lines off the root logger's handlers, so
none is written twice. A module logger under the root (``logging.getLogger(__name__)``) wrote
through Lambda's runtime handler instead: plain text (``[ERROR] <time> <request id> message``)
that no Logs Insights query on the JSON fields finds, and nothing below WARNING. Libraries'
loggers (urllib3, botocore, pyVmomi, redis-py) are routed to the same handler, their credentials
masked: ``observability.route_library_logs``.
"""

from __future__ import annotations

import logging

SERVICE = "vmpool"
"""The service's name: Powertools' logger and the metrics' ``service`` dimension."""


def module_logger(module: str) -> logging.Logger:
    """The logger of a module (pass ``__name__``)."""
    return logging.getLogger(f"{SERVICE}.{module}")
