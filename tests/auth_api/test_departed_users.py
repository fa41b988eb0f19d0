"""Tokens of a user removed from the directory stop working within ``directory_check_minutes``;
a directory outage keeps the last answer for ``directory_outage_grace_minutes``, then is a 503.

Real slapd (entries added and removed as its administrator), real redis-server, the app through
local/gateway.py; the minutes pass on the fake clock."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import pytest

from chalicelib.auth.directory_check import user_hash
from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import Harness, HarnessFactory, basic
from tests.support import stop_process

UNAVAILABLE = {"ok": False, "error": "authentication service unavailable"}
GONE = {"ok": False, "error": "the token's user is no longer in the directory"}


def counting_lookups(api: Harness) -> list[str]:
    """The users the directory is asked about (the real lookup still runs)."""
    asked: list[str] = []
    check = api.services.directory_check
    lookup = check.lookup
    assert lookup is not None

    def counted(user: str) -> bool:
        asked.append(user)
        return lookup(user)

    check.lookup = counted
    return asked


def test_a_removed_users_tokens_answer_401_within_the_check_interval(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    asked = counting_lookups(api)
    name, password = leaver
    token = api.new_token(name, password)
    alice_token = api.new_token("alice", slapd.password("alice"))
    headers = {"X-AUTH-TOKEN": token}
    mine = api.checkout(POOL, token)
    assert asked == []  # the login has just found the user: no question per request

    slapd.remove(f"uid={name},{slapd.users_base}")
    # Within the interval the last answer stands (no LDAP per request)...
    api.clock.advance(9 * 60)
    assert api.call("PUT", f"/api/v3/vm/{mine}", headers=headers, body={"lifetime": 3}).status == 200
    assert asked == []
    # ...and once it is 10 minutes old, the directory is asked again, once, and every use is refused.
    api.clock.advance(60)
    for method, path, body in (("POST", f"/api/v3/vm/{POOL}", None), ("PUT", f"/api/v3/vm/{mine}", {"lifetime": 4}),
                               ("DELETE", f"/api/v3/vm/{mine}", None), ("POST", "/api/v3/ondemandvm", {POOL: 1}),
                               ("POST", f"/api/v3/vm/{mine}/snapshot", None)):
        reply = api.call(method, path, headers=headers, body=body)
        assert reply.status == 401, (method, path, reply.body)
        assert reply.body == {"ok": False, "error": "the token's user is no longer in the directory"}
    assert asked == [name]
    assert api.state_of(mine) == "running" and api.describe(mine)["lifetime"] == 3
    # Other users are not affected; the removed user cannot log in for a new token either.
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": alice_token}).status == 200
    assert api.call("POST", "/api/v3/token", headers=basic(name, password)).status == 401


def test_a_users_requests_at_once_ask_the_directory_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """A CI fleet of one user: when the answer gets old, one of its requests asks the directory,
    the others go by the last answer meanwhile (each asked: 20 binds at once, every interval)."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    mine = api.checkout(POOL, token)
    asked = counting_lookups(api)

    def use(_: int) -> int:
        return api.call("PUT", f"/api/v3/vm/{mine}", headers={"X-AUTH-TOKEN": token}, body={"lifetime": 3}).status

    api.clock.advance(10 * 60)
    with ThreadPoolExecutor(20) as pool:
        assert set(pool.map(use, range(40))) == {200}
    assert asked == [name]
    slapd.remove(f"uid={name},{slapd.users_base}")
    api.clock.advance(10 * 60)
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(use, range(40)))
    assert asked == [name, name]
    # Those that went by the last answer while the question was out were let in (seconds late);
    # from the answer on, every use is refused.
    assert 401 in statuses and set(statuses) <= {200, 401}
    assert use(0) == 401


