"""vmpooler's spec/integration/api/v3/vm_spec.rb ('/vm': GET /vm/:hostname, POST /vm with a JSON
body), ported to HTTP checks (tests/compat/pooler.py says how).

Its config: pool1, pool2, pool3 named by the dns_configs one/two/three (``<vm>.one.example.com``),
``poolone`` an alias of pool1, and in one test ``genericpool`` of all three; ``vm_lifetime_auth: 2``.

Each ``it`` and where it is checked:

GET /vm/:hostname
- 'returns correct information on a running vm': test_describe_a_running_vm_as_vmpooler. Its
  ``lifetime`` 0 and ``remaining`` <= 0 come from the spec's config having no ``vm_lifetime``
  (here the default, 24 hours), its ``ip`` "" from the stubbed DNS lookup failing and its
  ``host`` "host1" from the planted record (here the provider's address and host). The rest of
  the fields: tests/api/test_vm_routes.py::test_describe_a_running_vm.

POST /vm (test_checkout_from_a_body, one case per ``it``, except:)
- 'fails on nonexistant pools': tests/api/test_errors.py::test_error_answers_and_changes_nothing
  (``{"nosuchpool": 1}`` -> 404, nothing changed).
- 'returns 503 for empty pool when aliases are not defined': test_an_emptied_pool_is_a_503.
- 'returns the first VM that was moved to the ready state when checking out a VM':
  test_the_vm_ready_longest_is_handed_out_first.
- 'returns the second VM when the first fails to respond': test_a_checked_out_vm_is_never_handed_out_again.
  vmpooler's stub (``open_socket`` raising for the first VM) is dead code there: its checkout no
  longer probes VMs (``fetch_single_vm``), and the first VM is a running one, which no checkout
  takes. Neither do we probe at checkout: the pass takes a ready VM that vanished or powered off
  out of service (manager/ready.py).
- '(auth not configured) does not extend VM lifetime if auth token is provided', '(auth
  configured) extends VM lifetime if auth token is provided', '(auth configured) does not extend
  VM lifetime if auth token is not provided': test_checkout_lifetime_follows_the_token.

Each "fails when not all requested vms can be allocated..." and its "returns any checked out vms
to their pools..." twin are one case: the 503, and every ready VM still ready.

Fixed to match: a checkout refused for want of ready VMs answered ``{"ok": false, "error":
"not enough ready VMs for: pool2"}``; the specs expect the body to be exactly ``{"ok": false}``.

Deliberately different, unseen by a client: a failed checkout takes nothing, so there is nothing
to give back (vmpooler took VMs one by one and moved them back, clearing their ``checkout`` and
token fields on the way); Redis is left exactly as it was.

Skipped, internal to vmpooler's Redis: the ``vmpooler__ready__<pool>`` sets the VMs are planted
in, ``vmpooler__vm__<host>`` fields read back with ``fetch_vm`` (here read through GET /vm), the
checkout mutex ``checkoutlock``, statsd metric names.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from tests.compat.pooler import (
    BODY,
    CHECKOUTS_IN_BOTH_SPECS,
    LIFETIME_CASES,
    PATH,
    VM_LIFETIME,
    Checkout,
    PoolerFactory,
    check_checkout,
    check_checkout_lifetime,
    pooler_document,
    request_checkout,
    rfc3339,
    short,
)

DNS_DOMAINS = {"one": "one.example.com", "two": "two.example.com", "three": "three.example.com"}


def vm_spec_document(ready: Mapping[str, int], *, aliases: bool = True, **options: Any) -> dict[str, Any]:
    """The spec's config, each pool holding ``ready[pool]`` ready VMs (none when not named)."""
    pools: list[dict[str, Any]] = [
        {"name": "pool1", "dns_plugin": "one", "alias": ["poolone", "genericpool"]},
        {"name": "pool2", "dns_plugin": "two", "alias": ["genericpool"]},
        {"name": "pool3", "dns_plugin": "three", "alias": ["genericpool"]},
    ]
    for pool in pools:
        pool["size"] = ready.get(str(pool["name"]), 0)
        if not aliases:
            del pool["alias"]
    return pooler_document(pools, DNS_DOMAINS, **options)


CHECKOUTS = [
    *CHECKOUTS_IN_BOTH_SPECS,
    Checkout("returns multiple VMs even when multiple instances from the same pool are requested",
             {"pool1": 2, "pool2": 1}, [("pool1", 2), ("pool2", 1)], {"pool1": ["pool1"] * 2, "pool2": ["pool2"]}),
    Checkout("returns VMs from multiple backend pools requested by an alias", {"pool1": 1, "pool2": 1, "pool3": 1},
             [("genericpool", 3)], {"genericpool": ["pool1", "pool2", "pool3"]}),
    Checkout("... when requesting multiple instances from a pool", {"pool1": 1}, [("pool1", 2), ("pool2", 1)], None),
    Checkout("fails when not all requested vms can be allocated, when requesting multiple instances from multiple "
             "pools", {"pool1": 1}, [("pool1", 2), ("pool2", 3)], None),
    Checkout("returns any checked out vms to their pools when not all requested vms can be allocated, when "
             "requesting multiple instances from multiple pools", {"pool1": 2}, [("pool1", 2), ("pool2", 3)], None),
]


