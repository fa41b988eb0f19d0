"""Failed logins are limited (429 + Retry-After); an LDAP outage is a 503 JSON answer, not a 500."""

from __future__ import annotations

from tests.auth_api.documents import POOL, document
from tests.harness import basic
from tests.support import free_port, json_lines


def test_failed_logins_per_user_are_limited_with_retry_after(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(login_attempts_per_user=3, login_window_seconds=120)))
    for _ in range(3):
        assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    limited = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert limited.status == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 120
    assert limited.body["ok"] is False and limited.body["retry_after"] == int(limited.headers["Retry-After"])
    # From another address too: the limit is per user. Other users are not affected.
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


def test_a_good_login_clears_the_users_failures(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(login_attempts_per_user=2)))
    for _ in range(5):
        assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
        assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 200


def test_ldap_down_is_503_json_and_not_a_failed_login(make_api, ldap_auth, slapd, all_logs):
    auth = ldap_auth(login_attempts_per_user=1)
    auth["ldap"]["port"] = free_port()  # nothing listens there
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


def test_the_ldap_outage_is_a_json_line_of_the_request_that_met_it(make_api, ldap_auth, slapd, log_output):
    """The authenticator's own lines (chalicelib.auth, no Powertools there) are the service's JSON
    lines with the request's correlation id, as the API's are: under the root logger they were
    Lambda's plain text, which no Logs Insights query on the JSON fields finds."""
    auth = ldap_auth()
    auth["ldap"]["port"] = free_port()  # nothing listens there
    api = make_api(document(auth))
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 503
    records = json_lines(log_output.getvalue())
    (outage,) = [record for record in records if "unreachable" in record["message"]]
    (answer,) = [record for record in records if record["message"] == "authentication service unavailable"]
    assert outage["level"] == "ERROR" and outage["correlation_id"]
    assert outage["correlation_id"] == answer["correlation_id"]
    assert slapd.password("alice") not in log_output.getvalue()


def test_tokens_keep_working_while_ldap_is_down(make_api, ldap_auth, slapd):
    """Tokens are checked in Redis only: an LDAP outage stops logins, not CI jobs holding tokens."""
    auth = ldap_auth()
    auth["ldap"]["port"] = free_port()  # nothing listens there
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
    api = make_api(document(ldap_auth(login_attempts_per_user=3)))
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
    # A wrong password the directory checks still counts, per user and per address.
    assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    assert len(list(client.scan_iter("vmpool:login:*"))) == 2
