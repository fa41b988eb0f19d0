"""Overlapping passes: a pass that read the provider's inventory before a VM became visible must
not take that VM for "gone from the provider" once another pass has made it ready and a user has
checked it out (issue 10, defect 2). The interleaving is driven through the pass's checkpoints.
"""

from __future__ import annotations

import threading
from typing import Any, Callable

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import run_pool
from chalicelib.services import Services
from tests.harness import Harness, HarnessFactory, Killed

CONFIG = """\
config: {task_limit: 10, timeout: 5, ready_ttl: 10, vm_lifetime: 2, prefix: "ci-"}
redis: {data_ttl: 1}
providers:
  dummy: {provider_class: dummy, seed: 5, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 20}
pools:
  - {name: alpha, size: 1, provider: dummy}
"""
CLONE_AND_BOOT = 60 + 30 + 1
"""Seconds after which any clone started has finished and booted."""


def one_clone_in_flight(world: Harness) -> str:
    """A pool of one whose only VM is still cloning: not yet in the provider's inventory."""
    report = world.reconcile("alpha")
    (host,) = report.clones_started
    assert host not in {vm.name for vm in world.provider.list_vms(world.pool("alpha"))}
    return host


def at_first(step: str, action: Callable[[], None]) -> Callable[[str], None]:
    """A checkpoint that runs ``action`` the first time the pass reaches ``step``."""
    done: list[str] = []

    def checkpoint(name: str) -> None:
        if name == step and not done:
            done.append(name)
            action()

    return checkpoint


def test_a_vm_checked_out_after_a_stale_inventory_read_is_not_dropped(make_world: HarnessFactory) -> None:
    world = make_world(CONFIG)
    host = one_clone_in_flight(world)
    checked_out: list[str] = []

    def another_pass_readies_it_and_a_user_takes_it() -> None:
        world.clock.advance(CLONE_AND_BOOT)
        assert world.reconcile("alpha").became_ready == [host]
        checked_out.extend(world.check_out("alpha"))

    # This pass read the inventory while the VM was cloning; everything else happens meanwhile.
    stale = world.reconcile("alpha", at_first("inventory", another_pass_readies_it_and_a_user_takes_it))

    assert checked_out == [host]
    assert host not in stale.dropped
    world.settle("alpha")
    assert world.state_of(host) == "running", world.store.get_vm(host)
    assert host in world.provider_vms("alpha"), "the VM in use was destroyed"


def test_a_vm_made_ready_after_a_stale_inventory_read_is_not_dropped(make_world: HarnessFactory) -> None:
    world = make_world(CONFIG)
    host = one_clone_in_flight(world)

    def another_pass_readies_it() -> None:
        world.clock.advance(CLONE_AND_BOOT)
        assert world.reconcile("alpha").became_ready == [host]

    stale = world.reconcile("alpha", at_first("inventory", another_pass_readies_it))

    assert host not in stale.dropped
    assert world.state_of(host) == "ready"
    assert world.check_out("alpha") == [host]


def test_a_running_vm_really_deleted_is_still_dropped_by_a_fresh_read(make_world: HarnessFactory) -> None:
    world = make_world(CONFIG)
    one_clone_in_flight(world)
    world.clock.advance(CLONE_AND_BOOT)
    world.reconcile("alpha")
    (host,) = world.check_out("alpha")
    world.provider.delete_by_hand(world.pool("alpha"), host)

    report = world.reconcile("alpha")

    assert report.dropped == [host]
    assert world.store.get_vm(host).reason == "gone from the provider while running"


def test_a_lifetime_extended_after_the_pass_looked_is_honoured(make_world: HarnessFactory) -> None:
    world = make_world(CONFIG)
    one_clone_in_flight(world)
    world.clock.advance(CLONE_AND_BOOT)
    world.reconcile("alpha")
    (host,) = world.check_out("alpha", lifetime_hours=1)
    world.clock.advance(3601)

    def the_user_extends_it() -> None:
        world.store.update_vm(host, lifetime=4)  # what PUT /vm/<host> {"lifetime": 4} does

    report = world.reconcile("alpha", at_first("snapshot", the_user_extends_it))

    assert host not in report.completed
    assert world.state_of(host) == "running"


