"""vmpooler's own API specs (puppetlabs/vmpooler, spec/integration/api/v3/*_spec.rb) ported to
HTTP checks against the real app: what the compat modules share.

The checks run on the harness the API tests use (tests/harness.py: local/gateway.py into the
Chalice app, a fake clock, the session's real redis-server; every answer checked against
docs/openapi.yaml). vmpooler's specs plant VMs in Redis by hand (``create_ready_vm``); here the
pools are filled by reconcile passes of the dummy provider, so a pool's ``size`` is the number of
ready VMs a check starts with, and hostnames are whatever the pool made.

vmpooler's specs compare the body text with ``JSON.pretty_generate(expected)``; a client parses
the JSON, so the checks compare the parsed answer (every key, and the keys' order) and we keep
answering compact JSON. docs/compatibility.md lists what we follow and where we differ.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import pytest

from tests.harness import Harness, Reply

PoolerFactory = Callable[..., Harness]
"""``make_pooler(document, fill=True)`` (conftest.py)."""

TOKEN_USER = "jdoe"
"""The user of the token every spec creates (``create_token(..., 'jdoe', ...)``)."""

VM_LIFETIME = 24
"""vmpooler's default ``vm_lifetime``: what GET /vm shows for a VM checked out without
``vm_lifetime_auth`` (the specs' ``vm['lifetime']`` being nil)."""

BODY, PATH = "body", "path"
"""The two checkout forms: ``POST /vm {"pool1": "2"}`` and ``POST /vm/pool1+pool1``."""


def pooler_document(pools: Sequence[Mapping[str, Any]], dns_domains: Mapping[str, str], *, auth: bool = False,
                    **config_keys: Any) -> dict[str, Any]:
    """A config document shaped as a spec's ``let(:config)``: ``site_name`` and
    ``vm_lifetime_auth: 2``, one dummy provider whose clones are ready on the next pass, the
    ``dns_configs`` (name -> domain; no server, so no records are managed) and the pools; with
    ``auth``, vmpooler's ``dummy`` authentication (the specs' ``auth: true``)."""
    doc: dict[str, Any] = {
        "config": {"site_name": "test pooler", "vm_lifetime_auth": 2, **config_keys},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0}},
        "dns_configs": {name: {"dns_class": "dynamic", "domain": domain} for name, domain in dns_domains.items()},
        "pools": [{"provider": "dummy", "template": f"templates/{pool['name']}", **pool} for pool in pools],
    }
    if auth:
        doc["auth"] = {"provider": "dummy"}
    return doc


def token_header(harness: Harness) -> dict[str, str]:
    """An X-AUTH-TOKEN header with a fresh token of TOKEN_USER (vmpooler's specs plant one in
    Redis; here it comes from POST /token, the dummy authentication accepting any password that
    is not the user name)."""
    return {"X-AUTH-TOKEN": harness.new_token(TOKEN_USER, "any-password")}


def short(hostname: str) -> str:
    return hostname.split(".", 1)[0]


def rfc3339(epoch: float) -> str:
    """Ruby's ``Time#to_datetime.rfc3339`` of a UTC instant, as vmpooler writes start/end times."""
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(epoch))


# --- checkouts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkout:
    """One checkout of a spec: the ready VMs before it, what it asks for (in request order), and
    the pool of each VM it must hand out under each requested name, or None for a 503."""

    it: str
    """The spec's ``it`` text (the test's id)."""
    ready: Mapping[str, int]
    wanted: Sequence[tuple[str, int]]
    served: Mapping[str, Sequence[str]] | None


CHECKOUTS_IN_BOTH_SPECS = [
    Checkout("returns a single VM", {"pool1": 1}, [("pool1", 1)], {"pool1": ["pool1"]}),
    Checkout("returns a single VM for an alias", {"pool1": 1}, [("poolone", 1)], {"poolone": ["pool1"]}),
    Checkout("returns 503 for empty pool referenced by alias", {"pool2": 1}, [("poolone", 1)], None),
    Checkout("returns multiple VMs", {"pool1": 1, "pool2": 1}, [("pool1", 1), ("pool2", 1)],
             {"pool1": ["pool1"], "pool2": ["pool2"]}),
    Checkout("returns multiple VMs even when multiple instances from multiple pools are requested",
             {"pool1": 2, "pool2": 3}, [("pool1", 2), ("pool2", 3)], {"pool1": ["pool1"] * 2, "pool2": ["pool2"] * 3}),
    Checkout("fails (and returns any checked out vms to their pools) when not all requested vms can be allocated",
             {"pool1": 1}, [("pool1", 1), ("pool2", 1)], None),
]
"""The checkouts vm_spec.rb (in a body) and vm_template_spec.rb (in the path) both make, in both
specs' configs (pool1 and pool2, ``poolone`` an alias of pool1)."""


