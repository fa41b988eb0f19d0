"""Failed logins are limited (429 + Retry-After); an LDAP outage is a 503 JSON answer, not a 500."""

from __future__ import annotations

from chalicelib.auth import ratelimit
from tests.auth_api.documents import POOL, document
from tests.harness import basic
from tests.support import json_lines


def test_failed_logins_per_user_are_limited_with_retry_after(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(login_attempts_per_user=3, login_attempts_per_user_all_addresses=3,
                                      login_window_seconds=120)))
    for _ in range(3):
        assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    limited = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 120
    assert limited.body["ok"] is False and limited.body["retry_after"] == int(limited.headers["Retry-After"])
    # From another address too: the per-user ceiling is reached. Other users are not affected.
    assert api.call("GET", "/api/v3/token", headers=basic("alice", slapd.password("alice")),
                    client_ip="198.51.100.7").status == 429
    assert api.call("POST", "/api/v3/token", headers=basic("bob", slapd.password("bob")),
                    client_ip="198.51.100.7").status == 200
    # When the window ends (Redis expiry), the right password works again.
    api.services.client.delete(*api.services.client.keys("vmpool:login:*"))
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 200


def test_failed_logins_per_address_are_limited(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(login_attempts_per_address=4)))
    for user in ("u1", "u2", "u3", "u4"):
        assert api.call("POST", "/api/v3/token", headers=basic(user, "guess"), client_ip="203.0.113.9").status == 401
    limited = api.call("POST", "/api/v3/token", headers=basic("carol", slapd.password("carol")),
                       client_ip="203.0.113.9")
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
    assert api.call("POST", "/api/v3/token", headers=basic("carol", slapd.password("carol")),
                    client_ip="203.0.113.10").status == 200


def test_good_logins_cost_nothing_and_clear_no_failures(make_api, ldap_auth, slapd):
    """A good login gives its attempt back and forgets no failures: a name's counter holds those
    of every name login_key merges with it (jose's holder reset the guesses at jos\u00e9's)."""
    api = make_api(document(ldap_auth(login_attempts_per_user=2)))
    right = basic("alice", slapd.password("alice"))
    assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    assert [api.call("POST", "/api/v3/token", headers=right).status for _ in range(4)] == [200] * 4
    assert api.call("POST", "/api/v3/token", headers=basic("ALICE", "guess")).status == 401
    refused = api.call("POST", "/api/v3/token", headers=right)
    assert refused.status == 429 and refused.body["ok"] is False and int(refused.headers["Retry-After"]) >= 1


def test_ldap_down_is_503_json_and_not_a_failed_login(make_api, ldap_auth, slapd, all_logs, closed_port):
    auth = ldap_auth(login_attempts_per_user=1)
    auth["ldap"]["port"] = closed_port  # nothing listens there
    api = make_api(document(auth))
    for _ in range(3):
        for method in ("GET", "POST"):
            reply = api.call(method, "/api/v3/token", headers=basic("alice", slapd.password("alice")))
            assert reply.status == 503
            assert reply.headers["Content-Type"] == "application/json"
            assert reply.body["ok"] is False and "unavailable" in reply.body["error"]
    # Outages do not count: after three of them, alice is not locked out (limit 1).
    assert api.services.client.keys("vmpool:login:*") == []
    assert any("unreachable" in line for line in all_logs.lines)


def test_the_ldap_outage_is_a_json_line_of_the_request_that_met_it(make_api, ldap_auth, slapd, log_output,
                                                                    closed_port):
    """The authenticator's own lines (chalicelib.auth, no Powertools there) are the service's JSON
    lines with the request's correlation id, as the API's are: under the root logger they were
    Lambda's plain text, which no Logs Insights query on the JSON fields finds."""
    auth = ldap_auth()
    auth["ldap"]["port"] = closed_port  # nothing listens there
    api = make_api(document(auth))
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 503
    records = json_lines(log_output.getvalue())
    (outage,) = [record for record in records if "unreachable" in record["message"]]
    (answer,) = [record for record in records if record["message"] == "authentication service unavailable"]
    assert outage["level"] == "ERROR" and outage["correlation_id"]
    assert outage["correlation_id"] == answer["correlation_id"]
    assert slapd.password("alice") not in log_output.getvalue()


def test_tokens_keep_working_while_ldap_is_down(make_api, ldap_auth, slapd, closed_port):
    """Tokens are checked in Redis only: an LDAP outage stops logins, not CI jobs holding tokens."""
    auth = ldap_auth()
    auth["ldap"]["port"] = closed_port  # nothing listens there
    api = make_api(document(auth))
    api.fill(POOL)
    token = api.services.tokens.create("alice")  # made before the outage
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 503
    vm = api.checkout(POOL, token)
    assert api.call("GET", f"/api/v3/token/{token}", headers={"X-AUTH-TOKEN": token}).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": token}).status == 200


