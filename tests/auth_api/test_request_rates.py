"""Request rates (``rate_limiting_enabled``) with distinct identities over HTTP: who a request is
counted against, with a real slapd and redis-server behind the tokens."""

from __future__ import annotations

import secrets
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from tests.auth_api.documents import CLIENT_IP, POOL, document
from tests.harness import Harness, Reply, basic

RATES = {"global_per_ip": {"limit": 3, "period": 60}, "authenticated": {"limit": 4, "period": 60}}


def _rated_api(make_api, ldap_auth) -> Harness:
    return make_api(document(ldap_auth(), config={"rate_limiting_enabled": True}, rate_limits=RATES))


def test_a_made_up_token_buys_no_budget_of_its_own(make_api, ldap_auth):
    """An anonymous client past ``global_per_ip`` sent any X-AUTH-TOKEN and was counted as
    ``authenticated`` (vmpooler's 500 a minute against 100), under its address: a fresh budget
    for a header anyone can make up, and another for each made-up value's class."""
    api = _rated_api(make_api, ldap_auth)
    for _ in range(3):
        assert api.call("GET", "/api/v3/status").status == 200
    assert api.call("GET", "/api/v3/status").status == 429
    for made_up in ("x", "0" * 32, "a" * 32):
        limited = api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": made_up})
        assert limited.status == 429, limited.raw
        assert limited.headers["X-RateLimit-Limit"] == "3"
    # Another address has its own budget, made-up token or not.
    assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": "x"}, client_ip="198.51.100.7").status != 429


def test_a_users_tokens_share_one_budget(make_api, ldap_auth, slapd):
    """Counted per token, each of a user's ``max_tokens_per_user`` tokens (50 by default) was a
    budget of its own: 50 times ``authenticated``'s limit for whoever made 50 tokens."""
    api = _rated_api(make_api, ldap_auth)

    def new_token(user: str) -> str:  # from elsewhere: POST /token counts against its address
        return str(api.call("POST", "/api/v3/token", headers=basic(user, slapd.password(user)),
                            client_ip="198.51.100.8").body["token"])

    first, second, bob = new_token("alice"), new_token("alice"), new_token("bob")
    for _ in range(4):
        assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": first}).status == 200
    for token in (first, second):
        limited = api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": token})
        assert limited.status == 429 and limited.headers["X-RateLimit-Limit"] == "4"
    # Another user, and the address without a token, are other clients.
    assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": bob}).status == 200
    assert api.call("GET", "/api/v3/status").status == 200


def test_a_removed_users_token_buys_no_budget_and_leaves_the_users_count_alone(make_api, ldap_auth, slapd):
    """A token whose user the directory no longer has is refused (401) like a made-up one, but
    it still counted as ``authenticated`` under its user: 500 a minute for a departed user's
    token against the address's 100, and each refusal written to the user's counter. It is now
    counted as a request without a valid token: under ``global_per_ip`` for its address (refused
    requests count), and the user's counters are left as they were."""
    api = make_api(document(ldap_auth(directory_check_minutes=10), config={"rate_limiting_enabled": True},
                            rate_limits=RATES))
    api.fill(POOL)
    name, password = f"leaver{secrets.token_hex(4)}", secrets.token_urlsafe(12)
    dn = slapd.add_user(name, password)
    try:
        token = str(api.call("POST", "/api/v3/token", headers=basic(name, password),
                             client_ip="198.51.100.8").body["token"])
        mine = api.checkout(POOL, token)
    finally:
        slapd.remove(dn)
    api.clock.advance(10 * 60)

    def use() -> Reply:
        return api.call("PUT", f"/api/v3/vm/{mine}", headers={"X-AUTH-TOKEN": token}, body={"lifetime": 3})

    assert use().status == 401  # the directory is asked: the user is gone
    before = api.redis_state()
    assert use().status == 401
    after = api.redis_state()
    changed = {key for key in before.keys() | after.keys() if before.get(key) != after.get(key)}
    assert changed == {f"vmpool:ratelimit:global_per_ip:ip:{CLIENT_IP}"}
    assert use().status == 401
    limited = use()
    assert limited.status == 429 and limited.headers["X-RateLimit-Limit"] == "3"


