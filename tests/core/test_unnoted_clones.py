"""A pass that died between reserving clones and noting their tasks, on a fake clock: whether the
provider was asked for each clone (``pending.CLONE_ASKED``, noted just before the call) decides
how long its task_limit slot stays counted. Never asked: the place is given back after
``CLONE_START_GRACE_SECONDS``. Asked: the provider may be cloning it, however slowly, so the
slot stays counted until its VM shows (then it goes on as a finished clone), or the provider
says it makes no such clone (the dummy can tell), or, when it cannot tell (vSphere), the pool's
timeout. On the dummy (one call for a batch) and on vcsim (one call a clone: a batch's later
names were never asked when the pass died after its first)."""

from __future__ import annotations

import dataclasses
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, ContextManager, Iterator, Sequence
from xml.parsers.expat import ExpatError

import pytest
import redis

from chalicelib.config import parse
from chalicelib.manager.pending import CLONE_ASKED, CLONE_START_GRACE_SECONDS
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.manager.runner import LEASE_SECONDS, RunReport, run_pool
from chalicelib.providers.base import AnswerLost, ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import clone as vsphere_clone
from chalicelib.store.connection import ReplyLost, connect
from tests.chaos.fleet import tasks_running
from tests.chaos.test_crash_every_write import leases_run_out
from tests.core.slow_clones import CONFIG, LIMIT
from tests.harness import Harness, HarnessFactory, Killed, assert_consistent, fused_services
from tests.support import eventually, free_ports, unanswered_port
from tests.vsphere.vcsim import VcsimServer, make_setup, vcsim_config
from tools.vcsim import launcher


def killed_at(world: Harness, checkpoint: str, pool: str = "alpha") -> set[str]:
    """A pass of ``pool`` killed at ``checkpoint`` (``name#n``: its n-th time); returns the VMs it
    left pending."""
    name, _, count = checkpoint.partition("#")
    seen: list[str] = []

    def kill(step: str) -> None:
        seen.append(step)
        if step == name and seen.count(name) == int(count or 1):
            raise Killed(step)

    with pytest.raises(Killed):
        world.reconcile(pool, kill)
    return world.hosts(pool, "pending")


@pytest.fixture
def world(make_harness: HarnessFactory) -> Harness:
    return make_harness(parse(CONFIG))


def test_a_clone_asked_and_never_noted_keeps_its_slot_until_its_vm_shows(world: Harness) -> None:
    """Killed once the provider took both clones, before their tasks were noted: past the start
    grace they keep their place and their slots (before, both were given up at 120 s and two
    more clones started while the provider still made these: 4 under task_limit 2); once their
    VMs show they go on as finished clones and become ready, nothing cloned twice."""
    asked = killed_at(world, "clone_started")
    assert len(asked) == LIMIT and all(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in asked)
    world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    report = world.reconcile("alpha")
    assert report.clones_started == [] and report.completed == {}
    assert world.hosts("alpha", "pending") == asked and world.store.cloning_count() == LIMIT
    assert tasks_running(world, "clone") == LIMIT
    world.clock.advance(200 - CLONE_START_GRACE_SECONDS)  # the clones end; their VMs show
    world.settle("alpha")
    assert world.hosts("alpha", "ready") == asked == world.provider_vms("alpha")
    assert world.store.cloning_count() == 0 and tasks_running(world, "clone") == 0


def test_a_clone_reserved_and_never_asked_gives_its_place_back_after_the_grace(world: Harness) -> None:
    """Killed before the provider was asked: no mark, so the place and the slot come back after
    the start grace, as before."""
    reserved = killed_at(world, "reserved")
    assert len(reserved) == LIMIT and not any(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in reserved)
    world.clock.advance(CLONE_START_GRACE_SECONDS - 1)
    assert world.reconcile("alpha").clones_started == []
    world.clock.advance(2)
    report = world.reconcile("alpha")
    assert set(report.completed) == reserved and len(report.clones_started) == LIMIT
    assert tasks_running(world, "clone") == LIMIT
    world.clock.advance(200)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and not reserved & world.hosts("alpha", "ready")


