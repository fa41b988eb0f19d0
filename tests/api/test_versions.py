"""What differs between /api/v3, /api/v2, /api/v1 and the unversioned (v1) paths, and what does not.

v2/v3: FQDNs from each pool's own domain, no ``domain`` key; GET /vm/<host> has ``fqdn``.
v1 and unversioned: short names plus the ``domain`` the VMs share (last key), or FQDNs and no
``domain`` when their pools' domains differ (beaker and vmfloaty append ``domain`` to every short
name); GET /vm/<host> has the VM's own ``domain`` and no ``fqdn``.
"""

from __future__ import annotations

from typing import Callable

import pytest

from tests.api.configs import CONFIG_YAML
from tests.harness import Harness

V1_PREFIXES = ["/api/v1", ""]
V3_PREFIXES = ["/api/v3", "/api/v2"]


@pytest.mark.parametrize("prefix", V3_PREFIXES)
def test_v2_v3_checkout_gives_fqdns_of_each_pool(full: Harness, prefix: str) -> None:
    reply = full.post(f"{prefix}/vm", {"pool1": 1, "pool3": 1})
    assert list(reply.json) == ["ok", "pool1", "pool3"]
    assert reply.json["pool1"]["hostname"].endswith(".one.example.com")
    assert reply.json["pool3"]["hostname"].endswith(".three.example.com")
    reply = full.post(f"{prefix}/vm/pool2+pool2")
    assert list(reply.json) == ["ok", "pool2"]
    assert all(name.endswith(".example.com") for name in reply.json["pool2"]["hostname"])


def v1_client_names(answer: dict[str, object]) -> dict[str, list[str]]:
    """The host names beaker-vmpooler and vmfloaty build from a v1 answer: each hostname, with
    the top-level ``domain`` appended when there is one."""
    domain = answer.get("domain")
    names: dict[str, list[str]] = {}
    for key, value in answer.items():
        if isinstance(value, dict):
            hosts = value["hostname"] if isinstance(value["hostname"], list) else [value["hostname"]]
            names[key] = [f"{host}.{domain}" if domain else host for host in hosts]
    return names


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_checkout_gives_short_names_and_their_pools_domain_last(full: Harness, prefix: str) -> None:
    reply = full.post(f"{prefix}/vm", {"pool2": 2})
    assert list(reply.json) == ["ok", "pool2", "domain"]
    assert reply.json["domain"] == "example.com"
    assert all("." not in name for name in reply.json["pool2"]["hostname"])
    # A pool with a domain of its own answers that domain, not the global one.
    reply = full.post(f"{prefix}/vm/pool3")
    assert reply.json == {"ok": True, "pool3": {"hostname": reply.json["pool3"]["hostname"]},
                          "domain": "three.example.com"}
    assert "." not in reply.json["pool3"]["hostname"]
    reply = full.post(f"{prefix}/vm", {"pool1": 1})
    assert reply.json["domain"] == "one.example.com"


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_checkout_across_domains_gives_names_clients_resolve(full: Harness, prefix: str) -> None:
    reply = full.post(f"{prefix}/vm", {"pool1": 1, "pool2": 1, "pool3": 1})
    assert "domain" not in reply.json
    built = v1_client_names(reply.json)
    assert built["pool1"][0].endswith(".one.example.com")
    assert built["pool3"][0].endswith(".three.example.com")
    assert built["pool2"][0].endswith(".example.com") and built["pool2"][0].count(".") == 2
    for pool, (name,) in built.items():
        short = name.split(".", 1)[0]
        assert full.get(f"/api/v3/vm/{short}").json[short]["fqdn"] == name, pool


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_alias_over_pools_of_different_domains_gives_fqdns(full: Harness, prefix: str) -> None:
    reply = full.post(f"{prefix}/vm", {"linux": 4})  # pool1 (one.example.com) and pool2
    assert "domain" not in reply.json
    names = reply.json["linux"]["hostname"]
    assert sorted(name.split(".", 1)[1] for name in names) == ["example.com"] * 2 + ["one.example.com"] * 2


