"""A reconcile Lambda SIGKILLed after every single Redis round trip it makes, and two passes
interleaved at every one of them.

tests/chaos/test_faults_at_every_step.py stops runs at the pass's named checkpoints, between
steps and batches. A Lambda killed by its timeout or a crash stops anywhere: here each scenario's
run (``run_pool``: lease, pass, history sample, purge, release) is counted in round trips to
Redis, where the dummy provider keeps its VMs and tasks too, so every provider call is a round
trip of its own. For each N the run dies right after its N-th: from then on every command of
that process raises before it is sent (``Fuse``), ``finally:`` blocks included. Then its lease
runs out, ordinary runs go on with the clock, and the pools must come back whole: every VM in one
state, the service's running set the pools' running VMs, no VM in use destroyed or its lifetime
cut short, nothing left in the provider that no pool tracks, no clone slot held, the pools full.

The interleavings pause a bare pass (no lease: two passes at once, as after a lease expired)
after its k-th round trip, run another whole run of the pool and a user's checkout and return
through the API, then let it go on, for every k.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Callable

import pytest
import redis
import yaml

import app as chalice_app
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pending import CLONE_START_GRACE_SECONDS
from chalicelib.manager.pool_queue import DRAIN, Delayed, PoolMessage
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import RunReport, run_pool
from chalicelib.services import Services
from chalicelib.store import STATES
from chalicelib.store.fleet import Fleet as FleetRecord
from chalicelib.store.ondemand import OnDemandEntry, OnDemandStore
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.vm_tasks import EnqueueResult, VMTaskStore, new_task
from tests.chaos.fleet import Fleet, fleet_fixture
from tests.dns.bind import BindServer
from tests.harness import (
    PREFIX,
    Died,
    Fuse,
    Harness,
    HarnessFactory,
    SavedState,
    assert_consistent,
    fused_services,
    restore_state,
    save_state,
)
from tests.support import eventually
from tests.vsphere.vcsim import VcsimServer, vcsim_config

CONFIG = """\
config: {task_limit: 2, timeout: 5, ready_ttl: 10, vm_lifetime: 2, prefix: "ci-", domain: example.com,
         check_loop_delay_min: 1}
redis: {data_ttl: 1}
providers:
  dummy: {provider_class: dummy, seed: 7, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 20}
pools:
  - {name: alpha, size: 3, provider: dummy}
  - {name: beta, size: 2, provider: dummy}
"""
"""Two small pools sharing two clone slots: the killed run is alpha's."""

POOL = "alpha"
REMOVED = "beta"
"""The pool removed from the config in the drain test."""
NEW_TEMPLATE = "templates/alpha-v2"


fleet = fleet_fixture(CONFIG)


def check_out(fleet: Fleet, lifetime_hours: int = 5) -> str:
    """A VM of the pool checked out for a while: it must still be running at the end."""
    (host,) = fleet.world.check_out(POOL, 1, lifetime_hours=lifetime_hours)
    fleet.kept.setdefault(POOL, set()).add(host)
    return host


def give_back(fleet: Fleet, host: str) -> None:
    """What DELETE /vm/<host> does for its user (through the API)."""
    assert fleet.world.delete(f"/api/v3/vm/{host}").status == 200
    fleet.kept[POOL].discard(host)


# --- the scenarios: the state the killed run starts from ------------------------------------------


def filling(fleet: Fleet) -> None:
    """An empty pool: the run reserves clone slots and starts clones."""


def steady(fleet: Fleet) -> None:
    """A full pool with nothing to do but look."""
    fleet.converge()


def churn(fleet: Fleet) -> None:
    """VMs in use, one given back (a destroy to start), clones finished (to make ready), a VM
    made by hand to discover, a VM in use deleted by hand (to drop), a deficit to refill."""
    fleet.converge()
    check_out(fleet)
    give_back(fleet, check_out(fleet))
    fleet.round()  # destroy and refill started
    fleet.world.clock.advance(100)  # clones done and booted, destroy done
    fleet.world.provider.create_by_hand(fleet.world.pool(POOL), "stray-alpha")
    fleet.strays.add("stray-alpha")
    deleted = check_out(fleet) if fleet.world.count(POOL, "ready") else sorted(fleet.kept[POOL])[0]
    fleet.world.provider.delete_by_hand(fleet.world.pool(POOL), deleted)  # a VM in use to drop
    fleet.kept[POOL].discard(deleted)