def test_users_behind_one_address_each_have_their_own_budget_on_the_token_routes(make_api, ldap_auth, slapd):
    """Users behind one address (an office's NAT, a CI farm) manage their tokens with Basic
    credentials, and vmfloaty reads a token's status with the token in the path only. Both were
    counted under ``global_per_ip`` for the address: one user listing their tokens in a loop got
    every other user there 429 on ``POST /token`` (no token to be had) and on ``GET /token/<t>``
    (the identities audit, tests/local/test_identities.py, sixteen callers at 127.0.0.1: each one's
    tokens unreadable once the callers stopped). Each is counted as its own caller now: Basic
    credentials on a route that checks them per user name and address, a token in the path as
    its user; and neither buys a budget on any other route."""
    api = _rated_api(make_api, ldap_auth)
    alice, bob = basic("alice", slapd.password("alice")), basic("bob", slapd.password("bob"))
    token = str(api.call("POST", "/api/v3/token", headers=alice).body["token"])
    for _ in range(2):
        assert api.call("GET", "/api/v3/token", headers=alice).status == 200
    noisy = api.call("GET", "/api/v3/token", headers=alice)
    assert noisy.status == 429 and noisy.headers["X-RateLimit-Limit"] == "3", noisy.raw
    # The noisy user's neighbours at the same address are not refused for it.
    made = api.call("POST", "/api/v3/token", headers=bob)
    assert made.status == 200, made.raw
    assert api.call("GET", f"/api/v3/token/{made.body['token']}").status == 200
    assert api.call("GET", "/api/v3/status").status == 200, "nor is the address's own budget spent"
    # A token's status read by its path token is its user's: alice's own, as her X-AUTH-TOKEN's.
    for _ in range(4):
        assert api.call("GET", "/api/v3/status", headers={"X-AUTH-TOKEN": token}).status == 200
    limited = api.call("GET", f"/api/v3/token/{token}")
    assert limited.status == 429 and limited.headers["X-RateLimit-Limit"] == "4", limited.raw


def test_basic_credentials_buy_no_budget_where_they_are_not_checked(make_api, ldap_auth, slapd):
    """Any route but the token routes ignores an Authorization header: it changes neither the
    client nor the class there (anyone may send one, with any name)."""
    api = _rated_api(make_api, ldap_auth)
    for _ in range(3):
        assert api.call("GET", "/api/v3/status").status == 200
    for name in ("alice", "mallory", "x1"):
        limited = api.call("GET", "/api/v3/status", headers=basic(name, "whatever"))
        assert limited.status == 429 and limited.headers["X-RateLimit-Limit"] == "3", limited.raw


def test_on_demand_requests_count_as_vm_creation_and_deletion(make_api, ldap_auth, slapd):
    """docs/auth.md: ``vm_creation`` counts any POST under /vm or /ondemandvm, ``vm_deletion`` any
    DELETE. The class was read from ``"/vm" in path``, which ``/ondemandvm`` is not: on-demand
    requests, each cloning VMs, went under ``authenticated`` (500 a minute by default against
    vm_creation's 20), and an operator's ``vm_creation`` limit did not hold them back."""
    api = make_api(document(ldap_auth(), config={"rate_limiting_enabled": True, "max_ondemand_requests_per_user": 9},
                            rate_limits={"authenticated": {"limit": 50, "period": 60},
                                         "vm_creation": {"limit": 2, "period": 60},
                                         "vm_deletion": {"limit": 1, "period": 60}}))
    token = {"X-AUTH-TOKEN": api.new_token("alice", slapd.password("alice"))}
    opened = [api.post("/api/v3/ondemandvm", {POOL: 1}, headers=token) for _ in range(2)]
    assert [reply.status for reply in opened] == [201, 201], [reply.raw for reply in opened]
    for refused in (api.post("/api/v3/ondemandvm", {POOL: 1}, headers=token),
                    api.post(f"/api/v3/ondemandvm/{POOL}", headers=token),
                    api.post(f"/api/v3/vm/{POOL}", headers=token)):
        assert refused.status == 429 and refused.headers["X-RateLimit-Limit"] == "2", refused.raw
    first, second = (reply.json["request_id"] for reply in opened)
    assert api.delete(f"/api/v3/ondemandvm/{first}", headers=token).status == 200
    refused = api.delete(f"/api/v3/ondemandvm/{second}", headers=token)
    assert refused.status == 429 and refused.headers["X-RateLimit-Limit"] == "1", refused.raw
    assert api.get(f"/api/v3/ondemandvm/{second}", headers=token).status == 202, "a read is not a creation"


