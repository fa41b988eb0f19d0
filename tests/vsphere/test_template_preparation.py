"""Templates and clone tasks on vCenter's bad days, against our simulator: template preparation
(``create_template_delta_disks``) and clone tasks when vCenter forgets or reuses ids or our
session ends at the worst moment, templates shared, changed, deleted while in use, vCenter
paused mid clone.

vcsim, as a vCenter restored from a backup, restarts with its state gone and hands out the same
managed object ids again (``vm-N``, ``task-N``): a record read after that must never act on, or
wait for, whatever now holds the id.
"""

from __future__ import annotations

import json
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.providers.base import ProviderError, TaskState, TaskStatus
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import connection as connections
from chalicelib.providers.vsphere import templates
from chalicelib.store import Store
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.templates import DONE, TemplateStore
from tests.harness import HarnessFactory
from tests.support import counts_by_reason, emf_documents, emitted
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, converge, pool_harness
from tests.vsphere.vcsim import DATACENTER, TEMPLATE, Setup, VcsimServer, delayed_clones, make_setup

TEMPLATE_PATH = f"{DATACENTER}/vm/{TEMPLATE}"
OPTION = {"create_template_delta_disks": True}


def restart_empty(server: VcsimServer, setup: Setup) -> None:
    """vCenter restarted with its state gone; our next call logs in afresh."""
    server.stop()
    server.start()
    connections.drop(setup.provider.endpoint)


def run(setup: Setup, store: Store, pool: PoolConfig, clock: FakeClock) -> PassReport:
    clock.advance(60)
    return reconcile_pool(store, setup.provider, pool, clock, setup.service)


# --- a preparation read after vCenter gave the template's id to another VM --------------------------


def test_a_preparation_read_after_vcenter_reused_the_template_id_never_touches_the_vm_now_holding_it(
        private_vcsim: VcsimServer) -> None:
    """A template being prepared (made a VM for its reconfigure), then vCenter restarted empty:
    the next VM made, an admin's plain VM, gets the template's old id. Reading the preparation
    must neither mark that VM a template nor give it a delta layer."""
    setup = make_setup(private_vcsim, service=OPTION)
    provider = setup.provider
    template_id = admin.copy_vm(provider, TEMPLATE_PATH, f"{DATACENTER}/vm/templates", "prepared", template=True)
    ref = provider.prepare_template(setup.pool(template="templates/prepared"))
    assert ref is not None
    restart_empty(private_vcsim, setup)
    for attempt in range(5):
        admins_vm = f"{DATACENTER}/vm/vmpool/admins-vm-{attempt}"
        if admin.copy_vm(provider, TEMPLATE_PATH, f"{DATACENTER}/vm/vmpool", f"admins-vm-{attempt}",
                         template=False) == template_id:
            break
    else:
        pytest.fail(f"the premise: vCenter gives {template_id} to another VM")
    for _ in range(3):
        provider.task_status(ref)
    assert admin.template_state(provider, admins_vm) == (False, [0])


# --- our session ends in the middle of a preparation --------------------------------------------


@pytest.fixture
def expiring_mid_preparation(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Sessions idle 1 s expire, and making a template a VM takes 2.5 s: the session ends between
    that and the reconfigure that follows it."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"expiring-{secrets.token_hex(3)}.pem",
                     method_delays={"MarkAsVirtualMachine": 2.5}, session_idle=1.0) as server:
        yield server


def test_a_session_ending_mid_preparation_leaves_a_template_and_no_clone_of_a_half_made_one(
        expiring_mid_preparation: VcsimServer, redis_client: redis.Redis) -> None:
    """The template was made a VM, then the session expired before the reconfigure: the passes
    that follow finish the preparation (one delta layer, a template again) before any clone."""
    setup = make_setup(expiring_mid_preparation, service=OPTION)
    store, clock, pool = Store(redis_client), FakeClock(), setup.pool(size=2)
    before = admin.template_state(setup.provider, TEMPLATE_PATH)
    assert before is not None and before[0] and set(before[1]) == {0}
    started: list[str] = []
    for _ in range(4):
        report = run(setup, store, pool, clock)
        if not started:
            assert report.clones_started == [] or admin.template_state(setup.provider, TEMPLATE_PATH) == (
                True, [1] * len(before[1])), "cloned from a template being prepared"
        started += report.clones_started
    assert admin.template_state(setup.provider, TEMPLATE_PATH) == (True, [1] * len(before[1]))
    assert len(started) == 2


