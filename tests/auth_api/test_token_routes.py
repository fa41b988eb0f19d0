"""The /token routes over HTTP, against a real slapd and redis-server."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis

from chalicelib.api import tokens
from chalicelib.auth.tokens import PENDING_SECONDS, TOKEN_PREFIX, DeleteResult
from chalicelib.config import build
from chalicelib.manager.dispatch import Ticker
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.timestamps import ruby_time
from tests.auth.slapd import PEOPLE_OU, SlapdServer
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import Harness, basic, route_target, routes_of
from tests.support import RedisRoundTrips, redis_commands

WWW_AUTHENTICATE = 'Basic realm="Authentication required"'
VERSIONS = (3, 2, 1)


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:16]


@pytest.mark.parametrize("version", VERSIONS)
def test_token_life_cycle_under_every_api_version(ldap_api: Harness, slapd, version):
    alice = basic("alice", slapd.password("alice"))
    created_at = ruby_time(ldap_api.clock.now())
    created = ldap_api.call("POST", f"/api/v{version}/token", headers=alice)
    assert created.status == 200
    assert created.headers["Content-Type"] == "application/json"
    token = created.body["token"]
    assert len(token) == 32 and token.isalnum() and token == token.lower()

    ldap_api.clock.advance(60)
    used_at = ruby_time(ldap_api.clock.now())
    vm = ldap_api.checkout(POOL, token)
    listed = ldap_api.call("GET", f"/api/v{version}/token", headers=alice)
    assert listed.status == 200
    assert listed.body == {"ok": True, token_id(token): {"created": created_at, "last": used_at}}

    shown = ldap_api.call("GET", f"/api/v{version}/token/{token}", headers={"X-AUTH-TOKEN": token})
    assert shown.status == 200
    assert shown.body == {"ok": True, token: {"user": "alice", "created": created_at,
                                              "last": used_at, "vms": {"running": [vm]}}}

    deleted = ldap_api.call("DELETE", f"/api/v{version}/token/{token}", headers=alice)
    assert (deleted.status, deleted.body) == (200, {"ok": True})
    none_left = ldap_api.call("GET", f"/api/v{version}/token", headers=alice)
    assert (none_left.status, none_left.body) == (404, {"ok": False})  # vmpooler's answer for no tokens
    # A deleted token is refused wherever it is sent.
    gone = ldap_api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": token})
    assert gone.status == 401
    assert ldap_api.call("DELETE", f"/api/v{version}/token/{token}", headers=alice).status == 404


def test_redis_holds_only_token_hashes(ldap_api: Harness, slapd):
    token = ldap_api.new_token("alice", slapd.password("alice"))
    vm = ldap_api.checkout(POOL, token)
    dump = []
    for key in ldap_api.services.client.scan_iter("*"):
        dump.append(key)
        kind = ldap_api.services.client.type(key)
        if kind == "hash":
            dump.extend(f"{k}={v}" for k, v in ldap_api.services.client.hgetall(key).items())
        elif kind in ("set", "zset"):
            dump.extend(ldap_api.services.client.smembers(key) if kind == "set"
                        else ldap_api.services.client.zrange(key, 0, -1))
        elif kind == "string":
            dump.append(ldap_api.services.client.get(key))
    assert not any(token in str(item) for item in dump)
    assert f"{TOKEN_PREFIX}{hashlib.sha256(token.encode()).hexdigest()}" in dump
    # The VM records its owner and the token's id, not the token (vmpooler stored token:token).
    record = ldap_api.services.store.get_vm(vm)
    assert record.token_user == "alice" and record.raw["token_id"] == token_id(token)


def test_basic_auth_failures_are_401_with_the_challenge(ldap_api: Harness, slapd):
    for headers in ({}, basic("alice", "wrong"), basic("nobody", "x-Pass-1"), basic("alice", ""),
                    basic("*)(uid=*", slapd.password("alice")), {"Authorization": "Bearer abc"},
                    {"Authorization": "Basic !!!"}):
        for method in ("GET", "POST"):
            reply = ldap_api.call(method, "/api/v3/token", headers=headers)
            assert reply.status == 401, (headers, reply.raw)
            assert reply.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
            assert reply.body["ok"] is False
    assert ldap_api.services.client.keys(f"{TOKEN_PREFIX}*") == []


def test_refused_credentials_are_told_apart_from_none_but_not_by_who_exists(ldap_api: Harness, slapd):
    """A wrong password is a 401 that says the credentials were refused (before: "authentication
    required", as if none had been sent, so a user retyping a password saw nothing wrong with it);
    an unknown user gets the very same answer, and only a request without Basic credentials is
    told they are required."""
    def answer(headers: dict[str, str]) -> tuple[int, dict[str, Any], str]:
        reply = ldap_api.call("POST", "/api/v3/token", headers=headers)
        return reply.status, reply.body, reply.headers["WWW-Authenticate"]

    refused = answer(basic("alice", "wrong"))
    assert refused == (401, {"ok": False, "error": tokens.BASIC_AUTH_REFUSED}, WWW_AUTHENTICATE)
    assert answer(basic("nobody", "x-Pass-1")) == refused
    assert answer({"Authorization": "Basic !!!"}) == refused
    for nothing in ({}, {"Authorization": "Bearer abc"}):
        assert answer(nothing) == (401, {"ok": False, "error": tokens.BASIC_AUTH_REQUIRED}, WWW_AUTHENTICATE)


def test_get_token_lists_only_the_callers_tokens(ldap_api: Harness, slapd):
    alice_tokens = {ldap_api.new_token("alice", slapd.password("alice")) for _ in range(2)}
    bob_token = ldap_api.new_token("bob", slapd.password("bob"))
    alice = ldap_api.call("GET", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).body
    bob = ldap_api.call("GET", "/api/v3/token", headers=basic("bob", slapd.password("bob"))).body
    assert set(alice) == {"ok"} | {token_id(t) for t in alice_tokens}
    assert set(bob) == {"ok", token_id(bob_token)}


def test_get_token_is_answered_to_its_holder_or_its_owner(ldap_api: Harness, slapd):
    token = ldap_api.new_token("alice", slapd.password("alice"))
    bob_token = ldap_api.new_token("bob", slapd.password("bob"))
    path = f"/api/v3/token/{token}"

    # vmfloaty's `token status` sends the token in the path and nothing else: it proves itself.
    bare = ldap_api.call("GET", path)
    assert bare.status == 200 and bare.body[token]["user"] == "alice"
    assert bare.body[token]["vms"] == {"running": []}
    # Holding another token does not hide this one (the path proves it) ...
    assert ldap_api.call("GET", path, headers={"X-AUTH-TOKEN": bob_token}).body[token]["user"] == "alice"
    # ... but Basic credentials are checked: another user's are refused, wrong ones are a 401.
    other_user = ldap_api.call("GET", path, headers=basic("bob", slapd.password("bob")))
    assert other_user.status == 403 and "alice" not in other_user.raw.decode()
    assert ldap_api.call("GET", path, headers=basic("alice", "wrong")).status == 401
    # ... whatever else comes with them: a live X-AUTH-TOKEN does not stand in for them.
    for held in (token, bob_token):
        assert ldap_api.call("GET", path, headers={"X-AUTH-TOKEN": held, **basic("alice", "wrong")}).status == 401
        assert ldap_api.call("GET", path, headers={"X-AUTH-TOKEN": held,
                                                   **basic("bob", slapd.password("bob"))}).status == 403

    by_owner = ldap_api.call("GET", path, headers=basic("alice", slapd.password("alice")))
    assert by_owner.status == 200 and by_owner.body[token]["user"] == "alice"
    by_token = ldap_api.call("GET", path, headers={"X-AUTH-TOKEN": token})
    assert by_token.status == 200 and by_token.body[token]["user"] == "alice"

    # A token nobody holds shows nothing, whoever asks.
    unknown = "0" * 32
    for headers in ({}, {"X-AUTH-TOKEN": token}, basic("alice", slapd.password("alice"))):
        missing = ldap_api.call("GET", f"/api/v3/token/{unknown}", headers=headers)
        assert missing.status == 404 and "alice" not in missing.raw.decode()
    assert ldap_api.call("GET", "/api/v3/token/not-a-token").status == 404


def test_an_invalid_token_sent_with_a_token_status_is_401(ldap_api: Harness, slapd):
    """An `X-AUTH-TOKEN` that is sent must be live, on GET /token/<t> as on every route that reads
    one: a client checking its status with a mistyped, revoked or empty token in the header learns
    it (401) instead of being shown the path's token. Before, the header was ignored here (as
    vmpooler ignores it), and only here."""
    token = ldap_api.new_token("alice", slapd.password("alice"))
    revoked = ldap_api.new_token("alice", slapd.password("alice"))
    assert ldap_api.call("DELETE", f"/api/v3/token/{revoked}",
                         headers=basic("alice", slapd.password("alice"))).status == 200
    for sent in ("0" * 32, revoked, "", "not-a-token"):
        for path_token in (token, "0" * 32):
            for extra in ({}, basic("alice", slapd.password("alice"))):
                refused = ldap_api.call("GET", f"/api/v3/token/{path_token}", headers={"X-AUTH-TOKEN": sent, **extra})
                assert (refused.status, refused.body) == (401, {"ok": False, "error": "invalid or expired token"})
                assert refused.headers["WWW-Authenticate"] == WWW_AUTHENTICATE
    # What vmfloaty sends (the path alone) and a live token in the header are answered as before.
    assert ldap_api.call("GET", f"/api/v3/token/{token}").status == 200
    assert ldap_api.call("GET", f"/api/v3/token/{token}", headers={"X-AUTH-TOKEN": token}).status == 200


def test_vmfloaty_token_status_list_active_and_delete_all(ldap_api: Harness, slapd):
    """What vmfloaty does: `token status` and `list --active` read GET /token/<t> with no other
    credential, then `delete --all` returns each running VM listed there with the token."""
    token = ldap_api.new_token("alice", slapd.password("alice"))
    mine = {ldap_api.checkout(POOL, token), ldap_api.checkout(POOL, token)}
    ldap_api.checkout(POOL, None)
    status = ldap_api.call("GET", f"/api/v1/token/{token}")  # vmfloaty on a v1 URL
    assert status.status == 200 and set(status.body[token]["vms"]["running"]) == mine
    for host in status.body[token]["vms"]["running"]:
        assert ldap_api.call("DELETE", f"/api/v1/vm/{host}", headers={"X-AUTH-TOKEN": token}).body == {"ok": True}
    assert ldap_api.call("GET", f"/api/v1/token/{token}").body[token]["vms"] == {"running": []}


def test_get_token_lists_only_vms_of_that_token(ldap_api: Harness, slapd):
    first = ldap_api.new_token("alice", slapd.password("alice"))
    second = ldap_api.new_token("alice", slapd.password("alice"))
    vm_first = ldap_api.checkout(POOL, first)
    ldap_api.checkout(POOL, second)
    ldap_api.checkout(POOL, None)
    shown = ldap_api.call("GET", f"/api/v3/token/{first}", headers={"X-AUTH-TOKEN": first}).body
    assert shown[first]["vms"] == {"running": [vm_first]}


def test_delete_token_only_by_its_owner(ldap_api: Harness, slapd):
    token = ldap_api.new_token("alice", slapd.password("alice"))
    path = f"/api/v3/token/{token}"
    assert ldap_api.call("DELETE", path).status == 401
    assert ldap_api.call("DELETE", path, headers={"X-AUTH-TOKEN": token}).status == 401  # Basic only
    refused = ldap_api.call("DELETE", path, headers=basic("bob", slapd.password("bob")))
    assert refused.status == 403 and refused.body["ok"] is False
    # Still alive and usable.
    assert ldap_api.call("GET", path, headers={"X-AUTH-TOKEN": token}).status == 200
    assert ldap_api.call("DELETE", path, headers=basic("alice", slapd.password("alice"))).status == 200


def test_a_lost_token_is_revoked_by_its_listed_id(ldap_api: Harness, slapd):
    alice = basic("alice", slapd.password("alice"))
    token = ldap_api.new_token("alice", slapd.password("alice"))
    # Bob cannot delete it by id either: ids are looked up among the caller's own tokens only.
    assert ldap_api.call("DELETE", f"/api/v3/token/{token_id(token)}",
                         headers=basic("bob", slapd.password("bob"))).status == 404
    assert ldap_api.call("DELETE", f"/api/v3/token/{token_id(token)}", headers=alice).status == 200
    assert ldap_api.call("GET", "/api/v3/token", headers=alice).body == {"ok": False}  # none left


@pytest.mark.parametrize("route", routes_of(tokens), ids=lambda route: route.name)
def test_token_routes_are_404_without_auth(make_api, slapd, route):
    api = make_api(document(None))
    for prefix in ("/api/v3", "/api/v2", "/api/v1", ""):
        path = route_target(route, {"token": "a" * 32}, prefix)
        reply = api.call(route.method, path, headers=basic("alice", slapd.password("alice")))
        assert (reply.status, reply.body["ok"]) == (404, False), path


def test_token_routes_are_served_unversioned_as_vmpooler_2_rerouted_them(ldap_api: Harness, slapd):
    alice = basic("alice", slapd.password("alice"))
    created = ldap_api.call("POST", "/token", headers=alice)
    assert created.status == 200
    token = created.body["token"]
    assert set(ldap_api.call("GET", "/token", headers=alice).body) == {"ok", token_id(token)}
    assert ldap_api.call("GET", f"/token/{token}").body[token]["user"] == "alice"
    assert ldap_api.call("DELETE", f"/token/{token}", headers=alice).status == 200
    assert ldap_api.call("GET", f"/token/{token}").status == 404


def test_token_ttl_expires_tokens(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(), config={"token_ttl": 1}))
    api.fill(POOL)
    expires = ruby_time(api.clock.now() + 3600)
    token = api.new_token("alice", slapd.password("alice"))
    listed = api.call("GET", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).body
    assert listed[token_id(token)]["expires"] == expires
    api.clock.advance(3600)
    assert api.call("GET", f"/api/v3/token/{token}").status == 404
    assert api.call("GET", f"/api/v3/token/{token}", headers={"X-AUTH-TOKEN": token}).status == 401
    assert api.call("POST", "/api/v3/vm", headers={"X-AUTH-TOKEN": token}, body={POOL: 1}).status == 401


def test_dummy_auth_works_over_http(make_api):
    api = make_api(document({"provider": "dummy"}))
    api.fill(OTHER_POOL)
    assert api.call("POST", "/api/v3/token", headers=basic("dev", "dev")).status == 401
    token = api.new_token("dev", "anything-else")
    assert api.call("GET", f"/api/v3/token/{token}", headers={"X-AUTH-TOKEN": token}).body[token]["user"] == "dev"


@pytest.mark.parametrize("name", ["\u202eecila", "ali\u200bce", "alice\u2066", "ali\u0085ce", "al\u2028ice"],
                         ids=["rtl-override", "zero-width-space", "isolate", "c1-control", "line-separator"])
def test_dummy_auth_refuses_a_name_with_invisible_or_bidi_characters(make_api, name):
    """A name that shows as another ("\u202eecila" reads alice) got a token of its own, as a user
    that looked like alice in every list; the LDAP provider finds no entry for it (401)."""
    api = make_api(document({"provider": "dummy"}))
    reply = api.call("POST", "/api/v3/token", headers=basic(name, "anything-else"))
    assert (reply.status, reply.body["ok"]) == (401, False), reply.body
    assert not api.client.keys("*token*"), "a refused login made a token"


def test_a_user_has_a_bounded_number_of_tokens(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 3}))
    tokens = [api.new_token("alice", slapd.password("alice")) for _ in range(3)]
    refused = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert "delete one first" in refused.body["error"]
    assert api.new_token("bob", slapd.password("bob"))  # others are not affected
    deleted = api.call("DELETE", f"/api/v3/token/{tokens[0]}", headers=basic("alice", slapd.password("alice")))
    assert deleted.status == 200
    assert api.new_token("alice", slapd.password("alice"))


def _token_creation_commands(make_api, ldap_auth, slapd, held: int) -> int:
    """Redis commands (those of its scripts included) of one POST /token by a user holding
    ``held`` tokens already, under a limit far above."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 5000}))
    for _ in range(held - 1):
        api.services.tokens.create("alice")
    api.new_token("alice", slapd.password("alice"))  # the scripts it runs are loaded from here on
    api.client.config_resetstat()
    made = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert made.status == 200, made.body
    return sum(redis_commands(api.client).values())


