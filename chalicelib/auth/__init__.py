"""Authentication: providers (LDAP, dummy), API tokens, the failed-login limiter and secrets.

Framework-free services; the HTTP routes wire them up. Import each from its own module
(``chalicelib.auth.tokens``, ``.ratelimit``, ``.secrets``...)::

    authenticator = build_authenticator(config.auth, resolve_secret)   # None: no :auth:
    limiter = LoginLimiter.from_config(config.auth, redis_client)
    tokens = TokenStore(redis_client, clock, ttl_hours=config.service.token_ttl)
    logins = LoginService(authenticator, limiter)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .base import AuthConfigError, Authenticator

if TYPE_CHECKING:
    from chalicelib.config import AuthConfig

PROVIDERS = ("ldap", "dummy")


def build_authenticator(
    auth_config: "AuthConfig | None",
    resolve_secret: Callable[[Any], str | None] | None = None,
    redis: Any = None,
    prefix: str | None = None,
) -> Authenticator | None:
    """The authenticator the ``:auth:`` section asks for, or None when there is no ``:auth:``.

    The section was validated when the config loaded (its LDAP block parsed into LdapSettings
    there, once). ``resolve_secret`` turns secret config values (plain or references) into
    strings; the default is the process-wide Powertools-backed resolver. With ``redis``, a
    refused LDAP service-account password is remembered there by every process
    (``service_refusals.py``), under the key ``prefix``."""
    if auth_config is None:
        return None
    provider = auth_config.provider
    if provider == "dummy":
        from .dummy import DummyAuthenticator

        return DummyAuthenticator()
    if provider == "ldap":
        # Imported here: ldap3 alone costs ~80 ms, and the API Lambda's cold start should pay
        # for it only when the service authenticates with LDAP.
        from .ldap import LdapAuthenticator

        settings = auth_config.ldap
        if settings is None:
            raise AuthConfigError(["auth.ldap: is required when auth.provider is ldap"])
        refusals = None
        if redis is not None and settings.uses_service_account:
            from .service_refusals import RefusedPasswords

            refusals = RefusedPasswords(redis) if prefix is None else RefusedPasswords(redis, prefix)
        return LdapAuthenticator(settings, resolve_secret, refusals)
    raise AuthConfigError([f"auth.provider: must be one of {', '.join(PROVIDERS)}, got {provider!r}"])
