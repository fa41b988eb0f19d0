"""vmpooler's spec/integration/api/v1/ and v2/ (vmpooler 2.5.0, its last release serving
/api/v1 and /api/v2; 3.0.0 removed both), ported where they differ from the v3 specs the other
modules port.

Diffed with v3's at 74059a1: config_spec.rb (32 ``it``), poolreset.rb (8), status_spec.rb (18),
token_spec.rb (12) and vm_hostname_spec.rb (25) are v3's word for word but for the prefix, in
v1 and v2 alike. Their requests answer the same under each version: the runtime config, pool
reset, token and VM changes in test_the_specs_v1_and_v2_share_with_v3_answer_alike_under_each,
the reports in tests/api/test_versions.py::test_reports_are_the_same_under_every_version, the
token life cycle with ``:auth:`` in
tests/auth_api/test_token_routes.py::test_token_life_cycle_under_every_api_version.
What differs is how hosts are named, the subject of every check below:

vm_spec.rb (v1: 21 ``it``, v2: 20) and vm_template_spec.rb (16 each)
- v1 and v2 vm_template_spec.rb: v3's checkouts on a config without a domain, bare names and no
  ``domain`` key: tests/compat/test_vmpooler_vm_template_spec.py::test_checkout_from_a_path (its
  v1 and v2 cases). v1's 'returns 503 for empty pool referenced by alias' plants its VM in
  pool1, which ``poolone`` is an alias of, and gets its 503 only from the probe below, which it
  does not stub; v2's and v3's plant it in pool2, as the case does.
- v1 vm_spec.rb and, on v2, its checkouts on a config with no domain: each checkout ``it``
  (CHECKOUTS_IN_BOTH_SPECS, and vm_spec.rb's own) answers bare names and no ``domain`` key:
  test_v1_v2_checkouts_of_a_config_without_a_domain_answer_bare_names.
- v2 vm_spec.rb: each pool's domain is set on its provider (``providers: vsphere: domain:
  one.example.com``, gce two, foo three), vmpooler 2.x's place for it; each checkout ``it``
  answers ``<vm>.<its provider's domain>``, ``genericpool`` over the three one of each:
  test_v2_checkouts_name_vms_under_their_providers_domain. Fixed here: a provider's ``domain``
  was "unknown key, ignored", so a 2.x config's VMs were handed out as bare names.
- v1 vm_spec.rb's 'returns the second VM when the first fails to respond' (both VMs ready, the
  first failing the port-22 probe 2.5's v1 made at checkout): deliberately different, we probe
  nothing at checkout (docs/compatibility.md; the v3 reading of it, a running VM never handed
  out again: test_vmpooler_vm_spec.py). The lifetime ``it``s are version-blind
  (test_v1_v2_lifetime_follows_the_token).

ondemandvm_spec.rb (v1: 24 ``it``, v2: 25)
- v1 'should include domain in the return reply' (config.domain set: ``POST /ondemandvm``
  answers ``domain`` after ``request_id``) and v2's twin, which answers no ``domain``:
  test_an_ondemand_request_answers_domain_on_v1_only.
- v1 'should include the domain in the result' (short names and ``domain`` last), v2 'should
  include the domain in the hostname as fqdn, not a separate key unlike in v1', with
  config.domain and with the provider's domain: test_a_ready_ondemand_request_names_its_vms_as_each_version_does.
- The rest are v3's (test_vmpooler_ondemandvm_spec.py) but for its pools' domain: v1 and v2's
  'returns 200 with hostnames when the request is ready' answers bare names
  (test_a_ready_ondemand_request_names_its_vms_as_each_version_does, no domain).

Deliberately different (docs/compatibility.md): vmpooler 2.5's v1 answers ``domain`` only from
config.domain, so a pool whose domain is its provider's was handed out there as a bare name that
beaker and vmfloaty could not resolve; here v1 answers the pools' shared domain, or FQDNs when
they differ (tests/api/test_versions.py::test_v1_checkout_across_domains_gives_names_clients_resolve).
"""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from tests.compat.api_spec_support import POOL_CHANGE_CONFIG, POOL_CHANGE_POOLS, missing_tests, vmpooler_stack
from tests.compat.pooler import (
    BODY,
    CHECKOUTS_IN_BOTH_SPECS,
    LIFETIME_CASES,
    PATH,
    Checkout,
    PoolerFactory,
    check_checkout,
    check_checkout_lifetime,
    short,
)
from tests.harness import HarnessFactory

