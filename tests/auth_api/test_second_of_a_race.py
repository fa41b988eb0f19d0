"""The second request of a race, between distinct identities on a real slapd: two administrators
changing one pool at once, and two users asking for the last place under a quota with on-demand
requests. Exactly one wins, the other gets the documented status, and Redis holds the winner's
change only. Released together by a barrier, round after round (tests/auth_api/test_racing_callers.py)."""

from __future__ import annotations

from functools import partial

from tests.auth_api.documents import POOL, document
from tests.auth_api.test_racing_callers import ROUNDS
from tests.harness import Harness, HarnessFactory, at_once, basic

EXPERIMENTAL = {"experimental_features": True}


def _admins(make_api: HarnessFactory, ldap_auth, slapd) -> tuple[Harness, dict[str, str], dict[str, str]]:
    api = make_api(document(ldap_auth(admins=["alice", "bob"]), config=EXPERIMENTAL))
    alice = {"X-AUTH-TOKEN": api.new_token("alice", slapd.password("alice"))}
    bob = {"X-AUTH-TOKEN": api.new_token("bob", slapd.password("bob"))}
    return api, alice, bob


def test_two_admins_set_one_pools_size_at_once(make_api, ldap_auth, slapd):
    """Two sizes at once: each a change (201), the pool at the one Redis ran last; the same size
    at once: one 201, the other 200 (nothing left to change)."""
    api, alice, bob = _admins(make_api, ldap_auth, slapd)
    for round_number in range(ROUNDS):
        sizes = (4 + round_number % 5, 10 + round_number % 5)
        replies = at_once(partial(api.post, "/api/v3/config/poolsize", {POOL: str(sizes[0])}, headers=alice),
                          partial(api.post, "/api/v3/config/poolsize", {POOL: str(sizes[1])}, headers=bob))
        assert [reply.status for reply in replies] == [201, 201], [reply.raw for reply in replies]
        assert api.services.pool(POOL).size in sizes
        same = at_once(partial(api.post, "/api/v3/config/poolsize", {POOL: "20"}, headers=alice),
                       partial(api.post, "/api/v3/config/poolsize", {POOL: "20"}, headers=bob))
        assert sorted(reply.status for reply in same) == [200, 201], [reply.raw for reply in same]
        assert api.services.pool(POOL).size == 20


def test_two_admins_clear_one_pools_size_at_once(make_api, ldap_auth, slapd):
    """Exactly one DELETE removes the override (201, the size it removed); the other finds
    none (200, the configured size before it), and the pool is at its configured size."""
    api, alice, bob = _admins(make_api, ldap_auth, slapd)
    configured = api.services.pool(POOL).size
    for round_number in range(ROUNDS):
        size = 5 + round_number % 7
        assert api.post("/api/v3/config/poolsize", {POOL: str(size)}, headers=alice).status == 201
        replies = at_once(partial(api.delete, f"/api/v3/config/poolsize/{POOL}", headers=alice),
                          partial(api.delete, f"/api/v3/config/poolsize/{POOL}", headers=bob))
        assert sorted(reply.status for reply in replies) == [200, 201], [reply.raw for reply in replies]
        for reply in replies:
            assert reply.json["pool_size_before_overrides"] == configured
            assert reply.json["pool_size_before_reset"] == (size if reply.status == 201 else configured), reply.raw
        assert api.services.pool(POOL).size == configured


def test_two_users_ask_on_demand_for_the_last_vm_the_service_may_run(make_api, ldap_auth, slapd):
    """One place left under ``max_running_vms``: exactly one request opens (201), the other is
    told 503 with Retry-After, and only the winner's request is open."""
    api = make_api(document(ldap_auth(), config={"max_running_vms": 1}))
    alice = {"X-AUTH-TOKEN": api.new_token("alice", slapd.password("alice"))}
    bob = {"X-AUTH-TOKEN": api.new_token("bob", slapd.password("bob"))}
    for _ in range(ROUNDS):
        replies = at_once(partial(api.post, "/api/v3/ondemandvm", {POOL: 1}, headers=alice),
                          partial(api.post, "/api/v3/ondemandvm", {POOL: 1}, headers=bob))
        assert sorted(reply.status for reply in replies) == [201, 503], [reply.raw for reply in replies]
        winner = 0 if replies[0].status == 201 else 1
        loser = replies[1 - winner]
        assert loser.headers.get("Retry-After"), loser.raw
        request_id = replies[winner].json["request_id"]
        owners = ((alice, "alice"), (bob, "bob"))
        headers, user = owners[winner]
        assert api.store.client.hget(api.store.keys.ondemand(request_id), "token_user") == user
        assert api.delete(f"/api/v3/ondemandvm/{request_id}", headers=headers).status == 200


def test_one_user_asks_for_the_last_token_twice_at_once_under_two_spellings(make_api, ldap_auth, slapd):
    """One place left under ``max_tokens_per_user``, asked by ``alice`` and ``ALICE`` at once
    (one user, two spellings): one token (200), the other 403, and the user holds the limit."""
    api = make_api(document(ldap_auth(), config={"max_tokens_per_user": 2}))
    password = slapd.password("alice")
    for _ in range(ROUNDS):
        kept = api.new_token("alice", password)
        replies = at_once(partial(api.post, "/api/v3/token", headers=basic("alice", password)),
                          partial(api.post, "/api/v3/token", headers=basic("ALICE", password)))
        assert sorted(reply.status for reply in replies) == [200, 403], [reply.raw for reply in replies]
        listed = api.get("/api/v3/token", headers=basic("alice", password))
        assert len(set(listed.json) - {"ok"}) == 2, listed.raw
        won = next(reply.json["token"] for reply in replies if reply.status == 200)
        for token in (kept, won):
            assert api.delete(f"/api/v3/token/{token}", headers=basic("alice", password)).status == 200


def test_a_checkout_and_an_on_demand_request_of_two_users_for_the_last_vm_the_service_may_run(
        make_api, ldap_auth, slapd):
    """One place left under ``max_running_vms``, asked by alice's checkout and bob's on-demand
    request at once: exactly one gets it (200 or 201), the other 503, and the service holds one."""
    api = make_api(document(ldap_auth(), config={"max_running_vms": 1}))
    alice = {"X-AUTH-TOKEN": api.new_token("alice", slapd.password("alice"))}
    bob = {"X-AUTH-TOKEN": api.new_token("bob", slapd.password("bob"))}
    for _ in range(ROUNDS):
        api.fill(POOL)
        checkout, ondemand = at_once(partial(api.post, f"/api/v3/vm/{POOL}", headers=alice),
                                     partial(api.post, "/api/v3/ondemandvm", {POOL: 1}, headers=bob))
        assert sorted((checkout.status, ondemand.status)) in ([200, 503], [201, 503]), (checkout.raw, ondemand.raw)
        if checkout.status == 200:
            host = checkout.json[POOL]["hostname"].split(".")[0]
            assert api.delete(f"/api/v3/vm/{host}", headers=alice).status == 200
        else:
            request_id = ondemand.json["request_id"]
            assert api.delete(f"/api/v3/ondemandvm/{request_id}", headers=bob).status == 200