def lifetime_ends(fleet: Fleet) -> None:
    """One VM in use past its lifetime, one within it; ready VMs past ready_ttl."""
    fleet.converge()
    check_out(fleet, lifetime_hours=1)
    fleet.kept[POOL].clear()  # its lifetime ends: it must be gone at the end
    check_out(fleet, lifetime_hours=5)
    fleet.world.clock.advance(3601)


def disk_task(fleet: Fleet) -> None:
    """A disk to add to a VM in use (POST /vm/<host>/disk/<size>), queued."""
    fleet.converge()
    host = check_out(fleet)
    now = fleet.world.clock.now()
    queued = VMTaskStore(fleet.world.store).enqueue(fleet.world.store.get_vm(host),
                                                    new_task("disk", now, size_gb=10), now)
    assert queued is EnqueueResult.QUEUED
    fleet.disk_on.add(host)


def on_demand(fleet: Fleet) -> None:
    """A full pool and an on-demand request of one VM of it to build."""
    fleet.converge()
    fleet.requests[POOL] = "od-alpha"
    now = fleet.world.clock.now()
    assert OnDemandStore(fleet.world.store).create("od-alpha", [OnDemandEntry(POOL, POOL, 1)], now,
                                                   ttl_seconds=7200, lifetime_hours=5)


def on_demand_cancelled(fleet: Fleet) -> None:
    """An on-demand request whose clones are in flight, deleted by its user (DELETE /ondemandvm)."""
    on_demand(fleet)
    fleet.round()  # its clone started
    cancel(fleet)


def cancel(fleet: Fleet) -> None:
    """The user deletes the on-demand request, through the API: its VMs are to be destroyed."""
    if POOL in fleet.requests:
        assert fleet.world.delete(f"/api/v3/ondemandvm/{fleet.requests.pop(POOL)}").status == 200


def template_changed(fleet: Fleet) -> None:
    """A VM in use and the pool's template changed: its ready VMs drain and are cloned again."""
    fleet.converge()
    check_out(fleet)
    PoolOverrides(fleet.world.store).set("template", POOL, NEW_TEMPLATE)


def pool_reset(fleet: Fleet) -> None:
    """Clones in flight, then POST /poolreset: ready and pending VMs drain."""
    fleet.converge()
    check_out(fleet)
    fleet.round()  # a clone started for the VM taken
    PoolOverrides(fleet.world.store).reset_many([POOL], fleet.world.clock.now())
    fleet.world.clock.advance(1)


def pool_shrunk(fleet: Fleet) -> None:
    """A VM in use and the pool's size cut to 1 (POST /config/poolsize): its ready VMs above it retire."""
    fleet.converge()
    check_out(fleet)
    PoolOverrides(fleet.world.store).set("size", POOL, 1)


SCENARIOS: dict[str, Callable[[Fleet], None]] = {
    "filling": filling, "steady": steady, "churn": churn, "lifetime": lifetime_ends,
    "disk": disk_task, "on_demand": on_demand, "cancelled": on_demand_cancelled, "template": template_changed,
    "reset": pool_reset,
}
PAUSED_ONLY: dict[str, Callable[[Fleet], None]] = {"shrunk": pool_shrunk}
"""Scenarios for the paused pass only: a run killed before its drain leaves the pool above its new
size, which ``assert_consistent`` counts as broken."""


# --- what must hold ---------------------------------------------------------------------------------


