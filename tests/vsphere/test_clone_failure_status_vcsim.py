"""GET /status says why a vSphere pool's clones fail (the last failure's kind), not only how many,
and stops saying it once a clone works again (vcsim; fake clock)."""

from __future__ import annotations

from typing import Any

import pytest

from chalicelib.manager.clones import BACKOFF_AFTER_FAILURES
from tests.harness import Harness, HarnessFactory
from tests.vsphere.test_bad_day import POOL, pool_harness
from tests.vsphere.vcsim import TEMPLATE, VcsimServer
from tools.vcsim import launcher


def pool_status(harness: Harness) -> dict[str, Any]:
    reply = harness.get("/api/v3/status")
    assert reply.status == 200, reply.body
    return dict(reply.json["pools"][POOL])


def failing_passes(harness: Harness) -> None:
    """Passes until the pool's clones failed BACKOFF_AFTER_FAILURES times in a row."""
    for _ in range(10):
        harness.reconcile(POOL)
        if pool_status(harness).get("clone_failures", 0) >= BACKOFF_AFTER_FAILURES:
            return
        harness.clock.advance(30)
    raise AssertionError(f"clones did not keep failing: {pool_status(harness)}")


@pytest.mark.parametrize(("settings", "kind"), [
    ({"template": "templates/no-such-template"}, "template"),
    ({"folder": f"vmpool/refused/{launcher.NO_CLONE_FOLDER}"}, "permission"),
    ({"datastore": "no-such-datastore"}, "placement"),
])
def test_the_pool_status_names_the_kind_of_its_clones_failure(
        vcsim: VcsimServer, make_harness: HarnessFactory, settings: dict[str, Any], kind: str) -> None:
    harness = pool_harness(make_harness, vcsim, size=2, **settings)
    failing_passes(harness)
    assert pool_status(harness)["clone_failure"] == kind


def test_the_kind_goes_with_the_count_once_a_clone_works(vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    harness = pool_harness(make_harness, vcsim, size=1, template="templates/no-such-template",
                           service={"experimental_features": True})
    failing_passes(harness)
    assert pool_status(harness)["clone_failure"] == "template"
    reply = harness.post("/api/v3/config/pooltemplate", {POOL: TEMPLATE})  # the operator's fix
    assert reply.status == 201, reply.body
    for _ in range(10):  # past the backoff, a clone of the template found, then done
        harness.clock.advance(60)
        harness.reconcile(POOL)
        if "clone_failures" not in pool_status(harness):
            break
    status = pool_status(harness)
    assert "clone_failures" not in status and "clone_failure" not in status, status
    assert harness.store.clone_failures() == {}
