"""vmpooler's spec/integration/api/v3/poolreset.rb (POST /poolreset), ported.

vmpooler never runs this spec (its name does not end in ``_spec.rb``), and two of its ``it``s
disagree with vmpooler's code; where they do we follow the code, which the spec's other ``it``s
and ondemandvm_spec.rb agree with. Its config: ``experimental_features``, pool1 (size 5) and pool2
(size 10), no auth. Each ``it``, and where it is checked:

- 'refreshes ready and pending instances from a pool' (201 ``{"ok": true}``), 'fails on
  nonexistent pools' (400) and 'fails when not all pools exist' (400 ``bad_pools: [pool3]``):
  tests/ondemand/test_pool_config.py::test_pool_reset_drains_and_refills
- 'resets multiple pools': test_a_reset_of_several_pools_drains_each below
- 'with experimental features disabled' 405 ``{"ok": false}``:
  tests/ondemand/test_pool_config.py::test_405_without_experimental_features
- 'should return 400 for invalid json': tests/ondemand/test_pool_config.py::test_bad_json_is_a_400.
  Deliberately different body: the spec says ``{"ok": false}``, vmpooler's code (and
  ondemandvm_spec.rb for the same mistake) adds ``"message": "JSON payload could not be parsed"``,
  and so do we.
- 'should return 400 with a bad pool name': the same test as 'fails when not all pools exist'.
  Deliberately different body: the spec says ``{"ok": false}``, vmpooler's code (and the spec's
  'fails when not all pools exist') adds ``bad_pools``, and so do we.
- 'should return 404 when there is no payload': test_no_payload_is_a_bare_404 below (fixed: we
  answered 400), for vmpooler's three /config POST routes too (the same "no payload" branch).

Skipped: none of this spec's expectations is about vmpooler's Redis layout only.
"""

from __future__ import annotations

import pytest

from chalicelib.api import pool_config
from chalicelib.api.routes import Route
from tests.compat.api_spec_support import POOL_CHANGE_CONFIG, POOL_CHANGE_POOLS, missing_tests, vmpooler_stack
from tests.harness import Harness, HarnessFactory, route_target, routes_of


@pytest.fixture
def pooler(make_harness: HarnessFactory) -> Harness:
    return vmpooler_stack(make_harness, POOL_CHANGE_POOLS, POOL_CHANGE_CONFIG)


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []


# it 'resets multiple pools': 201, and every VM ready before the reset is replaced.
def test_a_reset_of_several_pools_drains_each(pooler: Harness) -> None:
    pooler.fill()
    ready = {name: set(pooler.ready(name)) for name in ("pool1", "pool2")}
    pooler.clock.advance(1)
    assert pooler.answer("POST", "/api/v3/poolreset", {"pool1": "1", "pool2": "1"}) == (201, {"ok": True})
    for name, hostnames in ready.items():
        assert set(pooler.reconcile(name).completed) == hostnames


# it 'should return 404 when there is no payload'; JSON null is vmpooler's other "no payload".
@pytest.mark.parametrize("body", [b"", b"null"], ids=["empty", "null"])
@pytest.mark.parametrize("route", [route for route in routes_of(pool_config) if route.method == "POST"],
                         ids=lambda route: route.name)
def test_no_payload_is_a_bare_404(pooler: Harness, route: Route, body: bytes) -> None:
    before = pooler.redis_state()
    assert pooler.answer("POST", route_target(route, {}), raw=body) == (404, {"ok": False})
    assert pooler.redis_state() == before
