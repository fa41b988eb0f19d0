"""Callers an outsider would send: directory users whose names look alike, several at once, and
malformed credentials, over HTTP against the real slapd and redis-server."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

import app as chalice_app
from chalicelib.auth.ratelimit import new_attempt
from tests.auth.slapd import PEOPLE_OU, USERS_OU, SlapdServer
from tests.auth_api.documents import CLIENT_IP, POOL, document
from tests.harness import basic
from tests.support import stop_process

SHARP_S = "stra\u00dfe"
"""A directory user of its own: LDAP matching (OpenLDAP's, Active Directory's) lower-cases names
and keeps the sharp s apart from 'ss'; Unicode case folding (str.casefold) makes it 'strasse'."""
DOUBLE_S = "strasse"


def test_two_directory_users_that_case_folding_merges_stay_two_users(make_api, ldap_auth, slapd):
    """straße and strasse are two entries with two passwords: each got the other's tokens (listed,
    deleted) and VMs, since both logged in as 'strasse'."""
    api = make_api(document(ldap_auth()))
    api.fill(POOL)
    sharp, double = basic(SHARP_S, slapd.password(SHARP_S)), basic(DOUBLE_S, slapd.password(DOUBLE_S))
    sharp_token = api.new_token(SHARP_S, slapd.password(SHARP_S))
    double_token = api.new_token(DOUBLE_S, slapd.password(DOUBLE_S))
    shown = api.call("GET", f"/api/v3/token/{sharp_token}").body[sharp_token]
    assert shown["user"] == SHARP_S

    listed = api.call("GET", "/api/v3/token", headers=double).body
    assert set(listed) == {"ok", api.services.tokens.lookup(double_token, touch=False).id}
    assert api.call("GET", f"/api/v3/token/{sharp_token}", headers=double).status == 403
    assert api.call("DELETE", f"/api/v3/token/{sharp_token}", headers=double).status == 403

    vm = api.checkout(POOL, sharp_token)
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": double_token}).status == 403

    assert api.call("POST", "/api/v3/token", headers=sharp).status == 200
    assert api.call("DELETE", f"/api/v3/vm/{vm}", headers={"X-AUTH-TOKEN": sharp_token}).status == 200


def test_a_token_stored_under_another_spelling_is_revoked_by_its_owner(ldap_api, slapd):
    """Tokens made before user names were canonical record the name as typed ('ALICE'): alice, who
    now logs in as 'alice' whatever she types, was told the token 'belongs to another user' (403)
    and could not revoke it."""
    alice = basic("alice", slapd.password("alice"))
    old = ldap_api.services.tokens.create("ALICE")  # as the code before canonical names stored it
    assert ldap_api.call("GET", f"/api/v3/token/{old}", headers=alice).status == 200
    assert ldap_api.call("DELETE", f"/api/v3/token/{old}", headers=basic("bob", slapd.password("bob"))).status == 403
    deleted = ldap_api.call("DELETE", f"/api/v3/token/{old}", headers=alice)
    assert (deleted.status, deleted.body) == (200, {"ok": True})
    assert ldap_api.call("GET", f"/api/v3/token/{old}").status == 404
    assert ldap_api.services.client.smembers("vmpool:user:ALICE:tokens") == set()


def api_gateway_event(method: str, resource: str, headers: list[tuple[str, str]],
                      params: dict[str, str] | None = None) -> dict[str, Any]:
    """API Gateway's proxy event for a request to ``resource`` (a route, its ``params`` filled in)
    that sent ``headers`` (a name may repeat): as API Gateway does, ``headers`` keeps each name's
    last value, ``multiValueHeaders`` every value."""
    path = resource.format(**(params or {}))
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in headers:
        single[name] = value
        multi.setdefault(name, []).append(value)
    return {"resource": resource, "path": path, "httpMethod": method, "headers": single,
            "multiValueHeaders": multi, "queryStringParameters": None,
            "multiValueQueryStringParameters": None, "pathParameters": params, "stageVariables": None,
            "body": None, "isBase64Encoded": False,
            "requestContext": {"resourcePath": resource, "httpMethod": method, "requestId": "r1", "path": path,
                               "stage": "prod", "identity": {"sourceIp": CLIENT_IP}}}


def lambda_answer(event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    response = chalice_app.app(event, None)
    body = json.loads(response["body"])
    assert response["statusCode"] == 200 or body["ok"] is False, body
    return response["statusCode"], body


@pytest.mark.parametrize("order", ["wrong first", "wrong last"])
def test_several_authorization_headers_are_refused(ldap_api, slapd, order):
    """A request with two Authorization headers reached the Lambda with the last one only: a proxy
    or WAF that checked the first let through a login it never saw. Now both are read (joined as
    HTTP combines repeated fields, as the local front does) and the login is refused."""
    right = basic("alice", slapd.password("alice"))["Authorization"]
    wrong = basic("bob", "not-bobs-password")["Authorization"]
    sent = [right, wrong] if order == "wrong last" else [wrong, right]
    status, body = lambda_answer(api_gateway_event("POST", "/api/v3/token", [("Authorization", v) for v in sent]))
    assert (status, body["ok"]) == (401, False)
    assert ldap_api.services.client.keys("vmpool:token:*") == []


def test_several_tokens_in_one_request_are_refused(ldap_api, slapd):
    """Two X-AUTH-TOKEN headers: the last one was used, whatever the first said."""
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    bob = ldap_api.new_token("bob", slapd.password("bob"))
    vm = ldap_api.checkout(POOL, bob)
    status, body = lambda_answer(api_gateway_event(
        "DELETE", "/api/v3/vm/{name}", [("X-AUTH-TOKEN", alice), ("X-AUTH-TOKEN", bob)], {"name": vm}))
    assert (status, body["ok"]) == (401, False)
    assert ldap_api.state_of(vm) == "running"


@pytest.mark.parametrize("spellings", [("X-AUTH-TOKEN", "x-auth-token"), ("x-auth-token", "X-Auth-Token")])
def test_two_tokens_under_two_spellings_of_the_header_are_refused(ldap_api, slapd, spellings):
    """API Gateway's event keeps a header's name as the client spelled it: a token sent as
    ``X-AUTH-TOKEN`` and another as ``x-auth-token`` are two keys of one value each, and the
    last was used (past a proxy or WAF that checked the first), where two under one spelling
    were refused. HTTP names are case-insensitive (RFC 9110 5.1): they are one header sent twice."""
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    bob = ldap_api.new_token("bob", slapd.password("bob"))
    vm = ldap_api.checkout(POOL, bob)
    headers = [(spellings[0], alice), (spellings[1], bob)]
    status, body = lambda_answer(api_gateway_event("DELETE", "/api/v3/vm/{name}", headers, {"name": vm}))
    assert (status, body["ok"]) == (401, False)
    assert ldap_api.state_of(vm) == "running"


def test_two_authorization_headers_under_two_spellings_are_refused(ldap_api, slapd):
    right = basic("alice", slapd.password("alice"))["Authorization"]
    wrong = basic("bob", "not-bobs-password")["Authorization"]
    event = api_gateway_event("POST", "/api/v3/token", [("authorization", wrong), ("Authorization", right)])
    status, body = lambda_answer(event)
    assert (status, body["ok"]) == (401, False)
    assert ldap_api.services.client.keys("vmpool:token:*") == []


def test_a_direct_invoke_whose_two_header_forms_disagree_on_the_token_is_refused(ldap_api, slapd):
    """API Gateway's ``headers`` holds each name's last value of ``multiValueHeaders``; an event
    where they name two tokens was not sent by it, and neither is taken for the caller's."""
    alice = ldap_api.new_token("alice", slapd.password("alice"))
    bob = ldap_api.new_token("bob", slapd.password("bob"))
    vm = ldap_api.checkout(POOL, bob)
    event = api_gateway_event("DELETE", "/api/v3/vm/{name}", [("X-AUTH-TOKEN", bob)], {"name": vm})
    event["multiValueHeaders"] = {"X-AUTH-TOKEN": [alice]}
    status, body = lambda_answer(event)
    assert (status, body["ok"]) == (401, False)
    assert ldap_api.state_of(vm) == "running"