def test_a_token_costs_the_same_to_make_whatever_the_user_holds(make_api, ldap_auth, slapd):
    """POST /token read every token the user held to count them (a round trip's worth of HGETALL
    per token, and as many EXISTS in its script): the cost of a login grew with
    ``max_tokens_per_user``, up to 41,296 reads a request."""
    assert _token_creation_commands(make_api, ldap_auth, slapd, 2) == _token_creation_commands(
        make_api, ldap_auth, slapd, 300)


def test_concurrent_token_creations_at_the_limit_make_exactly_the_limit(make_api, ldap_auth, slapd):
    """20 POST /token of one user at once, 2 places left under the limit: exactly 2 succeed, the
    others answer 403, and the user lists exactly the limit."""
    api = make_api(document(ldap_auth(login_attempts_per_user=50), config={"max_tokens_per_user": 5}))
    password = slapd.password("alice")
    for _ in range(3):
        api.new_token("alice", password)
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: api.call("POST", "/api/v3/token", headers=basic("alice", password)),
                                range(20)))
    assert sorted(answer.status for answer in answers) == [200] * 2 + [403] * 18
    assert len(api.call("GET", "/api/v3/token", headers=basic("alice", password)).body) == 1 + 5


def test_on_demand_vms_are_in_their_tokens_running_list(ldap_api: Harness, slapd):
    """vmfloaty's `list --active` and `delete --all` read the token's running list: VMs built on
    demand for the token are in it, as vmpooler records the token on them."""
    token = ldap_api.new_token("alice", slapd.password("alice"))
    other = ldap_api.new_token("bob", slapd.password("bob"))
    created = ldap_api.call("POST", f"/api/v3/ondemandvm/{POOL}+{POOL}", headers={"X-AUTH-TOKEN": token})
    assert created.status == 201
    ldap_api.call("POST", f"/api/v3/ondemandvm/{POOL}", headers={"X-AUTH-TOKEN": other})
    request_id = created.body["request_id"]
    pool = ldap_api.services.pool(POOL)
    provider = ldap_api.services.provider(pool.provider)
    for _ in range(4):
        reconcile_pool(ldap_api.services.store, provider, pool, ldap_api.clock, ldap_api.services.config.service)
        ldap_api.clock.advance(1)
    built = ldap_api.call("GET", f"/api/v3/ondemandvm/{request_id}", headers={"X-AUTH-TOKEN": token}).body
    assert built["ready"] is True
    hosts = sorted(name.split(".")[0] for name in built[POOL]["hostname"])
    assert sorted(ldap_api.call("GET", f"/api/v3/token/{token}").body[token]["vms"]["running"]) == hosts
    assert not set(hosts) & set(ldap_api.call("GET", f"/api/v3/token/{other}").body[other]["vms"]["running"])