# --- a clone task id vCenter gave to another task -----------------------------------------------------


@pytest.fixture
def long_clones(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Clone tasks that run 60 s (nobody waits for them)."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"long-{secrets.token_hex(3)}.pem",
                     clone_delay=60) as server:
        yield server


def test_a_clone_task_id_vcenter_gave_to_another_task_reads_as_the_clone_gone(long_clones: VcsimServer) -> None:
    """A clone recorded, vCenter restarted empty, and another pool's clone got the clone task's
    id: reading the first clone must say it is gone (its VM is not there), not "running" until
    the pool's clone timeout."""
    setup = make_setup(long_clones)
    provider = setup.provider
    ref = provider.clone(setup.pool(), "lost-clone")
    assert ref.startswith("clone:"), ref
    task_id = ref.split(":")[1]
    restart_empty(long_clones, setup)
    other = setup.pool()
    for attempt in range(5):
        if provider.clone(other, f"other-{attempt}").split(":")[1] == task_id:
            break
    else:
        pytest.fail(f"the premise: vCenter gives {task_id} to another clone")
    status = provider.task_status(ref)
    assert status.state is TaskState.ERROR and "lost-clone" in (status.error or ""), status


# --- pools sharing a template -------------------------------------------------------------------------


def test_a_full_clone_pool_on_the_template_does_not_spare_a_linked_pool_its_preparation(
        private_vcsim: VcsimServer, redis_client: redis.Redis) -> None:
    """Two pools on one template, the first cloning full (it needs no delta layer), the second
    linked: the second's clones still get the layer, and the full pool's own clones go on."""
    setup = make_setup(private_vcsim, service=OPTION)
    store, clock = Store(redis_client), FakeClock()
    full, linked = setup.pool(size=1, create_linked_clone=False), setup.pool(size=1)
    assert len(run(setup, store, full, clock).clones_started) == 1
    started = [name for _ in range(3) for name in run(setup, store, linked, clock).clones_started]
    layers = admin.template_state(setup.provider, TEMPLATE_PATH)
    assert layers is not None and layers[0] and set(layers[1]) == {1}, layers
    assert len(started) == 1


def test_templates_of_one_name_in_two_datacenters_are_each_prepared(
        vcsim_dir: Path, redis_client: redis.Redis) -> None:
    """``templates/vmpool-template`` in DC0 and in DC1 are two templates: a pool cloning from
    each gets its own template's layer. Before, the preparation was recorded by template name
    alone: DC0's, once done, said DC1's was done too, and DC1's "linked" clones copied every disk."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"two-dc-{secrets.token_hex(3)}.pem",
                     datacenters=2) as server:
        setup = make_setup(server, service=OPTION)
        store, clock = Store(redis_client), FakeClock()
        first, second = setup.pool(size=1), setup.pool(size=1, datacenter="DC1")
        started = {pool.name: [name for _ in range(3) for name in run(setup, store, pool, clock).clones_started]
                   for pool in (first, second)}
        for datacenter in (DATACENTER, "DC1"):
            layers = admin.template_state(setup.provider, f"{datacenter}/vm/{TEMPLATE}")
            assert layers is not None and layers[0] and set(layers[1]) == {1}, (datacenter, layers)
        assert all(len(names) == 1 for names in started.values()), started


def test_a_template_changed_while_being_prepared_is_still_made_a_template_again(
        private_vcsim: VcsimServer, redis_client: redis.Redis) -> None:
    """POST /config/pooltemplate while the pool's template was a VM for its reconfigure: the pool
    moves on to the new template, and the old one is still finished (a template again, with its
    layer) rather than left a VM that nobody's preparation reads any more."""
    setup = make_setup(private_vcsim, service=OPTION)
    store, clock, pool = Store(redis_client), FakeClock(), setup.pool(size=1)
    admin.copy_vm(setup.provider, TEMPLATE_PATH, f"{DATACENTER}/vm/templates", "next", template=True)
    held = run(setup, store, pool, clock)
    assert held.clones_started == [] and admin.template_state(setup.provider, TEMPLATE_PATH) == (False, [1])
    PoolOverrides(store).set("template", pool.name, "templates/next")
    started = [name for _ in range(3) for name in run(setup, store, pool, clock).clones_started]
    assert len(started) == 1
    assert admin.template_state(setup.provider, TEMPLATE_PATH) == (True, [1])
    # (Its disks are not compared: vcsim's clone resets the parent of a plain copy's disks.)
    assert (admin.template_state(setup.provider, f"{DATACENTER}/vm/templates/next") or (False,))[0]


