"""Identity and directory edges (docs/auth.md): who a request is, when a name outlives its person.

Real slapd (entries added, removed and renamed as its administrator), real redis-server, the app
through local/gateway.py; minutes pass on the fake clock."""

from __future__ import annotations

import hashlib
import secrets
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Callable, Iterator

import pytest

import app as chalice_app
from chalicelib.api.tokens import OTHERS_TOKENS_REFUSED
from chalicelib.auth.secrets import SecretResolver
from chalicelib.config import ConfigError, build
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import POOL, document
from tests.harness import Harness, HarnessFactory, basic


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


def test_the_directory_back_after_a_crash_is_every_user_back_at_the_first_retry(
        make_api: HarnessFactory, private_slapd: SlapdServer) -> None:
    """slapd killed (SIGKILL): logins, and tokens whose users' last answer is past the grace, are
    503 with Retry-After: 5. slapd started again, 8 users' logins at once are answered at once,
    and 8 others' token uses at their retry 5 s later. Before, ldap3 tried no address it had
    failed to reach for the next 5 s of wall clock (every login a 503 without a packet sent), and
    a token's failed directory question was asked again only a minute later (every retry within
    that minute a 503)."""
    directory = private_slapd
    ldap = directory.service_account_config()
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


EXPERIMENTAL = {"experimental_features": True}


def _resize(api: Harness, token: str, size: str = "4") -> int:
    reply = api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": token}, body={POOL: size})
    return reply.status


