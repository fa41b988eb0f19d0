"""vCenter going away in the middle of a reconcile run (after some clones of a refill started,
before the others): the pass records why the other clones failed instead of raising, and once a simulator is
back the pool's next runs converge with no VM leaked and nothing stuck in flight.

tests/vsphere/test_service.py stops vcsim between two bare passes; this stops it inside a pass,
at the runner level.
"""

from __future__ import annotations

import redis

from chalicelib.clock import FakeClock
from chalicelib.providers.failures import FailureKind
from chalicelib.services import Services
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_config

POOL = "chaos-vc"
SIZE = 4


def test_vcsim_stopped_mid_refill_then_restarted_converges(private_vcsim: VcsimServer,
                                                            redis_client: redis.Redis) -> None:
    config = vcsim_config(private_vcsim, pools=[{"name": POOL, "size": SIZE, "folder": f"vmpool/{POOL}",
                                                 "ready_check": "tools"}],
                          service={"task_limit": 10}, provider={"call_timeout": 3})
    services = Services(config, redis_client, FakeClock())
    store = services.store
    started: list[str] = []

    def stop_after_two_clones(step: str) -> None:
        if step == "clone_started":
            started.append(step)
            if len(started) == 2:
                private_vcsim.stop()

    from chalicelib.manager.runner import run_pool

    report = run_pool(services, POOL, 0.0, stop_after_two_clones)
    # Nothing raised: the clones that could not start are recorded with their reason (or the
    # pass is reported as failed, had the inventory call been the one to fail).
    assert report.leased
    failed_clones = {host: why for result in report.passes for host, why in result.clone_failures.items()}
    cut_off = (FailureKind.CONNECTION, FailureKind.TIMEOUT)
    # All four: the two sent lost their answers (vCenter went before the pass read their tasks'
    # queue times, in one read after the last clone: AnswerLost, their slots kept until found or
    # given up), the two others were not started.
    assert report.failures or (len(failed_clones) == SIZE
                               and all("vCenter at" in why.message and why.kind in cut_off
                                       for why in failed_clones.values())), report
    assert redis_client.keys("vmpool:lease:*") == []

    private_vcsim.start()  # a fresh simulator: the two clones it had are gone with it
    provider = services.provider("vsphere")

    def converged() -> bool:
        services.clock.advance(200)  # past the grace for clones reserved but never started
        report = run_pool(services, POOL, 0.0)
        counts = store.counts([POOL])[POOL]
        return counts["ready"] == SIZE and counts["pending"] == 0 and not report.failures

    eventually(converged, 60, "the pool to converge after vcsim came back", interval=0.2)
    in_vcsim = {vm.name for vm in provider.list_vms(config.pool(POOL))}
    assert in_vcsim == set(store.hostnames(POOL, "ready"))
    assert store.cloning_count() == 0
