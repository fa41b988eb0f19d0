"""A pass paused after any of its Redis round trips while an administrator changes the pool
(template, reset, size) or a user opens an on-demand request through the API, then resumed on
what it read before.

tests/chaos/test_crash_every_write.py pauses a pass while another run and users act; the
pool's settings there change only before the pass starts. Here they change under it: the
paused pass read the pool's template, size and fence, and acts on them after the change. What
must hold, at the moment it finishes and once ordinary runs went on: no ready VM of the old
template handed out, no VM in use touched, no more clones running in the provider than the
clone slots allow, every count the sets', and the pools whole (the new size, the request
delivered).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator

import pytest

from chalicelib.config import parse
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import TICK, PoolMessage
from chalicelib.services import Services
from chalicelib.store.ondemand import OnDemandStore
from chalicelib.store.pool_overrides import PoolOverrides
from tests.chaos.fleet import Fleet, fleet_fixture, tasks_running
from tests.chaos.test_crash_every_write import (
    CONFIG,
    NEW_TEMPLATE,
    POOL,
    SCENARIOS,
    Start,
    assert_states_consistent,
    assert_whole,
    leases_run_out,
    stale_pass,
    users_act,
)
from tests.harness import Fuse, fused_services
from tests.support import RecordingQueue

CHANGEABLE = CONFIG.replace("check_loop_delay_min: 1}", "check_loop_delay_min: 1, experimental_features: true}")
"""The crash sweep's pools, with the runtime pool changes on (POST /config/*, /poolreset)."""
TASK_LIMIT = parse(CHANGEABLE).service.task_limit


fleet = fleet_fixture(CHANGEABLE)


def change_template(fleet: Fleet) -> None:
    """POST /config/pooltemplate: the pool's ready VMs are of the old template from now on."""
    reply = fleet.world.post("/api/v3/config/pooltemplate", {POOL: NEW_TEMPLATE})
    assert reply.status in (200, 201), reply.raw


def reset(fleet: Fleet) -> None:
    """POST /poolreset: the pool's ready and pending VMs are to be replaced."""
    reply = fleet.world.post("/api/v3/poolreset", {POOL: "1"})
    assert reply.status in (200, 201), reply.raw


def shrink(fleet: Fleet) -> None:
    """POST /config/poolsize to 1."""
    reply = fleet.world.post("/api/v3/config/poolsize", {POOL: "1"})
    assert reply.status in (200, 201), reply.raw


def grow(fleet: Fleet) -> None:
    """POST /config/poolsize to 6: more than the clone slots can fill at once."""
    reply = fleet.world.post("/api/v3/config/poolsize", {POOL: "6"})
    assert reply.status in (200, 201), reply.raw


def open_request(fleet: Fleet) -> None:
    """POST /ondemandvm of two VMs of the pool (it must be delivered in the end)."""
    if POOL in fleet.requests:
        return  # the scenario's own request is under way
    reply = fleet.world.post("/api/v3/ondemandvm", {POOL: 1, "request_id": "od-meanwhile"})
    assert reply.status == 201, reply.raw
    fleet.requests[POOL] = "od-meanwhile"


def template_then_checkout(fleet: Fleet) -> None:
    """The template changed, then a user asks for a VM: refused until a pass drained the old ones."""
    ready = fleet.world.hosts(POOL, "ready")
    change_template(fleet)
    assert fleet.world.post("/api/v3/vm", {POOL: 1}).status == 503
    assert fleet.world.hosts(POOL, "ready") == ready


MEANWHILE: dict[str, Callable[[Fleet], None]] = {
    "template": template_then_checkout, "reset": reset, "shrink": shrink, "grow": grow, "ondemand": open_request,
}

STARTS = ("filling", "steady", "churn", "on_demand", "template", "reset")


def assert_slots_kept(fleet: Fleet, where: str) -> None:
    """The provider runs no more clones than the slots allow: task_limit for the pools' own,
    beside them one per on-demand VM in flight."""
    world = fleet.world
    on_demand_pending = sum(1 for host in world.hosts(POOL, "pending") if world.store.get_vm(host).raw.get("request"))
    running = tasks_running(world, "clone")
    assert running <= TASK_LIMIT + on_demand_pending, \
        f"{where}: {running} clones running in the provider, {on_demand_pending} of them on demand"


def assert_new_size(fleet: Fleet, where: str) -> None:
    """Ready VMs of the pool within its size (as overridden) as soon as the paused pass ends."""
    world = fleet.world
    size = world.pool(POOL).size
    own = {host for host in world.hosts(POOL, "ready") | world.hosts(POOL, "pending")
           if not world.store.get_vm(host).raw.get("request")}
    assert len(own) <= size, f"{where}: {len(own)} pending+ready over the size {size}"