def test_an_admin_listed_by_entry_id_stays_one_through_a_rename_and_their_old_name_is_nobodys_admin(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """``auth.admins`` listed names only: the admin renamed (a modrdn, the same entry) lost the
    rights, and whoever was given the old name next had them. Listed by the entry's entryUUID (as
    the operator copies it, any case), the person is the admin under any name, and a newcomer
    given the old name is not, on the pool routes and on another user's tokens."""
    name, password = leaver
    dn = f"uid={name},{slapd.users_base}"
    listed = f"ENTRYUUID:{slapd.entry_uuid(dn).upper()}"
    api = make_api(document(ldap_auth(admins=[listed], directory_check_minutes=10), config=EXPERIMENTAL))
    assert _resize(api, api.new_token(name, password)) == 201
    assert _resize(api, api.new_token("bob", slapd.password("bob"))) == 403

    renamed = f"{name}r"
    new_dn = slapd.rename(dn, renamed)
    newcomer_password = secrets.token_urlsafe(12)
    newcomer_dn = slapd.add_user(name, newcomer_password)
    try:
        newcomer = api.new_token(name, newcomer_password)
        assert _resize(api, newcomer, "5") == 403
        bobs = api.call("GET", "/api/v3/token?user=bob", headers=basic(name, newcomer_password))
        assert (bobs.status, bobs.body["error"]) == (403, OTHERS_TOKENS_REFUSED)
        assert _resize(api, api.new_token(renamed, password), "5") == 201
        assert api.call("GET", "/api/v3/token?user=bob", headers=basic(renamed, password)).status == 200
        assert api.services.pool(POOL).size == 5
    finally:
        slapd.remove(newcomer_dn)
        slapd.remove(new_dn)


def test_an_admin_listed_by_name_keeps_a_token_made_before_entry_ids_were_saved(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """Upgrading changes nothing for admins listed by name: a token written the old way (no entry
    id in its record) still changes pools. Listed by entry id, such a token is not matched (its
    entry is unknown): the admin logs in again for one that is."""
    name, password = leaver
    listed = f"entryUUID:{slapd.entry_uuid(f'uid={name},{slapd.users_base}')}"
    for admins, status in ((name, 201), (listed, 403)):
        api = make_api(document(ldap_auth(admins=[admins]), config=EXPERIMENTAL))
        token = api.new_token(name, password)
        assert api.services.client.hdel(api.services.tokens.keys.token(hashlib.sha256(token.encode()).hexdigest()),
                                        "entry") == 1  # as an earlier version made it
        assert _resize(api, token) == status
    assert _resize(api, api.new_token(name, password), "5") == 201


def test_an_admin_groups_member_by_a_name_given_to_them_is_not_the_departed_users_token(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """With directory checks off (tokens live as vmpooler's), a departed person's token went on
    working, and the admin group's membership was read of whoever holds the name now: the
    newcomer given it, put in the admin group, made the departed person's token an
    administrator's. The entry the token's login bound as is not in the group: 403."""
    name, password = leaver
    api = make_api(document(ldap_auth(admin_groups=[slapd.admin_group], directory_check_minutes=0),
                            config=EXPERIMENTAL))
    departed = api.new_token(name, password)
    assert _resize(api, departed) == 403
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    newcomer_dn = slapd.add_user(name, newcomer_password)
    slapd.add_member(slapd.admin_group, newcomer_dn)
    try:
        assert _resize(api, departed) == 403
        assert _resize(api, api.new_token(name, newcomer_password)) == 201
    finally:
        slapd.remove_member(slapd.admin_group, newcomer_dn)


@pytest.mark.parametrize("item", ["entryUUID:not-a-uuid", "uuid:0b6f1e0c-3e28-103f-8a5b-2d9b7c0f1a11", ":x"])
def test_an_admins_item_naming_no_user_and_no_entry_is_refused_at_load(ldap_auth, item: str) -> None:
    """A mistyped entry id made nobody an administrator, silently: refused with its key path."""
    with pytest.raises(ConfigError) as refused:
        build(document(ldap_auth(admins=["alice", item])))
    assert [problem.split(":")[0] for problem in refused.value.problems] == ["auth.admins[1]"]


RATES = {"global_per_ip": {"limit": 3, "period": 60}, "authenticated": {"limit": 4, "period": 60}}


def test_a_name_given_to_a_newcomer_is_a_request_budget_of_its_own(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer) -> None:
    """Eight users at once each have their own ``authenticated`` budget. With directory checks off
    (a departed person's tokens keep working, as in vmpooler), a name given to a newcomer was
    counted as one client with the departed person: their CI left the newcomer 429 on their
    first request. The budget goes by the name and the entry the token's login bound as."""
    api = make_api(document(ldap_auth(directory_check_minutes=0), config={"rate_limiting_enabled": True},
                            rate_limits=RATES))
    crew = {f"rate{secrets.token_hex(4)}": secrets.token_urlsafe(12) for _ in range(8)}
    entries = {name: slapd.add_user(name, password) for name, password in crew.items()}
    try:
        tokens = {name: api.new_token(name, password) for name, password in crew.items()}

        def spend(name: str) -> list[int]:
            return [api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": tokens[name]}).status
                    for _ in range(5)]

        with ThreadPoolExecutor(len(crew)) as pool:
            assert list(pool.map(spend, crew)) == [[200] * 4 + [429]] * len(crew)
        name = next(iter(crew))
        slapd.remove(entries[name])
        newcomer_password = secrets.token_urlsafe(12)
        entries[name] = slapd.add_user(name, newcomer_password)
        newcomer = api.new_token(name, newcomer_password)
        assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": newcomer}).status == 200
        assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": tokens[name]}).status == 429
    finally:
        for dn in entries.values():
            slapd.remove(dn)


@pytest.fixture
def logging_slapd() -> Iterator[SlapdServer]:
    """A slapd of the test's own that logs every operation."""
    with SlapdServer(log_level="stats") as server:
        yield server


def test_a_refused_service_password_is_not_sent_again_by_any_process_until_changed(
        make_api: HarnessFactory, logging_slapd: SlapdServer) -> None:
    """A wrong service-account password: each login, of every user and every API process, bound
    with it again (a directory locks an account out after a few refusals, and it stays locked
    after the password is fixed). Refused once, it is not sent again within the hold, by this
    process or another (a new one, on the same Redis): 503 at once, without a connection to the
    directory. The right one is tried at once."""
    directory = logging_slapd
    crew = {f"svc{index}": secrets.token_urlsafe(12) for index in range(8)}
    for name, password in crew.items():
        directory.add_user(name, password)

    def service(password: str) -> dict[str, Any]:
        ldap = directory.ldap_config(encryption="plain")
        ldap["service_account_hash"] = {"user_dn": directory.service_dn, "password": password}
        return document({"provider": "ldap", "ldap": ldap})

    def service_binds() -> int:
        log = (directory.directory / "slapd.log").read_text(errors="replace")
        return log.count(f'BIND dn="{directory.service_dn}"')

    def connections() -> int:
        return (directory.directory / "slapd.log").read_text(errors="replace").count(" ACCEPT from ")

    def log_in(api: Harness, name: str) -> int:
        return api.call("POST", "/api/v3/token", headers=basic(name, crew[name])).status

    api = make_api(service("a-typo"))
    assert log_in(api, "svc0") == 503
    opened = connections()
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(partial(log_in, api), crew)) == {503}
        another_process = make_api(service("a-typo"), client=api.services.client)
        assert set(pool.map(partial(log_in, another_process), crew)) == {503}
    assert service_binds() == 1
    assert connections() == opened  # held: not even a connection
    fixed = make_api(service(directory.service_password), client=api.services.client)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(partial(log_in, fixed), crew)) == {200}
    assert "a-typo" not in str(api.redis_state())


def test_two_refused_service_passwords_in_use_at_once_are_each_held(
        make_api: HarnessFactory, logging_slapd: SlapdServer) -> None:
    """The service password is a secret each process caches (5 minutes): rotated in the directory,
    processes still carrying the one before it, and the secret rewritten with a typo in the new
    one, both refused. One record per account held the last refusal only: each process's refusal
    replaced the other's, so neither password was held and every login sent its own again (16
    logins alternating between two processes: 16 refused binds, a locked account). Each refused
    password is held on its own: 2 binds. The right one is tried at once."""
    directory = logging_slapd
    crew = {f"rot{index}": secrets.token_urlsafe(12) for index in range(8)}
    for name, password in crew.items():
        directory.add_user(name, password)
    ldap = directory.ldap_config(encryption="plain")
    ldap["service_account_hash"] = {"user_dn": directory.service_dn,
                                    "password": {"secret": "vmpool/ldap", "key": "password"}}
    doc = document({"provider": "ldap", "ldap": ldap})

    class CachedSecret:
        """What one process's cache holds of the secret (Powertools' SecretsProvider.get)."""

        def __init__(self, password: str) -> None:
            self.password = password

        def get(self, name: str, **options: Any) -> dict[str, str]:
            return {"password": self.password}

    def process(password: str, client: Any = None) -> Harness:
        return make_api(doc, client=client, secrets=SecretResolver(secrets_provider=CachedSecret(password)))

    def service_binds() -> int:
        return (directory.directory / "slapd.log").read_text(errors="replace").count(
            f'BIND dn="{directory.service_dn}"')

    before = process("before-the-rotation")
    typo = process("after-the-rotatoin", before.services.client)
    for name in crew:
        for api in (before, typo):
            chalice_app._services = api.services  # the request reaches that process (make_harness restores)
            assert api.call("POST", "/api/v3/token", headers=basic(name, crew[name])).status == 503
    assert service_binds() == 2
    fixed = process(directory.service_password, before.services.client)
    assert fixed.call("POST", "/api/v3/token", headers=basic("rot0", crew["rot0"])).status == 200
    state = str(before.redis_state())
    assert "before-the-rotation" not in state and "after-the-rotatoin" not in state


def test_a_user_renamed_in_the_directory_keeps_their_vms_and_ondemand_requests(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """Renamed (a modrdn: the same entry, its entryUUID kept), the user's tokens under the old
    name stop (the name finds no entry) and they log in by the new one: their VMs and on-demand
    request, recorded under the old name, were another user's to them (403), left to run out.
    The same entry is the same owner under any name; another user is still refused."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    old = {"X-AUTH-TOKEN": api.new_token(name, password)}
    vm = api.checkout(POOL, old["X-AUTH-TOKEN"])
    request_id = api.call("POST", "/api/v3/ondemandvm", headers=old, body={POOL: 1}).body["request_id"]
    renamed = f"{name}r"
    new_dn = slapd.rename(f"uid={name},{slapd.users_base}", renamed)
    try:
        new = {"X-AUTH-TOKEN": api.new_token(renamed, password)}
        bob = {"X-AUTH-TOKEN": api.new_token("bob", slapd.password("bob"))}
        assert api.call("PUT", f"/api/v3/vm/{vm}", headers=bob, body={"lifetime": 3}).status == 403
        assert api.call("PUT", f"/api/v3/vm/{vm}", headers=new, body={"lifetime": 3}).status == 200
        assert api.call("GET", f"/api/v3/ondemandvm/{request_id}", headers=new).status in (200, 202)
        assert api.call("DELETE", f"/api/v3/ondemandvm/{request_id}", headers=new).status == 200
        assert api.call("DELETE", f"/api/v3/vm/{vm}", headers=new).body == {"ok": True}
    finally:
        slapd.remove(new_dn)
