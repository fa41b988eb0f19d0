"""The public context of one reconcile pass: what every step reads and the operations it uses.

A pass (manager/reconcile.py) is an ordered list of steps, each a function ``(PassContext) ->
None``, as in controller-runtime's Reconcile. Steps share nothing else: a step module imports
this module, never reconcile.py nor another step's privates.

The pass's inputs are read once, in ``PassContext.read``, before the first step, and no step
reads them again:

- ``now``: the clock's time for the whole pass;
- ``inventory`` (the provider's VMs in the pool's folder) and ``inventory_mark`` (the store's
  change counter as that read began), then ``snapshot`` (every VM the pool tracks, by state,
  with the records of all but the ready ones). Inventory first: a VM we create has its record
  before its clone starts, so a VM in the inventory without a record in the later snapshot is
  truly unknown. A failed inventory ends the pass before anything changes;
- ``overrides``: the pool's runtime overrides (``reset_at`` is what the steps use: the template,
  size and clone target are already laid over ``pool`` by ``Services.pool``);
- ``size_decision``: the pool's size now (schedule, demand, override or config), applied to
  ``pool``.

Each step then acts through conditional moves in the store (so a VM checked out by the API after
the snapshot is never reaped) and notes what it did in ``report``. ``counts`` is the one read of
the pool's counts, taken where the pass needs them (refilling, near the end) and kept current by
the context's own moves from then on. ``checkpoint`` is called with a step's name as the pass
reaches it: chaos tests kill the pass there, and the runner renews its lease there.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence, TypeVar

from chalicelib import observability as metric
from chalicelib.clock import Clock
from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.dns.base import DnsEntryRejected, DnsError, DnsPlugin, DnsUnavailable
from chalicelib.manager import inventory_view
from chalicelib.manager.placement import PLACEMENT_FIELD, describe, placed_pool, placement_of
from chalicelib.manager.task_reads import TaskReads
from chalicelib.observability import emit, logger
from chalicelib.providers.base import InventoryChanges, Provider, VMInfo
from chalicelib.providers.failures import Failure, FailureKind
from chalicelib.sizing.controller import SizeDecision, target_size
from chalicelib.store import DurationSample, PoolSnapshot, Store, VMRecord
from chalicelib.store.pool_overrides import PoolOverride, PoolOverrides
from chalicelib.store.pool_overrides import apply as apply_overrides
from chalicelib.store.records import finite_number
from chalicelib.store.store import SettingRead

Checkpoint = Callable[[str], None]
"""Called with a step's name as the pass reaches it: lets chaos tests kill the pass anywhere."""


def no_checkpoint(step: str) -> None:
    """The checkpoint of a pass nobody watches."""
    return None


T = TypeVar("T")

DNS_SECONDS_PER_PASS = 15.0
"""The time one pass may wait on its DNS service: a quarter of the reconcile function's 60 s,
three calls at the plugins' default 5 s timeout. A server that answers slowly, each call just
within its timeout, would otherwise hold the pass for one wait per VM."""

DNS_DELETES_PER_CALL = 50
"""VMs whose records one call of a DNS plugin deletes at most (``withdraw_dns_many``: one update
with ``dynamic-dns``): the pass checks its DNS budget between calls."""

DNS_ENTRY_GONE = "entry_gone"
"""``DnsFailures`` reason: a VM's record cannot be deleted, the entry that published it is gone."""

DnsLookup = Callable[[str], DnsPlugin | None]
"""A ``:dns_configs:`` entry's plugin by name (None when the config has no such entry): how a pass
deletes a record the entry that published it manages, after its pool's ``dns_plugin`` changed."""

ProviderLookup = Callable[[str], Provider | None]
"""A configured provider by name (None when the config has no such provider): how a pass reaches
VMs its pool made through another provider before it was moved (manager/placement.py)."""

PoolsLookup = Callable[[], Sequence[PoolConfig]]
"""Every configured pool: where a pass reads the names of its provider's VMs after Redis lost
its data (manager/names.py)."""

