"""Authentication: providers (LDAP, dummy), API tokens, the failed-login limiter and secrets.

Framework-free services; the HTTP routes wire them up. Import each from its own module
(``chalicelib.auth.tokens``, ``.ratelimit``, ``.secrets``...)::

    authenticator = build_authenticator(config.auth, resolve_secret)   # None: no :auth:
    limiter = LoginLimiter.from_config(config.auth, redis_client)
    tokens = TokenStore(redis_client, clock, ttl_hours=config.service.token_ttl)
    logins = LoginService(authenticator, limiter)
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from .base import AuthConfigError, Authenticator

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
        from .dummy import DummyAuthenticator

        return DummyAuthenticator()
    if provider == "ldap":
        # Imported here: ldap3 alone costs ~80 ms, and the API Lambda's cold start should pay
        # for it only when the service authenticates with LDAP.
        from .ldap import LdapAuthenticator, parse_ldap_settings

        return LdapAuthenticator(parse_ldap_settings(auth_config.get("ldap")), resolve_secret)
    raise AuthConfigError([f"auth.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}"])
