"""One reconcile pass for one pool: look at the provider and the store, move each VM one step.

The pass is level-triggered: it decides from what it sees now, never from what it remembers, so
it may be killed at any line or run twice at once and the next pass still converges. It never
waits for a clone or a boot: it starts the task, records it on the VM, and looks again next pass.

Every state change is a conditional move in Redis (``Store.move``): a VM checked out by the API
after the pass looked is no longer in ``ready``, so the pass cannot reap it by mistake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.dns.base import DnsPlugin
from chalicelib.manager import dns_records, inventory_view, migrations, ondemand, pool_changes, templates, vm_tasks
from chalicelib.manager.hostnames import candidate_names
from chalicelib.observability import logger
from chalicelib.providers.base import Provider, ProviderError, TaskState, VMInfo
from chalicelib.providers.failures import Failure, FailureKind
from chalicelib.sizing.controller import SizeDecision, target_size
from chalicelib.store import DurationSample, PoolSnapshot, Store, VMRecord
from chalicelib.timestamps import day_of, ruby_time

CLONE_START_GRACE_SECONDS = 120.0
"""How long a reserved name may wait for its clone task to be recorded before the pass decides
the pass that reserved it died in between (longer than any pass takes between the two steps)."""

Checkpoint = Callable[[str], None]
"""Called with a step's name as the pass reaches it: lets chaos tests kill the pass anywhere."""


def _no_checkpoint(step: str) -> None:
    return None


