"""A config reload racing the first build of the authenticator: the one used afterwards (for
logins too) is built from the new ``:auth:`` block.

The authenticator, logins, directory check and token store are built on first use and kept. A
build that began under the old config and ended after ``Services.use_config`` (the local stack's
main loop re-reading an edited config; a Lambda's config refreshed from S3 while its threads
serve) was kept for good: logins went on being checked by the old provider (the old LDAP server
and base, or the dummy's any-password rule) until the next edit of ``:auth:``."""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis

from chalicelib.auth.dummy import DummyAuthenticator
from chalicelib.auth.ldap import LdapAuthenticator
from chalicelib.config import build
from chalicelib.services import Services

POOLS = [{"name": "alpha", "size": 1, "provider": "dummy"}]
PROVIDERS = {"dummy": {"provider_class": "dummy"}}
LDAP = {"provider": "ldap", "ldap": {"host": "new-ldap.example.com", "base": "ou=users,dc=example,dc=com",
                                     "user_object": "uid"}}


def config_with_auth(auth: dict[str, Any]) -> Any:
    return build({"providers": PROVIDERS, "pools": POOLS, "auth": auth})


class HeldWarning(logging.Handler):
    """Holds the thread logging the dummy authenticator's warning (written while it is built)
    until ``release``: the build, slow for as long as the test wants."""

    def __init__(self) -> None:
        super().__init__()
        self.building = threading.Event()
        self.released = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if not self.building.is_set():
            self.building.set()
            assert self.released.wait(30), "never released"


def test_logins_after_an_auth_change_during_the_authenticators_build_use_the_new_block(
        redis_client: redis.Redis) -> None:
    services = Services(config_with_auth({"provider": "dummy"}), redis_client)
    held = HeldWarning()
    dummy_log = logging.getLogger(f"vmpool.{DummyAuthenticator.__module__}")
    dummy_log.addHandler(held)
    try:
        first = threading.Thread(target=lambda: services.logins)
        first.start()
        assert held.building.wait(30)
        services.use_config(config_with_auth(LDAP))  # the edit, read by another thread
        held.released.set()
        first.join(30)
    finally:
        dummy_log.removeHandler(held)
    authenticator = services.authenticator
    assert isinstance(authenticator, LdapAuthenticator), authenticator
    assert authenticator.settings.host == "new-ldap.example.com"
    logins = services.logins
    assert logins is not None and logins.authenticator is authenticator, \
        "logins checked by the dummy authenticator: any password accepted"