@pytest.mark.parametrize("case", CHECKOUTS, ids=[case.it for case in CHECKOUTS])
def test_checkout_from_a_body(make_pooler: PoolerFactory, case: Checkout) -> None:
    check_checkout(make_pooler(vm_spec_document(case.ready)), case, BODY)


def test_an_emptied_pool_is_a_503(make_pooler: PoolerFactory) -> None:
    """'returns 503 for empty pool when aliases are not defined': the pool's one ready VM goes to
    the first checkout, the second is refused."""
    pooler = make_pooler(vm_spec_document({"pool1": 1}, aliases=False))
    assert request_checkout(pooler, [("pool1", 1)], PATH).status == 200
    refused = request_checkout(pooler, [("pool1", 1)], PATH)
    assert (refused.status, refused.json) == (503, {"ok": False})


def test_the_vm_ready_longest_is_handed_out_first(make_pooler: PoolerFactory) -> None:
    """'returns the first VM that was moved to the ready state when checking out a VM': with one
    clone at a time (task_limit 1) the three VMs become ready one pass apart; checkouts take them
    in that order. Clones of up to a second (done by the next pass): instant ones are all made
    ready in the first pass's rounds (manager/rounds.py), at the pass's one time."""
    document = vm_spec_document({"pool1": 3}, task_limit=1)
    document["providers"]["dummy"]["createvm_max_time"] = 1
    pooler = make_pooler(document, fill=False)
    became_ready: list[str] = []
    while len(became_ready) < 3:
        pooler.reconcile("pool1")
        new = [host for host in pooler.ready("pool1") if host not in became_ready]
        assert len(new) <= 1, new
        became_ready.extend(new)
        pooler.clock.advance(60)
    handed = [short(request_checkout(pooler, [("pool1", 1)], BODY).json["pool1"]["hostname"]) for _ in range(3)]
    assert handed == became_ready


def test_a_checked_out_vm_is_never_handed_out_again(make_pooler: PoolerFactory) -> None:
    """'returns the second VM when the first fails to respond': pool1 has a running VM and a ready
    one; the checkout hands out the ready one, and the running one does not become ready."""
    pooler = make_pooler(vm_spec_document({"pool1": 1}))
    running = short(request_checkout(pooler, [("pool1", 1)], BODY).json["pool1"]["hostname"])
    pooler.fill("pool1")
    (second,) = pooler.ready("pool1")
    reply = request_checkout(pooler, [("pool1", 1)], BODY)
    assert (reply.status, reply.json) == (200, {"ok": True, "pool1": {"hostname": f"{second}.one.example.com"}})
    assert pooler.describe(running)["state"] == "running"
    assert running not in pooler.ready("pool1")


def test_describe_a_running_vm_as_vmpooler(make_pooler: PoolerFactory) -> None:
    """'returns correct information on a running vm': template (the pool), lifetime, running and
    remaining hours, start and end time (RFC 3339, the checkout and the checkout + lifetime),
    state, ip (a string: "" while unknown) and host."""
    pooler = make_pooler(vm_spec_document({"pool1": 1}))
    checked_out_at = pooler.clock.now()
    vm = short(request_checkout(pooler, [("pool1", 1)], BODY).json["pool1"]["hostname"])
    pooler.clock.advance(90 * 60)
    reply = pooler.get(f"/api/v3/vm/{vm}")
    assert reply.status == 200 and list(reply.json) == ["ok", vm]
    info = reply.json[vm]
    assert (info["template"], info["lifetime"], info["state"]) == ("pool1", VM_LIFETIME, "running")
    assert (info["running"], info["remaining"]) == (1.5, VM_LIFETIME - 1.5)
    assert info["start_time"] == rfc3339(checked_out_at)
    assert info["end_time"] == rfc3339(checked_out_at + VM_LIFETIME * 3600)
    assert isinstance(info["ip"], str)
    record = pooler.services.store.get_vm(vm)
    assert record is not None and info["host"] == record.host != ""


@pytest.mark.parametrize(("auth", "with_token", "lifetime"), LIFETIME_CASES)
def test_checkout_lifetime_follows_the_token(make_pooler: PoolerFactory, auth: bool, with_token: bool,
                                             lifetime: int) -> None:
    check_checkout_lifetime(make_pooler(vm_spec_document({"pool1": 1}, auth=auth)), BODY, with_token, lifetime)