def test_a_refused_service_account_is_503(make_api, ldap_auth, slapd):
    auth = ldap_auth()
    auth["ldap"]["service_account_hash"]["password"] = "not-the-service-password"
    api = make_api(document(auth))
    reply = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert reply.status == 503 and reply.body["ok"] is False


def test_direct_bind_mode_over_http(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(direct=True)))
    for user in ("alice", "bob", "comma,user"):
        assert api.call("POST", "/api/v3/token", headers=basic(user, slapd.password(user))).status == 200
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("bob"))).status == 401


def test_a_look_alike_name_cannot_log_in_while_the_user_is_locked_out(make_api, ldap_auth, slapd):
    """slapd binds a fullwidth '\uff42ob' as bob: it must not slip past bob's lockout."""
    api = make_api(document(ldap_auth(login_attempts_per_user=3, login_attempts_per_user_all_addresses=3)))
    for _ in range(3):
        assert api.call("POST", "/api/v3/token", headers=basic("bob", "guess")).status == 401
    for name in ("\uff42ob", "BOB", "Bob"):
        reply = api.call("POST", "/api/v3/token", headers=basic(name, slapd.password("bob")), client_ip="198.51.100.9")
        assert reply.status == 429, name


def test_credentials_no_directory_is_asked_about_keep_nothing_in_redis(make_api, ldap_auth, slapd):
    # Before, each was counted like a wrong password: a counter of its user name for the login
    # window (5 minutes, ~200 bytes with its key), and no directory round trip to slow it down.
    # A caller with many addresses (50 attempts each per window) sent them as fast as the API
    # answered (750 a second in one process): with an IPv6 /48, 3.3 million counters a window.
    api = make_api(document(ldap_auth()))
    client = api.services.client
    hostile = [("ghost\x01", "guess"), ("ghost", ""), (" ghost", "guess"), ("g" * 5000, "guess"), ("ghost\x7f", "x")]
    for index in range(300):
        user, password = hostile[index % len(hostile)]
        reply = api.call("POST", "/api/v3/token", headers=basic(f"{user}{index}", password),
                         client_ip=f"2001:db8:44:{index:x}::1")
        assert reply.status == 401 and reply.body["ok"] is False
    assert list(client.scan_iter("vmpool:login:*")) == []
    # A wrong password the directory checks still counts, per (address, user), user and address.
    assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    keys = api.services.store.keys
    counted = {keys.login_pairs_counted, keys.login_users_counted, keys.login_addresses_counted}
    assert len(set(client.scan_iter("vmpool:login:*")) - counted) == 3


def _failed_login_keys(client) -> tuple[int, int]:
    """How many keys the failed-login counters keep, and their MEMORY USAGE in bytes."""
    counters = list(client.scan_iter("vmpool:login:*", count=1000))
    return len(counters), sum(client.memory_usage(key) or 0 for key in counters)


def test_what_many_names_and_addresses_keep_in_redis_by_failing_logins_is_bounded(make_api, monkeypatch):
    # Before, every name the directory was asked about, and every address, kept a counter for the
    # window: (failed logins a second) x login_window_seconds, about 230 bytes each, and nothing
    # bounded the window. Past max_login_counters names (addresses) counted on their own, new ones
    # share SHARED_LOGIN_COUNTERS counters; a name counted before keeps its count.
    monkeypatch.setattr(ratelimit, "SHARED_LOGIN_COUNTERS", 64, raising=False)
    api = make_api(document({"provider": "dummy", "login_attempts_per_user": 3, "login_window_seconds": 86400,
                             "max_login_counters": 100}))
    client = api.services.client
    for _ in range(2):
        assert api.call("POST", "/api/v3/token", headers=basic("bob", "bob"), client_ip="198.51.100.9").status == 401
    for index in range(2000):  # a new name from a new /48 each time: the dummy fails a password equal to the name
        api.call("POST", "/api/v3/token", headers=basic(f"g{index}", f"g{index}"), client_ip=f"2001:db8:{index:x}::1")
    counters, size = _failed_login_keys(client)
    assert counters <= 3 * (100 + 64 + 1)
    for index in range(2000, 5000):
        api.call("POST", "/api/v3/token", headers=basic(f"g{index}", f"g{index}"), client_ip=f"2001:db8:{index:x}::1")
    assert _failed_login_keys(client)[0] <= counters and _failed_login_keys(client)[1] <= size + 1024
    # Bob's own count is intact: one failure more, then 429 even with the right password.
    assert api.call("POST", "/api/v3/token", headers=basic("bob", "bob"), client_ip="198.51.100.9").status == 401
    assert api.call("POST", "/api/v3/token", headers=basic("bob", "right"), client_ip="198.51.100.9").status == 429