def test_one_directory_user_under_any_spelling_is_one_user(make_api, ldap_auth, slapd):
    """The directory matches user names case-insensitively: ALICE logs in as alice. Her tokens,
    their limit and her VMs are one user's whatever spelling she logs in with (each spelling was a
    user of its own: 2^5 spellings of 'alice', 2^5 times max_tokens_per_user, and her own VM
    refused to her under another spelling)."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 2}))
    api.fill(POOL)
    password = slapd.password("alice")
    lower, upper = api.new_token("alice", password), api.new_token("ALICE", password)
    refused = api.call("POST", "/api/v3/token", headers=basic("Alice", password))
    assert (refused.status, refused.body["ok"]) == (403, False)
    listed = api.call("GET", "/api/v3/token", headers=basic("aLiCe", password)).body
    assert len(listed) == 1 + 2
    vm = api.checkout(POOL, upper)
    assert api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": lower}, body={"lifetime": 5}).status == 200
    assert api.call("DELETE", f"/api/v3/token/{upper}", headers=basic("alice", password)).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": lower}).status == 200


def test_one_directory_entry_is_one_user_whichever_of_its_names_logs_in(make_api, ldap_auth, slapd):
    """With several ``user_object``s an entry logs in under each of its names (alice by her uid and
    by her cn, 'alice cn'): she is one user, named as the directory names her entry (the first
    user_object it holds), with one set of tokens, one limit and her own VMs. Before, the name
    typed was the user: alice under her cn was a second user (twice max_tokens_per_user, her VM
    refused to her other token)."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 2}))
    api.fill(POOL)
    password = slapd.password("alice")
    by_uid, by_cn = api.new_token("alice", password), api.new_token("alice cn", password)
    assert api.call("GET", f"/api/v3/token/{by_cn}").body[by_cn]["user"] == "alice"
    refused = api.call("POST", "/api/v3/token", headers=basic("alice cn", password))
    assert (refused.status, refused.body["ok"]) == (403, False)  # her limit, whichever name
    assert len(api.call("GET", "/api/v3/token", headers=basic("alice cn", password)).body) == 1 + 2
    vm = api.checkout(POOL, by_uid)
    assert api.call("PUT", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": by_cn}, body={"lifetime": 5}).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": by_cn}).status == 200


