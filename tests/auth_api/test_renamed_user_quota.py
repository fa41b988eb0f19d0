"""A user renamed in the directory (a modrdn: the same entry, its entryUUID kept) is one quota
owner and one request-rate client under both names. Before, the quota owner was the name and the
entry together: what the user held under the old name was counted apart, and the renamed user took
a whole quota more until it was returned (``max_running_vms_per_user: 2``: four VMs held). The
request budget went by the name and the entry after the quotas stopped: the new name's token was a
fresh budget, a whole window's requests more."""

from __future__ import annotations

import secrets
from typing import Any, Callable

from tests.auth.slapd import SlapdServer
from tests.auth_api.documents import OTHER_POOL, POOL, document
from tests.harness import HarnessFactory


def test_a_renamed_users_vms_and_requests_under_the_old_name_count_in_their_quota(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    api = make_api(document(ldap_auth(directory_check_minutes=10),
                            config={"max_running_vms_per_user": 2, "max_ondemand_requests_per_user": 1}))
    api.fill(POOL)
    name, password = leaver
    old = {"X-AUTH-TOKEN": api.new_token(name, password)}
    api.checkout(POOL, old["X-AUTH-TOKEN"])
    assert api.call("POST", "/api/v3/ondemandvm", headers=old, body={OTHER_POOL: 1}).status == 201
    renamed = f"{name}r"
    new_dn = slapd.rename(f"uid={name},{slapd.users_base}", renamed)
    newcomer_dn = None
    try:
        new = {"X-AUTH-TOKEN": api.new_token(renamed, password)}
        refused = api.call("POST", f"/api/v3/vm/{POOL}", headers=new)
        assert refused.status == 403 and "at most 2 VMs" in refused.body["error"], refused.body
        assert api.call("POST", "/api/v3/ondemandvm", headers=new, body={OTHER_POOL: 1}).status == 403
        # The old name given to a newcomer: a quota of their own, as before.
        newcomer_password = secrets.token_urlsafe(12)
        newcomer_dn = slapd.add_user(name, newcomer_password)
        newcomer = {"X-AUTH-TOKEN": api.new_token(name, newcomer_password)}
        assert api.call("POST", f"/api/v3/vm/{POOL}", headers=newcomer).status == 200
    finally:
        slapd.remove(new_dn)
        if newcomer_dn is not None:
            slapd.remove(newcomer_dn)


RATES = {"global_per_ip": {"limit": 3, "period": 60}, "authenticated": {"limit": 4, "period": 60}}


def test_a_renamed_users_requests_under_the_old_name_spend_their_request_budget(
        make_api: HarnessFactory, ldap_auth: Callable[..., dict[str, Any]], slapd: SlapdServer,
        leaver: tuple[str, str]) -> None:
    api = make_api(document(ldap_auth(directory_check_minutes=10), config={"rate_limiting_enabled": True},
                            rate_limits=RATES))
    name, password = leaver
    old = {"X-AUTH-TOKEN": api.new_token(name, password)}
    assert [api.call("GET", "/api/v3/status", headers=old).status for _ in range(5)] == [200] * 4 + [429]
    renamed = f"{name}r"
    new_dn = slapd.rename(f"uid={name},{slapd.users_base}", renamed)
    newcomer_dn = None
    try:
        new = {"X-AUTH-TOKEN": api.new_token(renamed, password)}
        refused = api.call("GET", "/api/v3/status", headers=new)
        assert refused.status == 429 and refused.body["limit"] == 4, refused.body
        # The old name given to a newcomer: a budget of their own, as before.
        newcomer_password = secrets.token_urlsafe(12)
        newcomer_dn = slapd.add_user(name, newcomer_password)
        newcomer = {"X-AUTH-TOKEN": api.new_token(name, newcomer_password)}
        assert api.call("GET", "/api/v3/status", headers=newcomer).status == 200
    finally:
        slapd.remove(new_dn)
        if newcomer_dn is not None:
            slapd.remove(newcomer_dn)
