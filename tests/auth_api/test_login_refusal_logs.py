"""A caller kept out by the failed-login limits is not logged once per attempt: the first 429
of a quiet spell is a line at once, the rest a count in the window's ``requests refused`` line
(chalicelib/refusals.py)."""

from __future__ import annotations

from chalicelib.auth.basic import LOGIN_LIMITED
from chalicelib.auth.ldap import LOGIN_REFUSED
from chalicelib.refusals import WINDOW_SECONDS
from tests.auth_api.documents import document
from tests.harness import basic
from tests.support import json_lines


def test_logins_refused_by_the_limit_cost_one_line_a_window_and_are_counted(make_api, ldap_auth, slapd, log_output):
    api = make_api(document(ldap_auth(login_attempts_per_user=2, login_attempts_per_user_all_addresses=2,
                                      login_window_seconds=3600)))
    for _ in range(2):
        assert api.call("POST", "/api/v3/token", headers=basic("alice", "guess")).status == 401
    for attempt in range(200):  # from many addresses: the per-user ceiling holds them all
        reply = api.call("POST", "/api/v3/token", headers=basic("alice", "guess"),
                         client_ip=f"198.51.{attempt // 256}.{attempt % 256}")
        assert reply.status == 429
    said = [record for record in json_lines(log_output.getvalue()) if record["message"].startswith(LOGIN_LIMITED)]
    assert len(said) == 1 and said[0]["level"] == "WARNING" and said[0]["correlation_id"]

    api.clock.advance(WINDOW_SECONDS)
    assert api.call("GET", "/api/v3/status").status == 200  # any request writes the window that is over
    (summary,) = [record for record in json_lines(log_output.getvalue()) if record["message"] == "requests refused"]
    # the second of the two 401s is counted too (the first was said at once)
    assert summary["refused"] == {LOGIN_LIMITED: 199, LOGIN_REFUSED: 1} and summary["level"] == "WARNING"


def test_logins_the_directory_refuses_cost_one_line_a_window_and_are_counted_by_name(
        make_api, ldap_auth, slapd, log_output):
    """Failed logins under the limits, for many names from many addresses, wrote ``LDAP login
    refused for '<name>'`` each: a line per attempt however many names. Now the first at once
    (with its name, never the password), the rest counted by name in ``requests refused``."""
    api = make_api(document(ldap_auth()))
    for attempt in range(60):
        reply = api.call("POST", "/api/v3/token", headers=basic(f"nobody{attempt % 30}", "guess-pw"),
                         client_ip=f"198.51.100.{attempt}")
        assert reply.status == 401
    lines = json_lines(log_output.getvalue())
    said = [record for record in lines if record["message"].startswith(LOGIN_REFUSED)]
    assert len(said) == 1 and said[0]["names"] == ["nobody0"]
    assert "guess-pw" not in log_output.getvalue()

    api.clock.advance(WINDOW_SECONDS)
    assert api.call("GET", "/api/v3/status").status == 200
    (summary,) = [record for record in json_lines(log_output.getvalue()) if record["message"] == "requests refused"]
    assert summary["refused"] == {LOGIN_REFUSED: 59}
    assert summary["by_name"][LOGIN_REFUSED]["nobody1"] == 2