Step = Callable[["PassContext"], None]
"""One step of a pass: looks at the context, changes the store conditionally, notes it in the report."""


@dataclass
class PassReport:
    """What one pass saw and did, for logs, metrics and the runner's decision to look again."""

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
    foreign: list[str] = field(default_factory=list)
    """VMs in the pool's folder another vmpool deployment made: left alone (manager/discovered.py)."""
    clone_failures: dict[str, Failure] = field(default_factory=dict)
    """hostname -> why its clone failed (the kind is the metric's ``reason``)."""
    samples: list[DurationSample] = field(default_factory=list)
    looks_forgotten: list[str] = field(default_factory=list)
    """VMs that left running for good (completed): their next look goes with the pass's last writes.
    The scripts that take a VM out of running take its next look with it, and a stale pass writes
    no look for a VM no longer running for the checkout it read (lua/schedule_running.lua); this
    sweeps the looks written before those scripts did (or by hand)."""
    addresses_seen: dict[str, str] = field(default_factory=dict)
    """hostname -> the address GET /vm is to give, of the ready and running VMs the pass saw whose
    record's ``ip`` it could not compare (not read) or saw differ: noted with the pass's last
    writes, where it differs (``dns_records.follow_addresses``)."""
    errors: list[str] = field(default_factory=list)
    dns_waiting: dict[str, str] = field(default_factory=dict)
    """hostname -> why, of the pending VMs whose DNS records the pass could not publish (GET /status)."""
    clones_short: int = 0
    """Clones the pool still lacks after this pass reserved what its share of task_limit allowed."""
    clones_running: int = 0
    """The pool's clone tasks still running when the pass ended (started by it or before)."""
    clones_finished: int = 0
    """Clones this pass saw end well (their VM is in the provider)."""
    clones_backed_off_until: float | None = None
    """Its clones keep failing: no burst of clones before this time (manager/clones.py)."""
    followups: int = 0
    """Work a pass soon must look at again: disk/snapshot tasks running, requests waiting."""
    provider_calls: int = 0
    duration_seconds: float = 0.0
    size: int = 0
    """The pool's effective size in this pass (schedule, demand, override or config)."""
    stopped_before: str | None = None
    """The step the pass stopped before, its invocation's time nearly out; None for a whole pass
    (only a whole pass's ``counts`` are the pool's)."""

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