DUMMY = {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0}
PROVIDER_DOMAINS = {"vsphere": "one.example.com", "gce": "two.example.com", "foo": "three.example.com"}
"""v2 vm_spec.rb's providers, each with the domain of its pools."""

CHECKOUTS = [
    *CHECKOUTS_IN_BOTH_SPECS,
    Checkout("returns VMs from multiple backend pools requested by an alias", {"pool1": 1, "pool2": 1, "pool3": 1},
             [("genericpool", 3)], {"genericpool": ["pool1", "pool2", "pool3"]}),
    Checkout("fails when not all requested vms can be allocated, when requesting multiple instances from multiple "
             "pools", {"pool1": 1}, [("pool1", 2), ("pool2", 3)], None),
]
"""The checkouts of vm_spec.rb (v1, v2) on its pools pool1 (aliases poolone, genericpool), pool2
and pool3 (genericpool)."""


def spec_document(ready: Mapping[str, int], providers: Mapping[str, Mapping[str, Any]] | None = None,
                  **config: Any) -> dict[str, Any]:
    """vm_spec.rb's config (v1's with no domain; v2's with ``providers``, each pool of the
    provider of the same position), each pool holding ``ready[pool]`` ready VMs."""
    names = list(providers or {"dummy": {}})
    pools = [
        {"name": "pool1", "alias": ["poolone", "genericpool"]},
        {"name": "pool2", "alias": ["genericpool"]},
        {"name": "pool3", "alias": ["genericpool"]},
    ]
    return {
        "config": {"site_name": "test pooler", "vm_lifetime_auth": 2, **config},
        "providers": {name: {**DUMMY, **(providers or {}).get(name, {})} for name in names},
        "pools": [{**pool, "provider": names[index % len(names)], "size": ready.get(str(pool["name"]), 0)}
                  for index, pool in enumerate(pools)],
    }


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []


@pytest.mark.parametrize("prefix", ["/api/v1", "/api/v2"])
@pytest.mark.parametrize("form", [BODY, PATH])
@pytest.mark.parametrize("case", CHECKOUTS, ids=[case.it for case in CHECKOUTS])
def test_v1_v2_checkouts_of_a_config_without_a_domain_answer_bare_names(
    make_pooler: PoolerFactory, case: Checkout, form: str, prefix: str
) -> None:
    check_checkout(make_pooler(spec_document(case.ready)), case, form, prefix)


@pytest.mark.parametrize("case", CHECKOUTS, ids=[case.it for case in CHECKOUTS])
def test_v2_checkouts_name_vms_under_their_providers_domain(make_pooler: PoolerFactory, case: Checkout) -> None:
    providers = {name: {"domain": domain} for name, domain in PROVIDER_DOMAINS.items()}
    pooler = make_pooler(spec_document(case.ready, providers))
    domains = [getattr(pooler.config.pool(name), "domain", None) for name in ("pool1", "pool2", "pool3")]
    assert domains == list(PROVIDER_DOMAINS.values())
    check_checkout(pooler, case, BODY, "/api/v2")


@pytest.mark.parametrize("prefix", ["/api/v1", "/api/v2"])
@pytest.mark.parametrize(("auth", "with_token", "lifetime"), LIFETIME_CASES)
def test_v1_v2_lifetime_follows_the_token(make_pooler: PoolerFactory, prefix: str, auth: bool, with_token: bool,
                                          lifetime: int) -> None:
    document = spec_document({"pool1": 1})
    if auth:
        document["auth"] = {"provider": "dummy"}
    check_checkout_lifetime(make_pooler(document), BODY, with_token, lifetime, prefix)


def ondemand_document(**config: Any) -> dict[str, Any]:
    """ondemandvm_spec.rb's config (v1, v2): pool1 of size 0 on the provider ``dummy`` (v2: with
    ``domain: dummy.com``, v1: no domain there), ``poolone`` its alias."""
    return {
        "config": {"site_name": "test pooler", "max_ondemand_instances_per_request": 50, **config},
        "providers": {"dummy": DUMMY},
        "pools": [{"name": "pool1", "size": 0, "provider": "dummy", "alias": ["poolone"]}],
    }


@pytest.mark.parametrize(("prefix", "domain_key"), [("/api/v1", True), ("/api/v2", False)])
def test_an_ondemand_request_answers_domain_on_v1_only(make_pooler: PoolerFactory, prefix: str,
                                                       domain_key: bool) -> None:
    pooler = make_pooler(ondemand_document(domain="example.com"), fill=False)
    reply = pooler.post(f"{prefix}/ondemandvm", {"poolone": "1"})
    expected: dict[str, Any] = {"ok": True, "request_id": reply.json.get("request_id")}
    if domain_key:
        expected["domain"] = "example.com"
    assert (reply.status, reply.json) == (201, expected)
    assert list(reply.json) == list(expected)


