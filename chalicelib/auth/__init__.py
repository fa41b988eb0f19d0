"""Authentication: providers (LDAP, dummy), API tokens, the failed-login limiter and secrets.

Framework-free services; the HTTP routes wire them up::

    authenticator = build_authenticator(config.auth, resolve_secret)   # None: no :auth:
    limiter = LoginLimiter.from_config(config.auth, redis_client)
    tokens = TokenStore(redis_client, clock, ttl_hours=config.service.token_ttl)
    logins = LoginService(authenticator, limiter)
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # the names below are imported on first use (see __getattr__)
    from .base import AuthConfigError, Authenticator, AuthUnavailable, acceptable_credentials
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

# Where each public name lives. Imported lazily: ldap3 alone costs ~80 ms, and the API Lambda's
# cold start should pay for it only when a login actually happens.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("AuthConfigError", "AuthUnavailable", "Authenticator", "acceptable_credentials"), "base"),
    **dict.fromkeys(("LoginOutcome", "LoginResult", "LoginService", "parse_basic_auth"), "basic"),
    "DummyAuthenticator": "dummy",
    **dict.fromkeys(("LdapAuthenticator", "LdapSettings", "parse_ldap_settings"), "ldap"),
    "LoginLimiter": "ratelimit",
    **dict.fromkeys(
        ("RedactingFilter", "Secret", "SecretConfigError", "SecretReference", "SecretResolver",
         "SecretUnavailable", "check_secret_value", "parse_reference", "resolve_secret"),
        "secrets",
    ),
    **dict.fromkeys(("DeleteResult", "TokenRecord", "TokenStore", "hash_token", "is_token_shaped"), "tokens"),
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


PROVIDERS = ("ldap", "dummy")


def build_authenticator(
    auth_config: Mapping[str, Any] | None,
    resolve_secret: Callable[[Any], str | None] | None = None,
) -> Authenticator | None:
    """The authenticator the ``:auth:`` section asks for, or None when there is no ``:auth:``.

    ``resolve_secret`` turns secret config values (plain or references) into strings; the
    default is the process-wide Powertools-backed resolver. Raises AuthConfigError."""
    from .base import AuthConfigError

    if auth_config is None:
        return None
    if not isinstance(auth_config, Mapping):
        raise AuthConfigError(["auth: must be a mapping"])
    provider = auth_config.get("provider")
    if isinstance(provider, str):
        provider = provider.lstrip(":")
    if provider == "dummy":
        from .dummy import DummyAuthenticator

        return DummyAuthenticator()
    if provider == "ldap":
        from .ldap import LdapAuthenticator, parse_ldap_settings

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
