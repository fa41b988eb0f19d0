"""Authentication: providers (LDAP, dummy), API tokens, the failed-login limiter and secrets.

Framework-free services; the HTTP routes wire them up::

    authenticator = build_authenticator(config.auth, resolve_secret)   # None: no :auth:
    limiter = LoginLimiter.from_config(config.auth, redis_client)
    tokens = TokenStore(redis_client, clock, ttl_hours=config.service.token_ttl)
    logins = LoginService(authenticator, limiter)
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from .base import AuthConfigError, AuthUnavailable, Authenticator, acceptable_credentials
from .basic import LoginOutcome, LoginResult, LoginService, parse_basic_auth
from .dummy import DummyAuthenticator
from .ldap import LdapAuthenticator, LdapSettings, parse_ldap_settings
from .ratelimit import LoginLimiter
from .secrets import (
    RedactingFilter,
    Secret,
    SecretConfigError,
    SecretReference,
    SecretResolver,
    SecretUnavailable,
    check_secret_value,
    parse_reference,
    resolve_secret,
)
from .tokens import DeleteResult, TokenRecord, TokenStore, hash_token, is_token_shaped

logger = logging.getLogger(__name__)

PROVIDERS = ("ldap", "dummy")


def build_authenticator(
    auth_config: Mapping[str, Any] | None,
    resolve_secret: Callable[[Any], str | None] | None = None,
) -> Authenticator | None:
    """The authenticator the ``:auth:`` section asks for, or None when there is no ``:auth:``.

    ``resolve_secret`` turns secret config values (plain or references) into strings; the
    default is the process-wide Powertools-backed resolver. Raises AuthConfigError."""
    if auth_config is None:
        return None
    if not isinstance(auth_config, Mapping):
        raise AuthConfigError(["auth: must be a mapping"])
    provider = auth_config.get("provider")
    if isinstance(provider, str):
        provider = provider.lstrip(":")
    if provider == "dummy":
        return DummyAuthenticator()
    if provider == "ldap":
        return LdapAuthenticator(parse_ldap_settings(auth_config.get("ldap")), resolve_secret)
    raise AuthConfigError([f"auth.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}"])


__all__ = [
    "AuthConfigError",
    "AuthUnavailable",
    "Authenticator",
    "DeleteResult",
    "DummyAuthenticator",
    "LdapAuthenticator",
    "LdapSettings",
    "LoginLimiter",
    "LoginOutcome",
    "LoginResult",
    "LoginService",
    "RedactingFilter",
    "Secret",
    "SecretConfigError",
    "SecretReference",
    "SecretResolver",
    "SecretUnavailable",
    "TokenRecord",
    "TokenStore",
    "acceptable_credentials",
    "build_authenticator",
    "check_secret_value",
    "hash_token",
    "is_token_shaped",
    "parse_basic_auth",
    "parse_ldap_settings",
    "parse_reference",
    "resolve_secret",
]