@pytest.fixture
def services(redis_client: redis.Redis, clock: FakeClock) -> Services:
    return Services(parse(CONFIG), redis_client, clock=clock, prefix="vmpool:")


def test_a_paused_runner_whose_lease_expired_does_not_drop_a_vm_in_use(
    services: Services, redis_client: redis.Redis, clock: FakeClock,
) -> None:
    """A runner pauses after its inventory read (a frozen Lambda, a long GC); its lease expires,
    another invocation takes over, readies the VM, a user checks it out; the first resumes."""
    store = services.store
    assert run_pool(services, "alpha", 0.0).leased
    (host,) = store.hostnames("alpha", "pending")
    taken: list[str] = []

    def lease_expires_and_another_runner_takes_over() -> None:
        redis_client.delete(store.keys.lease("alpha"))  # its TTL ran out while paused
        clock.advance(CLONE_AND_BOOT)
        second = run_pool(services, "alpha", 0.0)
        assert second.leased and second.passes[0].became_ready == [host]
        from chalicelib.store import CheckoutRequest

        result = store.checkout([CheckoutRequest("alpha", ["alpha"], 1)], clock.now(), {"lifetime": "2"})
        taken.extend(vm.hostname for vm in result.vms)

    paused = run_pool(services, "alpha", 0.0, at_first("inventory", lease_expires_and_another_runner_takes_over))

    assert taken == [host]
    # The resumed runner either notices its lease is gone and stops, or finishes a pass that
    # leaves the VM alone; either way it does not drop it.
    assert all(host not in each.dropped for each in paused.passes)
    for _ in range(5):  # later passes see it in the inventory and leave it alone
        clock.advance(30)
        run_pool(services, "alpha", 0.0)
    record = store.get_vm(host)
    assert record is not None and record.state == "running", record


LONG_CHECKTIME = """\
config: {task_limit: 10, ready_ttl: 600, vm_lifetime: 2, vm_checktime: 600, prefix: "ci-"}
providers:
  dummy: {provider_class: dummy, seed: 5, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: alpha, size: 1, provider: dummy}
"""
"""Instant clones, and a whole comparison of the pool's VMs every 10 hours: between them a pass
looks only at the running VMs due (running_due)."""


def test_a_lifetime_shortened_after_the_pass_read_the_vm_ends_on_time(make_world: HarnessFactory) -> None:
    """The pass read the VM with its lifetime of 2 hours; its user shortened it to 1 (which
    makes the VM due now: lua/vm_modify.lua) before the pass scheduled its next look. Before,
    the pass wrote the look at the old end over it, and the VM ran until then (or the next whole
    comparison). A pass writes no look for a VM whose checkout or lifetime changed since its read."""
    world = make_world(LONG_CHECKTIME)
    world.settle("alpha", seconds=1)
    running_due = world.store.keys.running_due("alpha")
    host = world.checkout("alpha")
    checked_out = world.store.get_vm(host).checkout
    assert checked_out is not None

    def shortened_after_the_read() -> None:
        assert world.put(f"/api/v3/vm/{host}", {"lifetime": 1}).status == 200

    world.clock.advance(1)
    world.reconcile("alpha", at_first("snapshot", shortened_after_the_read))
    assert world.client.zscore(running_due, host) <= world.clock.now(), "the stale pass wrote the old end"

    world.clock.advance(1)
    world.reconcile("alpha")  # reads the new lifetime
    assert world.client.zscore(running_due, host) == checked_out + 3600
    world.clock.advance(checked_out + 3601 - world.clock.now())
    report = world.reconcile("alpha")
    assert host in report.completed, "the VM outlived its shortened lifetime"


CHANGING_TEMPLATE = CONFIG.replace("config: {", "config: {experimental_features: true, ", 1)
"""The pools' runtime settings open to the API (POST /config/pooltemplate), no auth."""
NEW_TEMPLATE = "templates/alpha-v2"


