"""What differs between /api/v3, /api/v2, /api/v1 and the unversioned (v1) paths, and what does not.

v2/v3: FQDNs from each pool's own domain, no ``domain`` key; GET /vm/<host> has ``fqdn``.
v1 and unversioned: short names plus the global ``domain`` (last key); GET /vm/<host> has
``domain`` and no ``fqdn``.
"""

from __future__ import annotations

from typing import Callable

import pytest

from tests.api.client import CONFIG_YAML, Stack

V1_PREFIXES = ["/api/v1", ""]
V3_PREFIXES = ["/api/v3", "/api/v2"]


@pytest.mark.parametrize("prefix", V3_PREFIXES)
def test_v2_v3_checkout_gives_fqdns_of_each_pool(full: Stack, prefix: str) -> None:
    reply = full.api.post(f"{prefix}/vm", {"pool1": 1, "pool3": 1})
    assert list(reply.json) == ["ok", "pool1", "pool3"]
    assert reply.json["pool1"]["hostname"].endswith(".one.example.com")
    assert reply.json["pool3"]["hostname"].endswith(".three.example.com")
    reply = full.api.post(f"{prefix}/vm/pool2+pool2")
    assert list(reply.json) == ["ok", "pool2"]
    assert all(name.endswith(".example.com") for name in reply.json["pool2"]["hostname"])


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_checkout_gives_short_names_and_the_domain_last(full: Stack, prefix: str) -> None:
    reply = full.api.post(f"{prefix}/vm", {"pool1": 1, "pool2": 2})
    assert reply.status == 200
    assert list(reply.json) == ["ok", "pool1", "pool2", "domain"]
    assert reply.json["domain"] == "example.com"
    names = [reply.json["pool1"]["hostname"], *reply.json["pool2"]["hostname"]]
    assert all("." not in name for name in names)
    reply = full.api.post(f"{prefix}/vm/pool3")
    assert reply.json == {"ok": True, "pool3": {"hostname": reply.json["pool3"]["hostname"]}, "domain": "example.com"}
    assert "." not in reply.json["pool3"]["hostname"]


@pytest.mark.parametrize("prefix", V3_PREFIXES)
def test_v2_v3_describe_shows_fqdn(full: Stack, prefix: str) -> None:
    host = full.checkout("pool1")
    vm = full.api.get(f"{prefix}/vm/{host}").json[host]
    assert vm["fqdn"] == f"{host}.one.example.com"
    assert "domain" not in vm


@pytest.mark.parametrize("prefix", V1_PREFIXES)
def test_v1_describe_shows_the_global_domain(full: Stack, prefix: str) -> None:
    host = full.checkout("pool1")
    vm = full.api.get(f"{prefix}/vm/{host}.one.example.com").json[host]
    assert vm["domain"] == "example.com"
    assert "fqdn" not in vm


def test_v1_without_a_global_domain_has_no_domain_key(make_stack: Callable[[str], Stack]) -> None:
    stack = make_stack(CONFIG_YAML.replace("  domain: example.com\n", "", 1))
    stack.fill("pool1", "pool2")
    reply = stack.api.post("/api/v1/vm", {"pool2": 1})
    assert list(reply.json) == ["ok", "pool2"]
    host = reply.json["pool2"]["hostname"]
    assert "domain" not in stack.api.get(f"/api/v1/vm/{host}").json[host]
    # pool2 has no domain now: v3 names it by its short name, and its fqdn is that name
    reply = stack.api.post("/api/v3/vm", {"pool2": 1})
    other = reply.json["pool2"]["hostname"]
    assert "." not in other
    assert stack.api.get(f"/api/v3/vm/{other}").json[other]["fqdn"] == other


@pytest.mark.parametrize("path", ["/vm", "/status", "/status?view=capacity", "/summary"])
def test_unversioned_reads_answer_as_v1(full: Stack, path: str) -> None:
    assert full.api.get(path).json == full.api.get(f"/api/v1{path}").json


def test_unversioned_vm_routes_change_state_as_v1(full: Stack) -> None:
    host = full.api.post("/vm", {"pool1": 1}).json["pool1"]["hostname"]
    assert full.api.put(f"/vm/{host}", {"lifetime": 3}).json == {"ok": True}
    assert full.api.get(f"/api/v3/vm/{host}").json[host]["lifetime"] == 3
    assert full.api.delete(f"/vm/{host}").json == {"ok": True}
    assert full.api.get(f"/vm/{host}").json[host]["state"] == "destroyed"


@pytest.mark.parametrize("path", ["/status", "/poolstat?pool=linux", "/totalrunning", "/summary/boot",
                                  "/config", "/vm"])
def test_reports_are_the_same_under_every_version(full: Stack, path: str) -> None:
    answers = [full.api.get(f"{prefix}{path}").json for prefix in ("/api/v3", "/api/v2", "/api/v1")]
    assert answers[0] == answers[1] == answers[2]