@pytest.mark.parametrize(("prefix", "where", "named"), [
    ("/api/v1", None, "{vm}"),
    ("/api/v2", None, "{vm}"),
    ("/api/v1", "config", "{vm} and domain example.com"),
    ("/api/v2", "config", "{vm}.example.com"),
    ("/api/v2", "provider", "{vm}.dummy.com"),
])
def test_a_ready_ondemand_request_names_its_vms_as_each_version_does(
    make_pooler: PoolerFactory, prefix: str, where: str | None, named: str
) -> None:
    document = ondemand_document(**({"domain": "example.com"} if where == "config" else {}))
    if where == "provider":
        document["providers"]["dummy"] = {**DUMMY, "domain": "dummy.com"}
    pooler = make_pooler(document, fill=False)
    request_id = pooler.post(f"{prefix}/ondemandvm", {"pool1": "1"}).json["request_id"]
    pooler.run_passes()
    reply = pooler.get(f"{prefix}/ondemandvm/{request_id}")
    (hostname,) = reply.json["pool1"]["hostname"]
    vm = short(hostname)
    assert (pooler.describe(vm)["template"], pooler.describe(vm)["state"]) == ("pool1", "running")
    expected: dict[str, Any] = {"ok": True, "request_id": request_id, "ready": True, "pool1": {"hostname": [vm]}}
    if named.endswith(" and domain example.com"):
        expected["domain"] = "example.com"
    else:
        expected["pool1"]["hostname"] = [named.format(vm=vm)]
    assert (reply.status, reply.json) == (200, expected)
    assert list(reply.json) == list(expected)


VERSION_BLIND_STEPS: list[tuple[str, str, Any, tuple[int, dict[str, Any]]]] = [
    # config_spec.rb
    ("POST", "/config/poolsize", {"pool1": "2", "pool2": "2"}, (201, {"ok": True})),
    ("POST", "/config/poolsize", {"pool1": "2"}, (200, {"ok": True})),
    ("DELETE", "/config/poolsize/pool10", None, (404, {"ok": False})),
    ("POST", "/config/pooltemplate", {"pool1": "templates/new_template", "pool3": "templates/new_template2"},
     (400, {"ok": False, "bad_templates": ["pool3"]})),
    # poolreset.rb
    ("POST", "/poolreset", b"", (404, {"ok": False})),
    ("POST", "/poolreset", {"pool1": "1"}, (201, {"ok": True})),
    # token_spec.rb, auth not configured
    ("GET", "/token", None, (404, {"ok": False})),
    ("POST", "/token", None, (404, {"ok": False})),
    # vm_hostname_spec.rb, on a VM checked out first ({host})
    ("PUT", "/vm/{host}", {"tags": {"tested_by": "rspec"}}, (200, {"ok": True})),
    ("PUT", "/vm/{host}", {"lifetime": "2"}, (200, {"ok": True})),
    ("DELETE", "/vm/{host}", None, (200, {"ok": True})),
    # vmpooler's bare {"ok": false}; ours says why (docs/compatibility.md, "error ... beside")
    ("DELETE", "/vm/testhost", None, (404, {"ok": False, "error": "VM testhost not found"})),
]
"""Requests of the five specs v1 and v2 share word for word with v3 (config_spec.rb, poolreset.rb,
token_spec.rb, vm_hostname_spec.rb; status_spec.rb's reads: test_reports_are_the_same_under_every_version),
in order on one service, and the answer each spec expects."""


@pytest.mark.parametrize("prefix", ["/api/v1", "/api/v2", "/api/v3"])
def test_the_specs_v1_and_v2_share_with_v3_answer_alike_under_each(make_harness: HarnessFactory, prefix: str) -> None:
    pooler = vmpooler_stack(make_harness, POOL_CHANGE_POOLS, POOL_CHANGE_CONFIG)
    pooler.fill()
    host = pooler.checkout("pool2")
    for method, path, body, expected in VERSION_BLIND_STEPS:
        target = prefix + path.format(host=host)
        if isinstance(body, bytes):
            reply = pooler.answer(method, target, raw=body)
        else:
            reply = pooler.answer(method, target, body)
        assert reply == expected, (method, target)
    assert pooler.get(f"{prefix}/vm/{host}").json[host]["tags"] == {"tested_by": "rspec"}