def request_checkout(harness: Harness, wanted: Sequence[tuple[str, int]], form: str,
                     headers: Mapping[str, str] | None = None, prefix: str = "/api/v3") -> Reply:
    """POST /vm with the counts as strings (as the specs and beaker send them), or POST
    /vm/<name>+<name>... with one mention per VM."""
    if form == BODY:
        return harness.post(f"{prefix}/vm", {name: str(count) for name, count in wanted}, headers=headers)
    mentions = "+".join(name for name, count in wanted for _ in range(count))
    return harness.post(f"{prefix}/vm/{mentions}", headers=headers)


def check_checkout(harness: Harness, case: Checkout, form: str, prefix: str = "/api/v3") -> None:
    """The checkout answers as vmpooler's spec expects. Served: 200 with exactly ``ok`` and one
    ``{"hostname": ...}`` per requested name in request order (a string for one VM, an array for
    several), each VM a ready one of the expected pools, named ``<vm>.<its pool's domain>`` (the
    bare name for a pool without one), now running. Refused: 503 and exactly ``{"ok": false}``,
    and every VM that was ready still is (vmpooler: "returns any checked out vms to their
    pools"); nothing in Redis changed at all. ``prefix``: the API version asked (the v1 and v2
    specs of vmpooler 2.5.0 make the same checkouts; their configs give no domain, or one shared
    domain only where v2's differ)."""
    ready_before = {host for pool in harness.config.pool_names for host in harness.ready(pool)}
    state_before = harness.redis_state()
    reply = request_checkout(harness, case.wanted, form, prefix=prefix)
    if case.served is None:
        assert (reply.status, reply.json) == (503, {"ok": False})
        assert harness.redis_state() == state_before
        assert {host: harness.describe(host)["state"] for host in ready_before} == dict.fromkeys(ready_before, "ready")
        return
    assert reply.status == 200, reply.json
    assert list(reply.json) == ["ok", *(name for name, _ in case.wanted)]
    handed: list[str] = []
    for name, count in case.wanted:
        hostname = reply.json[name]["hostname"]
        assert reply.json[name] == {"hostname": hostname}
        names = [hostname] if count == 1 else hostname
        assert isinstance(hostname, str if count == 1 else list) and len(names) == count, reply.json
        pools = []
        for fqdn in names:
            vm = harness.describe(short(fqdn))
            pool = harness.config.pool(vm["template"])
            assert pool is not None, (fqdn, vm)
            assert fqdn == (f"{short(fqdn)}.{pool.domain}" if pool.domain else short(fqdn)), (fqdn, vm)
            assert vm["state"] == "running"
            pools.append(pool.name)
        assert sorted(pools) == sorted(case.served[name]), (name, names)
        handed.extend(short(fqdn) for fqdn in names)
    assert len(set(handed)) == len(handed) and set(handed) <= ready_before


LIFETIME_CASES = [
    pytest.param(False, True, VM_LIFETIME,
                 id="(auth not configured) does not extend VM lifetime if auth token is provided"),
    pytest.param(True, True, 2, id="(auth configured) extends VM lifetime if auth token is provided"),
    pytest.param(True, False, VM_LIFETIME,
                 id="(auth configured) does not extend VM lifetime if auth token is not provided"),
]
"""(auth configured, token sent, the VM's lifetime): the three lifetime ``it`` of vm_spec.rb and
vm_template_spec.rb; the lifetime is ``vm_lifetime_auth`` (2) only with auth and a token."""


def check_checkout_lifetime(harness: Harness, form: str, with_token: bool, lifetime: int,
                            prefix: str = "/api/v3") -> None:
    """One VM of pool1 checked out (with a token when ``with_token``: a real one with ``:auth:``,
    the spec's made-up one without, which is ignored): the answer is exactly vmpooler's, and GET
    /vm shows the VM's ``lifetime``."""
    headers = None
    if with_token:
        headers = token_header(harness) if harness.config.auth else {"X-AUTH-TOKEN": "abcdefghijklmnopqrstuvwxyz012345"}
    reply = request_checkout(harness, [("pool1", 1)], form, headers, prefix)
    assert reply.status == 200, reply.json
    hostname = reply.json["pool1"]["hostname"]
    assert reply.json == {"ok": True, "pool1": {"hostname": hostname}}
    assert harness.describe(short(hostname))["lifetime"] == lifetime
