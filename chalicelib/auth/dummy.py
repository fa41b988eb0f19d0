"""vmpooler's ``dummy`` authentication: for development only, never for production."""

from __future__ import annotations

import hmac
import unicodedata

from chalicelib.logs import module_logger

from .base import acceptable_credentials

logger = module_logger(__name__)


INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})
"""Control, format (bidi overrides such as U+202E, zero-width characters such as U+200B) and
line/paragraph separator characters: a name holding one shows as another name (``\u202eecila``
reads "alice"), and no directory entry the LDAP provider would find has one (there such a name
finds no entry: 401)."""


def has_invisible_characters(username: str) -> bool:
    """Whether ``username`` holds a character that is invisible or reorders what is shown."""
    return any(unicodedata.category(char) in INVISIBLE_CATEGORIES for char in username)


class DummyAuthenticator:
    """Accepts any user name with any non-empty password that differs from it (vmpooler's rule),
    but a name with invisible or bidi characters (``has_invisible_characters``), which it made
    a user of its own that looked like another (``ali\u200bce`` got a token as a second "alice").

    Logs a warning when created: anyone can get a token with it."""

    def __init__(self) -> None:
        logger.warning(
            "auth provider 'dummy' is for development only: any user name is accepted with any "
            "password that differs from it; configure 'ldap' for production",
            # About the process, not the request that happened to build it (built on first use).
            extra={"correlation_id": None},
        )

    def authenticate(self, username: str, password: str) -> bool:
        if not acceptable_credentials(username, password) or has_invisible_characters(username):
            return False
        return not hmac.compare_digest(username.encode(), password.encode())