def test_an_entry_named_like_another_user_by_a_second_user_object_is_not_that_user(make_api):
    """Direct binds try each user_object in turn: mallory's entry, whose cn is 'alice', bound as
    'alice' with mallory's password when alice's own DN (uid=alice) refused it, and mallory held
    alice's identity: her tokens returned alice's VMs. The name 'alice' now finds two entries, so
    it is ambiguous and logs in as neither, as in the service-account mode (docs/auth.md)."""
    entry = (f"dn: cn=alice,{PEOPLE_OU}\nobjectClass: inetOrgPerson\ncn: alice\nsn: m\nuid: mallory\n"
             "userPassword: mallory-Pass-8\n")
    with SlapdServer(extra_ldif=entry) as directory:
        api = make_api(document({"provider": "ldap", "ldap": directory.ldap_config()}))
        api.fill(POOL)
        for password in (directory.password("alice"), "mallory-Pass-8"):
            refused = api.request("POST", "/api/v3/token", headers=basic("alice", password))
            assert (refused.status, refused.json["ok"]) == (401, False), refused.raw


def _token_status_round_trips(make_api, ldap_auth, slapd, pools: int) -> int:
    """Redis round trips of vmfloaty's `token status` (GET /token/<t>) for a token holding a VM
    in each of ``pools`` pools."""
    names = [f"pool{i}" for i in range(pools)]
    api = make_api(document(ldap_auth(), pools=[
        {"name": name, "size": 1, "provider": "dummy", "template": f"t/{name}"} for name in names]))
    api.fill()
    token = api.new_token("alice", slapd.password("alice"))
    held = sorted(api.checkout(name, token) for name in names)
    api.call("GET", f"/api/v3/token/{token}")  # the scripts it runs are loaded from here on
    with RedisRoundTrips() as sent:
        reply = api.call("GET", f"/api/v3/token/{token}")
    assert reply.body[token]["vms"]["running"] == held
    return sent.count


