"""All the directory work of one request ends by one deadline (``login_timeout`` from its first
directory task), and a config whose directory waits could outlast the local front's 30 s watchdog
(or the API Lambda's 29 s) is refused at load.

Before, an admin route with ``admin_groups`` whose token's directory answer was stale asked a
stopped directory twice in a row (the user check, then the group check), each up to
``login_timeout``: about 40 s with the defaults against a trickling directory, past the watchdog
(WORKERS=0 exits 3, the default layout's worker is killed). Real slapd, stopped with SIGSTOP;
what reached it is counted from its own log (connections it served once it ran again: a
connection made while it was stopped waits in its backlog and is served when it resumes).
"""

from __future__ import annotations

import dataclasses
import signal
import socket
from typing import Iterator

import pytest

from chalicelib.auth.base import AuthConfigError
from chalicelib.auth.ldap_settings import parse_ldap_settings
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import POOL, document
from tests.harness import HarnessFactory
from tests.support import eventually, stop_process

UNAVAILABLE = {"ok": False, "error": "authentication service unavailable"}


@pytest.fixture
def stats_slapd() -> Iterator[SlapdServer]:
    """A slapd of the test's own, logging every connection and operation, to stop."""
    with SlapdServer(log_level="stats") as server:
        yield server


def directory_log(directory: SlapdServer, since: int) -> str:
    return (directory.directory / "slapd.log").read_bytes()[since:].decode(errors="replace")


def test_an_admin_change_with_a_stale_answer_asks_a_stopped_directory_within_one_login_timeout(
        make_api: HarnessFactory, stats_slapd: SlapdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = stats_slapd
    ldap = directory.ldap_config()
    ldap["service_account_hash"] = {"user_dn": directory.service_dn, "password": directory.service_password}
    api = make_api(document({"provider": "ldap", "ldap": ldap, "directory_check_minutes": 10,
                             "directory_outage_grace_minutes": 60, "admin_groups": [directory.admin_group]},
                            config={"experimental_features": True}))
    api.fill(POOL)
    directory.add_member(directory.admin_group, directory.dn("alice"))
    token = {"X-AUTH-TOKEN": api.new_token("alice", directory.password("alice"))}
    assert api.call("POST", "/api/v3/config/poolsize", headers=token, body={POOL: "4"}).status == 201
    api.clock.advance(10 * 60)  # the token's directory answer is stale: the user is asked again
    authenticator = api.services.authenticator
    assert directory.process is not None
    # Short waits to be quick; each answer may take longer than the whole task, so the first
    # task (the user check) waits out the request's deadline.
    monkeypatch.setattr(authenticator, "settings",
                        dataclasses.replace(authenticator.settings, receive_timeout=3, login_timeout=1.5))
    since = directory.log_size()
    stop_process(directory.process.pid)
    try:
        reply = api.call("POST", "/api/v3/config/poolsize", headers=token, body={POOL: "6"})
    finally:
        directory.process.send_signal(signal.SIGCONT)
    assert (reply.status, reply.body) == (503, UNAVAILABLE)
    assert api.services.pool(POOL).size == 4  # unchanged
    # The user check's connection reached the directory; the group check, with no time left in
    # the request's deadline, was not made (before: a second connection, a second login_timeout).
    # slapd accepts the connections waiting in its backlog in order: once it has logged one
    # made now, it has logged every one made while it was stopped.
    with socket.create_connection(("127.0.0.1", directory.port)) as marker:
        mark = f"ACCEPT from IP=127.0.0.1:{marker.getsockname()[1]} "
        eventually(lambda: mark in directory_log(directory, since), 10, "slapd logged the marker connection")
    asked_while_stopped = [line for line in directory_log(directory, since).splitlines()
                           if " ACCEPT from " in line and mark not in line]
    assert len(asked_while_stopped) == 1, asked_while_stopped
    assert api.call("POST", "/api/v3/config/poolsize", headers=token, body={POOL: "6"}).status == 201


@pytest.mark.parametrize(("timeouts", "refused"), [
    ({"login_timeout": 21}, True),  # with the default connect_timeout (5 s): 26 s
    ({"connect_timeout": 2, "login_timeout": 23}, False),
    ({"connect_timeout": 10, "login_timeout": 15.5}, True),
    ({}, False),  # the defaults: 5 + 20
])
def test_a_directory_wait_over_the_request_bound_is_refused_at_load(timeouts: dict[str, float], refused: bool) -> None:
    raw = {"host": "ldap.example.com", "base": "dc=example,dc=com", **timeouts}
    if not refused:
        parse_ldap_settings(raw)
        return
    with pytest.raises(AuthConfigError) as error:
        parse_ldap_settings(raw)
    assert "auth.ldap.login_timeout: connect_timeout" in str(error.value)
    assert "is over 25 s, the most one request may spend on the directory" in str(error.value)