def test_a_user_back_in_the_directory_is_let_in_at_the_next_check(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    api = make_api(document(ldap_auth(directory_check_minutes=5)))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    dn = f"uid={name},{slapd.users_base}"
    entry_uuid = slapd.entry_uuid(dn)
    slapd.remove(dn)
    api.clock.advance(5 * 60)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401
    slapd.add_user(name, password, entry_uuid=entry_uuid)  # removed by mistake, restored from a backup
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401
    api.clock.advance(5 * 60)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 200


def test_a_user_name_given_to_a_new_entry_does_not_inherit_the_departed_users_tokens(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The departed person's entry removed and the uid given to a newcomer (a new entry: a new
    entryUUID): the departed person's tokens are refused at the next check, as a removed user's,
    though the name is in the directory; the newcomer logs in and works. Before, the old tokens
    acted as the newcomer (returned and extended their VMs)."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    old_token = api.new_token(name, password)
    old_vm = api.checkout(POOL, old_token)
    dn = f"uid={name},{slapd.users_base}"
    slapd.remove(dn)
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    old = {"X-AUTH-TOKEN": old_token}
    api.clock.advance(10 * 60)
    for method, path, body in (("POST", f"/api/v3/vm/{POOL}", None), ("PUT", f"/api/v3/vm/{old_vm}", {"lifetime": 4}),
                               ("DELETE", f"/api/v3/vm/{old_vm}", None), ("GET", f"/api/v3/token/{old_token}", None)):
        reply = api.call(method, path, headers=old if method != "GET" else None, body=body)
        assert (reply.status, reply.body) == (401, GONE), (method, path)
    assert api.state_of(old_vm) == "running"
    # The departed person's password is the old entry's: refused. The newcomer's login works.
    assert api.call("POST", "/api/v3/token", headers=basic(name, password)).status == 401
    new_token = api.new_token(name, newcomer_password)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": new_token}).status == 200
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers=old).status == 401
    # Nothing of either token says which entry it was: no id or secret in the answers.
    described = api.call("GET", f"/api/v3/token/{new_token}")
    assert described.status == 200 and "entryuuid" not in str(described.body).lower()


def test_a_newcomers_login_ends_the_departed_users_tokens_at_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The newcomer's login is the directory's latest answer about the name: the departed person's
    tokens are refused from then on, not only once the last answer is directory_check_minutes old."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    old_token = api.new_token(name, password)
    asked = counting_lookups(api)
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": old_token}).status == 200  # cached
    new_token = api.new_token(name, newcomer_password)
    reply = api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": old_token})
    assert (reply.status, reply.body) == (401, GONE)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": new_token}).status == 200
    assert asked == []  # no directory lookup per request: the login's answer served