USERS_AT_ONCE = ("alice", "bob", "carol", "comma,user", SHARP_S, DOUBLE_S)


def test_many_users_at_once_each_get_their_own_token_and_vms(make_api, ldap_auth, slapd):
    """Six directory users log in, check out and look at their tokens all at once, each from many
    threads: every token, VM and listing is the caller's own (the app keeps the request it serves
    per thread; a shared one would hand one caller's identity to another)."""
    api = make_api(document(ldap_auth(), pools=[
        {"name": POOL, "size": 24, "provider": "dummy", "template": "t/debian"}]))
    api.fill(POOL)
    callers = [user for user in USERS_AT_ONCE for _ in range(4)]

    def log_in_and_check_out(user: str) -> tuple[str, str, str, dict[str, Any]]:
        token = api.new_token(user, slapd.password(user))
        vm = api.checkout(POOL, token)
        listed = api.call("GET", "/api/v3/token", headers=basic(user, slapd.password(user))).body
        return user, token, vm, listed

    with ThreadPoolExecutor(len(callers)) as pool:
        results = list(pool.map(log_in_and_check_out, callers))
    ids: dict[str, set[str]] = {}
    for user, token, vm, _ in results:
        record = api.services.tokens.lookup(token, touch=False)
        assert record is not None and record.user == user
        assert api.store.get_vm(vm).token_user == user
        ids.setdefault(user, set()).add(record.id)
    for user, _, _, listed in results:
        assert set(listed) - {"ok"} <= ids[user]
    assert len({vm for _, _, vm, _ in results}) == len(callers)