@dataclass
class PassContext:
    """One pass over one pool: its clients, its inputs (read once), its report, and the
    operations steps share. Build it with ``read``."""

    store: Store
    provider: Provider
    dns: DnsPlugin | None
    """The plugin managing the pool's DNS records (its ``dns_plugin``); None when it has none."""
    clock: Clock
    service: ServiceConfig
    checkpoint: Checkpoint
    pool: PoolConfig
    """The pool as it should be in this pass: its overrides and its size decision applied."""
    now: float
    inventory: Mapping[str, VMInfo]
    inventory_mark: int | None
    """The changes counter as the inventory read began: a VM whose state changed at or after
    it may be missing from the inventory only because the read predates it. None when no
    replica had the mark (``Store.begin_pass``): then no VM is dropped as gone this pass."""
    snapshot: PoolSnapshot
    overrides: PoolOverride
    size_decision: SizeDecision
    report: PassReport
    counts: dict[str, int] | None = None
    """The pool's VM counts by state, once read (``read_counts``); None before."""
    clones_held: bool = False
    """Set by the template step while the pool's template is being prepared: no clones this pass."""
    refill_started: list[VMRecord] = field(default_factory=list)
    """The records of the pool's own clones its refill started this pass, as it wrote them
    (manager/clones.py), for the rounds step to follow at once (manager/rounds.py); empty while
    the pool's clones were failing."""
    late_records: dict[str, VMRecord | None] = field(default_factory=dict)
    """Records read after the snapshot (ready VMs a step acts on), None when missing."""
    inventory_checked: str = ""
    """The pool's mark of the provider's inventory token it last compared with (``Store.begin_pass``)."""
    inventory_changes: InventoryChanges | None = None
    """What the provider said changed since that token (None: it keeps no token; names None:
    this pass compares the whole inventory). See inventory_view."""
    dns_stopped: str | None = None
    """Why this pass sends its DNS service nothing more (``dns_call``); None while it may."""
    dns_seconds: float = 0.0
    """Time this pass spent waiting on its DNS service."""
    dns_refused: dict[str, DnsEntryRejected] = field(default_factory=dict)
    """The ``:dns_configs:`` entries this pass sends nothing more (``dns_call``): the server
    refused the entry as a whole (its key, its zone), with that refusal."""
    providers: ProviderLookup | None = None
    """The configured providers, for VMs made elsewhere (``reach``); None: only ``provider``."""
    dns_plugins: DnsLookup | None = None
    """The configured DNS entries' plugins, for records another entry published (``publisher``);
    None: only ``dns``."""
    fleet: PoolsLookup | None = None
    """Every configured pool, for manager/names.py (those of the pool's provider); None: this one."""
    names_known: bool = True
    """Whether the names where the pool's provider makes VMs are known since Redis last lost its
    data (``Keys.names_known``, read by ``Store.begin_pass``): until they are, clones get random
    names only (manager/names.py)."""
    lease_token: str | None = None
    """The token of the run's lease on the pool (manager/runner.py), None outside a run: the
    template leases the pass takes are taken with it, so the retry that releases a run's lease
    it could not release (``stale_lease``) releases those too (templates.release_stale)."""
    task_reads: TaskReads = field(default_factory=TaskReads)
    """The states of the tasks the pass follows, read once before its steps (reconcile.read_tasks)."""
    config_generation: float = 0.0
    """The generation of the config ``pool`` was read from (``Config.generation``; 0: none to
    order): the clones reserved for it are refused once a newer config runs (manager/clones.py)."""

    @classmethod
    def read(cls, store: Store, provider: Provider, pool: PoolConfig, clock: Clock, service: ServiceConfig,
             checkpoint: Checkpoint = no_checkpoint, dns: DnsPlugin | None = None,
             providers: ProviderLookup | None = None, lease_token: str | None = None,
             override_room: Callable[[], int] | None = None,
             dns_plugins: DnsLookup | None = None, config_generation: float = 0.0,
             fleet: PoolsLookup | None = None) -> PassContext:
        """Read the pass's inputs, in this order: the inventory, the snapshot, the pool's
        overrides (applied to ``pool``, the pool as configured; a template or clone target
        longer than ``override_room`` allows left out, as the API leaves it out: store/pool_overrides.py
        ``fitting``) and its size now. Raises ProviderError or StoreUnavailable (nothing changed yet)."""
        now = clock.now()
        inventory_mark, inventory_checked, names_known = store.begin_pass(pool.name, pool.provider)
        changes = inventory_view.changes(provider, pool, service, now, inventory_checked)
        if changes is None or changes.names is None:
            inventory = {vm.name: vm for vm in provider.list_vms(pool)}
            checkpoint("inventory")
            snapshot = store.pool_snapshot(pool.name, without_records=("ready",))
        else:  # the provider says what changed: only the VMs that may need something
            checkpoint("inventory")
            snapshot, inventory = inventory_view.due_only(store, provider, pool, now, changes.names)
        checkpoint("snapshot")
        # The one read of the overrides: the template, size and clone target the steps act on
        # and the reset time they drain by come from the same moment.
        # A draining pool (removed from the config) has size 0 whatever an admin set.
        overrides = PoolOverride() if pool.draining else PoolOverrides(store).get(pool.name)
        pool = apply_overrides(pool, overrides, override_room)
        size_decision = target_size(store, pool, now, service.sizing_timezone)
        pool = size_decision.apply(pool)
        return cls(store=store, provider=provider, dns=dns, clock=clock, service=service, checkpoint=checkpoint,
                   pool=pool, now=now, inventory=inventory, inventory_mark=inventory_mark, snapshot=snapshot,
                   overrides=overrides, size_decision=size_decision,
                   report=PassReport(pool=pool.name, started=now, size=pool.size),
                   inventory_checked=inventory_checked, inventory_changes=changes, providers=providers,
                   lease_token=lease_token, dns_plugins=dns_plugins, config_generation=config_generation,
                   fleet=fleet, names_known=names_known)

    # --- reading ------------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        """The pool was removed from the config: the pass drains it (size 0) until it is
        forgotten (``PoolConfig.draining``, set by manager/dispatch.py)."""
        return self.pool.draining

    def record(self, hostname: str) -> VMRecord | None:
        """The VM's record as of this pass (None when missing). Ready VMs' records are read only
        when a step acts on one: a steady pass reads none."""
        if hostname not in self.snapshot.loaded and hostname not in self.late_records:
            self.load_records([hostname])
        return self.snapshot.records.get(hostname) or self.late_records.get(hostname)

    def records_in(self, state: str) -> list[VMRecord]:
        """The records of the snapshot's VMs in ``state``; a VM that has none is dropped from the
        state ("record missing"): nothing is known of it to act on."""
        records: list[VMRecord] = []
        for hostname in self.snapshot.hostnames(state):
            record = self.record(hostname)
            if record is None:
                self.drop(hostname, state, "record missing")
            else:
                records.append(record)
        return records

    def load_records(self, hostnames: list[str]) -> None:
        """Read the records of many VMs not in the snapshot in one round trip."""
        missing = [host for host in hostnames if host not in self.snapshot.loaded and host not in self.late_records]
        found = self.store.records(missing)
        self.late_records.update({host: found.get(host) for host in missing})

    def elsewhere(self, record: VMRecord) -> str | None:
        """Where the VM was made, when that is not where the pool makes VMs now (its provider,
        folder or datacenter changed since: manager/placement.py); None when it is the pool's."""
        placement = record.raw.get(PLACEMENT_FIELD)
        if not placement or placement == placement_of(self.pool):
            return None
        return placement

    def reach(self, record: VMRecord) -> tuple[Provider, PoolConfig] | None:
        """The provider and the pool's settings through which the VM is destroyed and its tasks
        followed: the pool's own, or those of the place it was made in (None when that provider
        is no longer configured: nothing can reach the VM)."""
        placement = self.elsewhere(record)
        if placement is None:
            return self.provider, self.pool
        pool = placed_pool(self.pool, placement)
        if pool is None:
            return None
        if pool.provider == self.pool.provider:
            return self.provider, pool
        provider = self.providers(pool.provider) if self.providers is not None else None
        return (provider, pool) if provider is not None else None

    def read_counts(self) -> dict[str, int]:
        """The pool's VM counts by state: read from the store the first time (once a pass),
        then as the context's own moves left them."""
        if self.counts is None:
            self.counts = self.store.counts([self.pool.name])[self.pool.name]
        return self.counts

    def saw(self, vms: Iterable[VMInfo]) -> None:
        """VMs the provider showed after the pass's inventory was read (clones this pass started
        and saw finish at once: manager/rounds.py): later steps find them in ``inventory``."""
        self.inventory = {**self.inventory, **{vm.name: vm for vm in vms}}

    # --- leaving service ----------------------------------------------------------------------

    def take_out_of_service(self, hostname: str, from_state: str, reason: str,
                            failure: FailureKind | None = None, lifetime_ended: float | None = None,
                            hold_clone: bool = False, unless_set: str = "",
                            only_while: Sequence[SettingRead] = ()) -> None:
        """Move a VM to completed (to be destroyed), recording why (and the failure's kind, when
        a provider failure is why). ``lifetime_ended``, ``hold_clone`` (a pending VM whose clone
        may still run: its slot is kept until the clone ends), ``unless_set`` (a record field
        whose presence, since the pass read the VM, cancels the move), ``only_while`` (values
        the move needs still there): see ``Store.move``."""
        if self.store.move(hostname, self.pool.name, from_state, "completed", self.now,
                           lifetime_ended=lifetime_ended, hold_clone=hold_clone, unless_set=unless_set,
                           settings_read=only_while, reason=reason, failure=failure.value if failure else None):
            self.report.completed[hostname] = reason
            self.counted_move(from_state, "completed")
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
        mark = self.inventory_mark
        # A stamp broken in Redis reads as never stamped (as move.lua reads it): the VM is dropped.
        # Without a mark a replica has, the pass cannot tell (a failover may have put the counter
        # behind it): the VM waits for a later pass.
        if gone and (mark is None or (record is not None
                                      and (finite_number(record.raw.get("change_seq")) or 0) >= mark)):
            self.checkpoint("dropped")
            return
        placement = self.elsewhere(record) if gone and record is not None else None
        if placement is not None:
            # Missing because the pool now looks elsewhere, not because it is gone: one not in
            # use leaves service (destroyed where it was made); one in use stays its user's.
            if from_state != "running":
                self.take_out_of_service(hostname, from_state, f"its pool moved from {describe(placement)}")
            return
        self.withdraw_dns(record)
        if self.store.move(hostname, self.pool.name, from_state, "destroyed", self.now,
                           unchanged_since=mark if gone else None, reason=reason):
            self.report.dropped.append(hostname)
            self.counted_move(from_state, None)
        self.checkpoint("dropped")

    def counted_move(self, from_state: str, to_state: str | None, vms: int = 1) -> None:
        """Keep ``counts`` (when read) as this pass's own move of ``vms`` VMs left them."""
        if self.counts is None:
            return
        self.counts[from_state] -= vms
        if to_state is not None:
            self.counts[to_state] += vms

    # --- DNS records (manager/dns_records.py for the pending side) -----------------------------

    def dns_call(self, what: str, call: Callable[[], T], entry: str = "") -> T:
        """One call of the pool's DNS plugin (of the ``:dns_configs:`` entry ``entry``), unless
        this pass already stopped calling it: the DNS service did not answer (a paused or
        unreachable server: each call waits ``timeout``), or it took ``DNS_SECONDS_PER_PASS`` of
        the pass (a slow one, each answer just in time), or it refused ``entry`` as a whole (a
        wrong or rotated key, a zone it does not serve: ``DnsEntryRejected``). Each costs a pass
        one wait, that budget or one refused call, not one per VM; the VMs it skips keep the
        reason (a DnsUnavailable, or the DnsEntryRejected) and the next pass tries again."""
        if self.dns_stopped is None and self.dns_seconds >= DNS_SECONDS_PER_PASS:
            self.dns_stopped = (f"the DNS service took {self.dns_seconds:.0f} s of this pass "
                                f"(at most {DNS_SECONDS_PER_PASS:g} s a pass)")
        if self.dns_stopped is not None:
            raise DnsUnavailable(f"{what}: not sent, {self.dns_stopped}")
        refusal = self.dns_refused.get(entry) if entry else None
        if refusal is not None:
            raise DnsEntryRejected(f"{what}: not sent, the DNS service refused the entry earlier in this pass "
                                   f"({refusal})")
        started = self.clock.monotonic()
        try:
            return call()
        except DnsUnavailable as error:
            self.dns_stopped = f"the DNS service did not answer earlier in this pass ({error})"
            raise
        except DnsEntryRejected as error:
            if entry:
                self.dns_refused[entry] = error
            raise
        finally:
            self.dns_seconds += self.clock.monotonic() - started

    def withdraw_dns(self, record: VMRecord | None) -> None:
        """``withdraw_dns_many`` of one VM (if any)."""
        self.withdraw_dns_many([record] if record is not None else [])

    def withdraw_dns_many(self, records: Sequence[VMRecord]) -> None:
        """Delete the A and AAAA records of VMs leaving service (or moving to another name: their
        pool's ``dns_plugin`` or the entry's domain changed), if vmpool created them, each by the
        entry that published it, ``DNS_DELETES_PER_CALL`` to a call (``delete_many``: one update
        with ``dynamic-dns``). A failure is recorded on the VM (and retried while it is destroyed,
        then by ``dns_records.delete_left_records`` once it is); it never holds the destroy."""
        by_entry: dict[str, tuple[DnsPlugin, list[VMRecord]]] = {}
        for record in records:
            plugin = self.publisher(record) if record.raw.get("dns_name") else None
            if plugin is not None:
                by_entry.setdefault(plugin.name, (plugin, []))[1].append(record)
        for plugin, members in by_entry.values():
            for start in range(0, len(members), DNS_DELETES_PER_CALL):
                chunk = members[start:start + DNS_DELETES_PER_CALL]
                names = [(record.name, str(record.raw["dns_name"])) for record in chunk]
                what = f"delete {names[0][1]}" if len(names) == 1 else f"delete {len(names)} records"
                try:
                    outcome = self.dns_call(what, functools.partial(plugin.delete_many, names), plugin.name)
                except DnsError as error:  # the service did not answer, or refused the entry
                    outcome = dict.fromkeys((record.name for record in chunk), error)
                for record in chunk:
                    self._withdrawn(record, outcome.get(record.name))

    def _withdrawn(self, record: VMRecord, error: DnsError | None) -> None:
        """Note the outcome of the delete of the VM's records (``error``: why it failed)."""
        if error is not None:
            self.dns_failed(record.name, "record deletion", error)
            self.report.errors.append(f"DNS record of {record.name} not deleted: {error}")
            self.store.update_vm(record.name, dns_error=f"DNS record not deleted: {error}")
            # Before the VM can be destroyed and forgotten: later passes delete the record.
            self.store.note_dns_left(self.pool.name, record.name, self.now)
            return
        # Only if the notes still name this record: a pass with a newer view may have published
        # the VM again meanwhile (its pool's dns_plugin changed), and that record is never forgotten.
        self.store.forget_dns(record.name, str(record.raw["dns_name"]), str(record.raw.get("dns_plugin") or ""))
        if record.raw.get("dns_error"):
            self.store.forget_dns_left(self.pool.name, [record.name])
        self.checkpoint("dns_withdrawn")

    def publisher(self, record: VMRecord) -> DnsPlugin | None:
        """The plugin of the ``:dns_configs:`` entry that published the VM's record (noted as
        ``dns_plugin`` with it), which deletes it under the name it was published as: the pool's
        ``dns_plugin`` or the entry's ``domain`` may have changed since. A record published before
        VMs noted their entry is the pool's current plugin's. None when that entry is gone from
        the config (or manages no records now): nothing can delete the record, so it is logged,
        counted (``DnsFailures``, reason ``entry_gone``) and the VM's note of it dropped."""
        name = record.raw.get("dns_plugin")
        if name is None or (self.dns is not None and name == self.dns.name):
            plugin = self.dns
        else:
            plugin = self.dns_plugins(str(name)) if self.dns_plugins is not None else None
        if plugin is not None and plugin.manages_records:
            return plugin
        emit(self.pool.name, {metric.DNS_FAILURES: 1}, dimensions={"reason": DNS_ENTRY_GONE})
        logger.warning("DNS record left in place: the dns_configs entry that published it is gone", extra={
            "pool": self.pool.name, "hostname": record.name, "fqdn": record.raw.get("dns_name"),
            "dns_plugin": name if name is not None else self.pool.dns_plugin})
        self.store.update_vm(record.name, dns_name=None, dns_plugin=None, dns_published=None, dns_error=None)
        if record.raw.get("dns_error"):
            self.store.forget_dns_left(self.pool.name, [record.name])
        return None

    def dns_failed(self, hostname: str, doing: str, error: DnsError) -> None:
        """Count and log a DNS failure; the pass goes on with the next VM."""
        emit(self.pool.name, {metric.DNS_FAILURES: 1}, dimensions={"reason": error.metric_key})
        logger.warning("DNS " + doing + " failed", extra={"pool": self.pool.name, "hostname": hostname,
                                                          "error": str(error), "reason": error.metric_key})
