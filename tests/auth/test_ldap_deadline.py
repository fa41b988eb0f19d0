"""One LDAP task (a login, a user or group check) ends within ``login_timeout`` however the
directory dawdles: each answer just inside ``receive_timeout``, or one answer trickled a byte at a
time. Before, only each receive was bounded: a login took (number of operations) x
receive_timeout, or as long as the trickle lasted, past the API Lambda's 29 s."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterator

import pytest

from chalicelib.auth.base import AuthUnavailable
from chalicelib.auth.ldap import LdapAuthenticator, parse_ldap_settings
from tests.auth.slapd import SlapdServer
from tests.support import relay


@pytest.fixture
def slow_directory(slapd: SlapdServer) -> Iterator[int]:
    """A port in front of the session's slapd that holds each of its answers 0.4 s back."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    with relay(listener, slapd.port, answer_delay=0.4) as port:
        yield port


def _service_mode(slapd: SlapdServer, port: int, **overrides) -> LdapAuthenticator:
    # 2 bases x 2 user_objects: a bind, four searches and a bind, each answered in 0.4 s.
    config = slapd.ldap_config(port=port, encryption="plain", receive_timeout=1,
                               service_account_hash={"user_dn": slapd.service_dn,
                                                     "password": slapd.service_password}, **overrides)
    return LdapAuthenticator(parse_ldap_settings(config))


def test_a_directory_answering_each_operation_in_time_still_ends_the_login_at_login_timeout(slapd, slow_directory):
    auth = _service_mode(slapd, slow_directory, login_timeout=1.5)
    started = time.monotonic()
    with pytest.raises(AuthUnavailable):
        auth.authenticate("bob", slapd.password("bob"))
    assert time.monotonic() - started < 2.5  # the whole login took 2.4 s and succeeded before
    # Without the deadline biting, the same slow directory logs in.
    assert _service_mode(slapd, slow_directory, login_timeout=10).authenticate("bob", slapd.password("bob"))


def test_an_answer_trickled_a_byte_at_a_time_ends_at_login_timeout():
    """Each byte arrives within receive_timeout; the answer (announced 4 KiB long) never ends."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def trickle() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)  # the bind request
                connection.sendall(bytes.fromhex("3082"))  # a SEQUENCE of 0x1000 bytes follows
                connection.sendall(bytes.fromhex("10"))
                for _ in range(20):  # 6 s in all, then the server hangs up
                    time.sleep(0.3)
                    try:
                        connection.sendall(b"\x00")
                    except OSError:
                        return

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        auth = LdapAuthenticator(parse_ldap_settings(
            {"host": "127.0.0.1", "port": port, "base": "dc=x", "encryption": "plain",
             "connect_timeout": 1, "receive_timeout": 1, "login_timeout": 1.5}))
        started = time.monotonic()
        with pytest.raises(AuthUnavailable):
            auth.authenticate("alice", "pw")
        assert time.monotonic() - started < 2.5
        thread.join(7)


def test_login_timeout_is_a_positive_number_of_seconds():
    assert parse_ldap_settings({"host": "h", "base": "dc=x"}).login_timeout == 20
    with pytest.raises(Exception, match=r"auth\.ldap\.login_timeout"):
        parse_ldap_settings({"host": "h", "base": "dc=x", "login_timeout": 0})