@dataclass
class PassReport:
    """What one pass saw and did, for logs, metrics and the runner's decision to loop."""

    pool: str
    started: float
    counts: dict[str, int] = field(default_factory=dict)
    clones_started: list[str] = field(default_factory=list)
    became_ready: list[str] = field(default_factory=list)
    completed: dict[str, str] = field(default_factory=dict)
    """hostname -> why it was taken out of service."""
    destroyed: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    returned: list[str] = field(default_factory=list)
    """VMs taken by a checkout that was never confirmed (its answer was lost), back in ready."""
    discovered: list[str] = field(default_factory=list)
    clone_failures: dict[str, Failure] = field(default_factory=dict)
    """hostname -> why its clone failed (the kind is the metric's ``reason``)."""
    samples: list[DurationSample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    clones_short: int = 0
    """Clones the pool still lacks after this pass reserved what its share of task_limit allowed."""
    clones_running: int = 0
    """The pool's clone tasks still running when the pass ended (started by it or before)."""
    followups: int = 0
    """Work a pass soon must look at again: disk/snapshot tasks running, requests waiting."""
    provider_calls: int = 0
    duration_seconds: float = 0.0
    size: int = 0
    """The pool's effective size in this pass (schedule, demand, override or config)."""

    @property
    def waiting_for_clones(self) -> bool:
        """Whether a clone slot will soon be free for this pool: its clones are running (a pass
        that sees one finished reuses its slot at once), or it is short of slots other pools hold."""
        return bool(self.clones_running or self.clones_short)

    @property
    def work_in_flight(self) -> bool:
        """Whether a pass soon would have something to do: VMs cloning, booting, being destroyed,
        or the pool still short."""
        return bool(
            self.counts.get("pending")
            or self.counts.get("completed")
            or self.counts.get("discovered")
            or self.counts.get("deficit")
            or self.followups
        )


class _Pass:
    """The state of one pass. Each step reads ``snapshot`` and changes the store conditionally."""

    def __init__(
        self,
        store: Store,
        provider: Provider,
        pool: PoolConfig,
        clock: Clock,
        service: ServiceConfig,
        checkpoint: Checkpoint,
        dns: DnsPlugin | None = None,
    ) -> None:
        self.store = store
        self.dns = dns
        self.provider = provider
        self.pool = pool
        self.clock = clock
        self.service = service
        self.checkpoint = checkpoint
        self.now = clock.now()
        self.report = PassReport(pool=pool.name, started=self.now, size=pool.size)
        self.inventory: dict[str, VMInfo] = {}
        self.inventory_mark = 0
        """The changes counter as the inventory read began: a VM whose state changed at or after
        it may be missing from the inventory only because the read predates it."""
        self.snapshot = PoolSnapshot({}, {})
        self.late_records: dict[str, VMRecord | None] = {}
        self.size_decision = SizeDecision(pool.size, "config")

    def run(self) -> PassReport:
        calls_before = self.provider.call_count()
        started = time.monotonic()
        # Inventory first, then state: any VM we created has its record before its clone
        # starts, so a VM in this inventory without a record in the later snapshot is truly
        # unknown. A failed inventory ends the pass before anything changes.
        self.inventory_mark, inventory_checked = self.store.begin_pass(self.pool.name)
        changes = inventory_view.changes(self.provider, self.pool, self.service, self.now, inventory_checked)
        if changes is None or changes.names is None:
            self.inventory = {vm.name: vm for vm in self.provider.list_vms(self.pool)}
            self.checkpoint("inventory")
            self.snapshot = self.store.pool_snapshot(self.pool.name, without_records=("ready",))
            self.checkpoint("snapshot")
        else:
            self.checkpoint("inventory")
            self.snapshot, self.inventory = inventory_view.due_only(self.store, self.provider, self.pool, self.now,
                                                                    changes.names)
            self.checkpoint("snapshot")
        # The size the pool should have now: its schedule window or demand, unless overridden.
        self.size_decision = target_size(self.store, self.pool, self.now, self.service.sizing_timezone)
        self.pool = self.size_decision.apply(self.pool)
        self.report.size = self.pool.size
        self.check_pending()
        if self.report.became_ready:
            self.store.set_last_boot(self.pool.name, ruby_time(self.now))  # once a pass, not per VM
        self.check_ready()
        self.check_running()
        vm_tasks.run_tasks(self)
        migrations.run(self)
        self.check_discovered()
        self.destroy_completed()
        self.discover_unknown()
        inventory_view.checked(self.store, self.pool.name, self.now, inventory_checked, changes)
        pool_changes.drain_and_retire(self)
        if templates.ready_for_clones(self):
            ondemand.serve_requests(self)
            self.repopulate()
        self.store.record_durations(day_of(self.now), self.report.samples)
        self.checkpoint("done")
        self.report.counts = self.count_after()
        self.report.provider_calls = self.provider.call_count() - calls_before
        self.report.duration_seconds = time.monotonic() - started
        return self.report

    # --- helpers ------------------------------------------------------------------------------

    def record(self, hostname: str) -> VMRecord | None:
        """The VM's record as of this pass (None when missing). Ready VMs' records are read only
        when a step acts on one: a steady pass reads none."""
        if hostname not in self.snapshot.loaded and hostname not in self.late_records:
            self.load_records([hostname])
        return self.snapshot.records.get(hostname) or self.late_records.get(hostname)

    def load_records(self, hostnames: list[str]) -> None:
        """Read the records of many VMs not in the snapshot in one round trip."""
        missing = [host for host in hostnames if host not in self.snapshot.loaded and host not in self.late_records]
        found = self.store.records(missing)
        self.late_records.update({host: found.get(host) for host in missing})

    def take_out_of_service(self, hostname: str, from_state: str, reason: str,
                            failure: FailureKind | None = None, lifetime_ended: float | None = None) -> None:
        """Move a VM to completed (to be destroyed), recording why (and the failure's kind, when
        a provider failure is why). ``lifetime_ended``: see ``Store.move``."""
        if self.store.move(hostname, self.pool.name, from_state, "completed", self.now,
                           lifetime_ended=lifetime_ended, reason=reason,
                           failure=failure.value if failure else None):
            self.report.completed[hostname] = reason
            logger.info("VM taken out of service",
                        extra={"pool": self.pool.name, "hostname": hostname, "from": from_state, "reason": reason})
        self.checkpoint("completed")

    def drop(self, hostname: str, from_state: str, reason: str, gone: bool = False) -> None:
        """Forget a VM the provider no longer has (or whose record is missing); its record
        lingers for data_ttl with the reason.

        ``gone``: it is missing from this pass's inventory. Then it is dropped only if its state
        has not changed since the inventory read began (made ready, checked out or discovered
        by another pass or the API since): otherwise the read is too old to say it is gone, and
        a later pass looks again. Checked on the snapshot before its DNS record is withdrawn,
        and again in the move."""
        record = self.record(hostname)
        if gone and record is not None and int(record.raw.get("change_seq") or 0) >= self.inventory_mark:
            self.checkpoint("dropped")
            return
        dns_records.withdraw(self, record)
        if self.store.move(hostname, self.pool.name, from_state, "destroyed", self.now,
                           unchanged_since=self.inventory_mark if gone else None, reason=reason):
            self.report.dropped.append(hostname)
        self.checkpoint("dropped")

    def minutes(self, seconds: float) -> str:
        return f"{seconds / 60:.1f} minutes"

    # --- steps --------------------------------------------------------------------------------

    def check_pending(self) -> None:
        """Pending VMs: finish clone tasks, then ready-check; time out the ones that never make it."""
        timeout = self.pool.timeout_minutes * 60
        for hostname in self.snapshot.hostnames("pending"):
            record = self.record(hostname)
            if record is None:
                self.drop(hostname, "pending", "record missing")
                continue
            age = self.now - (record.clone_start or self.now)
            self.notify_slow(record, age)
            vm = self.inventory.get(hostname)
            if record.clone_end is None:
                if not self.finish_clone(record, vm, age):
                    continue
            if vm is None:
                # The clone finished after our inventory was read; readiness next pass.
                if age > timeout:
                    self.take_out_of_service(
                        hostname, "pending", f"not in the provider {self.minutes(age)} after clone start"
                    )
                continue
            readiness = dns_records.check_ready(self, record, vm)
            if readiness.ready:
                self.mark_ready(record, vm, age)
            elif age > timeout:
                self.take_out_of_service(
                    hostname, "pending",
                    f"not ready after {self.pool.timeout_minutes} minutes: {readiness.reason}",
                )
            else:
                self.note_slow_boot(record, age, readiness.reason)

    def note_slow_boot(self, record: VMRecord, age: float, reason: str) -> None:
        """Keep the not-ready reason current (GET /vm shows it)."""
        if reason != record.not_ready_reason:
            self.store.update_vm(record.name, not_ready_reason=reason)

    def notify_slow(self, record: VMRecord, age: float) -> None:
        """Log once per VM when a pending VM (cloning or booting) is older than
        ``timeout_notification`` minutes: the early warning of a broken template or DNS."""
        if age <= self.service.timeout_notification * 60 or record.raw.get("slow_notified"):
            return
        if self.store.set_once(record.name, "slow_notified"):
            logger.warning(
                "VM is slow to become ready",
                extra={"pool": self.pool.name, "hostname": record.name, "minutes": round(age / 60, 1),
                       "timeout_notification": self.service.timeout_notification,
                       "reason": record.not_ready_reason or ("cloning" if record.clone_end is None else "booting")},
            )

    def finish_clone(self, record: VMRecord, vm: VMInfo | None, age: float) -> bool:
        """Follow a VM's clone task. Returns True once the clone is done and readiness may be checked."""
        hostname = record.name
        if not record.clone_task:
            if vm is not None:
                # The pass that started the clone died before recording its task; the VM exists.
                self.store.finish_clone(hostname, self.now)
                return True
            if age > CLONE_START_GRACE_SECONDS:
                self.take_out_of_service(hostname, "pending", "clone was never started (its pass was interrupted)")
            return False
        status = self.provider.task_status(record.clone_task)
        if status.state is TaskState.RUNNING:
            self.report.clones_running += 1
            if age > self.pool.timeout_minutes * 60:
                self.take_out_of_service(
                    hostname, "pending", f"clone still running after {self.pool.timeout_minutes} minutes"
                )
            return False
        if status.state is TaskState.ERROR:
            failure = status.failure
            self.report.clone_failures[hostname] = failure
            self.take_out_of_service(hostname, "pending", f"clone failed: {failure.message}",
                                     failure=failure.kind)
            if record.raw.get("request"):
                ondemand.clone_failed(self, record.raw["request"], failure)
            return False
        self.store.finish_clone(hostname, self.now)
        self.report.samples.append(DurationSample("clone", self.pool.name, age))
        self.checkpoint("clone_finished")
        return True

    def mark_ready(self, record: VMRecord, vm: VMInfo, age: float) -> None:
        if record.raw.get("request"):
            ondemand.deliver(self, record, vm, age)  # built for a request: it goes to running
            return
        moved = self.store.move(
            record.name, self.pool.name, "pending", "ready", self.now,
            ready_at=self.now, ip=vm.ip, host=vm.host, not_ready_reason=None,
        )
        if moved:
            logger.info("VM ready", extra={"pool": self.pool.name, "hostname": record.name,
                                           "boot_seconds": round(age, 1)})
            self.report.became_ready.append(record.name)
            self.report.samples.append(DurationSample("boot", self.pool.name, age))
        self.checkpoint("ready")

    def check_ready(self) -> None:
        """Ready VMs that vanished, powered off, or waited longer than ready_ttl leave service."""
        ttl = self.pool.ready_ttl_minutes * 60
        for hostname, since in self.snapshot.members.get("ready", {}).items():
            vm = self.inventory.get(hostname)
            if vm is None:
                self.drop(hostname, "ready", "gone from the provider while ready", gone=True)
            elif not vm.powered_on:
                self.take_out_of_service(hostname, "ready", "powered off while ready")
            elif self.now - since > ttl:
                self.take_out_of_service(
                    hostname, "ready", f"ready for longer than ready_ttl ({self.pool.ready_ttl_minutes} minutes)"
                )

    def check_running(self) -> None:
        """Running VMs past their lifetime are reaped; ones deleted behind our back are dropped.
        The others are scheduled for their next look (see inventory_view)."""
        next_look: dict[str, float] = {}
        for hostname in self.snapshot.hostnames("running"):
            record = self.record(hostname)
            if record is None:
                self.drop(hostname, "running", "record missing")
                continue
            if self.return_unconfirmed(record):
                continue
            lifetime_hours = record.lifetime_hours or self.service.vm_lifetime
            checked_out = record.checkout or self.now
            if self.now - checked_out >= lifetime_hours * 3600:
                # Checked again in the move: the user may have extended the lifetime since.
                self.take_out_of_service(hostname, "running", f"lifetime of {lifetime_hours} hours expired",
                                         lifetime_ended=self.service.vm_lifetime)
            elif hostname not in self.inventory:
                self.drop(hostname, "running", "gone from the provider while running", gone=True)
            else:
                next_look[hostname] = inventory_view.next_look(record, self.now, checked_out + lifetime_hours * 3600)
        self.store.schedule_running(self.pool.name, next_look)

    def return_unconfirmed(self, record: VMRecord) -> bool:
        """A VM whose checkout was never confirmed by its deadline: the request that took it
        answered 503 (its answer from Redis was lost), so nobody has it. Back to ready."""
        deadline = record.raw.get("confirm_by")
        if not deadline or float(deadline) > self.now:
            return False
        returned = self.store.release_checkout(record.raw.get("checkout_id", ""), [record.name], self.now,
                                               unconfirmed_only=True)
        if returned:
            self.report.returned.extend(returned)
            logger.warning("VM returned to ready: its checkout was never confirmed",
                           extra={"pool": self.pool.name, "hostname": record.name})
        self.checkpoint("returned")
        return bool(returned)

    def check_discovered(self) -> None:
        """VMs found in the folder on an earlier pass: nobody claimed them since, so they go."""
        for hostname in self.snapshot.hostnames("discovered"):
            if hostname in self.inventory:
                self.take_out_of_service(hostname, "discovered", "found in the pool folder but not created by vmpool")
            else:
                self.drop(hostname, "discovered", "gone from the provider", gone=True)

    def destroy_completed(self) -> None:
        """Start destroying completed VMs; forget them once the provider says they are gone."""
        for hostname in self.snapshot.hostnames("completed"):
            record = self.record(hostname)
            if record is None:
                self.drop(hostname, "completed", "record missing")
                continue
            dns_records.withdraw(self, record)
            if record.destroy_task:
                status = self.provider.task_status(record.destroy_task)
                if status.state is TaskState.RUNNING:
                    continue
                if status.state is TaskState.ERROR:
                    # Start again next pass; the error stays visible on the VM meanwhile.
                    self.store.update_vm(hostname, destroy_task=None, destroy_error=status.error)
                    self.report.errors.append(f"destroy {hostname}: {status.error}")
                    continue
                self.finish_destroy(hostname)
                continue
            task = self.provider.destroy(self.pool, hostname)
            self.checkpoint("destroy_started")
            if task is None:
                self.finish_destroy(hostname)
            else:
                self.store.update_vm(hostname, destroy_task=task)

    def finish_destroy(self, hostname: str) -> None:
        if self.store.move(hostname, self.pool.name, "completed", "destroyed", self.now, destroy_task=None):
            self.report.destroyed.append(hostname)
        self.checkpoint("destroyed")

    def discover_unknown(self) -> None:
        """VMs in the pool's folder that no state of this pool knows."""
        tracked = self.snapshot.tracked
        for hostname, vm in self.inventory.items():
            if hostname in tracked:
                continue
            if self.store.add_discovered(hostname, self.pool.name, self.now, host=vm.host, ip=vm.ip):
                self.report.discovered.append(hostname)
        self.checkpoint("discovered")

    def repopulate(self) -> None:
        """Start clones until ready + pending reaches the pool's size, within the task limit."""
        counts = self.store.counts([self.pool.name])[self.pool.name]
        deficit = self.pool.size - counts["ready"] - counts["pending"] + ondemand.building(self)
        if deficit <= 0:
            if self.snapshot.wants_clones:
                self.store.withdraw_clone_demand(self.pool.name)
            return
        # The script never reserves more than the task limit: no need for more names.
        wanted = min(deficit, self.service.task_limit)
        reserved = self.store.reserve_clones(
            self.pool.name, self.pool.size, self.service.task_limit, self.pool.template,
            self.pool.domain or "", candidate_names(wanted, self.service.prefix), self.now,
            clone_limit=int(self.pool.get("clone_limit", 0)),
        )
        self.report.clones_short = deficit - len(reserved)
        self.checkpoint("reserved")
        self.start_clones(reserved)

    def start_clones(self, reserved: list[str]) -> None:
        """Start the clone of each reserved name and record its task on the VM."""
        for hostname in reserved:
            taken = dns_records.name_in_use(self, hostname)
            if taken:
                self.take_out_of_service(hostname, "pending", taken)
                continue
            try:
                task = self.provider.clone(self.pool, hostname)
            except ProviderError as error:
                self.report.clone_failures[hostname] = error.failure
                self.take_out_of_service(hostname, "pending", f"clone failed to start: {error}",
                                         failure=error.kind)
                continue
            self.checkpoint("clone_started")
            self.store.update_vm(hostname, clone_task=task)
            self.report.clones_started.append(hostname)
            self.report.clones_running += 1

    def count_after(self) -> dict[str, int]:
        counts = self.store.counts([self.pool.name])[self.pool.name]
        counts["deficit"] = max(self.pool.size - counts["ready"] - counts["pending"], 0)
        return counts


def reconcile_pool(
    store: Store,
    provider: Provider,
    pool: PoolConfig,
    clock: Clock,
    service: ServiceConfig,
    checkpoint: Checkpoint = _no_checkpoint,
    dns: DnsPlugin | None = None,
) -> PassReport:
    """Run one pass over ``pool``. Raises ProviderError or StoreUnavailable when the provider or
    Redis fails; whatever was done before that is consistent, and the next pass carries on.
    ``dns`` manages the pool's DNS records (its ``dns_plugin``); its failures never end the pass."""
    return _Pass(store, provider, pool, clock, service, checkpoint, dns).run()