def test_a_directory_stopped_or_killed_during_logins_is_503_json_never_a_login(make_api, private_slapd):
    """SIGSTOP: each login waits receive_timeout for an answer, then 503. SIGKILL while logins are
    under way: each is a working token or a 503, never a 500 or a 401 counted as a failure."""
    directory = private_slapd
    ldap = directory.service_account_config(receive_timeout=1)
    api = make_api(document({"provider": "ldap", "ldap": ldap, "login_attempts_per_user": 10}))
    users = [user for user in USERS_AT_ONCE for _ in range(3)]

    def log_in(user: str) -> tuple[int, dict[str, Any]]:
        reply = api.call("POST", "/api/v3/token", headers=basic(user, directory.password(user)))
        return reply.status, reply.body

    def check(answers: list[tuple[int, dict[str, Any]]]) -> None:
        for status, body in answers:
            if status == 200:
                assert api.call("GET", f"/api/v3/token/{body['token']}").status == 200
            else:
                assert (status, body) == (503, {"ok": False, "error": "authentication service unavailable"})

    assert directory.process is not None
    stop_process(directory.process.pid)
    try:
        with ThreadPoolExecutor(6) as pool:
            stopped = list(pool.map(log_in, USERS_AT_ONCE))
    finally:
        directory.process.send_signal(signal.SIGCONT)
    assert {status for status, _ in stopped} == {503}
    check(stopped)

    with ThreadPoolExecutor(len(users)) as pool:
        under_way = [pool.submit(log_in, user) for user in users]
        directory.process.kill()
        killed = [future.result() for future in under_way]
    check(killed)
    after = [log_in(user) for user in USERS_AT_ONCE]
    assert {status for status, _ in after} == {503}
    check(after)
    assert api.services.client.keys("vmpool:login:*") == []  # outages are not failed logins


def test_a_dotted_capital_i_is_the_same_user(ldap_api, slapd):
    """OpenLDAP binds 'al\u0130ce' as alice (it lower-cases \u0130 to i); her token made under that
    spelling was another user's: not listed to her, not deletable by her, not counted in her limit."""
    token = ldap_api.new_token("al\u0130ce", slapd.password("alice"))
    alice = basic("alice", slapd.password("alice"))
    assert ldap_api.call("GET", f"/api/v3/token/{token}").body[token]["user"] == "alice"
    assert len(ldap_api.call("GET", "/api/v3/token", headers=alice).body) == 2
    assert ldap_api.call("DELETE", f"/api/v3/token/{token}", headers=alice).status == 200


def test_logins_in_flight_at_the_limit_answer_retry_in_a_second(make_api, ldap_auth, slapd):
    """Two of alice's logins still waiting for the directory (from elsewhere) fill her limit of 2: a third gets 429
    with Retry-After: 1 and says so (it was 'too many failed logins' and the whole window), and
    once those two are in, it goes through."""
    api = make_api(document(ldap_auth(login_attempts_per_user=2, login_attempts_per_user_all_addresses=2,
                                      login_window_seconds=300)))
    limiter = api.services.logins.limiter
    attempts = {address: new_attempt() for address in ("198.51.100.1", "198.51.100.2")}
    for address, attempt in attempts.items():
        assert limiter.reserve("alice", address, attempt) is None  # a login under way elsewhere
    refused = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert (refused.status, refused.headers["Retry-After"]) == (429, "1")
    assert refused.body == {"ok": False, "error": "too many logins at once, try again in a moment", "retry_after": 1}
    for address, attempt in attempts.items():
        limiter.settle("alice", address, attempt, succeeded=True)
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 200


def test_a_password_of_hebrew_and_latin_letters_logs_in(ldap_api, slapd):
    """dana's directory password mixes Hebrew and Latin letters. ldap3 ran every password through
    SASLprep, which refuses such a mix (and control, private-use or other code points) before
    sending it: dana could never log in, and was told the directory was unavailable (503)."""
    assert ldap_api.call("POST", "/api/v3/token", headers=basic("dana", slapd.password("dana"))).status == 200


