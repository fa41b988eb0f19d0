"""One reconcile pass for one pool: look at the provider and the store, move each VM one step.

The pass is level-triggered: it decides from what it sees now, never from what it remembers, so
it may be killed at any line or run twice at once and the next pass still converges. It never
waits for a clone or a boot: it starts the task, records it on the VM, and looks again next pass.

A pass reads its inputs once into a ``PassContext`` (manager/context.py), then runs ``STEPS`` in
order, each a function of the context, as controller-runtime's Reconcile does; its report says
whether to look again soon (``PassReport.work_in_flight``, ``waiting_for_clones``), which the
runner turns into a delay. Every state change is a conditional move in Redis (``Store.move``): a
VM checked out by the API after the pass looked is no longer in ``ready``, so the pass cannot reap
it by mistake.
"""

from __future__ import annotations

from typing import Callable

from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.dns.base import DnsPlugin
from chalicelib.manager import (
    clones,
    completed,
    discovered,
    dns_records,
    inventory_view,
    migrations,
    names,
    ondemand,
    pending,
    pool_changes,
    ready,
    rounds,
    running,
    templates,
    vm_tasks,
)
from chalicelib.manager.context import (
    Checkpoint,
    DnsLookup,
    PassContext,
    PassReport,
    PoolsLookup,
    ProviderLookup,
    Step,
    no_checkpoint,
)
from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.observability import logger
from chalicelib.providers.base import Provider, ProviderError
from chalicelib.store import Store
from chalicelib.timestamps import day_of, ruby_time

__all__ = ["CLONE_START_GRACE_SECONDS", "STEPS", "Checkpoint", "PassReport", "no_checkpoint", "reconcile_pool"]
"""The pass's entry point and what its callers name (the report, the checkpoint, the grace a
reserved clone has to start), wherever they are defined."""


def note_inventory_checked(context: PassContext) -> None:
    """Record the provider's inventory token this pass compared with (see inventory_view)."""
    inventory_view.checked(context.store, context.pool.name, context.now, context.inventory_checked,
                           context.inventory_changes)


def end_pass(context: PassContext) -> None:
    """The pass's last writes, in one round trip with the pool's counts as the pass leaves it
    (when its own moves cannot say them: not read yet, or read before checkouts its rounds
    raced with): the pool's last boot time (GET /status shows it; once a pass, not once a VM)
    the day's clone and boot durations, the next looks of VMs that left running for good, the
    addresses GET /vm gives for VMs whose address the pass saw (``dns_records.follow_addresses``)
    and the pending VMs waiting on DNS GET /status flags (``dns_records.waiting_note``).
    Then how many VMs the pool still lacks."""
    report = context.report
    counts, readdressed = context.store.end_pass(
        context.pool.name, ruby_time(context.now) if report.became_ready else None, day_of(context.now),
        report.samples, read_counts=context.counts is None, looks_forgotten=report.looks_forgotten,
        ips=report.addresses_seen, ips_seen=context.now,
        dns_waiting=dns_records.waiting_note(report.dns_waiting) if dns_records.manages_records(context) else None)
    context.checkpoint("done")  # every change of the pass is made
    for hostname in readdressed:
        logger.info("VM's address changed: GET /vm gives the new one", extra={
            "pool": context.pool.name, "hostname": hostname, "ip": report.addresses_seen[hostname]})
    if counts is not None:
        context.counts = counts
    counts = dict(context.read_counts())
    counts["deficit"] = max(context.pool.size - counts["ready"] - counts["pending"], 0)
    report.counts = counts


def read_tasks(context: PassContext) -> None:
    """Read the tasks the steps below follow (pending clones, disk and snapshot tasks,
    migrations) in one ``task_statuses`` call a provider (before, one call each step: three
    vCenter retrievals a pass with all three in flight); each step takes its own from
    ``context.task_reads``."""
    context.task_reads.read_all([*pending.tasks_to_read(context), *vm_tasks.tasks_to_read(context),
                                 *migrations.tasks_to_read(context)])


STEPS: tuple[Step, ...] = (
    read_tasks,
    pending.check_pending,  # clones finished, boots checked: pending -> ready (or running, on demand)
    ready.check_ready,
    running.check_running,
    dns_records.follow_addresses,  # ready and running VMs whose address or DNS name changed: records, ip
    vm_tasks.run_tasks,
    migrations.run,
    discovered.check_discovered,  # before discover_unknown: a VM found now is judged next pass
    completed.destroy_completed,
    dns_records.delete_left_records,  # records of VMs destroyed while DNS failed
    discovered.discover_unknown,
    note_inventory_checked,
    pool_changes.drain_and_retire,
    templates.prepare_template,  # may hold the clones below
    names.hold_forgotten_names,  # after Redis lost its data: no clone name before they are known
    ondemand.serve_requests,  # before repopulate: requests do not wait behind the pool's refill
    clones.repopulate,
    rounds.more_rounds,  # instant clones: done at once, their slots reused in this pass
    end_pass,
)
"""The pass, in order. Each step sees what the ones before it did (in ``context.report``)."""


def reconcile_pool(
    store: Store,
    provider: Provider,
    pool: PoolConfig,
    clock: Clock,
    service: ServiceConfig,
    checkpoint: Checkpoint = no_checkpoint,
    dns: DnsPlugin | None = None,
    providers: ProviderLookup | None = None,
    out_of_time: Callable[[], bool] = lambda: False,
    lease_token: str | None = None,
    override_room: Callable[[], int] | None = None,
    dns_plugins: DnsLookup | None = None,
    config_generation: float = 0.0,
    fleet: PoolsLookup | None = None,
) -> PassReport:
    """Run one pass over ``pool``. Raises ProviderError or StoreUnavailable when the provider or
    Redis fails; whatever was done before that is consistent, and the next pass carries on.
    ``dns`` manages the pool's DNS records (its ``dns_plugin``); its failures never end the pass.
    ``dns_plugins`` reaches the entry that published a VM's record when it is another one
    (``PassContext.publisher``).
    ``providers`` reaches VMs the pool made with another provider before it moved (placement.py).
    ``out_of_time``, asked before each step: when true the pass stops there (``stopped_before``),
    as one killed between two steps would, and the next pass carries on. ``lease_token``: the
    run's lease on the pool (``PassContext.lease_token``). ``override_room``: what a runtime
    template or clone target may add to the configured one under the config in effect
    (``Services.override_room``, asked only when the pool has one); None: not checked.
    ``config_generation``: of the config ``pool`` and ``service`` come from (``Config.generation``):
    a pass whose config a newer push replaced reserves no clone (lua/reserve_clones.lua).
    ``fleet``: every configured pool, for the names of the provider's VMs after Redis lost its
    data (manager/names.py); None: this pool's only."""
    calls_before = provider.call_count()
    started = clock.monotonic()
    try:
        context = PassContext.read(store, provider, pool, clock, service, checkpoint, dns, providers, lease_token,
                                   override_room, dns_plugins, config_generation, fleet)
        for step in STEPS:
            if out_of_time():
                context.report.stopped_before = getattr(step, "__name__", repr(step))
                break
            step(context)
    except ProviderError:
        # Its requests' deadlines need no provider: they still fail in time while it is down or hung.
        ondemand.fail_overdue(store, pool, service, clock.now())
        raise
    report = context.report
    report.provider_calls = provider.call_count() - calls_before
    report.duration_seconds = clock.monotonic() - started
    return report