def test_names_made_up_by_the_thousand_at_one_address_share_its_counter(make_api, ldap_auth):
    """Each Basic user name on a token route is a client of its own at its address, and anyone may
    send any name: past ``max_rate_limited_clients`` the names share the address's counter, so
    making names up buys one more budget, not one per name, and what Redis keeps stays bounded."""
    api = make_api(document(ldap_auth(), config={"rate_limiting_enabled": True, "max_rate_limited_clients": 4},
                            rate_limits=RATES))
    answers = [api.call("GET", "/api/v3/token", headers=basic(f"made-up-{n}", "guess")) for n in range(40)]
    assert [reply.status for reply in answers[:4]] == [401] * 4, [reply.raw for reply in answers[:4]]
    shared = [reply for reply in answers[4:] if reply.status == 429]
    assert len(shared) == 36 - 3 and all(reply.json.get("shared") for reply in shared), [r.raw for r in answers]
    counters = list(api.client.scan_iter("vmpool:ratelimit:global_per_ip:*"))
    assert len(counters) == 4 + 1 + 1, counters  # four names, the shared counter, the table


def test_thirty_users_behind_one_address_manage_their_tokens_at_once_beside_a_noisy_one(make_api, ldap_auth, slapd):
    """vmpooler's default rates (100 a minute per address without a token), thirty directory
    users behind one address (a CI farm's NAT) at once, each making a token, listing its tokens,
    reading its status and deleting it, while one more user lists theirs in a loop past the
    limit: the noisy one gets 429, nobody else does. Before, all of them were the address: the
    thirty's 120 requests alone went past 100."""
    from tests.auth_api.test_identity_sweep import directory_users

    api = make_api(document(ldap_auth(), config={"rate_limiting_enabled": True}))
    with directory_users("ldap", slapd, 31) as users:
        (noisy_name, noisy_password), *quiet = users[:31]

        def noisy() -> list[int]:
            return [api.call("GET", "/api/v3/token", headers=basic(noisy_name, noisy_password)).status
                    for _ in range(110)]

        def one_user(user: str, password: str) -> list[int]:
            credentials = basic(user, password)
            made = api.call("POST", "/api/v3/token", headers=credentials)
            if made.status != 200:
                return [made.status]
            token = made.json["token"]
            return [made.status] + [api.call(method, path, headers=headers).status for method, path, headers in (
                ("GET", "/api/v3/token", credentials), ("GET", f"/api/v3/token/{token}", {}),
                ("GET", "/api/v3/status", {"X-AUTH-TOKEN": token}), ("DELETE", f"/api/v3/token/{token}", credentials))]

        with ThreadPoolExecutor(len(quiet) + 1) as pool:
            noise = pool.submit(noisy)
            answers = list(pool.map(lambda pair: one_user(*pair), quiet))
        # 404: no token of theirs to list (vmpooler's answer), until the limit.
        assert noise.result() == [404] * 100 + [429] * 10, noise.result()
        assert all(statuses == [200] * 5 for statuses in answers), answers


def test_vm_creation_is_counted_per_user_at_once_from_one_address_and_from_many(make_api):
    """``vm_creation`` (2 a minute) with 16 users behind one address, each sending three
    checkouts at once: each user gets two VMs and one 429, nobody's checkouts spend another's.
    One user sending 16 at once from 16 addresses gets two in all: a user's budget is the user's
    wherever the requests come from (docs/auth.md, "Limits"). Checked, holds."""
    from tests.harness import at_once

    api = make_api(document({"provider": "dummy"},
                            config={"rate_limiting_enabled": True, "max_running_vms_per_user": 10},
                            rate_limits={"vm_creation": {"limit": 2, "period": 60}},
                            pools=[{"name": POOL, "size": 40, "provider": "dummy", "template": "t/debian"}]))
    api.fill(POOL)
    users = [f"user{number}" for number in range(16)]
    tokens = {user: api.new_token(user, f"{user}-pw") for user in users}
    replies = at_once(*[partial(api.call, "POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": tokens[user]})
                        for user in users for _ in range(3)])
    for user, index in zip(users, range(0, len(replies), 3), strict=True):
        statuses = sorted(reply.status for reply in replies[index:index + 3])
        assert statuses == [200, 200, 429], (user, [reply.raw for reply in replies[index:index + 3]])
        for reply in replies[index:index + 3]:
            if reply.status == 429:
                assert reply.json["limit"] == 2 and int(reply.headers["Retry-After"]) >= 1, reply.raw
            else:
                host = reply.json[POOL]["hostname"].split(".")[0]
                assert api.store.get_vm(host).raw.get("token_user") == user
    solo = api.new_token("solo", "solo-pw")
    spread = at_once(*[partial(api.call, "POST", f"/api/v3/vm/{POOL}", headers={"X-AUTH-TOKEN": solo},
                               client_ip=f"203.0.113.{number + 1}") for number in range(16)])
    assert sorted(reply.status for reply in spread) == [200] * 2 + [429] * 14, [reply.raw for reply in spread]