@pytest.mark.parametrize("prefix", V3_PREFIXES)
def test_v2_v3_describe_shows_fqdn(full: Harness, prefix: str) -> None:
    host = full.checkout("pool1")
    vm = full.get(f"{prefix}/vm/{host}").json[host]
    assert vm["fqdn"] == f"{host}.one.example.com"
    assert "domain" not in vm


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_describe_shows_the_vms_own_domain(full: Harness, prefix: str) -> None:
    host = full.checkout("pool1")
    vm = full.get(f"{prefix}/vm/{host}.one.example.com").json[host]
    assert vm["domain"] == "one.example.com"
    assert "fqdn" not in vm
    other = full.checkout("pool2")
    assert full.get(f"{prefix}/vm/{other}").json[other]["domain"] == "example.com"


def test_v1_without_a_global_domain_has_no_domain_key(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG_YAML.replace("  domain: example.com\n", "", 1))
    stack.fill("pool1", "pool2")
    reply = stack.post("/api/v1/vm", {"pool2": 1})
    assert list(reply.json) == ["ok", "pool2"]
    host = reply.json["pool2"]["hostname"]
    described = stack.get(f"/api/v1/vm/{host}").json[host]
    assert "domain" not in described
    assert described["fqdn"] == host  # what vmfloaty prints for a v1 answer without a domain
    # pool2 has no domain now: v3 names it by its short name, and its fqdn is that name
    reply = stack.post("/api/v3/vm", {"pool2": 1})
    other = reply.json["pool2"]["hostname"]
    assert "." not in other
    assert stack.get(f"/api/v3/vm/{other}").json[other]["fqdn"] == other


@pytest.mark.parametrize("path", ["/vm", "/status", "/status?view=capacity", "/summary", "/summary/boot",
                                  "/summary/clone/duration", "/summary/tag"])
def test_unversioned_reads_answer_as_v1(full: Harness, path: str) -> None:
    assert full.get(path).json == full.get(f"/api/v1{path}").json


def test_unversioned_vm_routes_change_state_as_v1(full: Harness) -> None:
    host = full.post("/vm", {"pool1": 1}).json["pool1"]["hostname"]
    assert full.put(f"/vm/{host}", {"lifetime": 3}).json == {"ok": True}
    assert full.get(f"/api/v3/vm/{host}").json[host]["lifetime"] == 3
    assert full.delete(f"/vm/{host}").json == {"ok": True}
    assert full.get(f"/vm/{host}").json[host]["state"] == "destroyed"


@pytest.mark.parametrize("path", ["/status", "/poolstat?pool=linux", "/totalrunning", "/summary/boot",
                                  "/config", "/vm"])
def test_reports_are_the_same_under_every_version(full: Harness, path: str) -> None:
    answers = [full.get(f"{prefix}{path}").json for prefix in ("/api/v3", "/api/v2", "/api/v1")]
    assert answers[0] == answers[1] == answers[2]


def test_unversioned_snapshot_routes_work_as_v1(full: Harness) -> None:
    """vmpooler 2.x rerouted /vm/<host>/snapshot[/<id>] to v1; beaker and old scripts use them."""
    host = full.post("/vm", {"pool2": 1}).json["pool2"]["hostname"]
    taken = full.post(f"/vm/{host}/snapshot")
    assert taken.status == 202
    snapshot = taken.json[host]["snapshot"]
    assert full.post(f"/vm/{host}/snapshot/{'0' * 32}").status == 404  # no such snapshot
    full.fill("pool2")  # the pass runs the snapshot task (the dummy takes it at once)
    assert snapshot in full.get(f"/vm/{host}").json[host]["snapshots"]
    assert full.post(f"/vm/{host}/snapshot/{snapshot}").status == 202
