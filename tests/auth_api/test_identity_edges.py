"""Identity and directory edges (docs/auth.md): who a request is, when a name outlives its person.

Real slapd (entries added, removed and renamed as its administrator), real redis-server, the app
through local/gateway.py; minutes pass on the fake clock."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest

from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import POOL, document
from tests.harness import HarnessFactory, basic


@pytest.fixture
def leaver(slapd: SlapdServer) -> Iterator[tuple[str, str]]:
    """A user of the test's own in the shared directory: (name, password); removed afterwards."""
    name, password = f"leaver{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    dn = slapd.add_user(name, password)
    yield name, password
    slapd.remove(dn)


def test_a_newcomers_password_does_not_read_the_departed_users_token_status(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """GET /token/<t> with Basic credentials answers the token's owner only. The departed person's
    entry removed and the name given to a newcomer, the newcomer's own password read the departed
    person's token (its times and running VMs) as theirs: the owner went by the name alone."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    old_token = api.new_token(name, password)
    old_vm = api.checkout(POOL, old_token)
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    newcomer = basic(name, newcomer_password)
    reply = api.call("GET", f"/api/v3/token/{old_token}", headers=newcomer)
    assert (reply.status, reply.body) == (403, {"ok": False, "error": "the token belongs to another user"})
    assert old_vm not in reply.raw.decode()
    # The newcomer's own token is theirs to read with their password.
    new_token = api.new_token(name, newcomer_password)
    assert api.call("GET", f"/api/v3/token/{new_token}", headers=newcomer).body[new_token]["user"] == name


@pytest.fixture
def private_slapd() -> Iterator[SlapdServer]:
    """A slapd of the test's own, to kill and start again."""
    with SlapdServer() as server:
        yield server


def test_the_directory_back_after_a_crash_is_every_user_back_at_the_first_retry(
        make_api: HarnessFactory, private_slapd: SlapdServer) -> None:
    """slapd killed (SIGKILL): logins, and tokens whose users' last answer is past the grace, are
    503 with Retry-After: 5. slapd started again, 8 users' logins at once are answered at once,
    and 8 others' token uses at their retry 5 s later. Before, ldap3 tried no address it had
    failed to reach for the next 5 s of wall clock (every login a 503 without a packet sent), and
    a token's failed directory question was asked again only a minute later (every retry within
    that minute a 503)."""
    directory = private_slapd
    ldap = directory.ldap_config()
    ldap["service_account_hash"] = {"user_dn": directory.service_dn, "password": directory.service_password}
    api = make_api(document({"provider": "ldap", "ldap": ldap, "directory_check_minutes": 10,
                             "directory_outage_grace_minutes": 60}))
    api.fill(POOL)
    users = {f"crew{index}": secrets.token_urlsafe(12) for index in range(16)}
    for name, password in users.items():
        directory.add_user(name, password)
    holders, newcomers = list(users)[:8], list(users)[8:]
    tokens = {name: api.new_token(name, users[name]) for name in holders}
    api.clock.advance(2 * 3600)  # every last answer past the grace

    def status(name: str) -> tuple[int, str | None]:
        reply = api.call("GET", f"/api/v3/token/{tokens[name]}", headers={"X-AUTH-TOKEN": tokens[name]})
        return reply.status, reply.headers.get("Retry-After")

    def log_in(name: str) -> tuple[int, str | None]:
        reply = api.call("POST", "/api/v3/token", headers=basic(name, users[name]))
        return reply.status, reply.headers.get("Retry-After")

    directory.kill()
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(status, holders)) | set(pool.map(log_in, newcomers)) == {(503, "5")}
        directory.relaunch()
        assert list(pool.map(log_in, newcomers)) == [(200, None)] * 8
        api.clock.advance(5)
        assert list(pool.map(status, holders)) == [(200, None)] * 8