@pytest.mark.parametrize("password", ["\ufff9abc", "\u05d0a", "x\u200e", "\ue000pin"])
def test_an_unsendable_password_is_a_wrong_one_not_an_outage(make_api, ldap_auth, slapd, all_logs, password):
    """Passwords SASLprep refuses were a 503 'authentication service unavailable', logged as an
    outage, after a connection, StartTLS, the service account's bind and a search, and given back
    to the failed-login limiter: a caller could make the directory work without limit. They are
    sent as typed (UTF-8, as other LDAP clients and vmpooler send them): a wrong password, 401,
    counted."""
    api = make_api(document(ldap_auth(login_attempts_per_user=2)))
    for _ in range(2):
        reply = api.call("POST", "/api/v3/token", headers=basic("alice", password))
        assert (reply.status, reply.body["ok"]) == (401, False)
    assert api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice"))).status == 429
    assert not [line for line in all_logs.lines if "unavailable" in line]


def test_a_password_the_directory_does_not_hold_never_logs_in_by_mapping(ldap_api, slapd):
    """SASLprep maps some characters to nothing before sending: alice's password with a soft
    hyphen or a zero-width space inside logged in as alice. The directory compares what it
    holds."""
    password = slapd.password("alice")
    for inserted in ("\u00ad", "\u200b", "\u180b"):
        typed = password[:3] + inserted + password[3:]
        assert ldap_api.call("POST", "/api/v3/token", headers=basic("alice", typed)).status == 401


MALLORY = f"""dn: cn=alice,{PEOPLE_OU}
objectClass: inetOrgPerson
uid: mallory
cn: alice
sn: mallory
userPassword: mallory-Pass-8
"""
"""Another person, whose common name is alice's user name."""


def test_a_name_that_finds_two_entries_logs_in_as_neither(make_api):
    """With user_object [uid, cn], 'alice' finds alice (uid=alice) and mallory (cn=alice), each
    search finding one entry. Mallory logged in as 'alice' with her own password: alice's tokens
    and VMs were hers. A name that finds two entries is ambiguous wherever they are found."""
    with SlapdServer(extra_ldif=MALLORY) as directory:
        ldap = directory.service_account_config(user_object=["uid", "cn"])
        api = make_api(document({"provider": "ldap", "ldap": ldap}))
        assert api.call("POST", "/api/v3/token", headers=basic("alice", "mallory-Pass-8")).status == 401
        assert api.call("POST", "/api/v3/token", headers=basic("alice", directory.password("alice"))).status == 401
        assert api.call("POST", "/api/v3/token", headers=basic("mallory", "mallory-Pass-8")).status == 200


def _person(uid: str, password: str) -> str:
    return f"""dn: uid={uid},{USERS_OU}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid}
sn: {uid}
userPassword: {password}
"""


DOUBLE_STRUCK = "ali\u2102e"
"""'ali\u2102e': OpenLDAP lower-cases each letter, then applies compatibility mappings, so \u2102
(no lower case) becomes a capital C and the entry stays apart from alice. NFKC first, then lower
case (vmpool's canonical name) made it 'alice'."""
MODIFIER = "ali\u1d9ce"
"""'ali\u1d9ce' (a modifier letter small c): Unicode 4.0, after OpenLDAP's tables, which keep it
apart from c; NFKC maps it to c."""
SIGMA, FINAL_SIGMA = "\u03bf\u03b4\u03bf\u03c3", "\u03bf\u03b4\u03bf\u03c2"
"""Two Greek entries, one ending in \u03c3 and one in the final form \u03c2, which OpenLDAP keeps
apart; '\u039f\u0394\u039f\u03a3' binds as the first (\u03a3 lower-cases to \u03c3), while Python's
str.lower gives a final \u03c2 at the end of a word: the second's name."""
SPACED = "john doe"
"""A name with a space: OpenLDAP matches any run of spaces in it as one (RFC 4518)."""
LOOK_ALIKES = {DOUBLE_STRUCK: "double-struck-Pass-9", MODIFIER: "modifier-Pass-13", SIGMA: "sigma-Pass-10",
               FINAL_SIGMA: "final-sigma-Pass-11", SPACED: "john-Pass-12"}


@pytest.fixture(scope="module")
def look_alike_directory() -> Iterator[SlapdServer]:
    """The test directory with entries whose names look like others' but are other people."""
    with SlapdServer(extra_ldif="\n".join(_person(uid, password) for uid, password in LOOK_ALIKES.items())) as server:
        yield server


