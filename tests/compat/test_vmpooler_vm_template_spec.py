"""vmpooler's spec/integration/api/v3/vm_template_spec.rb ('/vm/:template': POST /vm/<p1>+<p1>+<p2>,
one VM per mention, no body), ported to HTTP checks (tests/compat/pooler.py says how).

Its config: pools pool1, pool2 and poolone, all in the dns_config ``example`` (example.com), and
``poolone`` also an alias (a string) of pool1: a name that is a pool and an alias at once, served
from both; ``vm_lifetime_auth: 2``.

Each ``it`` and where it is checked:

POST /vm/:template (test_checkout_from_a_path, one case per ``it``, except:)
- 'fails on nonexistant pools': tests/api/test_errors.py::test_error_answers_and_changes_nothing
  (``POST /vm/nosuchpool`` -> 404, nothing changed).
- 'returns 503 for empty pool when aliases are not defined': the same request and answer as
  vm_spec.rb's: test_vmpooler_vm_spec.py::test_an_emptied_pool_is_a_503.
- '(auth not configured) does not extend VM lifetime if auth token is provided', '(auth
  configured) extends VM lifetime if auth token is provided', '(auth configured) does not extend
  VM lifetime if auth token is not provided': test_path_checkout_lifetime_follows_the_token.

Each "fails when not all requested vms can be allocated..." and its "returns any checked out vms
to their pools..." twin are one case: the 503, and every ready VM still ready.

Fixed to match, as for vm_spec.rb: a refused checkout's 503 is exactly ``{"ok": false}`` (it
carried an ``error`` naming the short pools). Deliberately different, unseen by a client: a
failed checkout takes nothing, so there is nothing to give back.

Skipped, internal to vmpooler's Redis: the ready sets the VMs are planted in, the VM hash read
back with ``fetch_vm`` (here GET /vm), ``checkoutlock``, statsd metric names.
"""

from __future__ import annotations

from typing import Any, Mapping

import pytest

from tests.compat.pooler import (
    CHECKOUTS_IN_BOTH_SPECS,
    LIFETIME_CASES,
    PATH,
    Checkout,
    PoolerFactory,
    check_checkout,
    check_checkout_lifetime,
    pooler_document,
)


def vm_template_spec_document(ready: Mapping[str, int], with_domain: bool = True, **options: Any) -> dict[str, Any]:
    """The spec's config, each pool holding ``ready[pool]`` ready VMs (none when not named);
    without ``with_domain``, its v1 and v2 twins' (vmpooler 2.5.0), which give the pools none."""
    pools = [{"name": "pool1", "alias": "poolone"}, {"name": "pool2"}, {"name": "poolone"}]
    if not with_domain:
        return pooler_document([{**pool, "size": ready.get(pool["name"], 0)} for pool in pools], {}, **options)
    return pooler_document([{**pool, "dns_plugin": "example", "size": ready.get(pool["name"], 0)} for pool in pools],
                           {"example": "example.com"}, **options)


VERSIONS = [
    pytest.param("/api/v3", True, id="v3"),
    pytest.param("/api/v2", False, id="v2 spec of 2.5.0, no domain"),
    pytest.param("/api/v1", False, id="v1 spec of 2.5.0, no domain"),
]
"""The spec and its v1 and v2 twins (test_vmpooler_v1_v2_specs.py): the same checkouts, under
each prefix, on a config with the pools' domain (v3) or none (v1, v2: bare names answered)."""


CHECKOUTS = [
    *CHECKOUTS_IN_BOTH_SPECS,
    Checkout("... when requesting multiple instances from a pool", {"pool1": 2}, [("pool1", 2), ("pool2", 1)], None),
    Checkout("... when requesting multiple instances from multiple pools", {"pool1": 1, "pool2": 1},
             [("pool1", 2), ("pool2", 3)], None),
]


@pytest.mark.parametrize(("prefix", "with_domain"), VERSIONS)
@pytest.mark.parametrize("case", CHECKOUTS, ids=[case.it for case in CHECKOUTS])
def test_checkout_from_a_path(make_pooler: PoolerFactory, case: Checkout, prefix: str, with_domain: bool) -> None:
    check_checkout(make_pooler(vm_template_spec_document(case.ready, with_domain)), case, PATH, prefix)


@pytest.mark.parametrize(("auth", "with_token", "lifetime"), LIFETIME_CASES)
def test_path_checkout_lifetime_follows_the_token(make_pooler: PoolerFactory, auth: bool, with_token: bool,
                                                  lifetime: int) -> None:
    check_checkout_lifetime(make_pooler(vm_template_spec_document({"pool1": 1}, auth=auth)), PATH, with_token, lifetime)