@pytest.mark.parametrize("meanwhile", MEANWHILE)
@pytest.mark.parametrize("scenario", STARTS)
def test_a_pass_paused_while_the_pool_changes_converges(fleet: Fleet, scenario: str, meanwhile: str) -> None:
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    stale_pass(start.again(fleet), None, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = stale_pass(start.again(fleet), None, lambda: None)
    assert total > 3, total
    for pause_after in range(total):
        where = f"{scenario} ({meanwhile} meanwhile): paused after round trip {pause_after} of {total}"
        current = start.again(fleet)
        stale_pass(current, pause_after, lambda current=current: MEANWHILE[meanwhile](current))  # type: ignore[misc]
        assert_slots_kept(current, where)
        if meanwhile == "template":
            served = current.world.post("/api/v3/vm", {POOL: 1})
            if served.status == 200:  # the pass drained the old ones: what it hands out is new
                host = str(served.json[POOL]["hostname"]).split(".")[0]
                assert current.world.store.get_vm(host).template == NEW_TEMPLATE, f"{where}: {host} is old"
                current.kept[POOL].add(host)
        if meanwhile == "shrink":
            # Above its new size until a pass that read it retires the surplus: the paused one
            # read the old size (and may even reserve clones for it: see docs/reliability.md).
            assert_states_consistent(current.world, POOL)
            leases_run_out(current.world.client)
            current.converge()
            current.assert_converged(where)
        else:
            assert_whole(current, where)
        assert_new_size(current, where)
        if POOL in current.requests:
            assert OnDemandStore(current.world.store).get(current.requests[POOL]) is not None, where


def shrink_to_nothing(fleet: Fleet) -> None:
    """POST /config/poolsize to 0."""
    reply = fleet.world.post("/api/v3/config/poolsize", {POOL: "0"})
    assert reply.status == 201, reply.raw


def reset_later(fleet: Fleet) -> None:
    """POST /poolreset a second after the pass read the clock: its clones are older than the reset."""
    fleet.world.clock.advance(1)
    reset(fleet)


RUNTIME_CHANGES: dict[str, Callable[[Fleet], None]] = {"size": shrink_to_nothing, "template": change_template,
                                                       "reset": reset_later}


@pytest.mark.parametrize("change", RUNTIME_CHANGES)
def test_no_clone_is_reserved_after_the_pool_was_changed_under_a_pass(fleet: Fleet, change: str) -> None:
    """An empty pool's pass paused at every round trip while an administrator sets its size to
    0, its template, or resets it: the clones it reserved before the answer may go on (the next
    pass retires or drains them), none after. The pass read the size before the change and
    reserved clones for it: up to its share of task_limit clones started after POST
    /config/poolsize answered 201 (and, until the template and reset were checked too, of the
    old template, or older than the reset, after those answered)."""
    for where, current, reserved in reserved_meanwhile(fleet, stale_pass, RUNTIME_CHANGES[change]):
        stale = sorted(host for host in reserved if not made_after(current, change, host))
        assert not stale, f"{where}: {stale} reserved after the {change} change for the pool before it"


def reserved_meanwhile(fleet: Fleet, run: Callable[[Fleet, int | None, Callable[[], None]], int],
                       change: Callable[[Fleet], None]) -> Iterator[tuple[str, Fleet, set[str]]]:
    """From the fleet's state now, ``run(fleet, pause_after, meanwhile)`` paused after each of its
    round trips in turn while ``change`` runs; for each: where, the fleet then, and the VMs
    pending or in the provider that were not when ``change`` ended (reserved after it)."""
    start = Start.of(fleet)
    run(start.again(fleet), None, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = run(start.again(fleet), None, lambda: None)
    for pause_after in range(total):
        current = start.again(fleet)
        before: list[set[str]] = []

        def meanwhile(current: Fleet = current, before: list[set[str]] = before) -> None:
            change(current)
            before.append(current.world.hosts(POOL, "pending") | current.world.provider_vms(POOL))

        run(current, pause_after, meanwhile)
        after = current.world.hosts(POOL, "pending") | current.world.provider_vms(POOL)
        yield f"paused after round trip {pause_after} of {total}", current, after - before[0]


def made_after(fleet: Fleet, change: str, hostname: str) -> bool:
    """Whether the VM is one the pool wants after the administrator's ``change`` (a pass that
    read the pool after it reserved it): of the new template, cloned after the reset; none once
    the size is 0."""
    record = fleet.world.store.get_vm(hostname)
    if record is None or change == "size":
        return False
    if change == "template":
        return record.template == NEW_TEMPLATE
    reset_at = PoolOverrides(fleet.world.store).get(POOL).reset_at
    return reset_at is not None and float(record.raw["clone_start"]) >= reset_at


ALPHA = "{name: alpha, size: 3, provider: dummy}"
PUSHES = {
    "size": parse(CHANGEABLE.replace(ALPHA, "{name: alpha, size: 0, provider: dummy}")),
    "template": parse(CHANGEABLE.replace(ALPHA, ALPHA.replace("}", f", template: {NEW_TEMPLATE}}}"))),
}
"""A config push changing the pool: what a function that read it acts on."""
OLD_GENERATION, NEW_GENERATION = 1_000.0, 2_000.0


@pytest.mark.parametrize("push", PUSHES)
def test_no_clone_is_reserved_for_a_config_a_push_replaced_under_the_pass(fleet: Fleet, push: str) -> None:
    """An empty pool's run on the pushed config of generation 1,000 (size 3) paused at every
    round trip while a push of generation 2,000 changes the pool (size 0, or another template)
    and a function that read it runs the pool: the clones the stale run reserved before may go on
    (the next pass retires them), none after. Its run checked at its start that its config was
    the newest, read the size and template, and reserved its share of task_limit clones of the
    replaced config once the newer one ran: clones of a size or template just pushed away."""
    old_config = dataclasses.replace(fleet.world.config, generation=OLD_GENERATION)
    new_config = dataclasses.replace(PUSHES[push], generation=NEW_GENERATION)
    new_pool = new_config.pool(POOL)
    assert ALPHA in CHANGEABLE and new_pool is not None

    def stale_run(current: Fleet, pause_after: int | None, meanwhile: Callable[[], None]) -> int:
        fuse = Fuse(pause_after=pause_after, meanwhile=meanwhile)
        services = fused_services(current.world, fuse)
        services.use_config(old_config)
        try:
            look_at(services, PoolMessage(POOL, TICK), RecordingQueue())
        finally:
            services.client.close()
        assert pause_after is None or fuse.meanwhile is None, "the run ended before its pause"
        return fuse.sent

    def newer_function_runs(current: Fleet) -> None:
        newer = Services(new_config, current.world.client, clock=current.world.clock,
                         prefix=current.world.store.keys.prefix)
        look_at(newer, PoolMessage(POOL, TICK), RecordingQueue())

    for where, current, reserved in reserved_meanwhile(fleet, stale_run, newer_function_runs):
        # The newer config's function may reserve clones of its own: of its template, for its size.
        records = {host: current.world.store.get_vm(host) for host in reserved}
        stale = sorted(host for host, record in records.items()
                       if new_pool.size == 0 or record is None or record.template != new_pool.template)
        assert not stale, f"{push} pushed, {where}: {stale} reserved for the replaced config after the push ran"


# --- two passes both paused: every pair of points (quadratic: an audit) ----------------------------


def advance_and_act(fleet: Fleet) -> None:
    """Clones, boots and destroys in flight finish, then users check out, extend and return."""
    fleet.world.clock.advance(100)
    users_act(fleet)


@pytest.mark.audit
@pytest.mark.parametrize("scenario", ["filling", "churn", "cancelled", "reset", "lifetime"])
def test_two_passes_paused_at_every_pair_of_points_converge(fleet: Fleet, scenario: str) -> None:
    """Pass A paused after its i-th round trip; meanwhile pass B, paused after its j-th while the
    clock moves on and users act, then B ends, then A goes on on what it read before it: for
    every i and j (tests/chaos/test_crash_every_write.py pauses one pass while the other runs
    whole)."""
    SCENARIOS[scenario](fleet)
    start = Start.of(fleet)
    stale_pass(start.again(fleet), None, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = stale_pass(start.again(fleet), None, lambda: None)
    for first in range(total):
        for second in range(total + 2):  # B may make more round trips than A (the clock moved on)
            where = f"{scenario}: A paused after round trip {first}, B after {second} of {total}"
            current = start.again(fleet)

            def second_pass(current: Fleet = current, second: int = second) -> None:
                stale_pass_until(current, second, lambda: advance_and_act(current))

            stale_pass(current, first, second_pass)
            assert_slots_kept(current, where)
            assert_whole(current, where)


def stale_pass_until(fleet: Fleet, pause_after: int, meanwhile: Callable[[], None]) -> None:
    """``stale_pass``, where the pass may end before its pause: then ``meanwhile`` runs after it."""
    ran: list[bool] = []

    def once() -> None:
        ran.append(True)
        meanwhile()

    try:
        stale_pass(fleet, pause_after, once)
    except AssertionError:
        if ran:
            raise
    if not ran:
        meanwhile()


def test_a_reset_stamped_by_an_api_clock_ahead_makes_no_clone_to_drain(fleet: Fleet) -> None:
    """POST /poolreset answered by an API process whose clock is 5 minutes ahead of the
    scheduler's: the reset time is later than every pass's clock for 5 minutes, so each clone a
    pass started then was older than the reset, drained by the next pass once it showed, and
    made again (clones started and destroyed for nothing, the pool empty either way). No pass
    clones until its clock passes the reset; then the pool fills once, with VMs that stay."""
    fleet.converge()
    world = fleet.world
    skew = 300.0
    PoolOverrides(world.store).reset(POOL, world.clock.now() + skew)
    started: list[str] = []
    reset_at = world.clock.now() + skew
    while world.clock.now() < reset_at:
        report = fleet.run(POOL)
        started += [host for result in report.passes for host in result.clones_started]
        world.clock.advance(15)
    assert started == [], f"{len(started)} clones started before the reset time, each drained after"
    leases_run_out(world.client)
    fleet.converge()
    for pool in fleet.pools:
        fleet.kept.setdefault(pool, set())  # nobody holds a VM
    fleet.assert_converged("after the reset time")