def test_token_status_costs_the_same_round_trips_whatever_the_pools(make_api, ldap_auth, slapd):
    """It read each pool's running VMs, then each VM's record, one round trip at a time: at
    1,000 pools and 1,000 VMs, 2,000 round trips for one request anyone holding a token can send."""
    assert _token_status_round_trips(make_api, ldap_auth, slapd, 2) == _token_status_round_trips(
        make_api, ldap_auth, slapd, 12)


def test_reading_a_tokens_status_is_not_a_use_of_it(ldap_api: Harness, slapd):
    """GET /token/<t> is a read: vmfloaty's `token status` (or a script polling it) moved `last`,
    so a token nothing had used for months looked in use to whoever revokes idle ones, and the
    owner's own read with Basic credentials left it alone. vmpooler's does not touch it either."""
    alice = basic("alice", slapd.password("alice"))
    token = ldap_api.new_token("alice", slapd.password("alice"))
    created = ruby_time(ldap_api.clock.now())
    for headers in ({}, {"X-AUTH-TOKEN": token}, alice):
        ldap_api.clock.advance(3600)
        shown = ldap_api.call("GET", f"/api/v3/token/{token}", headers=headers)
        assert shown.status == 200 and shown.body[token]["last"] == created
    assert ldap_api.call("GET", "/api/v3/token", headers=alice).body[token_id(token)]["last"] == created
    ldap_api.clock.advance(60)
    ldap_api.checkout(POOL, token)  # a use
    assert ldap_api.call("GET", f"/api/v3/token/{token}").body[token]["last"] == ruby_time(ldap_api.clock.now())


