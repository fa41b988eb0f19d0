"""vmpooler's spec/unit/api/helpers_spec.rb (its ``Vmpooler::API::Helpers``), ported to HTTP checks:
each example calls one helper on a Redis double; here the state it reads is made the way the
running service makes it (checkouts, tags, the passes' recorded durations, a real slapd) and the
check is the answer of the route that uses the helper. 62 examples: 52 ``it '...'`` and 10
unnamed ``it { ... }`` (hostname_shorten's 4, validate_date_str's 6).

'#hostname_shorten' (4 unnamed: ``example.com`` -> ``example``, ``sub.example.com`` -> ``sub``, ...;
every /vm/:hostname route): test_a_hostname_is_looked_up_by_its_first_label.

'#validate_date_str' (6 unnamed: ``2015-01-01`` valid; nil, false, true, ``01-01-2015``,
``1/1/2015`` not; /summary's ``from`` and ``to``): test_summary_dates_must_be_yyyy_mm_dd. nil is
a parameter not sent (today); false and true reach a route as the text ``false``/``true``. One
difference, kept: vmpooler answers a bad date with the bare text ``Invalid date format ...`` (its
``halt 400, "..."``, under ``Content-Type: application/json``, so a client parsing JSON fails on
it); ours is that text as ``{"ok": false, "error": ...}``. And ``2015-01-01`` itself, from today,
is more than the 366 days a range may span here (docs/api.md, "/summary ranges"): the check uses
a date of this year's. An empty value (``?from=&to=``) is today here, as no value is; vmpooler
answers ``?from=`` 400 (``Invalid date format ''``) and ``?from`` today, which API Gateway cannot
tell apart (docs/compatibility.md, "Deliberately different", as ``?view=``).

'#mean' ('returns 2.5 for [1, 2, 3, 4]', 'returns 1 for [1]', 'returns 0 for [nil]', 'returns 0
for []') and '#get_task_times' ('returns [1.0, 2.0, 3.0, 4.0] for task "task1"@"2014-01-01"',
'... [] ...', '... [2.2] ...', '... [2.2, 3.0, 3.0] ...'): /summary's ``average`` of a day's
durations: test_summary_averages_a_days_durations.

'#get_capacity_metrics' ('adds up pools correctly', 'handles 0 from redis', 'handles 0 size',
'handles empty pool array'): /status ``capacity``: test_status_capacity_adds_up_pools.

'#get_queue_metrics' ('handles empty pool array': test_status_capacity_and_queue_of_no_pools;
'adds pool queues correctly': test_status_queue_adds_up_pools; 'sets booting to 0 when negative
calculation': test_status_booting_is_0_while_more_clones_run_than_vms_pend). ``cloning`` counts
every clone the provider runs, those of VMs a pool reset took out of service too, so it can
exceed ``pending``, as vmpooler's spec sets up; ``booting`` is then 0, never negative.

'#get_tag_metrics' ('returns basic tag metrics', 'calculates tag totals'): /summary ``tag``:
test_summary_counts_tag_values_and_their_total (and
tests/api/test_status_summary.py::test_a_tag_value_written_as_total_leaves_the_total_true).

'#pool_index' ('should return a hash', 'should return the correct index for each pool'): vmpooler's
lookup of a pool's place in its config list; over HTTP, GET /config lists the pools in the
config's order: tests/compat/test_vmpooler_config_spec.py::test_config_shows_each_pool_as_the_config_wrote_it.

'#template_ready?' ('returns false when there is no prepared template', 'returns true when
configured and prepared templates match', 'returns false when configured and prepared templates
do not match'): GET /config's ``template_ready``. Deliberately different: always ``true``
(test_config_says_every_template_is_ready). vmpooler's is false until its manager has run
``prepare_template`` for the pool's current template (at its start, and after each
``POST /config/pooltemplate`` until the pool's next check); our pass prepares a template
(delta disks) before cloning from it and holds the pool's clones meanwhile (docs/vsphere.md), so
a pool's template is one a checkout or clone can use. No client we know reads the key.

'#is_integer?' ('returns true when input is an integer', '... a string containing an integer',
'returns false when input is a string containing word characters'): POST /config/poolsize's
check: test_pool_sizes_are_integers (more spellings:
tests/compat/test_vmpooler_config_spec.py::test_a_size_vmpooler_reads_with_ruby_integer_is_a_size).

'#authenticate' with the dummy provider ('should return true'): POST /token with any password
but the user name, tests/auth_api/test_token_routes.py::test_dummy_auth_works_over_http; with an
unknown provider ('should return false'): refused when the config is loaded, naming the key
(test_an_unknown_auth_provider_is_refused_at_load), where vmpooler starts and answers every
login 401.

'#authenticate' with the ldap provider (port, encryption, bases, user objects, with and without a
service account): 36 examples checking which ``authenticate_ldap`` calls vmpooler makes, on a
double. Over HTTP against a real slapd: POST /token with Basic, for a user under each base and
each user object, with a wrong password, in each mode and encryption:
test_ldap_logins_over_every_base_user_object_and_encryption. Per example:
- 'without a service account' / 'with a service account': 'should attempt ldap authentication',
  'should return true when authentication is successful', 'should return false when
  authentication fails' (6).
- 'with an alternate ssl_version' ('should specify the alternate ssl_version ...'): vmpooler's
  ``encryption: {method: :start_tls, tls_options: {ssl_version: TLSv1_2}}`` is read (logins
  work), but vmpool negotiates TLS 1.2 or later whatever ``ssl_version`` says: deliberately
  different (tests/auth/test_auth_ldap.py::test_each_encryption_works_with_the_test_ca).
- 'with an alternate port' ('should specify the alternate port ...'), 'with simple_tls and port
  636' ('should specify the secure port and encryption options ...'): the ldaps listener's port
  with ``encryption: simple_tls``, in our form and in vmpooler's hash.
- 'with multiple search bases' (5), 'with multiple search user objects' (5), 'with multiple
  search user objects and with multiple search bases' (7): each user logs in whichever base and
  user object holds them; a wrong password nowhere. Deliberately different: 'should not search
  the second base when the first binds', '... second user object ...', 'should not continue
  searching when the first combination binds' (3): in a direct bind every combination is tried,
  so a name two entries answer to logs in as neither (vmpooler let the first to bind in, the
  second person as the first: docs/compatibility.md;
  tests/auth/test_auth_ldap.py::test_one_name_under_two_bases_is_two_people_and_neither_logs_in).
'#authenticate_ldap' ('should create a new ldap connection', 'should return true when a bind is
successful', 'should return false when a bind fails', 'should return true when a bind_as is
successful', 'should return false when a bind_as fails'): the same test, direct bind and service
account.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest

from chalicelib.config import ConfigError, build
from chalicelib.store import DurationSample
from chalicelib.timestamps import day_of
from tests.auth.slapd import SlapdServer
from tests.compat.api_spec_support import DUMMY_PROVIDER, missing_tests, vmpooler_stack
from tests.harness import Harness, HarnessFactory, basic


def _today(harness: Harness) -> date:
    return date.fromisoformat(day_of(harness.clock.now()))


def test_a_hostname_is_looked_up_by_its_first_label(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 1}])
    pooler.fill(rounds=20)
    host = pooler.checkout("pool1")
    for written in (host, f"{host}.example.com", f"{host}.sub.example.com", f"{host}.example.com."):
        status, answer = pooler.answer("GET", f"/api/v3/vm/{written}")
        assert status == 200 and list(answer) == ["ok", host], written


def test_summary_dates_must_be_yyyy_mm_dd(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 1}])
    first_of_year = _today(pooler).replace(month=1, day=1).isoformat()
    assert pooler.get(f"/api/v3/summary?from={first_of_year}").status == 200
    assert pooler.get("/api/v3/summary").status == 200  # nil: today
    # Deliberately different: an empty value is today's, as no value (vmpooler: 400 for ``''``).
    # API Gateway gives a Lambda ``?from`` and ``?from=`` alike, and Rack reads ``?from`` as nil.
    days = [day["date"] for day in pooler.get("/api/v3/summary?from=&to=").json["daily"]]
    assert days == [_today(pooler).isoformat()]
    for bad in ("false", "true", "01-01-2015", "1/1/2015"):
        for query in (f"from={bad}", f"to={bad}"):
            assert pooler.answer("GET", f"/api/v3/summary?{query}") == (
                400, {"ok": False, "error": f"Invalid date format '{bad}', must match YYYY-MM-DD."}), query


def test_summary_averages_a_days_durations(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 0}])
    today = _today(pooler)
    days = {today - timedelta(days=back): seconds
            for back, seconds in enumerate(([1, 2, 3, 4], [], [2.2], [2.2, 3, 3.0], [1]), start=1)}
    for day, seconds in days.items():
        pooler.store.record_durations(day.isoformat(), [DurationSample("clone", "pool1", s) for s in seconds])
    answer = pooler.get(f"/api/v3/summary/clone?from={min(days).isoformat()}&to={max(days).isoformat()}").json
    averages = {entry["date"]: entry["clone"]["duration"]["average"] for entry in answer["daily"]}
    counts = {entry["date"]: entry["clone"]["count"]["total"] for entry in answer["daily"]}
    expected = {1: 2.5, 2: 0, 3: 2.2, 4: 2.7, 5: 1}  # 2.2, 3, 3.0: 2.733.. to 0.1 s, as each day's
    assert {(today - date.fromisoformat(day)).days: average for day, average in averages.items()} == expected
    assert [counts[day.isoformat()] for day in days] == [4, 0, 1, 3, 1]


def test_status_capacity_adds_up_pools(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "p1", "size": 5}, {"name": "p2", "size": 5}])
    pooler.fill(rounds=20)
    pooler.checkout_vms("p1", 4)
    pooler.checkout_vms("p2", 4)
    assert pooler.get("/api/v3/status?view=capacity").json["capacity"] == {"current": 2, "total": 10, "percent": 20.0}
    pooler.checkout("p2")  # 0 ready in p2
    assert pooler.get("/api/v3/status?view=capacity").json["capacity"] == {"current": 1, "total": 10, "percent": 10.0}

    sized_0 = vmpooler_stack(make_harness, [{"name": "p1", "size": 5}, {"name": "p2", "size": 0}])
    sized_0.fill(rounds=20)
    sized_0.checkout_vms("p1", 4)
    assert sized_0.get("/api/v3/status?view=capacity").json["capacity"] == {"current": 1, "total": 5, "percent": 20.0}


def test_status_capacity_and_queue_of_no_pools(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [])
    status = pooler.get("/api/v3/status?view=capacity,queue").json
    assert status["capacity"] == {"current": 0, "total": 0, "percent": 0}
    assert status["queue"] == {"requested": 0, "pending": 0, "cloning": 0, "booting": 0, "ready": 0,
                               "running": 0, "completed": 0, "total": 0}


def test_status_queue_adds_up_pools(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "p1", "size": 3}, {"name": "p2", "size": 3}])
    pooler.fill(rounds=20)
    pooler.checkout_vms("p1", 2)
    pooler.checkout("p2")
    pooler.post("/api/v3/ondemandvm", {"p1": "1", "p2": "1"})
    queue = pooler.get("/api/v3/status?view=queue").json["queue"]
    assert queue == {"requested": 2, "pending": 0, "cloning": 0, "booting": 0, "ready": 3, "running": 3,
                     "completed": 0, "total": 8}


def test_status_booting_is_0_while_more_clones_run_than_vms_pend(make_harness: HarnessFactory) -> None:
    slow = {**DUMMY_PROVIDER, "createvm_min_time": 600, "createvm_max_time": 600, "boot_time": 600}
    pooler = vmpooler_stack(make_harness, [{"name": "p1", "size": 3}], {"experimental_features": True},
                            providers={"dummy": slow})
    pooler.reconcile("p1")
    queue = pooler.get("/api/v3/status?view=queue").json["queue"]
    assert (queue["pending"], queue["cloning"], queue["booting"]) == (3, 3, 0)
    pooler.clock.advance(5)
    assert pooler.post("/api/v3/poolreset", {"p1": "1"}).status == 201
    pooler.reconcile("p1")  # the 3 pending VMs completed (their clones still running), 3 new clones
    queue = pooler.get("/api/v3/status?view=queue").json["queue"]
    assert queue == {"requested": 0, "pending": 3, "cloning": 6, "booting": 0, "ready": 0, "running": 0,
                     "completed": 3, "total": 6}
    pooler.clock.advance(700)
    pooler.reconcile("p1")  # every clone done: the new VMs boot
    queue = pooler.get("/api/v3/status?view=queue").json["queue"]
    assert (queue["pending"], queue["cloning"], queue["booting"]) == (3, 0, 3)


def test_summary_counts_tag_values_and_their_total(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 2}])
    pooler.fill(rounds=20)
    first, second = pooler.checkout_vms("pool1", 2)
    assert pooler.put(f"/api/v3/vm/{first}", {"tags": {"tag": "value"}}).status == 200
    assert pooler.get("/api/v3/summary/tag").json["tag"] == {"tag": {"value": 1, "total": 1}}
    assert pooler.put(f"/api/v3/vm/{second}", {"tags": {"tag": "another_value"}}).status == 200
    assert pooler.get("/api/v3/summary/tag").json["tag"] == {"tag": {"value": 1, "total": 2, "another_value": 1}}


def test_config_says_every_template_is_ready(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 1, "template": "templates/test1"}],
                            {"experimental_features": True})
    assert [pool["template_ready"] for pool in pooler.get("/api/v3/config").json["pool_configuration"]] == [True]
    assert pooler.post("/api/v3/config/pooltemplate", {"pool1": "templates/test3"}).status == 201
    (pool,) = pooler.get("/api/v3/config").json["pool_configuration"]
    assert (pool["template"], pool["template_ready"]) == ("templates/test3", True)


def test_pool_sizes_are_integers(make_harness: HarnessFactory) -> None:
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 1}], {"experimental_features": True})
    assert pooler.answer("POST", "/api/v3/config/poolsize", {"pool1": 4}) == (201, {"ok": True})
    assert pooler.answer("POST", "/api/v3/config/poolsize", {"pool1": "3"}) == (201, {"ok": True})
    assert pooler.answer("POST", "/api/v3/config/poolsize", {"pool1": "four"}) == (
        400, {"ok": False, "not_configured": ["pool1"]})
    (pool,) = pooler.get("/api/v3/config").json["pool_configuration"]
    assert pool["size"] == 3


def test_an_unknown_auth_provider_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="mystery"):
        build({"config": {}, "providers": {"dummy": {"provider_class": "dummy"}}, "auth": {"provider": "mystery"},
               "pools": [{"name": "pool1", "size": 1, "provider": "dummy"}]})


EVERYONE = ("alice", "comma,user", "bob", "carol")
"""tests/auth/slapd.py: alice and comma,user are ``uid=...,ou=users``; bob and carol
``cn=...,ou=people`` with a ``uid`` too."""
LDAP_CASES: dict[str, tuple[dict[str, Any], tuple[str, ...], tuple[str, ...]]] = {
    # case: (settings, who logs in with a direct bind, who with a service account)
    "one base, one user object": ({"base": ["users"], "user_object": "uid"}, ("alice", "comma,user"),
                                  ("alice", "comma,user")),
    # The users are under the second base: the first's bind (or search) fails, the second's is tried.
    "multiple search bases": ({"base": ["people", "users"], "user_object": "uid"}, ("alice", "comma,user"),
                              EVERYONE),
    # bob and carol's DNs are cn=: the uid= bind fails, the cn= one is tried.
    "multiple user objects": ({"base": ["people"], "user_object": ["uid", "cn"]}, ("bob", "carol"), ("bob", "carol")),
    "multiple user objects and bases": ({"base": ["people", "users"], "user_object": ["uid", "cn"]}, EVERYONE,
                                        EVERYONE),
    "simple_tls on the ldaps port": ({"base": ["users", "people"], "user_object": ["uid", "cn"],
                                      "encryption": "simple_tls"}, EVERYONE, EVERYONE),
    # vmpooler's own form of the setting, as its spec writes it (ssl_version is not read).
    "start_tls with an alternate ssl_version": ({"base": ["users", "people"], "user_object": ["uid", "cn"],
                                                 "encryption": {"method": ":start_tls",
                                                                "tls_options": {"ssl_version": "TLSv1_2"}}},
                                                EVERYONE, EVERYONE),
    "simple_tls and port 636, vmpooler's form": ({"base": ["users", "people"], "user_object": ["uid", "cn"],
                                                  "encryption": {"method": ":simple_tls",
                                                                 "tls_options": {"ssl_version": "TLSv1_2"}}},
                                                 EVERYONE, EVERYONE),
}


@pytest.mark.parametrize("service_account", [False, True], ids=["direct bind", "service account"])
@pytest.mark.parametrize("case", LDAP_CASES)
def test_ldap_logins_over_every_base_user_object_and_encryption(
    make_harness: HarnessFactory, slapd: SlapdServer, case: str, service_account: bool,
) -> None:
    settings, direct_users, searched_users = LDAP_CASES[case]
    bases = {"users": slapd.users_base, "people": slapd.people_base}
    ldap = slapd.ldap_config(**{**settings, "base": [bases[name] for name in settings["base"]]})
    if "simple_tls" in str(ldap["encryption"]):
        ldap["port"] = slapd.ldaps_port
    if service_account:
        ldap["service_account_hash"] = {"user_dn": slapd.service_dn, "password": slapd.service_password}
    pooler = vmpooler_stack(make_harness, [{"name": "pool1", "size": 0}], auth={"provider": "ldap", "ldap": ldap})
    users = searched_users if service_account else direct_users
    for user in users:
        reply = pooler.post("/api/v3/token", headers=basic(user, slapd.password(user)))
        assert reply.status == 200 and reply.json["ok"] is True, (user, reply.raw)
        assert pooler.post("/api/v3/token", headers=basic(user, "not-" + slapd.password(user))).status == 401
    for user in set(EVERYONE) - set(users):  # under no base and user object configured
        assert pooler.post("/api/v3/token", headers=basic(user, slapd.password(user))).status == 401, user


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []
