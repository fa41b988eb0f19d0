"""A password vCenter refuses is not sent again by every pass of every pool (account lockout).

vCenter SSO locks an account after 5 refused logins within 180 s (Active Directory behind it
alike): a wrong password, or one rotated in the directory and not yet in the config, must cost a
process one refused login per ``LOGIN_RETRY_SECONDS``, not one a pass and pool, while each pass
still fails as ``permission``. Against vcsim (tools/vcsim), which counts nothing: the Login calls
are counted at the SOAP stub.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.manager.runner import run_pool
from chalicelib.providers.vsphere import connection as connections
from chalicelib.services import Services
from tests.support import counts_by_reason, emf_documents
from tests.vsphere.vcsim import VcsimServer, record_soap_calls, vcsim_config

POOLS = [{"name": f"refused-{index}", "size": 1, "folder": f"vmpool/refused-{index}"} for index in range(10)]


@pytest.fixture
def logins(vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The Login calls sent to the simulator (as ``localhost``: a connection-cache key no other
    test's session holds), each as the password it carried."""
    sent: list[str] = []

    def record(method: str, args: Any) -> None:
        if method == "Login":
            sent.append(str(args[1]))

    record_soap_calls(monkeypatch, record)
    connections.forget_server("localhost", vcsim.port)
    yield sent
    connections.forget_server("localhost", vcsim.port)


def services_with(vcsim: VcsimServer, redis_client: redis.Redis, **provider: Any) -> Services:
    config = vcsim_config(vcsim, POOLS, provider={"server": f"localhost:{vcsim.port}", **provider})
    return Services(config, redis_client, FakeClock())


def test_a_refused_password_is_sent_once_not_by_every_pass_of_every_pool(
        vcsim: VcsimServer, redis_client: redis.Redis, logins: list[str],
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before: 30 refused logins (10 pools, 3 passes each, within a second), enough to lock the
    # service account six times over under vCenter SSO's default policy.
    wrong = services_with(vcsim, redis_client, password="rotated-in-the-directory")
    reports = [run_pool(wrong, pool["name"], 0.0) for _ in range(3) for pool in POOLS]
    assert logins == ["rotated-in-the-directory"]
    assert all(report.failures and "refused the login" in report.failures[0] for report in reports)
    assert counts_by_reason(emf_documents(capsys.readouterr().out), "ReconcileErrors") == {"permission": 30}

    # The config now carries the right password (a config push, a secret rotated): tried at once.
    right = services_with(vcsim, redis_client)
    assert run_pool(right, POOLS[0]["name"], 0.0).failures == []
    assert len(logins) == 2


def test_a_refused_password_is_tried_again_once_the_retry_interval_is_over(
        vcsim: VcsimServer, redis_client: redis.Redis, logins: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = services_with(vcsim, redis_client, password="still-wrong")
    run_pool(wrong, POOLS[0]["name"], 0.0)
    run_pool(wrong, POOLS[1]["name"], 0.0)
    assert len(logins) == 1
    monkeypatch.setattr(connections, "LOGIN_RETRY_SECONDS", 0.0)  # the interval is over...
    redis_client.delete(*redis_client.keys("*refused:*"))  # ...for every process (the key's expiry)
    report = run_pool(wrong, POOLS[1]["name"], 0.0)
    assert len(logins) == 2 and report.failures and "refused the login" in report.failures[0]


def test_a_refused_password_is_not_sent_again_by_another_process(
        vcsim: VcsimServer, redis_client: redis.Redis, logins: list[str]) -> None:
    """Each process kept its own memory of the refusal: N warm reconcile containers sent N refused
    logins per interval (a few are enough to lock the account). The refusal is kept in Redis: a
    process that never saw it sends the password no more."""
    run_pool(services_with(vcsim, redis_client, password="rotated-elsewhere"), POOLS[0]["name"], 0.0)
    assert logins == ["rotated-elsewhere"]
    connections.forget_server("localhost", vcsim.port)  # another process: nothing of this one's in memory
    other = services_with(vcsim, redis_client, password="rotated-elsewhere")
    reports = [run_pool(other, pool["name"], 0.0) for pool in POOLS]
    assert logins == ["rotated-elsewhere"]
    assert all(report.failures and "refused the login" in report.failures[0] for report in reports)
    assert "rotated-elsewhere" not in str({key: redis_client.get(key) for key in redis_client.keys("*refused*")})
    # The right password is tried at once, there too.
    assert run_pool(services_with(vcsim, redis_client), POOLS[0]["name"], 0.0).failures == []
    assert len(logins) == 2


def test_a_login_accepted_with_another_password_keeps_the_refused_one_held(
        vcsim: VcsimServer, redis_client: redis.Redis, logins: list[str]) -> None:
    """A config push rolling out: containers with the new password log in, warm ones still carry
    the old, refused one. The accepted login cleared the account's refusal record, whichever
    password it held: each old container then sent the refused password again (N containers, N
    refusals an interval: the lockout the shared record prevents). Only the accepted password's
    refusal is cleared."""
    run_pool(services_with(vcsim, redis_client, password="before-the-push"), POOLS[0]["name"], 0.0)
    connections.forget_server("localhost", vcsim.port)  # a container with the pushed config
    assert run_pool(services_with(vcsim, redis_client), POOLS[1]["name"], 0.0).failures == []
    connections.forget_server("localhost", vcsim.port)  # another warm container, still the old config
    reports = [run_pool(services_with(vcsim, redis_client, password="before-the-push"), pool["name"], 0.0)
               for pool in POOLS[2:]]
    assert all(report.failures and "refused the login" in report.failures[0] for report in reports)
    assert logins[0] == "before-the-push" and logins[2:] == []