def test_a_token_is_used_when_it_authenticates_a_request_whatever_the_answer(ldap_api: Harness, slapd):
    """``last`` says when the token last proved who its caller is, as vmpooler's ``need_token!``
    sets it: a request the token authenticates moves it whether it then succeeds or is refused
    (another user's VM, 403): whoever holds a leaked token shows up in its owner's ``last``, and a
    script whose pool is empty (503) still uses its token. A request refused for its input before
    the token is needed (a checkout of an unknown pool, a change of a VM that is not there), or
    one that reads no token (GET /vm/<host>, GET /token/<t>), does not. docs/auth.md, "Tokens"."""
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    created = ruby_time(ldap_api.clock.now())
    bobs_vm = ldap_api.checkout(POOL, ldap_api.new_token("bob", slapd.password("bob")))

    def last() -> str:
        return str(ldap_api.call("GET", f"/api/v3/token/{alice}").body[alice]["last"])

    for method, path in (("POST", "/api/v3/vm/nosuchpool"), ("GET", f"/api/v3/vm/{bobs_vm}")):
        ldap_api.clock.advance(60)
        assert ldap_api.call(method, path, headers={"X-AUTH-TOKEN": alice}).status in (200, 404)
        assert last() == created, (method, path)
    # A VM that is not there: vmpooler's need_token! runs only for a VM it has a record of.
    # These moved `last` (a script deleting VMs already gone kept an idle token looking used).
    for method, path, body in (("DELETE", "/api/v3/vm/nosuchvm", None),
                               ("PUT", "/api/v3/vm/nosuchvm", {"lifetime": 2}),
                               ("POST", "/api/v3/vm/nosuchvm/disk/8", None),
                               ("POST", "/api/v3/vm/nosuchvm/snapshot", None),
                               # Nor an on-demand request for nothing, or one that is not there.
                               ("POST", "/api/v3/ondemandvm/nosuchpool", None),
                               ("POST", "/api/v3/ondemandvm", {"nosuchpool": 1}),
                               ("GET", "/api/v3/ondemandvm/nosuchrequest", None),
                               ("DELETE", "/api/v3/ondemandvm/nosuchrequest", None)):
        ldap_api.clock.advance(60)
        answer = ldap_api.call(method, path, headers={"X-AUTH-TOKEN": alice}, body=body)
        assert answer.status == 404 and last() == created, (method, path, answer.status)
    ldap_api.clock.advance(60)
    refused = ldap_api.call("DELETE", f"/api/v3/vm/{bobs_vm}", headers={"X-AUTH-TOKEN": alice})
    assert refused.status == 403 and last() == ruby_time(ldap_api.clock.now())


class _NoQueue:
    """The reconcile queue, for a tick whose passes nobody runs."""

    def send(self, messages: list[Any]) -> None:
        pass