@dataclass
class Start:
    """A scenario's state, to start each run from: Redis, the clock, what the fleet expects."""

    saved: SavedState
    now: float
    kept: dict[str, set[str]]
    strays: set[str]
    requests: dict[str, str]
    disk_on: set[str]

    @classmethod
    def of(cls, fleet: Fleet) -> "Start":
        for pool in fleet.pools:
            fleet.kept.setdefault(pool, set())
        return cls(save_state(fleet.world.client), fleet.world.clock.now(),
                   {pool: set(hosts) for pool, hosts in fleet.kept.items()}, set(fleet.strays),
                   dict(fleet.requests), set(fleet.disk_on))

    def again(self, fleet: Fleet) -> Fleet:
        """The fleet back at this state."""
        restore_state(fleet.world.client, self.saved)
        fleet.world.clock.advance(self.now - fleet.world.clock.now())
        return Fleet(fleet.services, fleet.world, {pool: set(hosts) for pool, hosts in self.kept.items()},
                     set(self.strays), dict(self.requests), set(self.disk_on))


def leases_run_out(client: redis.Redis) -> None:
    """The dead run's leases expire (their TTL is Redis's real time, not the fake clock's)."""
    for key in client.keys(f"{PREFIX}lease:*"):
        client.delete(key)


def assert_whole(fleet: Fleet, where: str) -> None:
    """Consistent the moment the run died; whole once ordinary runs went on."""
    for pool in fleet.pools:
        assert_consistent(fleet.world, pool, pass_completed=False)
    leases_run_out(fleet.world.client)
    fleet.converge()
    fleet.assert_converged(where)
    template = fleet.world.pool(POOL).template
    for host in fleet.world.hosts(POOL, "ready"):
        assert fleet.world.store.get_vm(host).template == template, f"{where}: {host} of an old template"


def killed_run(fleet: Fleet, die_after: int | None) -> int:
    """Alpha's reconcile run in a process of its own, killed after ``die_after`` round trips
    (None: not killed). Returns the round trips it made."""
    fuse = Fuse(die_after=die_after)
    services = fused_services(fleet.world, fuse)
    try:
        run_pool(services, POOL, 0.0)
    except Died:
        assert die_after is not None and fuse.sent == die_after
    else:
        assert die_after is None, f"the run made {fuse.sent} round trips and lived"
    finally:
        services.client.close()
    return fuse.sent