def test_a_token_made_before_entry_ids_were_saved_goes_by_the_name(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """What docs/auth.md says of tokens made by an earlier version (no entry id in their record):
    checked by the name only, as before: the name found again keeps them working."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    record = api.services.tokens.keys.token(hashlib.sha256(token.encode()).hexdigest())
    assert api.services.client.hdel(record, "entry") == 1  # as an earlier version made it
    slapd.remove(f"uid={name},{slapd.users_base}")
    slapd.add_user(name, secrets.token_urlsafe(12))
    api.clock.advance(10 * 60)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 200


def test_an_account_disabled_but_kept_in_the_directory_keeps_its_tokens_until_revoked(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """What docs/auth.md tells operators: the check asks whether the entry is still there (it cannot
    bind as the user without the password), so an account disabled by resetting its password (or a
    lock) keeps working tokens; its Basic login is refused, and an administrator revokes them."""
    api = make_api(document(ldap_auth(directory_check_minutes=5, admins=["alice"])))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    slapd.set_password(f"uid={name},{slapd.users_base}", secrets.token_urlsafe(16))
    api.clock.advance(5 * 60)
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 200
    assert api.call("POST", "/api/v3/token", headers=basic(name, password)).status == 401
    alice = basic("alice", slapd.password("alice"))
    listed = api.call("GET", f"/api/v3/token?user={name}", headers=alice)
    assert listed.status == 200
    for token_id in (key for key in listed.body if key != "ok"):
        deleted = api.call("DELETE", f"/api/v3/token/{token_id}?user={name}", headers=alice)
        assert deleted.status == 200
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401


def test_a_directory_outage_keeps_the_last_answer_for_the_grace_then_503(
        make_api: HarnessFactory, private_slapd: SlapdServer, monkeypatch: pytest.MonkeyPatch) -> None:
    directory = private_slapd
    # The directory's answers keep the usual timeout (a loaded machine may take more than 1 s for
    # a StartTLS login); only the questions to the stopped one use a short one, to be quick to
    # wait out.
    ldap = directory.service_account_config()
    api = make_api(document({"provider": "ldap", "ldap": ldap, "directory_check_minutes": 10,
                             "directory_outage_grace_minutes": 60}))
    api.fill(POOL)
    gone = directory.add_user("gone", "gone-Pass-9")
    token = api.new_token("alice", directory.password("alice"))
    gone_token = api.new_token("gone", "gone-Pass-9")
    directory.remove(gone)
    mine = api.checkout(POOL, token)

    def use(token: str) -> int:
        return api.call("PUT", f"/api/v3/vm/{mine}", headers={"X-AUTH-TOKEN": token}, body={"lifetime": 3}).status

    api.clock.advance(10 * 60)
    assert use(gone_token) == 401
    assert use(token) == 200

    assert directory.process is not None
    authenticator = api.services.authenticator
    with monkeypatch.context() as paused:
        paused.setattr(authenticator, "settings", dataclasses.replace(authenticator.settings, receive_timeout=1))
        stop_process(directory.process.pid)
        try:
            # Alice was found just now: her token works through the outage for an hour.
            for minutes in (11, 30, 18):
                api.clock.advance(minutes * 60)
                assert use(token) == 200
                # The user found missing stays refused.
                assert use(gone_token) == 401
            # Past the grace nobody can vouch for her: 503, never a 401 (nobody said she left) nor a 500.
            api.clock.advance(2 * 60)
            for _ in range(2):
                reply = api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token})
                assert (reply.status, reply.body) == (503, UNAVAILABLE)
                assert reply.headers["Retry-After"] == "5"
            assert api.state_of(api.ready(POOL)[0]) == "ready"
        finally:
            directory.process.send_signal(signal.SIGCONT)
    # The directory back: the next question (at the retry Retry-After asked for) lets her in.
    api.clock.advance(5)
    assert use(token) == 200


def test_without_a_service_account_or_with_checks_off_tokens_are_not_rechecked(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """Direct bind has no way to look a user up without the password (the directory may refuse
    anonymous reads, as this one does): tokens live until deleted or expired, as before."""
    name, password = leaver
    apis = [make_api(document(auth)) for auth in (ldap_auth(direct=True), ldap_auth(directory_check_minutes=0))]
    # The operator of the direct-bind service is told at load (tests/core/test_config.py).
    assert [[w for w in api.config.warnings if w.startswith("auth.directory_check_minutes")] != []
            for api in apis] == [True, False]
    tokens = [api.new_token(name, password) for api in apis]
    slapd.remove(f"uid={name},{slapd.users_base}")
    for api, token in zip(apis, tokens, strict=True):
        api.fill(POOL)
        api.clock.advance(24 * 3600)
        assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 200


def test_a_removed_users_token_status_is_401_like_every_use_of_the_token(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """GET /token/<t> takes the token in the path as its credential (vmfloaty's `token status`):
    a removed user's token still answered 200 there, with the user's running VMs, while it was a
    401 on every other route. Basic credentials of the removed user are refused by the directory."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    mine = api.checkout(POOL, token)
    entry_uuid = slapd.entry_uuid(f"uid={name},{slapd.users_base}")
    slapd.remove(f"uid={name},{slapd.users_base}")
    api.clock.advance(10 * 60)
    for headers in ({}, {"X-AUTH-TOKEN": token}):
        for version in (3, 1):
            reply = api.call("GET", f"/api/v{version}/token/{token}", headers=headers)
            assert (reply.status, reply.body) == (401, GONE), (headers, version)
            assert mine not in reply.raw.decode() and name not in reply.raw.decode()
    for method, path in (("GET", "/api/v3/token"), ("POST", "/api/v3/token"), ("GET", f"/api/v3/token/{token}"),
                         ("DELETE", f"/api/v3/token/{token}")):
        assert api.call(method, path, headers=basic(name, password)).status == 401, (method, path)
    # Put back (restored, the same entry), the user is answered again at the next check.
    slapd.add_user(name, password, entry_uuid=entry_uuid)
    api.clock.advance(10 * 60)
    assert api.call("GET", f"/api/v3/token/{token}").body[token]["vms"] == {"running": [mine]}


def test_each_request_checks_its_token_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer) -> None:
    """The rate limit looked the token up, then the handler again; the disk and snapshot routes
    checked it twice more (required_caller, then caller_for_change): up to three reads of the
    token, three of its user's directory record and two writes of ``last`` for one request. Once
    each now; the change's script still refuses a token deleted meanwhile (lua/token_live.lua)."""
    api = make_api(document(ldap_auth(directory_check_minutes=10), config={"rate_limiting_enabled": True}))
    api.fill(POOL)
    token = api.new_token("alice", slapd.password("alice"))
    mine = api.checkout(POOL, token)
    calls: list[str] = []
    for owner, name in ((api.services.tokens, "lookup"), (api.services.tokens, "touch"),
                        (api.services.directory_check, "standing")):
        original = getattr(owner, name)

        def counted(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(owner, name, counted)
    headers = {"X-AUTH-TOKEN": token}

    def checked_once(method: str, path: str, body: Any = None) -> Any:
        calls.clear()
        reply = api.call(method, path, headers=headers, body=body)
        assert reply.status in (200, 201, 202), (method, path, reply.body)
        assert sorted(calls) == ["lookup", "standing", "touch"], (method, path, calls)
        return reply.body

    snapshot = checked_once("POST", f"/api/v3/vm/{mine}/snapshot")[mine]["snapshot"]
    checked_once("POST", f"/api/v3/vm/{mine}/snapshot/{snapshot}")
    checked_once("POST", f"/api/v3/vm/{mine}/disk/8")
    checked_once("PUT", f"/api/v3/vm/{mine}", {"lifetime": 3})
    checked_once("POST", f"/api/v3/vm/{POOL}")
    request_id = checked_once("POST", "/api/v3/ondemandvm", {OTHER_POOL: 1})["request_id"]
    checked_once("GET", f"/api/v3/ondemandvm/{request_id}")
    checked_once("DELETE", f"/api/v3/ondemandvm/{request_id}")
    checked_once("DELETE", f"/api/v3/vm/{mine}")


def test_a_login_under_way_when_the_user_is_found_removed_does_not_bring_them_back(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The user's ``POST /token`` binds, then (the login still under way: a slow directory, a
    stalled process) the entry is removed and a use of the user's older token asks the directory,
    which answers "gone". The login recorded "present" once it ended, as of then: the later
    answer, so the removed user's tokens (the older one too) worked for another
    ``directory_check_minutes``. The login's answer is as of its question, before the removal."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    older = api.new_token(name, password)
    api.clock.advance(11 * 60)  # the older token's answer is due again
    logins = api.services.logins
    assert logins is not None
    bind = logins.authenticator.login_entry  # type: ignore[attr-defined]
    seen: list[int] = []

    def removed_while_logging_in(user: str, given: str) -> tuple[str, str | None] | None:
        found = bind(user, given)
        slapd.remove(f"uid={name},{slapd.users_base}")
        api.clock.advance(1)
        seen.append(api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": older}).status)
        seen.append(api.call("PUT", f"/api/v3/vm/{api.checkout(POOL)}", body={"lifetime": 3},
                             headers={"X-AUTH-TOKEN": older}).status)
        api.clock.advance(1)
        return found

    logins.authenticator.login_entry = removed_while_logging_in  # type: ignore[attr-defined]
    made = api.call("POST", "/api/v3/token", headers=basic(name, password))
    assert seen[-1] == 401, seen  # the directory said "gone" while the login was under way
    assert made.status == 200, made.raw  # the bind succeeded: the token is made, and worth nothing
    for token in (older, made.json["token"]):
        refused = api.call("GET", f"/api/v3/token/{token}")
        assert refused.status == 401 and refused.json == GONE, refused.raw


def test_a_tokens_status_checks_the_token_in_its_path_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """``GET /token/<t>`` (vmfloaty's ``token status``) with rate limits on: the limit counts the
    request as the path token's user, and the handler answers for that token. Each looked the
    token up and asked for its user's standing in the directory: two reads of the token and two
    of the user's directory record a request, which could answer otherwise. Once each now, and
    the answers stay: the owner's status, an unknown token's 404, a removed user's 401."""
    api = make_api(document(ldap_auth(directory_check_minutes=10), config={"rate_limiting_enabled": True}))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    mine = api.checkout(POOL, token)
    calls: list[str] = []
    for owner, method in ((api.services.tokens, "lookup"), (api.services.directory_check, "standing")):
        original = getattr(owner, method)

        def counted(*args: Any, _name: str = method, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        setattr(owner, method, counted)
    status = api.call("GET", f"/api/v3/token/{token}")
    assert status.status == 200 and status.body[token]["vms"]["running"] == [mine], status.body
    assert sorted(calls) == ["lookup", "standing"], calls
    calls.clear()
    assert api.call("GET", f"/api/v3/token/{'0' * 32}").status == 404
    assert calls == ["lookup"], calls
    slapd.remove(f"uid={name},{slapd.users_base}")
    api.clock.advance(11 * 60)
    calls.clear()
    removed = api.call("GET", f"/api/v3/token/{token}")
    assert removed.status == 401 and "no longer in the directory" in removed.body["error"], removed.body
    assert sorted(calls) == ["lookup", "standing"], calls


def test_an_administrator_lists_and_revokes_a_removed_users_tokens(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """A user removed from the directory cannot log in, so nobody could revoke their tokens: only
    their owner's Basic credentials deleted one. They stayed in Redis, and came back to life if the
    name was ever given to someone else, or the entry restored. An administrator now lists and
    deletes them (`?user=<name>`), or deletes any token held; nobody else may."""
    api = make_api(document(ldap_auth(admins=["alice"], directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    kept, lost = api.new_token(name, password), api.new_token(name, password)
    entry_uuid = slapd.entry_uuid(f"uid={name},{slapd.users_base}")
    slapd.remove(f"uid={name},{slapd.users_base}")
    api.clock.advance(10 * 60)
    admin, other = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    bob_token = api.new_token("bob", slapd.password("bob"))
    by_id = hashlib.sha256(lost.encode()).hexdigest()[:16]
    assert api.call("DELETE", f"/api/v3/token/{kept}", headers=basic(name, password)).status == 401

    # Not an administrator: refused, whichever way the user's tokens are named.
    before = api.redis_state()
    for method, path in (("GET", f"/api/v3/token?user={name}"), ("DELETE", f"/api/v3/token/{by_id}?user={name}"),
                         ("DELETE", f"/api/v3/token/{kept}"), ("DELETE", f"/api/v3/token/{kept}?user={name}")):
        refused = api.call(method, path, headers=other)
        assert refused.status == 403 and refused.body["ok"] is False, (method, path, refused.body)
    assert api.redis_state() == before
    assert api.call("GET", "/api/v3/token?user=%20alice", headers=admin).status == 400
    assert api.call("GET", f"/api/v3/token?user={'a' * 300}", headers=admin).status == 400

    listed = api.call("GET", f"/api/v3/token?user={name.upper()}", headers=admin)
    assert listed.status == 200 and set(listed.body) == {"ok", by_id, hashlib.sha256(kept.encode()).hexdigest()[:16]}
    assert api.call("DELETE", f"/api/v3/token/{by_id}?user={name}", headers=admin).body == {"ok": True}
    assert api.call("DELETE", f"/api/v3/token/{kept}", headers=admin).body == {"ok": True}
    assert api.call("GET", f"/api/v3/token?user={name}", headers=admin).status == 404
    assert api.client.smembers(api.store.keys.user_tokens(name)) == set()
    # Restored in the directory (the same entry), the user's old tokens stay revoked; bob's and
    # alice's own are untouched.
    slapd.add_user(name, password, entry_uuid=entry_uuid)
    api.clock.advance(10 * 60)
    for token in (kept, lost):
        assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401
    assert api.call("GET", "/api/v3/token", headers=other).status == 200
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": bob_token}).status == 200


def test_a_newcomer_given_a_departed_users_name_cannot_act_on_their_vms(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The departed person's entry removed and the uid given to a newcomer (a new entry, a new
    entryUUID): the newcomer's own fresh token is refused (403, nothing changed) on the departed
    person's VMs still running (checked out, or delivered to an on-demand request) and on their
    on-demand request. Before, ownership went by the name: the newcomer returned, extended,
    snapshotted and grew them. The newcomer's own VMs are theirs."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL, OTHER_POOL)
    name, password = leaver
    old = {"X-AUTH-TOKEN": api.new_token(name, password)}
    old_vm = api.checkout(POOL, old["X-AUTH-TOKEN"])
    request_id = api.call("POST", "/api/v3/ondemandvm", headers=old, body={OTHER_POOL: 1}).body["request_id"]
    api.run_passes(OTHER_POOL)
    delivered = api.call("GET", f"/api/v3/ondemandvm/{request_id}", headers=old).body
    assert delivered["ready"] is True, delivered
    ondemand_vm = delivered[OTHER_POOL]["hostname"][0].split(".")[0]
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    new_token = api.new_token(name, newcomer_password)
    new = {"X-AUTH-TOKEN": new_token}
    used = api.services.tokens.keys.token(hashlib.sha256(new_token.encode()).hexdigest())

    def unchanged() -> dict[str, Any]:
        return {key: value for key, value in api.redis_state().items() if key != used}  # its `last` is set

    before = unchanged()
    for vm in (old_vm, ondemand_vm):
        refused = (403, {"ok": False, "error": f"VM {vm} was checked out by another user"})
        for method, path, body in (("DELETE", f"/api/v3/vm/{vm}", None), ("PUT", f"/api/v3/vm/{vm}", {"lifetime": 4}),
                                   ("PUT", f"/api/v3/vm/{vm}", {"disk": 8}),
                                   ("POST", f"/api/v3/vm/{vm}/snapshot", None),
                                   ("POST", f"/api/v3/vm/{vm}/disk/8", None), ("DELETE", f"/api/v1/vm/{vm}", None)):
            reply = api.call(method, path, headers=new, body=body)
            assert (reply.status, reply.body) == refused, (method, path, reply.body)
    for method in ("GET", "DELETE"):
        reply = api.call(method, f"/api/v3/ondemandvm/{request_id}", headers=new)
        assert (reply.status, reply.body) == (403, {"ok": False, "error": "the request belongs to another user"})
    assert unchanged() == before
    assert api.state_of(old_vm) == api.state_of(ondemand_vm) == "running"
    # The newcomer's own VMs are theirs to change and return.
    mine = api.checkout(POOL, new_token)
    assert api.call("PUT", f"/api/v3/vm/{mine}", headers=new, body={"lifetime": 3}).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{mine}", headers=new).body == {"ok": True}


def test_a_vm_checked_out_before_entries_were_recorded_goes_by_the_name(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """What docs/auth.md says of VMs checked out by an earlier version (no entry on their record):
    their owner is the name, whoever holds it now; a token of the entry that checked one out
    still returns it once a VM's entry is recorded, and a VM back in the pool keeps none."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    old = {"X-AUTH-TOKEN": api.new_token(name, password)}
    earlier, recorded = api.checkout(POOL, old["X-AUTH-TOKEN"]), api.checkout(POOL, old["X-AUTH-TOKEN"])
    record = api.store.keys.vm(earlier)
    entry = slapd.entry_uuid(f"uid={name},{slapd.users_base}")
    assert api.client.hget(record, "token_entry") == f"entryUUID:{entry}"
    assert api.client.hdel(record, "token_entry") == 1  # as an earlier version checked it out
    assert api.call("PUT", f"/api/v3/vm/{recorded}", headers=old, body={"lifetime": 3}).status == 200
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    new = {"X-AUTH-TOKEN": api.new_token(name, newcomer_password)}
    assert api.call("DELETE", f"/api/v3/vm/{recorded}", headers=new).status == 403
    assert api.call("DELETE", f"/api/v3/vm/{earlier}", headers=new).body == {"ok": True}


def test_an_id_of_another_attribute_is_not_another_entry(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """A token made while the directory showed 389's nsUniqueId, the directory showing entryUUID
    since (its entryUUID plugin turned on): the two ids cannot be compared, so the name decides,
    as for a token without an id. Before, every such token was refused as another entry's at the
    next check, and every user's VMs were another's."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    name, password = leaver
    token = api.new_token(name, password)
    vm = api.checkout(POOL, token)
    earlier = "nsUniqueId:66446001-1dd2-11b2-8a9e-d8d22ba0e2d3"  # as 389 showed the entry
    api.client.hset(api.services.tokens.keys.token(hashlib.sha256(token.encode()).hexdigest()), "entry", earlier)
    api.client.hset(api.store.keys.vm(vm), "token_entry", earlier)
    api.clock.advance(10 * 60)
    assert api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": token}, body={"lifetime": 3}).status == 200
    # A token of the entryUUID the directory shows now goes by the name on that VM too.
    newer = {"X-AUTH-TOKEN": api.new_token(name, password)}
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers=newer).body == {"ok": True}


def test_a_users_requests_with_no_answer_kept_ask_the_directory_once(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """16 ``GET /token/<t>`` of one user at once, nothing having used the user's tokens for the
    record's life (no answer kept: none to go by while one is asked): one asks the directory, the
    others wait for its answer. Before, each asked (16 binds and searches at once). The question
    is held until the other 15 wait for it, so that all 16 are at once whatever the machine's load."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    name, password = leaver
    token = api.new_token(name, password)
    check = api.services.directory_check
    api.client.delete(check.keys.directory_check(user_hash(name)))  # expired: unused for its life
    lookup = check.lookup
    assert lookup is not None
    asked: list[str] = []
    all_there = threading.Event()

    def held(user: str) -> bool | str:
        asked.append(user)
        for _ in range(2000):  # bounded: without the grouping nobody waits, and each asks after 2 s
            if check.waiting(user) == 15 or all_there.wait(0.001):
                all_there.set()
                break
        return lookup(user)

    check.lookup = held
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda _: api.call("GET", f"/api/v3/token/{token}"), range(16)))
    assert [reply.status for reply in replies] == [200] * 16
    assert asked == [name]
    # The answer is kept for the user's next requests.
    assert api.call("GET", f"/api/v3/token/{token}").status == 200 and asked == [name]


def test_a_request_waits_for_anothers_question_only_so_long(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """A request waiting for the answer another request is getting about its user waits at most
    ``wait_seconds`` (the directory's connect and login timeouts), then is answered as during a
    directory outage: here, the token's login older than the grace, 503, never a hang. The
    question asked answers its own request."""
    api = make_api(document(ldap_auth(directory_check_minutes=10, directory_outage_grace_minutes=60)))
    name, password = leaver
    token = api.new_token(name, password)
    api.clock.advance(61 * 60)
    check = api.services.directory_check
    assert check.wait_seconds == 2 + 20 + 1  # the test slapd's connect_timeout, the default login_timeout
    check.wait_seconds = 0.05
    api.client.delete(check.keys.directory_check(user_hash(name)))
    lookup = check.lookup
    assert lookup is not None
    asking, released = threading.Event(), threading.Event()

    def stalled(user: str) -> bool | str:
        asking.set()
        released.wait(30)
        return lookup(user)

    check.lookup = stalled
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(api.call, "GET", f"/api/v3/token/{token}")
        assert asking.wait(30)
        waited = api.call("GET", f"/api/v3/token/{token}")
        released.set()
        assert (waited.status, waited.body) == (503, UNAVAILABLE)
        assert first.result().status == 200


def test_a_newcomer_given_a_departed_admins_name_is_no_member_of_their_admin_group(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The departed person was in an admin group; their entry deleted on a directory without
    referential integrity, the group still names their DN, which the newcomer's entry (same uid,
    same base) has now. Before, the group was read for the DN and the newcomer changed pools as an
    administrator; membership now goes by the entry's own ``memberOf``, which the directory wrote
    for the departed entry and not for the newcomer's."""
    api = make_api(document(ldap_auth(admin_groups=[slapd.admin_group], directory_check_minutes=10),
                            config={"experimental_features": True}))
    name, password = leaver
    dn = f"uid={name},{slapd.users_base}"
    slapd.add_member(slapd.admin_group, dn)
    try:
        departed = {"X-AUTH-TOKEN": api.new_token(name, password)}
        changed = api.call("POST", "/api/v3/config/poolsize", headers=departed, body={POOL: "4"})
        assert changed.status == 201, changed.body
        slapd.remove(dn)
        newcomer_password = secrets.token_urlsafe(12)
        slapd.add_user(name, newcomer_password)
        assert dn.lower() in slapd.members(slapd.admin_group)  # the stale DN, now the newcomer's
        newcomer = {"X-AUTH-TOKEN": api.new_token(name, newcomer_password)}
        refused = api.call("POST", "/api/v3/config/poolsize", headers=newcomer, body={POOL: "6"})
        assert (refused.status, refused.body) == (
            403, {"ok": False, "error": "only administrators may change pools at runtime"})
        assert api.services.pool(POOL).size == 4
        # An operator who means the newcomer to be one puts the entry in the group again (the
        # stale value out first: the directory refuses a value the group holds).
        slapd.remove_member(slapd.admin_group, dn)
        slapd.add_member(slapd.admin_group, dn)
        assert api.call("POST", "/api/v3/config/poolsize", headers=newcomer, body={POOL: "6"}).status == 201
    finally:
        slapd.remove_member(slapd.admin_group, dn)


def _departed_and_newcomer(api: Harness, slapd: SlapdServer, leaver: tuple[str, str],
                           tokens: int) -> tuple[list[str], dict[str, str], str]:
    """The departed person's ``tokens`` tokens, their entry removed and the name given to a
    newcomer (a new entry): (the departed tokens, the newcomer's Basic headers, their password)."""
    name, password = leaver
    departed = [api.new_token(name, password) for _ in range(tokens)]
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    return departed, basic(name, newcomer_password), newcomer_password


def _token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def test_a_newcomers_token_listing_shows_none_of_the_departed_users_tokens(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """``GET /token`` with the newcomer's Basic credentials: the departed person's tokens are
    revoked, not listed. Before, the newcomer was shown their ids, created and last as their own."""
    api = make_api(document(ldap_auth(directory_check_minutes=10)))
    api.fill(POOL)
    departed, newcomer, newcomer_password = _departed_and_newcomer(api, slapd, leaver, 3)
    assert api.call("GET", "/api/v3/token", headers=newcomer).status == 404  # no tokens: vmpooler's 404
    mine = api.new_token(leaver[0], newcomer_password)
    listed = api.call("GET", "/api/v3/token", headers=newcomer)
    assert (listed.status, set(listed.body)) == (200, {"ok", _token_id(mine)})
    for token in departed:
        assert api.client.exists(api.services.tokens.keys.token(hashlib.sha256(token.encode()).hexdigest())) == 0
        assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401


def test_the_departed_users_tokens_do_not_count_against_the_newcomers_limit(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The departed person held ``max_tokens_per_user`` tokens: the newcomer's ``POST /token``
    revokes them and makes theirs. Before, it was ``403 delete one first`` for tokens the newcomer
    never made (and could only find by listing the departed person's)."""
    api = make_api(document(ldap_auth(directory_check_minutes=10), config={"max_tokens_per_user": 2}))
    departed, newcomer, _ = _departed_and_newcomer(api, slapd, leaver, 2)
    made = api.call("POST", "/api/v3/token", headers=newcomer)
    assert made.status == 200, made.body
    assert api.call("POST", "/api/v3/token", headers=newcomer).status == 200
    refused = api.call("POST", "/api/v3/token", headers=newcomer)  # the newcomer's own limit holds
    assert refused.status == 403 and "delete one first" in refused.body["error"]
    listed = api.call("GET", "/api/v3/token", headers=newcomer)
    assert len(listed.body) == 1 + 2 and not {_token_id(token) for token in departed} & set(listed.body)


def test_the_departed_users_vms_and_requests_do_not_use_the_newcomers_quota(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    """The departed person's VM and on-demand request still held under the name: the newcomer's
    quota counts the newcomer's own only. Before, quotas went by the name: the newcomer's first
    checkout was ``403 you may hold at most 2 VMs``, for VMs they never took."""
    api = make_api(document(ldap_auth(directory_check_minutes=10),
                            config={"max_running_vms_per_user": 2, "max_ondemand_requests_per_user": 1}))
    api.fill(POOL)
    name, password = leaver
    departed = {"X-AUTH-TOKEN": api.new_token(name, password)}
    api.checkout(POOL, departed["X-AUTH-TOKEN"])
    assert api.call("POST", "/api/v3/ondemandvm", headers=departed, body={OTHER_POOL: 1}).status == 201
    slapd.remove(f"uid={name},{slapd.users_base}")
    newcomer_password = secrets.token_urlsafe(12)
    slapd.add_user(name, newcomer_password)
    newcomer = {"X-AUTH-TOKEN": api.new_token(name, newcomer_password)}
    taken = api.call("POST", f"/api/v3/vm/{POOL}", headers=newcomer)
    assert taken.status == 200, taken.body
    assert api.call("POST", "/api/v3/ondemandvm", headers=newcomer, body={OTHER_POOL: 1}).status == 201
    # The newcomer's own quota holds: two VMs held (one checked out, one asked for).
    refused = api.call("POST", f"/api/v3/vm/{POOL}", headers=newcomer)
    assert refused.status == 403 and "at most 2 VMs" in refused.body["error"], refused.body