class PausedAt:
    """A provider whose ``method`` call waits, the first time, for ``action`` (the pass paused
    there: after every read of its inputs, before the pending step's moves)."""

    def __init__(self, provider: Any, method: str, action: Callable[[], None]) -> None:
        self._provider, self._method, self._action = provider, method, action

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._provider, name)
        if name != self._method or self._action is None:
            return value

        def paused(*args: Any, **kwargs: Any) -> Any:
            action, self._action = self._action, None
            action()
            return value(*args, **kwargs)

        return paused


def paused_pass(world: Harness, action: Callable[[], None]) -> Any:
    """A pass over alpha paused as it asks for its clones' task statuses, while ``action`` runs."""
    pool = world.config.pool("alpha")
    assert pool is not None
    provider = PausedAt(world.services.provider(pool.provider), "task_statuses", action)
    return reconcile_pool(world.store, provider, pool, world.clock, world.config.service)


def stale_after(change: str, world: Harness, changed_at: float, host: str) -> bool:
    """Whether the VM is one the change made stale: of the old template, cloned before the reset."""
    record = world.store.get_vm(host)
    assert record is not None
    if change == "template":
        return record.template != NEW_TEMPLATE
    return (record.clone_start or 0) < changed_at


def assert_no_stale_vm_handed_out(world: Harness, change: str, changed_at: float, host: str) -> None:
    """No checkout gets a VM the change made stale (``host``: the one at risk), now or once later
    passes have run."""
    for _ in range(3):
        reply = world.post("/api/v3/vm", {"alpha": 1})
        if reply.status == 200:
            taken = reply.json["alpha"]["hostname"].split(".")[0]
            assert not stale_after(change, world, changed_at, taken), f"{taken} (first: {host}) from before the change"
            assert world.delete(f"/api/v3/vm/{taken}").status == 200
        world.settle("alpha")


CHANGES = {"template": ("/api/v3/config/pooltemplate", {"alpha": NEW_TEMPLATE}),
           "reset": ("/api/v3/poolreset", {"alpha": "1"})}


@pytest.mark.parametrize("change", CHANGES)
def test_a_vm_made_ready_by_a_pass_older_than_a_template_change_or_reset_is_not_handed_out(
        make_world: HarnessFactory, change: str) -> None:
    """A pass (Q) read the pool's template and reset before POST /config/pooltemplate (or
    /poolreset); a pass after the change (P) read the clone Q is following as pending; Q then
    made it ready, and P, whose drain could not move it from pending any more, lifted the change's
    fence on the pool's ready VMs and marked them all checked. Before, that VM of the old template
    (cloned before the reset) stayed ready for good (no later pass read ready records again) and
    checkouts were handed it: a CI job testing the new template ran on the old one. A pass no
    longer makes a VM ready once the pool's template or reset changed since it read them: the
    next pass drains it from pending."""
    world = make_world(CHANGING_TEMPLATE)
    host = one_clone_in_flight(world)
    world.clock.advance(CLONE_AND_BOOT)
    changed_at = world.clock.now()
    resume_p, p_paused = threading.Event(), threading.Event()
    p_errors: list[BaseException] = []

    def p_waits_for_q() -> None:
        p_paused.set()
        assert resume_p.wait(30), "Q did not finish"

    def run_p() -> None:
        try:
            paused_pass(world, p_waits_for_q)
        except BaseException as error:  # noqa: BLE001 - re-raised below
            p_errors.append(error)
            p_paused.set()

    p = threading.Thread(target=run_p)

    def changed_then_p_reads() -> None:
        assert world.post(*CHANGES[change]).status == 201
        p.start()
        assert p_paused.wait(30), "P did not reach its pause"

    paused_pass(world, changed_then_p_reads)  # Q
    resume_p.set()
    p.join(30)
    assert not p.is_alive() and p_errors == [], p_errors

    assert_no_stale_vm_handed_out(world, change, changed_at, host)