def test_a_template_deleted_while_being_prepared_ends_the_preparation_and_the_pool_backs_off(
        private_vcsim: VcsimServer, redis_client: redis.Redis) -> None:
    """An admin deletes the template while it is a VM for its reconfigure: the preparation ends
    without acting on anything else, no pass fails, and the pool's clones fail as ``template``."""
    setup = make_setup(private_vcsim, service=OPTION)
    store, clock = Store(redis_client), FakeClock()
    admin.copy_vm(setup.provider, TEMPLATE_PATH, f"{DATACENTER}/vm/templates", "doomed", template=True)
    pool = setup.pool(size=1, template="templates/doomed")
    assert run(setup, store, pool, clock).clones_started == []
    admin.destroy(setup.provider, f"{DATACENTER}/vm/templates/doomed")
    reports = [run(setup, store, pool, clock) for _ in range(3)]
    assert TemplateStore(store).state(f"vsphere:{pool.template}") == DONE
    assert sum(len(report.clones_started) for report in reports) >= 1
    record = store.get_vm(next(name for report in reports for name in report.clones_started))
    assert record is not None and record.failure == FailureKind.TEMPLATE.value, record


def test_a_preparation_vcenter_never_ends_holds_the_pool_only_until_the_clone_timeout(
        private_vcsim: VcsimServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """vCenter's task on the template never ends (stuck, ours or an admin's): the pool's clones
    are held for ``timeout`` minutes at most, then it refills from the template as it is, the
    give-up logged and counted once, and the pool not looked at again soon for it; when vCenter
    is done at last, the preparation is still finished (a template with its layer) and recorded
    done."""
    setup = make_setup(private_vcsim, service={**OPTION, "timeout": 5})
    store, clock, pool = Store(redis_client), FakeClock(), setup.pool(size=1)
    real_status, stuck = setup.provider.task_status, [True]

    def task_status(ref: str) -> TaskStatus:
        return TaskStatus(TaskState.RUNNING) if stuck and templates.is_ref(ref) else real_status(ref)

    monkeypatch.setattr(setup.provider, "task_status", task_status)
    assert run(setup, store, pool, clock).clones_started == []
    planned_at = clock.now()
    started: list[str] = []
    while not started and clock.now() - planned_at < 15 * 60:
        started += run(setup, store, pool, clock).clones_started
        assert not started or clock.now() - planned_at >= 5 * 60, "gave up before the timeout"
    assert len(started) == 1, "the pool's refill still held after its timeout"
    later = [run(setup, store, pool, clock) for _ in range(2)]
    assert [name for report in later for name in report.clones_started] == []
    # Read on by every pass, but not a follow-up: the task that never ends would loop the passes.
    assert all(report.followups == 0 for report in later)
    documents = emf_documents(capsys.readouterr().out)
    assert counts_by_reason(documents, "TemplatePreparationFailures") == {"timeout": 1}
    # Service-wide too: the template-preparation-failures alarm's series.
    assert emitted(documents)[("TemplatePreparationFailures", ("service",))] == [1.0]
    stuck.clear()  # vCenter is done with the template at last
    for _ in range(3):
        run(setup, store, pool, clock)
    assert admin.template_state(setup.provider, TEMPLATE_PATH) == (True, [1])
    assert TemplateStore(store).state(f"vsphere:{pool.template}") == DONE


# --- the template changed while clones are in flight ------------------------------------------------


@pytest.fixture
def one_second_clones(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """Clone tasks that run 1 s (the VM is in its folder meanwhile)."""
    yield from delayed_clones(vcsim_dir, 1, "second")


def test_a_template_changed_with_clones_in_flight_refills_from_the_new_one_and_leaks_nothing(
        one_second_clones: VcsimServer, make_harness: HarnessFactory) -> None:
    """POST /config/pooltemplate while the pool's clone tasks run: the clones of the old template
    are drained (destroyed once vCenter is done with them), the pool refills from the new one,
    and nothing is left in the folder but the pool's ready VMs. (The old template is an admin's
    copy: vcsim powers on only the clones of its own template.)"""
    harness = pool_harness(make_harness, one_second_clones, size=2, template="templates/older",
                           service={"task_limit": 2, "experimental_features": True})
    admin.copy_vm(harness.provider, TEMPLATE_PATH, f"{DATACENTER}/vm/templates", "older", template=True)
    old = set(harness.reconcile(POOL).clones_started)
    assert len(old) == 2
    reply = harness.post("/api/v3/config/pooltemplate", {POOL: TEMPLATE})
    assert reply.status == 201, reply.raw
    converge(harness, 2)
    ready = harness.hosts(POOL, "ready")
    assert not ready & old
    for name in ready:
        details = admin.vm_details(harness.provider, f"{DATACENTER}/vm/{harness.pool(POOL).folder}/{name}")
        assert details is not None and json.loads(details["annotation"])["template"] == TEMPLATE


def test_pools_sharing_a_template_passing_at_once_prepare_it_once(
        private_vcsim: VcsimServer, redis_client: redis.Redis) -> None:
    """Four pools on one template, their first passes at the same moment (each its own
    provider object, as separate Lambdas have): one delta layer, a template again, every pool
    filled, no pass failed. (Each pool passes again at once when held: the lease is free soon.)"""
    store = Store(redis_client)
    setups = [make_setup(private_vcsim, service=OPTION) for _ in range(4)]
    pools = [setup.pool(size=1) for setup in setups]
    clocks = [FakeClock() for _ in setups]
    barrier = threading.Barrier(len(setups))

    def passes(index: int) -> list[str]:
        barrier.wait()
        setup, pool, clock = setups[index], pools[index], clocks[index]
        started: list[str] = []
        for _ in range(30):  # a pass held while another holds the template's lease comes back
            started += run(setup, store, pool, clock).clones_started
            if started:
                break
        return started

    with ThreadPoolExecutor(len(setups)) as executor:
        started = list(executor.map(passes, range(len(setups))))
    assert admin.template_state(setups[0].provider, TEMPLATE_PATH) == (True, [1])
    assert [len(names) for names in started] == [1] * len(setups)


def test_pools_sharing_a_template_vcenter_never_prepares_give_it_up_once_and_all_refill(
        private_vcsim: VcsimServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Three pools on one template whose preparation never ends, their passes at the same moment
    once it has outlasted the clone timeout: the give-up is counted once and every pool fills."""
    store, clock = Store(redis_client), FakeClock()
    setups = [make_setup(private_vcsim, service={**OPTION, "timeout": 5}) for _ in range(3)]
    for setup in setups:
        monkeypatch.setattr(setup.provider, "task_status", lambda ref, real=setup.provider.task_status: (
            TaskStatus(TaskState.RUNNING) if templates.is_ref(ref) else real(ref)))
    pools = [setup.pool(size=1) for setup in setups]
    assert reconcile_pool(store, setups[0].provider, pools[0], clock, setups[0].service).clones_started == []
    clock.advance(5 * 60)
    barrier = threading.Barrier(len(setups))

    def passes(index: int) -> list[str]:
        barrier.wait()
        started: list[str] = []
        for _ in range(30):  # a pass held while another holds the lease, before the give-up, comes back
            started += reconcile_pool(store, setups[index].provider, pools[index], clock,
                                      setups[index].service).clones_started
            if started:
                break
        return started

    with ThreadPoolExecutor(len(setups)) as executor:
        started = list(executor.map(passes, range(len(setups))))
    assert [len(names) for names in started] == [1] * len(setups)
    assert counts_by_reason(emf_documents(capsys.readouterr().out), "TemplatePreparationFailures") == {"timeout": 1}


# --- vCenter paused in the middle of clones ------------------------------------------------------------


def test_vcenter_paused_mid_clone_fails_passes_as_timeouts_then_converges_without_leaks(
        one_second_clones: VcsimServer, make_harness: HarnessFactory) -> None:
    """vcsim SIGSTOPped while the pool's clone tasks run (a vCenter frozen by its storage, a VM
    of it suspended): each pass ends as a timeout instead of hanging, and once it runs again the
    pool converges with neither a lost nor a doubled VM."""
    harness = pool_harness(make_harness, one_second_clones, size=2, service={"task_limit": 2},
                           provider={"call_timeout": 1, "connect_timeout": 1})
    assert len(harness.reconcile(POOL).clones_started) == 2
    one_second_clones.pause()  # every thread stopped: Go's others answered the first calls meanwhile
    try:
        for _ in range(2):
            harness.clock.advance(60)
            with pytest.raises(ProviderError) as paused:
                harness.reconcile(POOL)
            assert paused.value.kind in (FailureKind.TIMEOUT, FailureKind.CONNECTION), paused.value
    finally:
        one_second_clones.resume()
    converge(harness, 2)


def test_a_disk_task_id_vcenter_gave_to_another_task_does_not_read_as_the_disk_added(
        private_vcsim: VcsimServer) -> None:
    """A disk added to a VM (its task recorded for the user's GET /vm), vCenter restarted empty,
    and the same id given to another VM's disk task: reading ours must not say the disk was added."""
    setup = make_setup(private_vcsim)
    provider = setup.provider
    pool = setup.pool(folder="vmpool/disk-a")
    admin.copy_vm(provider, TEMPLATE_PATH, f"{DATACENTER}/vm/vmpool/disk-a", "ours", template=False)
    ref = provider.add_disk(pool, "ours", 1)
    task_id = ref.split(":")[1]
    restart_empty(private_vcsim, setup)
    other = setup.pool(folder="vmpool/disk-b")
    for attempt in range(5):
        admin.copy_vm(provider, TEMPLATE_PATH, f"{DATACENTER}/vm/vmpool/disk-b", f"theirs-{attempt}",
                      template=False)
        if provider.add_disk(other, f"theirs-{attempt}", 1).split(":")[1] == task_id:
            break
    else:
        pytest.fail(f"the premise: vCenter gives {task_id} to another disk task")
    assert provider.task_status(ref).state is TaskState.ERROR


def test_a_migration_task_id_vcenter_gave_to_another_task_does_not_read_as_the_vm_moved(
        private_vcsim: VcsimServer) -> None:
    """A checked-out VM's migration started (its task recorded for the next pass), vCenter
    restarted empty, and the same id given to another VM's disk task: reading the migration must
    not say the VM moved (the pass would record a host and ``migrated`` that are not true)."""
    setup = make_setup(private_vcsim)
    provider = setup.provider
    pool = setup.pool()
    admin.wait_task(provider, provider.clone(pool, "moving"))
    [placed] = [vm.host for vm in provider.list_vms(pool)]
    assert placed is not None
    admin.set_maintenance(provider, placed, True)  # its host is not eligible: it moves
    moving = provider.start_migration(pool, "moving")
    assert moving is not None and moving.to_host != placed, moving
    task_id = moving.task_ref.split(":")[1]
    restart_empty(private_vcsim, setup)
    admin.copy_vm(provider, TEMPLATE_PATH, f"{DATACENTER}/vm/vmpool/other", "theirs", template=False)
    other = setup.pool(folder="vmpool/other")
    for _ in range(20):
        if provider.add_disk(other, "theirs", 1).split(":")[1] == task_id:
            break
    else:
        pytest.fail(f"the premise: vCenter gives {task_id} to another disk task")
    assert provider.task_status(moving.task_ref).state is TaskState.ERROR
