"""vmpooler's ``dummy`` authentication: for development only, never for production."""

from __future__ import annotations

import hmac

from chalicelib.logs import module_logger

from .base import acceptable_credentials

logger = module_logger(__name__)


class DummyAuthenticator:
    """Accepts any user name with any non-empty password that differs from it (vmpooler's rule).

    Logs a warning when created: anyone can get a token with it."""

    def __init__(self) -> None:
        logger.warning(
            "auth provider 'dummy' is for development only: any user name is accepted with any "
            "password that differs from it; configure 'ldap' for production",
            # About the process, not the request that happened to build it (built on first use).
            extra={"correlation_id": None},
        )

    def authenticate(self, username: str, password: str) -> bool:
        if not acceptable_credentials(username, password):
            return False
        return not hmac.compare_digest(username.encode(), password.encode())
