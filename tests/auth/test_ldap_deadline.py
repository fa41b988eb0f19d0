"""One LDAP task (a login, a user or group check) ends within ``login_timeout`` however the
directory dawdles: each answer just inside ``receive_timeout``, or one answer trickled a byte at a
time. Before, only each receive was bounded: a login took (number of operations) x
receive_timeout, or as long as the trickle lasted, past the API Lambda's 29 s."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

import pytest

from chalicelib.auth.base import AuthUnavailable
from chalicelib.auth.ldap import LdapAuthenticator, parse_ldap_settings
from tests.auth.slapd import SlapdServer
from tests.support import relay

TRICKLE_SECONDS = 20.0
"""How long the trickling directory goes on before it hangs up: far past login_timeout (1.5 s)."""


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
    # The whole login takes 2.4 s (each answer 0.4 s, within receive_timeout): past
    # login_timeout it is refused, where before it succeeded. No timed assert: on a loaded
    # machine the refusal itself comes late (it failed as a "< 2.5 s").
    auth = _service_mode(slapd, slow_directory, login_timeout=1.5)
    with pytest.raises(AuthUnavailable):
        auth.authenticate("bob", slapd.password("bob"))
    # Without the deadline biting, the same slow directory logs in.
    assert _service_mode(slapd, slow_directory, login_timeout=10).authenticate("bob", slapd.password("bob"))


def test_an_answer_trickled_a_byte_at_a_time_ends_at_login_timeout():
    """Each byte arrives within receive_timeout; the answer (announced 4 KiB long) never ends:
    the login gives up while the directory is still trickling (the directory hangs up only
    after TRICKLE_SECONDS, far past login_timeout). Without the deadline the login waited for
    the hang-up. What is asserted is which came first, not how long it took (a timed "< 2.5 s"
    failed on a loaded machine)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        done, trickle_ended = threading.Event(), threading.Event()

        def trickle() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)  # the bind request
                connection.sendall(bytes.fromhex("3082"))  # a SEQUENCE of 0x1000 bytes follows
                connection.sendall(bytes.fromhex("10"))
                for _ in range(int(TRICKLE_SECONDS / 0.3)):  # then the server hangs up
                    if done.wait(0.3):  # the test has its answer: stop
                        return
                    try:
                        connection.sendall(b"\x00")
                    except OSError:
                        return
                trickle_ended.set()

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        try:
            auth = LdapAuthenticator(parse_ldap_settings(
                {"host": "127.0.0.1", "port": port, "base": "dc=x", "encryption": "plain",
                 "connect_timeout": 1, "receive_timeout": 1, "login_timeout": 1.5}))
            with pytest.raises(AuthUnavailable):
                auth.authenticate("alice", "pw")
            assert not trickle_ended.is_set(), "the login waited for the directory to hang up"
        finally:
            done.set()
            thread.join(10)


def test_login_timeout_is_a_positive_number_of_seconds():
    assert parse_ldap_settings({"host": "h", "base": "dc=x"}).login_timeout == 20
    with pytest.raises(Exception, match=r"auth\.ldap\.login_timeout"):
        parse_ldap_settings({"host": "h", "base": "dc=x", "login_timeout": 0})