def test_a_clone_asked_but_never_sent_gives_its_place_back_when_the_provider_has_no_such_clone(
        world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed between the mark and the provider's call: the dummy can say it makes no such
    clone, so past the start grace the place and the slot come back (one provider call for
    them); nothing leaks in the provider."""
    asked = killed_at(world, "clone_asked")
    assert len(asked) == LIMIT and tasks_running(world, "clone") == 0
    world.clock.advance(CLONE_START_GRACE_SECONDS - 1)
    assert world.reconcile("alpha").clones_started == [] and world.hosts("alpha", "pending") == asked
    asked_of_provider: list[list[str]] = []
    under_way = world.provider.clones_under_way
    monkeypatch.setattr(world.provider, "clones_under_way",
                        lambda pool, names: asked_of_provider.append(sorted(names)) or under_way(pool, names))
    world.clock.advance(2)
    report = world.reconcile("alpha")
    assert set(report.completed) == asked and len(report.clones_started) == LIMIT
    assert asked_of_provider == [sorted(asked)]
    world.clock.advance(200)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and world.store.cloning_count() == 0


def test_a_clone_asked_of_a_template_the_pool_left_is_not_asked_of_the_provider(
        world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed once the provider took both clones, before their tasks were noted; then the pool's
    template changes. vSphere finds an unnoted clone among the tasks of the pool's template (the
    new one: it would say "none under way" of the old template's clones), so the provider is not
    asked of them: their slots stay held as when it cannot tell (up to the pool's timeout, or
    until their VMs show), never more than task_limit clones at the provider."""
    asked = killed_at(world, "clone_started")
    world.services.use_config(parse(CONFIG.replace("provider: dummy}", "provider: dummy, template: other}")))
    asked_of_provider: list[list[str]] = []

    def new_template_only(pool: object, names: list[str]) -> dict[str, str]:
        asked_of_provider.append(sorted(names))
        return {}

    monkeypatch.setattr(world.provider, "clones_under_way", new_template_only)
    for _ in range(4):  # to 180 s: past the start grace, the clones (200 s) still running
        world.clock.advance(45)
        world.reconcile("alpha")
        assert tasks_running(world, "clone") == LIMIT and world.store.cloning_count() == LIMIT
    assert not any(set(names) & asked for names in asked_of_provider)
    world.clock.advance(30)  # their VMs show: the slots come back, the pool refills
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and not asked & world.provider_vms("alpha")


def test_a_clone_asked_slower_than_the_pool_timeout_keeps_its_slot_until_it_ends(make_harness: HarnessFactory) -> None:
    """Clones of 400 s under a 5 minute timeout, killed before their tasks were noted: at the
    timeout they leave service, but the provider still makes them, so their slots stay held
    (never more than task_limit clones at the provider) until their VMs show; then destroyed."""
    world = make_harness(parse(CONFIG.replace("createvm_min_time: 200, createvm_max_time: 200",
                                              "createvm_min_time: 400, createvm_max_time: 400")))
    asked = killed_at(world, "clone_started")
    for _ in range(9):  # to 450 s
        world.clock.advance(50)
        world.reconcile("alpha")
        assert tasks_running(world, "clone") + len(world.hosts("alpha", "ready")) <= LIMIT
        if world.clock.now() - world.store.get_vm(sorted(asked)[0]).clone_start < 400:
            assert world.store.cloning_count() == LIMIT
    assert not asked & (world.hosts("alpha", "ready") | world.hosts("alpha", "pending"))
    world.services.use_config(parse(CONFIG))  # clones within the timeout again: the pool can fill
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and not asked & world.provider_vms("alpha")


def test_a_pass_paused_past_the_grace_before_its_clone_call_clones_nothing_given_up(world: Harness) -> None:
    """A pass paused between reserving and asking (past the start grace) while another pass
    gives its names up and clones two more: the paused pass, resumed, asks for none of the
    names given up (their marks refused), so the provider never runs more than task_limit."""
    services = world.services
    pool = services.config.pool("alpha")
    assert pool is not None
    others: list[list[str]] = []

    def meanwhile(step: str) -> None:
        if step == "reserved" and not others:
            world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
            others.append(world.reconcile("alpha").clones_started)

    reconcile_pool(services.store, world.provider, pool, world.clock, services.config.service, meanwhile)
    assert len(others[0]) == LIMIT
    assert tasks_running(world, "clone") == LIMIT and services.store.cloning_count() == LIMIT
    assert_consistent(world, "alpha")


@pytest.mark.parametrize("frozen_in", ["checkpoint", "mark"])
def test_a_run_frozen_before_its_clone_mark_marks_nothing_once_another_run_took_the_pool(
        world: Harness, monkeypatch: pytest.MonkeyPatch, frozen_in: str) -> None:
    """A leased run (``run_pool``) frozen just before it marks its clones asked (a stopped
    process, a frozen Lambda), woken once its lease ran out and another run took the pool: at
    its checkpoint before the mark (``checkpoint``: the renewal there finds the lease lost), or
    between that checkpoint and the mark's round trip (``mark``: lua/clone_asked.lua compares the
    pool's lease with the run's), it marks nothing, and clones nothing: the run that took the
    pool gave the names it reserved back at once (never asked, and their run's lease lost:
    tests/core/test_reservation_lease.py) and cloned the pool's two itself, so no name is both
    given back and cloned, never more than task_limit clones at the provider. Before, the woken
    run marked them and only then found its lease lost: asked but never cloned, their slots held
    until a provider that cannot tell (as vSphere when it cannot read the template's tasks)
    reached the pool's timeout (5 minutes here), the pool short all that time."""
    frozen = fused_services(world, None)  # the frozen run's own process
    mark = frozen.store.mark_clones_asked
    taken_over: list[RunReport] = []
    frozen_reserved: list[set[str]] = []

    def take_over() -> None:
        frozen_reserved.append(world.hosts("alpha", "pending"))
        world.clock.advance(LEASE_SECONDS + 1)
        leases_run_out(world.client)
        taken_over.append(run_pool(world.services, "alpha", 0.0))

    def checkpoint(step: str) -> None:
        if frozen_in == "checkpoint" and step == "clone_asking":
            take_over()

    def mark_after_takeover(pool: str, hostnames: Sequence[str], now: float, lease: str | None,
                            placement: str = "") -> list[str]:
        if frozen_in == "mark":
            take_over()
        return mark(pool, hostnames, now, lease, placement)

    monkeypatch.setattr(frozen.store, "mark_clones_asked", mark_after_takeover)
    monkeypatch.setattr(world.provider, "clones_under_way", lambda pool, names: None)  # cannot tell
    try:
        report = run_pool(frozen, "alpha", 0.0, checkpoint)
    finally:
        frozen.client.close()
    (reserved,) = frozen_reserved
    assert taken_over and taken_over[0].leased and not taken_over[0].failures and len(reserved) == LIMIT
    assert report.failures and "lease" in report.failures[0], report
    refilled = taken_over[0].passes[0]
    assert set(refilled.completed) == reserved and len(refilled.clones_started) == LIMIT
    assert not any(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in reserved)
    assert tasks_running(world, "clone") == LIMIT  # the taking run's: the frozen one cloned none
    world.clock.advance(200)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") == set(refilled.clones_started)
    assert world.store.cloning_count() == 0


# --- a clone call whose answer was lost -------------------------------------------------------------


def answers_lost(world: Harness, monkeypatch: pytest.MonkeyPatch, run: bool,
                 error: redis.RedisError | None = None) -> list[str]:
    """The dummy's next write (a fresh pool's first: its clones) ends in a Redis timeout (or
    ``error``), after the script ran (``run``: the answer lost, the clones under way) or before
    it (nothing written); later writes go through. Returns a list that gets "lost" once the fault
    was used."""
    script = world.provider._write_vms
    used: list[str] = []

    def write(**kwargs: object) -> object:
        if used:
            return script(**kwargs)
        used.append("lost")
        if run:
            script(**kwargs)
        raise error or redis.TimeoutError("Timeout reading from socket")

    monkeypatch.setattr(world.provider, "_write_vms", write)
    return used


@pytest.mark.parametrize("lost", [redis.TimeoutError("Timeout reading from socket"),
                                  ReplyLost("Connection closed by server.")], ids=["timeout", "closed"])
def test_a_clone_call_whose_answer_was_lost_keeps_its_slot_and_its_vm_is_taken_on(
        world: Harness, monkeypatch: pytest.MonkeyPatch, lost: redis.RedisError) -> None:
    """The provider ran both clones and its answer was lost (a timeout): the clones stay pending
    with their slots (before, both were taken out of service as failed to start, their slots
    freed, and the next pass started two more while the provider still made these: 4 clones under
    task_limit 2, the first two's VMs destroyed by name); once their VMs show
    they go on as finished clones and become ready, nothing cloned twice."""
    used = answers_lost(world, monkeypatch, run=True, error=lost)
    report = world.reconcile("alpha")
    assert used and report.clones_started == [] and report.completed == {}
    assert {failure.kind for failure in report.clone_failures.values()} == {FailureKind.CONNECTION}
    asked = world.hosts("alpha", "pending")
    assert len(asked) == LIMIT and all(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in asked)
    for _ in range(4):  # past the start grace, within the clones' 200 s
        world.clock.advance(45)
        report = world.reconcile("alpha")
        assert report.clones_started == [] and report.completed == {}
        assert world.store.cloning_count() == LIMIT and tasks_running(world, "clone") == LIMIT
    world.clock.advance(30)  # the clones end; their VMs show
    world.settle("alpha")
    assert world.hosts("alpha", "ready") == asked == world.provider_vms("alpha")
    assert world.store.cloning_count() == 0 and tasks_running(world, "clone") == 0


def test_a_clone_call_that_failed_before_the_provider_ran_it_gives_its_slot_back_after_the_grace(
        world: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same timeout, the clones never written: the service cannot tell at once, so the slots
    stay for the start grace; then the dummy says it makes no such clone, and the places come
    back (two clones started); nothing leaks in the provider."""
    used = answers_lost(world, monkeypatch, run=False)
    world.reconcile("alpha")
    asked = world.hosts("alpha", "pending")
    assert used and len(asked) == LIMIT and tasks_running(world, "clone") == 0
    world.clock.advance(CLONE_START_GRACE_SECONDS - 1)
    assert world.reconcile("alpha").clones_started == [] and world.store.cloning_count() == LIMIT
    world.clock.advance(2)
    report = world.reconcile("alpha")
    assert set(report.completed) == asked and len(report.clones_started) == LIMIT
    world.clock.advance(200)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and not asked & world.provider_vms("alpha")


@contextmanager
def refused_port() -> Iterator[int]:
    (port,) = free_ports(1)
    yield port


@pytest.mark.parametrize("unreachable", [refused_port, unanswered_port], ids=["refused", "connect_timed_out"])
def test_a_clone_call_whose_connection_was_never_opened_gives_its_slot_back_at_once(
        world: Harness, unreachable: Callable[[], ContextManager[int]]) -> None:
    """The dummy's Redis refused the connection of its clone write (nothing listening there), or
    never answered it (the connect timed out): the script was never sent, so nothing was cloned.
    A plain failure: the VMs leave service and their slots come back at once; the next pass, the
    write working again, clones two more. Before, it was a lost answer: both held their places
    for the start grace, as if the provider might be making them (a connect timeout still was,
    told from a timeout after the send only by the message)."""
    script = world.provider._write_vms
    with unreachable() as port:
        config = dataclasses.replace(world.services.config.redis, socket_timeout=0.5)
        world.provider._write_vms = connect(config, url=f"redis://127.0.0.1:{port}").register_script(script.script)
        report = world.reconcile("alpha")
    assert report.clones_started == [] and len(report.clone_failures) == LIMIT
    assert {failure.kind for failure in report.clone_failures.values()} == {FailureKind.CONNECTION}
    assert world.hosts("alpha", "pending") == set() and world.store.cloning_count() == 0
    assert set(report.completed) == set(report.clone_failures)
    world.provider._write_vms = script
    world.clock.advance(1)
    assert len(world.reconcile("alpha").clones_started) == LIMIT
    world.clock.advance(200)
    world.settle("alpha")
    assert world.provider_vms("alpha") == world.hosts("alpha", "ready") and world.store.cloning_count() == 0


# --- vSphere (vcsim): one call a clone ------------------------------------------------------------------


def vsphere_world(make_harness: HarnessFactory, vcsim: VcsimServer, name: str) -> Harness:
    pool = {"name": name, "size": 2, "folder": f"vmpool/{name}-{secrets.token_hex(3)}", "ready_check": "tools"}
    return make_harness(vcsim_config(vcsim, [pool], service={"task_limit": 2, "timeout": 5}))


def vsphere_whole(world: Harness, pool: str) -> set[str]:
    """Passes (15 s apart on the clock; vcsim boots guests on its own) until the pool is full of
    ready VMs, nothing else in it or in its folder, no slot counted; returns its ready VMs."""

    def whole() -> bool:
        world.clock.advance(15)
        world.reconcile(pool)
        ready = world.hosts(pool, "ready")
        return (len(ready) == 2 and not any(world.hosts(pool, state) for state in ("pending", "completed"))
                and world.store.cloning_count() == 0
                and {vm.name for vm in world.provider.list_vms(world.pool(pool))} == ready)

    eventually(whole, 60, f"{pool} whole", interval=0.1)
    return world.hosts(pool, "ready")


def test_vsphere_a_batch_killed_after_its_first_clone_holds_only_the_asked_one(make_harness: HarnessFactory,
                                                                               vcsim: VcsimServer) -> None:
    """vSphere clones one VM a call, each marked just before its call: killed once vCenter
    answered the first, the second was never asked and gives its place back after the start
    grace; the first, made, goes on as a finished clone."""
    world = vsphere_world(make_harness, vcsim, "unnoted-first")
    pending = killed_at(world, "clone_started#1", "unnoted-first")
    asked = {host for host in pending if world.store.get_vm(host).raw.get(CLONE_ASKED)}
    assert len(pending) == LIMIT and len(asked) == 1
    world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    report = world.reconcile("unnoted-first")
    assert set(report.completed) == pending - asked
    assert asked <= vsphere_whole(world, "unnoted-first")


def test_vsphere_a_clone_asked_and_never_sent_gives_its_place_back_once_vcenter_says_it_makes_none(
        make_harness: HarnessFactory, vcsim: VcsimServer) -> None:
    """Killed between the second clone's mark and its call: its place and slot stay taken within
    the start grace (vCenter may be making it); past it, vCenter has no clone task naming it
    (its template's tasks and their events), so the next pass takes it out of service and its
    slot is free at once, and the pool is whole again. Before, vCenter could not tell: the slot
    stayed taken up to the pool's timeout (5 minutes here, 15 by default)."""
    world = vsphere_world(make_harness, vcsim, "unnoted-second")
    pending = killed_at(world, "clone_asked#2", "unnoted-second")
    assert all(world.store.get_vm(host).raw.get(CLONE_ASKED) for host in pending) and len(pending) == LIMIT
    (unsent,) = pending - {vm.name for vm in world.provider.list_vms(world.pool("unnoted-second"))}
    world.clock.advance(CLONE_START_GRACE_SECONDS - 1)
    report = world.reconcile("unnoted-second")
    assert report.completed == {} and report.clones_started == []
    assert unsent in world.hosts("unnoted-second", "pending") and world.store.cloning_count() == 1
    world.clock.advance(2)
    report = world.reconcile("unnoted-second")
    assert report.completed == {unsent: "clone asked for but not made by the provider "
                                        "(its pass was interrupted before noting its task)"}
    assert len(report.clones_started) == 1  # its slot free again, in the same pass
    assert unsent not in vsphere_whole(world, "unnoted-second")


@pytest.fixture
def slow_to_answer_vcsim(vcsim_dir: Path, tmp_path: Path) -> Iterator[VcsimServer]:
    """A simulator that answers CloneVM_Task after 4 s (and then clones), past a 2 s call timeout."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"slow-answer-{secrets.token_hex(3)}.pem",
                     log_path=tmp_path / "vcsim.log", method_delays={"CloneVM_Task": 4.0}) as server:
        yield server


def test_vsphere_a_clone_whose_answer_timed_out_is_taken_on_once_its_vm_shows(
        make_harness: HarnessFactory, slow_to_answer_vcsim: VcsimServer) -> None:
    """CloneVM_Task sent, its answer not in within the call timeout: vCenter clones all the same.
    The VM stays pending, asked, its slot counted, and is the pool's once it shows (before, it was
    taken out of service as failed to start, a second clone was asked for its place, and the
    first's VM, landing later, was found as a stray and destroyed)."""
    name = "lost-answer"
    folder = f"vmpool/{name}-{secrets.token_hex(3)}"
    world = make_harness(vcsim_config(slow_to_answer_vcsim, [{"name": name, "size": 1, "folder": folder,
                                                              "ready_check": "tools"}],
                                      service={"task_limit": 2, "timeout": 5}, provider={"call_timeout": 2}))
    report = world.reconcile(name)
    assert [failure.kind for failure in report.clone_failures.values()] == [FailureKind.TIMEOUT]
    (asked,) = world.hosts(name, "pending")
    assert world.store.get_vm(asked).raw.get(CLONE_ASKED) and report.completed == {}
    eventually(lambda: {vm.name for vm in world.provider.list_vms(world.pool(name))} == {asked}, 30,
               "vCenter to make the clone whose answer was lost", interval=0.2)
    started: list[str] = []

    def ready() -> bool:
        world.clock.advance(15)
        report = world.reconcile(name)
        started.extend(report.clones_started)
        assert report.completed == {} and report.discovered == []
        return world.hosts(name, "ready") == {asked}

    eventually(ready, 30, "the clone taken on", interval=0.1)
    assert started == [] and world.store.cloning_count() == 0
    assert {vm.name for vm in world.provider.list_vms(world.pool(name))} == {asked}


def test_vsphere_a_clone_whose_answer_was_lost_and_that_vcenter_refused_gives_its_slot_back_after_the_grace(
        make_harness: HarnessFactory, slow_to_answer_vcsim: VcsimServer) -> None:
    """CloneVM_Task sent, its answer (a refusal: NoPermission on the folder) not in within the
    call timeout: a lost answer, the VM pending with its slot. vCenter has no clone task naming
    it, so the first pass past the start grace gives the slot back and asks for a clone again.
    Before, the slot stayed taken up to the pool's timeout (a hung vCenter that lost a few
    answers left the pool refilling at a fraction of its task_limit for 15 minutes)."""
    name = "lost-refused"
    folder = f"vmpool/{name}-{secrets.token_hex(3)}/{launcher.NO_CLONE_FOLDER}"
    world = make_harness(vcsim_config(slow_to_answer_vcsim, [{"name": name, "size": 1, "folder": folder}],
                                      service={"task_limit": 2, "timeout": 5}, provider={"call_timeout": 2}))
    report = world.reconcile(name)
    assert [failure.kind for failure in report.clone_failures.values()] == [FailureKind.TIMEOUT]
    (asked,) = world.hosts(name, "pending")
    assert world.store.get_vm(asked).raw.get(CLONE_ASKED) and world.store.cloning_count() == 1
    world.clock.advance(CLONE_START_GRACE_SECONDS + 1)
    report = world.reconcile(name)
    assert asked in report.completed and asked not in world.hosts(name, "pending")
    assert len(report.clones_started) + len(report.clone_failures) == 1  # asked again, in its place


def test_vsphere_a_clone_call_that_timed_out_before_clonevm_task_was_sent_started_nothing(
        private_vcsim: VcsimServer) -> None:
    """vCenter hung from the clone call's first lookup (the template), before CloneVM_Task: a
    plain timeout, not a lost answer, so the manager gives the place back at once."""
    setup = make_setup(private_vcsim, call_timeout=1)
    pool = setup.pool(size=1)
    setup.provider.list_vms(pool)  # a warm connection: the clone's first call is sent on it
    private_vcsim.pause()
    try:
        with pytest.raises(ProviderError) as raised:
            setup.provider.clone(pool, f"never-{secrets.token_hex(3)}")
    finally:
        private_vcsim.resume()
    assert raised.value.kind is FailureKind.TIMEOUT and not isinstance(raised.value, AnswerLost)


def test_vsphere_a_clone_whose_task_reference_came_back_unreadable_is_a_lost_answer(
        vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """CloneVM_Task went through, then the next answer (the task's queue time) was not SOAP (a
    proxy's HTML page with status 500: pyVmomi's ExpatError): vCenter clones, so the call is a
    lost answer, of kind connection. Before, the ExpatError escaped the provider as no
    ProviderError at all (the pass stopped on an uncaught exception)."""
    setup = make_setup(vcsim)
    pool = setup.pool(size=1)

    def unreadable(*args: object) -> str:
        raise ExpatError("syntax error: line 1, column 0")

    monkeypatch.setattr(vsphere_clone.tasks, "read_tasks", unreadable)
    name = f"unread-{secrets.token_hex(3)}"
    with pytest.raises(AnswerLost) as raised:
        setup.provider.clone(pool, name)
    assert raised.value.kind is FailureKind.CONNECTION
    eventually(lambda: name in {vm.name for vm in setup.provider.list_vms(pool)}, 30, "the clone made")
