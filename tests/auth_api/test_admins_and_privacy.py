"""With ``:auth:`` configured: runtime pool changes are for administrators only (users listed in
``auth.admins`` or members of ``auth.admin_groups``), an on-demand request is seen by its owner
only, and an LDAP outage does not tell clients where the directory is."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.api import pool_config
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import Harness, basic, route_target, routes_of

EXPERIMENTAL = {"experimental_features": True}

POOL_CHANGES = routes_of(pool_config)
"""Every route that changes pools at runtime, from the route table: one added there is tested here."""

BODIES: dict[str, Any] = {
    "config_poolsize": {POOL: "5"},
    "config_pooltemplate": {POOL: "elsewhere/evil"},
    "poolreset": {POOL: "1"},
    "config_clonetarget": {POOL: "elsewhere"},
}
"""route name -> a valid body, for the POST routes among them (a new one needs its body here)."""


def _pool_now(api: Harness) -> tuple[int, str, str | None]:
    pool = api.services.pool(POOL)
    return pool.size, pool.template, pool.clone_target


@pytest.mark.parametrize("route", POOL_CHANGES, ids=lambda route: route.name)
def test_a_token_of_a_user_who_is_not_an_admin_cannot_change_pools(make_api, ldap_auth, slapd, route):
    method, path = route.method, route_target(route, {"pool": POOL})
    body = BODIES[route.name] if method == "POST" else None
    api = make_api(document(ldap_auth(admins=["alice"]), config=EXPERIMENTAL))
    bob = api.new_token("bob", slapd.password("bob"))
    before = _pool_now(api)
    refused = api.call(method, path, headers={"X-AUTH-TOKEN": bob}, body=body)
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert "administrator" in refused.body["error"]
    assert _pool_now(api) == before
    assert api.call(method, path, body=body).status == 401


def test_a_listed_admin_changes_pools(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(admins=["Alice"]), config=EXPERIMENTAL))  # names compare lower-cased
    alice = api.new_token("alice", slapd.password("alice"))
    assert api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": alice}, body={POOL: "5"}).status == 201
    assert _pool_now(api)[0] == 5
    assert api.call("DELETE", f"/api/v3/config/poolsize/{POOL}", headers={"X-AUTH-TOKEN": alice}).status == 201


def test_members_of_an_admin_group_change_pools(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(admin_groups=[slapd.admin_group]), config=EXPERIMENTAL))
    carol = api.new_token("carol", slapd.password("carol"))  # the group's member
    bob = api.new_token("bob", slapd.password("bob"))
    assert api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": bob}, body={POOL: "4"}).status == 403
    assert api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": carol}, body={POOL: "4"}).status == 201
    assert _pool_now(api)[0] == 4


def test_a_member_listed_by_memberuid_with_capitals_changes_pools(make_api, ldap_auth, slapd):
    """The RFC 2307 group lists ``memberUid: Alice``; vmpool lower-cases user names, and memberUid
    matches case-exactly: alice was refused as no administrator (403)."""
    api = make_api(document(ldap_auth(admin_groups=[slapd.posix_admin_group]), config=EXPERIMENTAL))
    alice = api.new_token("Alice", slapd.password("alice"))
    bob = api.new_token("bob", slapd.password("bob"))
    assert api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": bob}, body={POOL: "4"}).status == 403
    assert api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": alice}, body={POOL: "4"}).status == 201
    assert _pool_now(api)[0] == 4


def test_without_admins_configured_nobody_changes_pools(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth(), config=EXPERIMENTAL))
    alice = api.new_token("alice", slapd.password("alice"))
    assert api.call("POST", "/api/v3/poolreset", headers={"X-AUTH-TOKEN": alice}, body={POOL: "1"}).status == 403


def test_group_check_with_ldap_down_is_503_without_details(make_api, ldap_auth, slapd, closed_port):
    auth = ldap_auth(admin_groups=[slapd.admin_group])
    auth["ldap"]["port"] = closed_port  # nothing listens there
    api = make_api(document(auth, config=EXPERIMENTAL))
    carol = api.services.tokens.create("carol")  # made before the outage
    reply = api.call("POST", "/api/v3/config/poolsize", headers={"X-AUTH-TOKEN": carol}, body={POOL: "4"})
    assert reply.status == 503
    assert reply.body["error"] == "authentication service unavailable"


def test_an_ondemand_request_is_seen_by_its_owner_only(make_api, ldap_auth, slapd):
    api = make_api(document(ldap_auth()))
    alice = api.new_token("alice", slapd.password("alice"))
    bob = api.new_token("bob", slapd.password("bob"))
    created = api.call("POST", "/api/v3/ondemandvm", headers={"X-AUTH-TOKEN": alice}, body={OTHER_POOL: 1})
    assert created.status == 201
    request_id = created.body["request_id"]
    path = f"/api/v3/ondemandvm/{request_id}"
    refused = api.call("GET", path, headers={"X-AUTH-TOKEN": bob})
    assert (refused.status, refused.body["ok"]) == (403, False)
    assert OTHER_POOL not in refused.body
    assert api.call("GET", path, headers={"X-AUTH-TOKEN": alice}).status == 202
    # Without a token: the id the service drew is the secret (vmfloaty polls so); an id the
    # client chose is not shown.
    assert api.call("GET", path).status == 202
    chosen = api.call("POST", "/api/v3/ondemandvm", headers={"X-AUTH-TOKEN": alice},
                      body={OTHER_POOL: 1, "request_id": "build-7"})
    assert chosen.status == 201
    hidden = api.call("GET", "/api/v3/ondemandvm/build-7")
    assert hidden.status == 401
    # Without a token an unknown id answers the same, body and all (vmpooler: 404; a 404 here would
    # tell a chosen id in use from none, docs/compatibility.md); with any valid token it does not
    # (404 against 403), and POST's 409 says an id is taken anyway: ids are not secrets from token
    # holders (docs/auth.md "On-demand requests").
    unknown = api.call("GET", "/api/v3/ondemandvm/build-8")
    assert (unknown.status, unknown.body) == (hidden.status, hidden.body)
    assert api.call("GET", "/api/v3/ondemandvm/build-7", headers={"X-AUTH-TOKEN": bob}).status == 403
    assert api.call("GET", "/api/v3/ondemandvm/build-8", headers={"X-AUTH-TOKEN": bob}).status == 404
    taken = api.call("POST", "/api/v3/ondemandvm", headers={"X-AUTH-TOKEN": bob},
                     body={OTHER_POOL: 1, "request_id": "build-7"})
    assert taken.status == 409


def test_an_ldap_outage_does_not_name_the_directory(make_api, ldap_auth, slapd, all_logs, closed_port):
    auth = ldap_auth()
    port = closed_port
    auth["ldap"]["port"] = port  # nothing listens there
    api = make_api(document(auth))
    reply = api.call("POST", "/api/v3/token", headers=basic("alice", slapd.password("alice")))
    assert reply.status == 503
    assert reply.body == {"ok": False, "error": "authentication service unavailable"}
    assert str(port) not in reply.raw.decode() and slapd.host not in reply.raw.decode()
    assert any(f"{slapd.host}:{port}" in line for line in all_logs.lines)