class OneAtATime:
    """A pipeline without MULTI as Redis may run it: each command on its own, another client's
    commands served between any two (Redis reads a pipeline as it arrives, not whole); ``between``
    runs once, right after the first command whose arguments include ``after``."""

    def __init__(self, client: redis.Redis, after: str, between: list[Callable[[], None]]) -> None:
        self._client, self._after, self._between = client, after, between
        self._calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., "OneAtATime"]:
        def queue(*args: Any, **kwargs: Any) -> "OneAtATime":
            self._calls.append((name, args, kwargs))
            return self

        return queue

    def execute(self, raise_on_error: bool = True) -> list[Any]:
        replies = []
        for name, args, kwargs in self._calls:
            try:
                replies.append(getattr(self._client, name)(*args, **kwargs))
            except redis.ResponseError as error:
                if raise_on_error:
                    raise
                replies.append(error)
            if self._between and self._after in map(str, args):
                self._between.pop()()
        return replies


class InterleavedRedis(redis.Redis):
    """A client whose pipelines without MULTI are run one command at a time (``OneAtATime``)."""

    def __init__(self, after: str, between: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._after, self._between = after, [between]

    def pipeline(self, transaction: bool = True, shard_hint: Any = None) -> Any:
        if transaction:
            return super().pipeline(transaction, shard_hint)
        return OneAtATime(redis.Redis(connection_pool=self.connection_pool), self._after, self._between)


def test_a_template_change_between_the_reads_of_a_pass_keeps_the_pool_fenced(make_world: HarnessFactory) -> None:
    """A pass reads the pool's overrides in one round trip: its template, then the fence of its
    ready VMs. A template change landing between the two (Redis serves other clients between the
    commands of a pipeline without MULTI) had the pass drain by the old template, which drained
    nothing, and lift the new change's fence: the checkouts until the next pass were handed VMs
    of the old template, which the fence is there to stop. Both are read in one step now."""
    world = make_world(CHANGING_TEMPLATE)
    world.settle("alpha", seconds=CLONE_AND_BOOT)
    (old,) = world.ready("alpha")

    def the_template_changes() -> None:
        assert world.post("/api/v3/config/pooltemplate", {"alpha": NEW_TEMPLATE}).status == 201

    kwargs = world.client.connection_pool.connection_kwargs
    client = InterleavedRedis(world.store.keys.pool_override("pooltemplate"), the_template_changes,
                              host=kwargs.get("host", "localhost"), port=kwargs["port"], decode_responses=True)
    services = Services(world.config, client, clock=world.clock, prefix=world.store.keys.prefix)
    pool = world.config.pool("alpha")
    assert pool is not None
    try:
        world.clock.advance(1)
        reconcile_pool(services.store, services.provider(pool.provider), pool, world.clock, world.config.service)
    finally:
        client.close()
    if client._between:  # the reads were one step: the change lands after them
        client._between.pop()()

    reply = world.post("/api/v3/vm", {"alpha": 1})
    assert reply.status == 503 or reply.json["alpha"]["hostname"].split(".")[0] != old, "the old template handed out"


@pytest.mark.parametrize("change", CHANGES)
def test_a_pass_killed_after_its_pending_step_never_leaves_a_stale_vm_ready(
        make_world: HarnessFactory, change: str) -> None:
    """Both passes read the pool after POST /config/pooltemplate (or /poolreset). P made the clone
    of the old template (cloned before the reset) ready and was killed before its drain; R, which
    had read the VM as pending, could not drain it from pending any more, lifted the change's
    fence and marked the pool's ready VMs checked. Before, that VM stayed ready for good and was
    handed out. The pending step no longer makes a stale VM ready: a drain takes it from pending."""
    world = make_world(CHANGING_TEMPLATE)
    host = one_clone_in_flight(world)
    world.clock.advance(CLONE_AND_BOOT)
    changed_at = world.clock.now()
    assert world.post(*CHANGES[change]).status == 201
    killed: list[str] = []

    def p_killed_after_its_pending_step() -> None:
        def checkpoint(name: str) -> None:
            if name in ("clone_finished", "ready"):  # the pending step's writes are made
                killed.append(name)
                raise Killed(name)

        with pytest.raises(Killed):
            world.reconcile("alpha", checkpoint)

    r = paused_pass(world, p_killed_after_its_pending_step)
    assert killed and host not in r.became_ready
    assert_no_stale_vm_handed_out(world, change, changed_at, host)
    assert world.state_of(host) in ("completed", "destroyed")