def after_every_kill(fleet: Fleet, label: str, check: Callable[[Fleet, str], None]) -> None:
    """From the fleet's state now, alpha's run killed after each of its round trips in turn, then
    not killed; ``check(fleet as the run left it, where)`` after each."""
    start = Start.of(fleet)
    killed_run(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    total = killed_run(start.again(fleet), None)
    assert total > 3, total
    for die_after in range(1, total):
        current = start.again(fleet)
        killed_run(current, die_after)
        check(current, f"{label}: killed after round trip {die_after} of {total}")
    check(start.again(fleet), f"{label}: not killed")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_killed_after_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    SCENARIOS[scenario](fleet)
    after_every_kill(fleet, scenario, assert_whole)


def run_losing_a_reply(fleet: Fleet, lose_reply_of: int | None) -> int:
    """Alpha's reconcile run with the reply of its ``lose_reply_of``-th round trip lost (Redis ran
    it; production's client sends nothing again and raises): the run goes on or fails as the
    Lambda would. Returns the round trips it made."""
    fuse = Fuse(lose_reply_of=lose_reply_of)
    services = fused_services(fleet.world, fuse)
    try:
        run_pool(services, POOL, 0.0)
    except Exception:  # noqa: BLE001 - the invocation fails; the next one runs the pool again
        pass
    finally:
        services.client.close()
    assert fuse.replies_lost == (lose_reply_of is not None), (lose_reply_of, fuse.sent)
    return fuse.sent


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_run_whose_redis_reply_is_lost_at_any_round_trip_converges(fleet: Fleet, scenario: str) -> None:
    """Each round trip's reply lost in turn, the run living on (a reset connection, a timeout): not
    a crash, a path of its own (the error handled, ``finally:`` blocks run). The pools come back
    whole. The crash tests above never took it, nor could a plain redis-py client: it sent the
    command again."""
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    run_losing_a_reply(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    total = run_losing_a_reply(start.again(fleet), None)
    for lose in range(total):
        current = start.again(fleet)
        run_losing_a_reply(current, lose)
        assert_whole(current, f"{scenario}: the reply of round trip {lose} of {total} lost")


# --- two passes at once -----------------------------------------------------------------------------


def stale_pass(fleet: Fleet, pause_after: int | None, meanwhile: Callable[[], None]) -> int:
    """A bare pass of alpha (no lease: another runs at once) paused after ``pause_after`` round
    trips while ``meanwhile`` runs. Returns its round trips."""
    fuse = Fuse(pause_after=pause_after, meanwhile=meanwhile)
    services = fused_services(fleet.world, fuse)
    pool = services.config.pool(POOL)
    assert pool is not None
    try:
        reconcile_pool(services.store, services.provider(pool.provider), pool, services.clock,
                       services.config.service, providers=services.configured_provider)
    finally:
        services.client.close()
    assert pause_after is None or fuse.meanwhile is None, "the pass ended before its pause"
    return fuse.sent


def users_act(fleet: Fleet) -> None:
    """Users, through the API: one extends the lifetime of a VM whose lifetime ended (it must
    then stay), one checks a VM out (refused while a template change or reset fences the pool's
    ready VMs), one gives one back."""
    now = fleet.world.clock.now()
    for host in sorted(fleet.world.hosts(POOL, "running") & fleet.world.provider_vms(POOL)):
        record = fleet.world.store.get_vm(host)
        if record.checkout is None or record.checkout + (record.lifetime_hours or 0) * 3600 > now:
            continue  # its lifetime has not ended
        assert fleet.world.put(f"/api/v3/vm/{host}", {"lifetime": 10}).status == 200
        fleet.kept[POOL].add(host)
    if fleet.world.client.hexists(fleet.world.store.keys.ready_fence, POOL):
        # A template change or reset no pass has drained yet: its ready VMs are stale, none is taken.
        ready = fleet.world.hosts(POOL, "ready")
        assert fleet.world.post("/api/v3/vm", {POOL: 1}).status == 503
        assert fleet.world.hosts(POOL, "ready") == ready
    elif fleet.world.count(POOL, "ready"):
        fleet.kept[POOL].add(fleet.world.checkout(POOL))
    returnable = sorted(fleet.kept[POOL] - fleet.disk_on)
    if len(returnable) > 1:
        give_back(fleet, returnable[0])


def another_run(fleet: Fleet) -> None:
    """The clock moves on (clones, boots and destroys in flight finish), another invocation
    runs alpha whole, then users act."""
    fleet.world.clock.advance(100)
    assert fleet.run(POOL).leased
    users_act(fleet)


def another_run_and_cancel(fleet: Fleet) -> None:
    """Another run builds the on-demand request further, then its user deletes it."""
    fleet.world.clock.advance(100)
    assert fleet.run(POOL).leased
    cancel(fleet)


MEANWHILE: dict[str, Callable[[Fleet], None]] = {"users": users_act, "another_run": another_run, "cancel": cancel,
                                                 "another_run_and_cancel": another_run_and_cancel}

INTERLEAVINGS = [*((scenario, "another_run") for scenario in (*SCENARIOS, *PAUSED_ONLY)),
                 *((scenario, "users") for scenario in ("steady", "lifetime", "template", "reset", "shrunk")),
                 ("on_demand", "cancel"), ("on_demand", "another_run_and_cancel")]
"""Another run (then users) meanwhile in every scenario; users alone where the paused pass read
VMs a user may take or keep meanwhile: ready ones it may drain, one whose lifetime ended."""


def after_every_pause(fleet: Fleet, label: str, meanwhile: Callable[[Fleet], None],
                      check: Callable[[Fleet, str], None]) -> None:
    """From the fleet's state now, a bare pass of alpha paused after each of its round trips in
    turn while ``meanwhile(fleet)`` runs; ``check(fleet as the pass left it, where)`` after each."""
    start = Start.of(fleet)
    stale_pass(start.again(fleet), None, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = stale_pass(start.again(fleet), None, lambda: None)
    for pause_after in range(total):
        current = start.again(fleet)
        stale_pass(current, pause_after, lambda current=current: meanwhile(current))  # type: ignore[misc]
        check(current, f"{label}: paused after round trip {pause_after} of {total}")


@pytest.mark.parametrize(("scenario", "meanwhile"), INTERLEAVINGS)
def test_a_pass_paused_at_any_round_trip_converges(fleet: Fleet, scenario: str, meanwhile: str) -> None:
    {**SCENARIOS, **PAUSED_ONLY}[scenario](fleet)
    after_every_pause(fleet, f"{scenario} ({meanwhile})", MEANWHILE[meanwhile], assert_whole)


# --- a removed pool draining --------------------------------------------------------------------------


class NoQueue:
    """The reconcile queue, for a test that runs the passes itself."""

    def send(self, messages: list[Delayed], budget_seconds: float | None = None) -> None:
        pass


def assert_states_consistent(world: Harness, pool: str) -> None:
    """Every VM of the pool in one state, with its record saying so; those running counted."""
    seen: dict[str, str] = {}
    for state in STATES:
        for host in world.hosts(pool, state):
            assert host not in seen, f"{host} is both {seen[host]} and {state}"
            seen[host] = state
            record = world.store.get_vm(host)
            assert record is not None and (record.state, record.pool) == (state, pool), f"{host}: {record}"
    assert world.hosts(pool, "running") <= set(world.client.zrange(world.store.keys.running, 0, -1))


def drain_run(services: Services) -> RunReport | None:
    """One drain message of the removed pool beta, as the reconcile queue's consumer runs it."""
    return look_at(services, PoolMessage(REMOVED, DRAIN), NoQueue())


def test_a_drain_run_killed_after_any_round_trip_converges(fleet: Fleet) -> None:
    """Beta is removed from the config with a VM in use: a drain run killed after any round trip
    leaves the next ones to destroy its free VMs, keep the one in use for its lifetime, then
    destroy it and forget the pool."""
    fleet.converge()
    world = fleet.world
    (in_use,) = world.check_out(REMOVED, 1, lifetime_hours=5)
    folder = world.provider._folder_key(world.pool(REMOVED))

    def in_provider() -> set[str]:
        return set(world.client.hkeys(folder))

    Ticker().tick(world.services, NoQueue())  # beta's settings are known
    world.services.use_config(parse(CONFIG[:CONFIG.index("  - {name: beta")]))
    start = Start.of(fleet)
    for _ in range(2):  # the first loads the Lua scripts the session's Redis lacks
        fleet = start.again(fleet)
        fuse = Fuse()
        drain_run(fused_services(world, fuse))
    total = fuse.sent
    assert total > 3, total
    for die_after in range(1, total + 1):
        where = f"drain: killed after round trip {die_after} of {total}"
        fleet = start.again(fleet)
        services = fused_services(world, Fuse(die_after=die_after))
        try:
            drain_run(services)
        except Died:
            pass
        finally:
            services.client.close()
        assert_states_consistent(world, REMOVED)
        leases_run_out(world.client)
        for _ in range(10):  # free VMs destroyed, the one in use kept
            world.clock.advance(90)
            drain_run(world.services)
        assert world.hosts(REMOVED, "running") == {in_use}, where
        assert in_provider() == {in_use}, f"{where}: {world.store.counts([REMOVED])}"
        world.clock.advance(5 * 3600)  # its lifetime ends: destroyed, the pool forgotten
        for _ in range(10):
            world.clock.advance(90)
            drain_run(world.services)
        assert in_provider() == set(), where
        assert all(not world.hosts(REMOVED, state) for state in STATES), where
        assert FleetRecord(world.store).settings(REMOVED) is None, f"{where}: beta is not forgotten"
        assert world.store.cloning_count() == 0, where
        fleet.converge()
        fleet.assert_converged(where)


# --- the vSphere provider on vcsim ------------------------------------------------------------------


def full_and_idle(world: Harness, where: str, size: int = 2) -> None:
    """Run the pool (the clock moving on) until it is full and a run finds nothing in flight."""

    def check() -> bool:
        world.clock.advance(30)
        report = run_pool(world.services, POOL, 0.0)
        assert report.leased and not report.failures, f"{where}: {report}"
        return world.count(POOL, "ready") == size and not any(each.work_in_flight for each in report.passes)

    eventually(check, 30, f"{where}: the pool full")


@pytest.mark.parametrize("scenario", ["filling", "churn"])
def test_a_vsphere_run_killed_after_any_provider_call_converges(make_harness: HarnessFactory,
                                                                private_vcsim: VcsimServer, scenario: str) -> None:
    """A vSphere pool on vcsim, empty (filling) or full with a VM in use and one given back
    (churn): the run killed after each call it makes to vCenter, and after each clone it starts
    in a batch (Redis is enumerated above, with the dummy). vCenter cannot be rolled back, so
    each kill gets a pool in a folder of its own; the guests boot on vcsim's wall clock."""

    def scenario_pool() -> tuple[Harness, set[str]]:
        folder = f"vmpool/crash-{secrets.token_hex(4)}"
        pool = {"name": POOL, "size": 2, "folder": folder, "ready_check": "tools"}
        world = make_harness(vcsim_config(private_vcsim, [pool], service={"task_limit": 2}))
        world.client.flushall()
        if scenario == "filling":
            return world, set()
        full_and_idle(world, scenario)
        kept, returned = world.check_out(POOL, 2, lifetime_hours=5)
        assert world.delete(f"/api/v3/vm/{returned}").status == 200
        return world, {kept}

    def killed_run(world: Harness, die_after: int | None) -> int:
        fuse = Fuse(die_after=die_after)
        try:
            run_pool(fused_services(world, None, backend_fuse=fuse), POOL, 0.0, fuse.step)
        except Died:
            assert die_after is not None and fuse.sent == die_after
        else:
            assert die_after is None, f"the run made {fuse.sent} provider calls and lived"
        return fuse.sent

    total = killed_run(scenario_pool()[0], None)
    assert total > 2, total
    for die_after in range(1, total):
        where = f"vsphere {scenario}: killed after provider call or step {die_after} of {total}"
        world, kept = scenario_pool()
        killed_run(world, die_after)
        assert_consistent(world, POOL, pass_completed=False)
        leases_run_out(world.client)
        world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
        full_and_idle(world, where)
        assert_consistent(world, POOL, pass_completed=False)
        assert world.hosts(POOL, "running") == kept, where
        in_vcsim = {vm.name for vm in world.provider.list_vms(world.pool(POOL))}
        assert in_vcsim == world.hosts(POOL, "ready") | kept, f"{where}: {in_vcsim} in vCenter"
        assert world.store.cloning_count() == 0, where


# --- DNS records (a real BIND) -----------------------------------------------------------------------


def zone_records(bind: BindServer) -> dict[str, list[str]]:
    """Every A record of the zone but the server's own: name -> addresses."""
    import dns.query
    import dns.rdataclass
    import dns.rdatatype
    import dns.tsigkeyring
    import dns.zone

    keyring = dns.tsigkeyring.from_text({bind.key_name: bind.key_secret})
    zone = dns.zone.from_xfr(dns.query.xfr("127.0.0.1", bind.zone, port=bind.port, keyring=keyring,
                                           keyname=bind.key_name, keyalgorithm="hmac-sha256", timeout=5))
    records = {}
    for name, node in zone.nodes.items():
        found = node.get_rdataset(dns.rdataclass.IN, dns.rdatatype.A)
        if found is not None and str(name) not in ("@", "ns"):
            records[str(name)] = sorted(item.address for item in found)
    return records


def test_a_run_with_dns_records_killed_after_any_call_converges(fleet: Fleet, bind: BindServer) -> None:
    """Churn in a pool whose VMs have A records in BIND: the run killed after each call to the
    DNS server and each step of its pass (Redis is enumerated above); in the end the records are
    the VMs', no others."""
    document = yaml.safe_load(CONFIG)
    document["dns_configs"] = {"zone": bind.dns_config()}
    document["pools"][0]["dns_plugin"] = "zone"
    config = parse(yaml.safe_dump(document))

    world = fleet.world
    world.services.use_config(config)
    churn(fleet)
    start, records = Start.of(fleet), zone_records(bind)
    plugin = world.services.dns_plugin(world.pool(POOL))
    assert plugin is not None and records

    def again() -> Fleet:
        bind.clear_records()
        for name, (address,) in records.items():
            plugin.create_or_replace(name, address)
        return start.again(fleet)

    def killed_run(current: Fleet, die_after: int | None) -> int:
        fuse = Fuse(die_after=die_after)
        try:
            run_pool(fused_services(current.world, None, backend_fuse=fuse), POOL, 0.0, fuse.step)
        except Died:
            assert die_after is not None and fuse.sent == die_after
        else:
            assert die_after is None, f"the run made {fuse.sent} calls and lived"
        return fuse.sent

    total = killed_run(again(), None)
    assert total > 3, total
    for die_after in range(1, total):
        where = f"dns: killed after call {die_after} of {total}"
        current = again()
        killed_run(current, die_after)
        assert_whole(current, where)
        expected = {host: [world.store.get_vm(host).ip]
                    for host in world.hosts(POOL, "ready") | world.hosts(POOL, "running")}
        assert zone_records(bind) == expected, where


# --- the API killed mid-request ------------------------------------------------------------------------


def checkout_request(fleet: Fleet) -> None:
    """POST /vm {"alpha": 1}: the caller never hears back, so the VM is not theirs to keep."""
    fleet.world.post("/api/v3/vm", {POOL: 1})


def test_a_checkout_killed_after_any_round_trip_converges(fleet: Fleet) -> None:
    """The API's process killed after each round trip of a checkout (a Lambda's timeout, an
    out-of-memory kill): the pool comes back whole, the VM whose checkout was never answered goes
    back to ready, nothing leaks. (A return, DELETE /vm/<host>, is one round trip: nothing to
    enumerate.)"""
    fleet.converge()
    check_out(fleet)
    start = Start.of(fleet)
    world = fleet.world

    def killed_request(current: Fleet, die_after: int | None) -> int:
        fuse = Fuse(die_after=die_after)
        services = fused_services(world, fuse)
        chalice_app._services = services
        try:
            checkout_request(current)
        except Died:
            assert die_after is not None and fuse.sent == die_after
        else:
            assert die_after is None, f"the request made {fuse.sent} round trips and lived"
        finally:
            chalice_app._services = world.services
            services.client.close()
        return fuse.sent

    killed_request(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    total = killed_request(start.again(fleet), None)
    assert total > 2, total
    for die_after in range(1, total):
        where = f"checkout: the API killed after round trip {die_after} of {total}"
        current = start.again(fleet)
        killed_request(current, die_after)
        assert_whole(current, where)


def test_a_checkout_whose_redis_reply_is_lost_at_any_round_trip_converges(fleet: Fleet) -> None:
    """Each round trip of a checkout has its reply lost in turn (Redis ran it): the caller is
    answered (a VM it holds, or a 503 for one it does not), the pool comes back whole, and what
    the caller was not told is not kept running for it."""
    fleet.converge()
    check_out(fleet)
    start = Start.of(fleet)
    world = fleet.world

    def request(current: Fleet, lose: int | None) -> tuple[int, int, set[str]]:
        fuse = Fuse(lose_reply_of=lose)
        services = fused_services(world, fuse)
        chalice_app._services = services
        try:
            reply = current.world.request("POST", "/api/v3/vm", {POOL: 1})
        finally:
            chalice_app._services = world.services
            services.client.close()
        told = {str(reply.json[POOL]["hostname"]).split(".")[0]} if reply.status == 200 else set()
        return fuse.sent, reply.status, told

    request(start.again(fleet), None)  # loads the Lua scripts the session's Redis lacks
    total, status, _ = request(start.again(fleet), None)
    assert status == 200
    for lose in range(total):
        where = f"checkout: the reply of round trip {lose} of {total} lost"
        current = start.again(fleet)
        running_before = world.hosts(POOL, "running")
        _, status, told = request(current, lose)
        assert status in (200, 503), f"{where}: answered {status}"
        assert_whole(current, where)
        unknown = world.hosts(POOL, "running") - running_before - told
        assert not unknown, f"{where}: {unknown} running for a caller who was not told"