def test_names_past_the_bound_share_counters_no_one_can_reset(make_api, monkeypatch):
    """A name counted on a shared counter is guessed no more often than alone, whatever the
    addresses; a good login there gives its own attempt back but clears nobody's failures."""
    monkeypatch.setattr(ratelimit, "SHARED_LOGIN_COUNTERS", 64)
    api = make_api(document({"provider": "dummy", "login_attempts_per_user": 3,
                             "login_attempts_per_user_all_addresses": 3, "max_login_counters": 20}))
    for index in range(20):
        assert api.call("POST", "/api/v3/token", headers=basic(f"u{index}", f"u{index}"),
                        client_ip=f"192.0.2.{index}").status == 401
    # The table is full: dave shares a counter, still 3 guesses a window from 10 addresses.
    guesses = [api.call("POST", "/api/v3/token", headers=basic("dave", "dave"), client_ip=f"203.0.113.{index}").status
               for index in range(10)]
    assert guesses == [401] * 3 + [429] * 7
    assert api.call("POST", "/api/v3/token", headers=basic("dave", "right")).status == 429
    # frank and erin share a counter (their names hash alike): erin's good login clears none of frank's failures.

    def counter(name: str) -> int:
        return ratelimit.shared_counter_of(ratelimit._user_part(name), ratelimit.SHARED_LOGIN_COUNTERS)

    erin = next(name for name in (f"erin{k}" for k in range(10000))
                if counter(name) == counter("frank") != counter("dave"))
    assert api.call("POST", "/api/v3/token", headers=basic("frank", "frank")).status == 401
    assert api.call("POST", "/api/v3/token", headers=basic(erin, "right")).status == 200
    assert api.call("POST", "/api/v3/token", headers=basic("frank", "frank")).status == 401
    assert api.call("POST", "/api/v3/token", headers=basic("frank", "frank")).status == 401
    assert api.call("POST", "/api/v3/token", headers=basic("frank", "right")).status == 429
    # When the windows end (their counters and the tables expire, on Redis's clock) the table has
    # room again: a name is counted on its own.
    api.services.client.delete(*api.services.client.keys("vmpool:login:*"))
    assert api.call("POST", "/api/v3/token", headers=basic("zed", "zed")).status == 401
    assert api.services.client.exists(api.services.store.keys.login_user(ratelimit._user_part("zed")))


def test_a_service_clock_ahead_of_redis_counts_no_more_names_on_their_own(make_api, monkeypatch):
    """The counters expire on Redis's clock; the tables of names (addresses) counted on their own
    were timed on the service's. An API process whose clock ran ahead of Redis's (here by a whole
    window) dropped names from the table while their counters lived on, so new ones were counted
    on their own too: 4 name counters with ``max_login_counters: 2``. The tables now keep Redis's
    time."""
    monkeypatch.setattr(ratelimit, "SHARED_LOGIN_COUNTERS", 64)
    api = make_api(document({"provider": "dummy", "login_attempts_per_user": 3,
                             "login_attempts_per_user_all_addresses": 3, "max_login_counters": 2}))
    client, keys = api.services.client, api.services.store.keys
    for name in ("amy", "ben"):
        assert api.call("POST", "/api/v3/token", headers=basic(name, name), client_ip="192.0.2.1").status == 401
    api.clock.advance(301)  # the service's clock, not Redis's: both windows are still open
    for name in ("cal", "dot"):
        assert api.call("POST", "/api/v3/token", headers=basic(name, name), client_ip="192.0.2.2").status == 401
    own = [key for key in client.scan_iter(keys.login_user("*"))
           if not key.endswith((":in_flight", ":counted")) and ":shared:" not in key]
    assert len(own) == 2
    # The newcomers share counters; the two counted first still count on their own, to the limit.
    for _ in range(2):
        assert api.call("POST", "/api/v3/token", headers=basic("amy", "amy"), client_ip="192.0.2.3").status == 401
    assert api.call("POST", "/api/v3/token", headers=basic("amy", "right"), client_ip="192.0.2.3").status == 429
    assert client.get(keys.login_user(ratelimit._user_part("amy"))) == "3"