def _look_alike_api(make_api, directory: SlapdServer, **auth: Any):
    ldap = directory.service_account_config()
    return make_api(document({"provider": "ldap", "ldap": ldap, **auth}, config={"max_tokens_per_user": 2}))


@pytest.mark.parametrize("name", [DOUBLE_STRUCK, MODIFIER])
def test_an_entry_the_directory_keeps_apart_from_alice_never_logs_in_as_alice(make_api, look_alike_directory, name):
    """The holder of 'ali\u2102e' or 'ali\u1d9ce' logged in with her own password and was vmpool's
    'alice': alice's tokens (listed, deleted), VMs and admin rights. No spelling of such a name is
    one user for vmpool and the directory alike, so it does not log in."""
    api = _look_alike_api(make_api, look_alike_directory)
    alice_token = api.new_token("alice", look_alike_directory.password("alice"))
    mallory = basic(name, LOOK_ALIKES[name])
    assert api.call("GET", "/api/v3/token", headers=mallory).status == 401
    assert api.call("DELETE", f"/api/v3/token/{alice_token}", headers=mallory).status == 401
    assert api.call("POST", "/api/v3/token", headers=mallory).status == 401
    assert api.call("GET", f"/api/v3/token/{alice_token}").status == 200  # still alice's, still alive


def test_a_capital_sigma_logs_in_as_the_entry_it_binds(make_api, look_alike_directory):
    """'\u039f\u0394\u039f\u03a3' binds as \u03bf\u03b4\u03bf\u03c3, but str.lower made it
    \u03bf\u03b4\u03bf\u03c2, another entry's name: its holder listed and deleted the other's tokens."""
    api = _look_alike_api(make_api, look_alike_directory)
    other_token = api.new_token(FINAL_SIGMA, LOOK_ALIKES[FINAL_SIGMA])
    upper = basic(SIGMA.upper(), LOOK_ALIKES[SIGMA])
    assert api.call("GET", "/api/v3/token", headers=upper).status == 404  # none of its own
    assert api.call("DELETE", f"/api/v3/token/{other_token}", headers=upper).status == 403
    mine = api.new_token(SIGMA.upper(), LOOK_ALIKES[SIGMA])
    assert api.call("GET", f"/api/v3/token/{mine}").body[mine]["user"] == SIGMA
    assert set(api.call("GET", "/api/v3/token", headers=basic(SIGMA, LOOK_ALIKES[SIGMA])).body) == {
        "ok", api.services.tokens.lookup(mine, touch=False).id}


def test_a_name_without_one_canonical_spelling_is_refused_by_every_provider(make_api):
    """The dummy provider too: ali\u2102e and alice were one user. Fullwidth letters and spaces,
    which every directory maps, still log in as their plain spelling."""
    api = make_api(document({"provider": "dummy"}))
    for name in (DOUBLE_STRUCK, MODIFIER, "\u24d0lice", "q\U0001d7cfz", "\u1e9e"):
        assert api.call("POST", "/api/v3/token", headers=basic(name, "anything")).status == 401, name
    token = api.new_token("\uff41lice", "anything")
    assert api.call("GET", f"/api/v3/token/{token}").body[token]["user"] == "alice"


def test_every_run_of_spaces_in_a_name_is_one_user(make_api, look_alike_directory):
    """OpenLDAP binds 'john  doe' (any run of spaces, up to the 256 characters of a name) as
    'john doe', but each run was a vmpool user of its own: a failed-login counter each (about
    250 times the guesses allowed at john's password), and a token limit, VM quota and request
    rate each."""
    api = _look_alike_api(make_api, look_alike_directory, login_attempts_per_user=3)
    password = LOOK_ALIKES[SPACED]
    spellings = ["john doe", "john  doe", "john   doe", "john \u3000 doe"]
    first, second = api.new_token(spellings[0], password), api.new_token(spellings[1], password)
    refused = api.call("POST", "/api/v3/token", headers=basic(spellings[2], password))
    assert (refused.status, refused.body["ok"]) == (403, False)  # max_tokens_per_user: 2, whatever the spacing
    for token in (first, second):
        assert api.call("GET", f"/api/v3/token/{token}").body[token]["user"] == SPACED
    assert len(api.call("GET", "/api/v3/token", headers=basic(spellings[3], password)).body) == 1 + 2
    for spelling in spellings[:3]:
        assert api.call("POST", "/api/v3/token", headers=basic(spelling, "guess")).status == 401
    assert api.call("POST", "/api/v3/token", headers=basic(spellings[3], "guess")).status == 429