def test_a_changed_token_ttl_applies_to_the_tokens_made_before(make_api, ldap_auth, slapd):
    """token_ttl is the life of every token, the ones made before a change too: raised, an
    existing token lives longer (its Redis key included, used or not); lowered, tokens older than
    it expire at once; removed, they live until deleted. Pushed while the service runs."""
    alice = basic("alice", slapd.password("alice"))
    auth = ldap_auth()
    api = make_api(document(auth, config={"token_ttl": 1}))
    api.fill(POOL)
    created = api.clock.now()
    used, idle = api.new_token("alice", slapd.password("alice")), api.new_token("alice", slapd.password("alice"))
    keys = {token: api.services.store.keys.token(hashlib.sha256(token.encode()).hexdigest()) for token in (used, idle)}

    def expiry(token: str) -> int:
        return api.client.ttl(keys[token])

    assert 3590 <= expiry(idle) <= 3600
    api.services.use_config(build(document(auth, config={"token_ttl": 3})))  # raised while running
    Ticker().tick(api.services, _NoQueue())
    listed = api.call("GET", "/api/v3/token", headers=alice).body
    assert listed[token_id(idle)]["expires"] == ruby_time(created + 3 * 3600)
    assert 3 * 3600 - 10 <= expiry(idle) <= 3 * 3600  # not used since: Redis keeps it too
    api.clock.advance(2 * 3600)
    assert api.call("PUT", f"/api/v3/vm/{api.checkout(POOL, used)}", headers={"X-AUTH-TOKEN": used},
                    body={"lifetime": 3}).status == 200
    assert 3600 - 10 <= expiry(used) <= 3600  # a use sets it from the ttl in effect too

    api.services.use_config(build(document(auth)))  # removed: until deleted
    Ticker().tick(api.services, _NoQueue())
    assert expiry(idle) == -1 and expiry(used) == -1
    assert "expires" not in api.call("GET", "/api/v3/token", headers=alice).body[token_id(idle)]

    api.services.use_config(build(document(auth, config={"token_ttl": 1})))  # lowered: both are older
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": used}).status == 401
    assert api.call("GET", "/api/v3/token", headers=alice).status == 404


def test_tokens_past_the_ttl_free_their_place_under_the_limit_at_once(make_api, ldap_auth, slapd):
    """``max_tokens_per_user`` counts live tokens only, but the count went by what Redis still
    held: when ``token_ttl`` is lowered (the lever after a leak), the tokens older than the new
    ttl stop at once while their keys live on until the scheduler's tick sets their expiries, and
    a user at the limit was refused a new token ("delete one first") that GET /token did not even
    list. Here the clock passes the ttl before Redis's expiry does."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 3, "token_ttl": 1}))
    password = slapd.password("alice")
    old = [api.new_token("alice", password) for _ in range(3)]
    api.clock.advance(3600)
    made = api.call("POST", "/api/v3/token", headers=basic("alice", password))
    assert made.status == 200, made.body
    for token in old:
        assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": token}).status == 401
    assert set(api.call("GET", "/api/v3/token", headers=basic("alice", password)).body) == {
        "ok", token_id(made.body["token"])}


def test_tokens_whose_answers_were_lost_count_for_nothing(make_api, ldap_auth, slapd):
    """POST /token's script wrote the token, then its answer was lost (the socket timed out), and
    so was the answer of the look that settles it (store/settle.py) and the deletion written
    behind that look: the caller got 503 and never saw the token. Before, it counted toward
    max_tokens_per_user until deleted (or token_ttl): alice, two such logins behind her, was
    refused (403) and had to find the tokens by id to delete them. Now the token was never
    counted (lua/token_confirm.lua never ran): she gets her two tokens, which are all she lists,
    and her limit still holds."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 2}))
    alice, bob = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    store = api.services.tokens
    run_create = store._create

    def answer_lost(**kwargs: Any) -> Any:
        run_create(**kwargs)
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    def settle_lost(**kwargs: Any) -> Any:
        raise redis.exceptions.TimeoutError("Timeout reading from socket")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_create", answer_lost)
        patch.setattr(store, "_settle", settle_lost)
        lost = [api.call("POST", "/api/v3/token", headers=alice) for _ in range(2)]
    assert [(reply.status, reply.body["ok"], "token" in reply.body) for reply in lost] == [(503, False, False)] * 2
    made = [api.call("POST", "/api/v3/token", headers=alice) for _ in range(2)]
    assert [reply.status for reply in made] == [200, 200], [reply.body for reply in made]
    listed = api.call("GET", "/api/v3/token", headers=alice)
    ids = sorted(key for key in listed.body if key != "ok")
    assert listed.status == 200 and ids == sorted(token_id(reply.body["token"]) for reply in made)
    refused = api.call("POST", "/api/v3/token", headers=alice)
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert api.call("GET", "/api/v3/token", headers=bob).status == 404  # bob has none, sees none


