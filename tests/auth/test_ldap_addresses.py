"""A directory host name that gives several addresses, or other addresses later, against the real
slapd: the test's own name table (``named``) stands for the DNS (the system resolver cannot be
pointed at a test server), every address on it is a real listener on a loopback address.

Before: ldap3 tried each address in turn for ``connect_timeout``, outside the task's deadline (6
addresses that drop packets: 30 s, past the API Lambda's 29 s), and kept the addresses a name
gave for 300 s (the directory moved: every login a 503 for 5 minutes)."""

from __future__ import annotations

import socket
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, Iterator

import pytest

from chalicelib.auth.base import AuthUnavailable
from chalicelib.auth.ldap import LdapAuthenticator, parse_ldap_settings
from tests.auth.slapd import SlapdServer
from tests.support import connects_recorded, unanswered_port
from tests.support import relay as relay_to

NAME = "directory.vmpool.test"


@pytest.fixture
def named(monkeypatch: pytest.MonkeyPatch) -> Callable[[list[str]], None]:
    """Make ``NAME`` give these IPv4 addresses (in this order) from now on; other names resolve
    as ever."""
    addresses: list[str] = []
    resolve = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != NAME:
            return resolve(host, port, *args, **kwargs)
        if not addresses:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, int(port)))
                for address in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return lambda given: addresses.__setitem__(slice(None), given)


@contextmanager
def relay(address: str, port: int, upstream: int) -> Iterator[None]:
    """``address:port`` passes every connection on to the slapd at 127.0.0.1:``upstream``; after
    the block nothing listens there (a connection is refused), as at a server's old address."""
    with relay_to(socket.create_server((address, port)), upstream):
        yield


def _authenticator(slapd: SlapdServer, **overrides: Any) -> LdapAuthenticator:
    config = slapd.service_account_config(host=NAME, encryption="plain", **overrides)
    return LdapAuthenticator(parse_ldap_settings(config))


def test_addresses_that_drop_packets_end_the_login_by_its_deadline_not_one_connect_timeout_each(
        slapd: SlapdServer, named: Callable[[list[str]], None]) -> None:
    """Six addresses that never answer a connection (another site's domain controllers behind a
    firewall), then the live one: a 503 within ``login_timeout`` and one ``connect_timeout``.
    Before, each address had its own ``connect_timeout``: 6 x 2 s = 12 s here (with the
    defaults, 6 x 5 s = 30 s: the API Lambda was killed at 29 s, a 504)."""
    with ExitStack() as stack:
        dead = [f"127.0.0.{host}" for host in range(11, 17)]
        for address in dead:
            stack.enter_context(unanswered_port(address, slapd.port))
        named([*dead, "127.0.0.1"])
        auth = _authenticator(slapd, connect_timeout=2, login_timeout=3)
        tried = connects_recorded(stack.enter_context(pytest.MonkeyPatch.context()))
        with pytest.raises(AuthUnavailable):
            auth.authenticate("bob", slapd.password("bob"))
    # What was tried, not how long it took (a loaded machine's scheduling cannot fail it): the
    # first address's connect_timeout (2 s), the second's begun within the deadline (3 s), then
    # none. The old way tried all six dead addresses, then logged in at the live one.
    assert 1 <= len(tried) <= 2 and tried == dead[:len(tried)], tried


def test_one_address_that_drops_packets_beside_a_live_one_still_logs_in(
        slapd: SlapdServer, named: Callable[[list[str]], None]) -> None:
    """The deadline stops only addresses past it: a dead address first, the live one within the
    time left, logs in (and the next login skips the dead one)."""
    with unanswered_port("127.0.0.21", slapd.port):
        named(["127.0.0.21", "127.0.0.1"])
        auth = _authenticator(slapd, connect_timeout=1, login_timeout=10)
        assert auth.login_name("bob", slapd.password("bob")) == "bob"
        assert auth.login_name("carol", slapd.password("carol")) == "carol"


def test_a_directory_moved_to_another_address_is_reached_at_the_first_login_after_the_move(
        slapd: SlapdServer, named: Callable[[list[str]], None]) -> None:
    """The directory's name gave 127.0.0.31; it now gives 127.0.0.32, and nothing answers at the
    old address. The first login after the move logs in, and so do the next. Before, the old
    address was kept for 300 s: every login of the process a 503 for 5 minutes."""
    auth = _authenticator(slapd)
    with relay("127.0.0.31", slapd.port, slapd.port):
        named(["127.0.0.31"])
        assert auth.login_name("bob", slapd.password("bob")) == "bob"
    with relay("127.0.0.32", slapd.port, slapd.port):
        named(["127.0.0.32"])
        assert auth.login_name("bob", slapd.password("bob")) == "bob"
        assert auth.login_name("carol", slapd.password("carol")) == "carol"
        assert auth.user_entry("carol")


def test_a_directory_down_at_the_same_address_is_a_503_and_back_at_the_first_login_after(
        slapd: SlapdServer, named: Callable[[list[str]], None]) -> None:
    """The name looked up again gives the same address: nothing tried twice, a 503; the directory
    back, its first login logs in."""
    auth = _authenticator(slapd)
    named(["127.0.0.41"])
    with relay("127.0.0.41", slapd.port, slapd.port):
        assert auth.authenticate("bob", slapd.password("bob"))
    with pytest.raises(AuthUnavailable):
        auth.authenticate("bob", slapd.password("bob"))
    with relay("127.0.0.41", slapd.port, slapd.port):
        assert auth.authenticate("bob", slapd.password("bob"))
