"""One VM whose destroy the provider refuses, every pass, must not stall its pool: the other
VMs out of service are still destroyed and the pool refills (dummy provider, fake clock)."""

from __future__ import annotations

from typing import Any, Sequence

import pytest

from chalicelib.config import PoolConfig, parse
from chalicelib.providers.base import Provider, ProviderError
from chalicelib.providers.failures import FailureKind
from tests.harness import Harness, HarnessFactory

CONFIG = """\
providers:
  dummy: {provider_class: dummy, seed: 5}
pools:
  - {name: reap, size: 3, provider: dummy, ready_ttl: 5}
"""


def refusing_one_destroy(make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch,
                         kind: FailureKind) -> tuple[Harness, str]:
    """A full pool whose ready VMs all outlived ready_ttl; the provider refuses to destroy the
    first of them (``kind``), every time, and destroys the others as ever."""
    world = make_harness(parse(CONFIG), prefix="reapstuck:")
    world.fill("reap")
    stuck = sorted(world.store.hostnames("reap", "ready"))[0]
    provider = world.services.provider("dummy")
    destroy_vms = provider.destroy_vms

    def refusing(pool: PoolConfig, hostnames: Sequence[str], *args: Any, **kwargs: Any) -> Any:
        started: dict[str, Any] = {}
        for hostname in hostnames:
            if hostname == stuck:
                started[hostname] = ProviderError(f"destroy {hostname}: the VM's files are locked", kind)
                continue  # the others are asked (Provider.destroy_vms)
            started.update(destroy_vms(pool, [hostname], *args, **kwargs))
        return started

    monkeypatch.setattr(provider, "destroy_vms", refusing)
    world.clock.advance(6 * 60)
    return world, stuck


def test_a_vm_whose_destroy_is_refused_does_not_stop_its_pool_refilling_or_its_other_destroys(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Before, the refused destroy ended every pass of the pool at the completed step: VMs checked
    out after it were never replaced (the pool emptied), and the VMs after the refused one were
    never destroyed. Now the refusal is kept on that VM and the pass goes on."""
    world, stuck = refusing_one_destroy(make_harness, monkeypatch, FailureKind.PERMISSION)
    world.reconcile("reap")  # out of service, replaced; destroyed from the next pass on
    report = world.reconcile("reap")
    assert any(stuck in error and "files are locked" in error for error in report.errors)
    world.checkout_vms("reap", 2)
    world.run_passes("reap")
    counts = world.store.counts(["reap"])["reap"]
    assert (counts["ready"], counts["running"], counts["completed"]) == (3, 2, 1)  # refilled; one waits
    record = world.store.get_vm(stuck)
    assert record is not None and "files are locked" in record.raw["destroy_error"]
    monkeypatch.undo()
    world.run_passes("reap")
    assert world.store.counts(["reap"])["reap"]["completed"] == 0


def test_an_unreachable_provider_still_ends_the_pass_at_the_destroys(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A destroy that cannot reach the provider says every call would fail alike: the pass ends
    there (counted in ReconcileErrors by its kind), as before."""
    world, _ = refusing_one_destroy(make_harness, monkeypatch, FailureKind.CONNECTION)
    world.reconcile("reap")
    with pytest.raises(ProviderError, match="files are locked"):
        world.reconcile("reap")


def test_the_default_batch_destroy_asks_past_a_refusal_and_stops_at_an_unreachable_backend(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """``Provider.destroy_vms`` (what vSphere uses): a VM refused is given its error and the VMs
    after it are still destroyed; one that cannot reach the backend ends the batch (each other
    call would wait as long). Before, any refusal ended it."""
    world = make_harness(parse(CONFIG), prefix="reapbatch:")
    world.fill("reap")
    first, second, third = sorted(world.store.hostnames("reap", "ready"))
    provider = world.services.provider("dummy")
    destroy = provider.destroy
    kinds = {first: FailureKind.PERMISSION}

    def refusing(pool: PoolConfig, hostname: str) -> str | None:
        if hostname in kinds:
            raise ProviderError(f"destroy {hostname} refused", kinds[hostname])
        return destroy(pool, hostname)

    monkeypatch.setattr(provider, "destroy", refusing)
    pool = world.pool("reap")
    started = Provider.destroy_vms(provider, pool, [first, second])
    assert isinstance(started[first], ProviderError) and isinstance(started[second], str)
    kinds[second] = FailureKind.TIMEOUT
    started = Provider.destroy_vms(provider, pool, [second, third])
    assert isinstance(started[second], ProviderError) and third not in started