def test_an_id_of_32_hex_digits_revokes_its_token_and_no_id_is_a_token(ldap_api: Harness, slapd):
    """A prefix of a token's SHA-256 of 8 to 64 hex digits names it on DELETE /token/<id>
    (docs/auth.md); one of exactly 32 was read as a token, which it is shaped as too, and the
    owner revoking a lost token by it got 404 "unknown or expired token" (31 or 33 digits
    worked). An id, whatever its length, is never a token: not in X-AUTH-TOKEN, not in
    GET /token/<t>; and another user's id revokes nothing and is told apart from no id at all."""
    alice, bob = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    kept, lost = (ldap_api.new_token("alice", slapd.password("alice")) for _ in range(2))
    digest = hashlib.sha256(lost.encode()).hexdigest()
    for length in (16, 32, 64):
        prefix = digest[:length]
        assert ldap_api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": prefix}).status == 401
        assert ldap_api.call("GET", f"/api/v3/token/{prefix}").status == 404
    assert ldap_api.call("GET", "/api/v3/token", headers=bob).status == 404  # bob logged in: his directory answer kept
    before = ldap_api.redis_state()
    unknown = ldap_api.call("DELETE", f"/api/v3/token/{'0' * 32}", headers=bob)
    others = ldap_api.call("DELETE", f"/api/v3/token/{digest[:32]}", headers=bob)
    assert (others.status, others.body) == (unknown.status, unknown.body) == (
        404, {"ok": False, "error": "unknown or expired token"})
    assert ldap_api.redis_state() == before
    revoked = ldap_api.call("DELETE", f"/api/v3/token/{digest[:32]}", headers=alice)
    assert (revoked.status, revoked.body) == (200, {"ok": True})
    assert ldap_api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": lost}).status == 401
    assert set(ldap_api.call("GET", "/api/v3/token", headers=alice).body) == {"ok", token_id(kept)}


def test_a_request_whose_token_is_deleted_after_its_check_is_refused(ldap_api: Harness, slapd):
    """A ``DELETE /token`` that lands between a request's look at its token and the token's first
    use (another Lambda, another thread): the request comes after the delete's answer, so it is
    refused as any request with a dead token. Before, a read went on and showed the owner's
    on-demand request to a token its owner had just revoked."""
    token = ldap_api.new_token("alice", slapd.password("alice"))
    created = ldap_api.call("POST", f"/api/v3/ondemandvm/{POOL}", headers={"X-AUTH-TOKEN": token})
    assert created.status == 201, created.body
    tokens_store = ldap_api.services.tokens
    look_up = tokens_store.lookup

    def lookup_then_revoked(presented: str, *, touch: bool = True) -> Any:
        record = look_up(presented, touch=touch)
        if record is not None:
            assert tokens_store.delete(presented, record.user) is DeleteResult.DELETED  # the racing DELETE
        return record

    tokens_store.lookup = lookup_then_revoked  # type: ignore[method-assign]
    try:
        late = ldap_api.call("GET", f"/api/v3/ondemandvm/{created.body['request_id']}", headers={"X-AUTH-TOKEN": token})
    finally:
        tokens_store.lookup = look_up  # type: ignore[method-assign]
    assert late.status == 401, late.body
    assert late.body == {"ok": False, "error": "invalid or expired token"}
    assert POOL not in late.body


def test_an_administrator_lists_and_revokes_a_token_whose_count_a_failover_lost(make_api, ldap_auth, slapd):
    """bob was answered 200 with a token whose count (lua/token_confirm.lua) a failover lost: the
    new primary has it pending, and it works for him. An administrator revoking bob's tokens got
    404 for his listing and for its id, so it kept working (and, once used, lived on the ttl). Now
    the listing shows it, marked pending with when its record goes, and its id deletes it."""
    api = make_api(document(ldap_auth(admins=["alice"])))
    admin, bob = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    store = api.services.tokens
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_confirm", lambda keys, args: 1)  # answered, then lost with the primary
        made_at = api.clock.now()
        held, used = api.new_token("bob", slapd.password("bob")), api.new_token("bob", slapd.password("bob"))
    counted = api.new_token("bob", slapd.password("bob"))
    assert api.call("GET", f"/api/v3/token/{used}").status == 200  # presented: counted now

    listed = api.call("GET", "/api/v3/token?user=bob", headers=admin)
    assert listed.status == 200 and set(listed.body) == {"ok", token_id(held), token_id(used), token_id(counted)}
    assert listed.body[token_id(held)]["pending"] is True
    assert listed.body[token_id(held)]["expires"] == ruby_time(int(made_at) + PENDING_SECONDS)  # its record goes then
    assert "pending" not in listed.body[token_id(used)] and "pending" not in listed.body[token_id(counted)]
    # bob's own listing keeps to the tokens counted: a pending one is most likely a failed login's.
    assert set(api.call("GET", "/api/v3/token", headers=bob).body) == {"ok", token_id(used), token_id(counted)}

    assert api.call("DELETE", f"/api/v3/token/{token_id(held)}?user=bob", headers=admin).body == {"ok": True}
    assert api.call("POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": held}).status == 401
    listed = api.call("GET", "/api/v3/token?user=bob", headers=admin)
    assert set(listed.body) == {"ok", token_id(used), token_id(counted)}
