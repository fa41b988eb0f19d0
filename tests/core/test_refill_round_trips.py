"""A pass that replaces many VMs costs the Redis round trips of a pass that replaces one (issue
14 item 3): on a small pool under checkout load every returned VM is destroyed and replaced, so
the pool holds only while its refill keeps up, and each round trip of a pass is time the pool
stays short.

Each step makes one provider call and one round trip per kind of change for all the VMs it acts
on (every clone task asked about at once, every finished clone noted at once, every booted VM
moved to ready in one pipeline of conditional moves, every destroy started at once...). Counted
on the client's sockets, with the dummy provider, whose VMs live in the same Redis, so its own
calls count too.
"""

from __future__ import annotations

from tests.harness import Harness, HarnessFactory
from tests.support import RedisRoundTrips

CONFIG = """\
config: {task_limit: 20, prefix: "ci-"}
providers:
  dummy: {provider_class: dummy, seed: 3, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: alpha, size: 20, provider: dummy}
"""


def return_and_refill(world: Harness, returned: int) -> list[int]:
    """Check out ``returned`` VMs and give them back; the round trips of each pass until the
    pool is full again with none of them left."""
    given_back = world.check_out("alpha", returned)
    for hostname in given_back:
        assert world.delete(f"/api/v3/vm/{hostname}").status == 200
    trips: list[int] = []
    for _ in range(5):
        world.clock.advance(1)
        with RedisRoundTrips() as sent:
            report = world.reconcile("alpha")
        trips.append(sent.count)
        if not report.work_in_flight:
            break
    assert world.count("alpha", "ready") == 20
    assert not set(given_back) & (world.provider_vms("alpha") | world.hosts("alpha", "completed"))
    return trips


def refill_round_trips(make_world: HarnessFactory, returned: int) -> list[int]:
    world = make_world(CONFIG)
    world.fill("alpha")
    world.settle("alpha", seconds=1)
    return_and_refill(world, 1)  # every script the refill runs is loaded in Redis from here on
    return return_and_refill(world, returned)


def test_a_pass_replacing_many_vms_costs_the_round_trips_of_a_pass_replacing_one(
        make_world: HarnessFactory) -> None:
    one = refill_round_trips(make_world, 1)
    fifteen = refill_round_trips(make_world, 15)

    assert len(one) == 2  # destroys and clones started, and the clones ready (instant); destroys done
    assert fifteen == one


def test_a_redis_without_the_scripts_still_moves_each_vm_once(make_world: HarnessFactory) -> None:
    """A new primary after a failover knows none of the scripts: the calls of a pipeline that
    Redis refused (NOSCRIPT) run again once the script is loaded, and no other call runs twice."""
    world = make_world(CONFIG)
    world.fill("alpha")
    world.settle("alpha", seconds=1)
    given_back = world.check_out("alpha", 5)
    for hostname in given_back:
        assert world.delete(f"/api/v3/vm/{hostname}").status == 200

    reports = []
    for _ in range(2):
        world.client.script_flush()
        world.clock.advance(1)
        reports.append(world.reconcile("alpha"))

    refilled, destroyed = reports
    assert len(refilled.clones_started) == 5  # instant clones: made ready in the same pass
    assert sorted(refilled.became_ready) == sorted(refilled.clones_started)
    assert sorted(destroyed.destroyed) == sorted(given_back)
    assert world.count("alpha", "ready") == 20 and world.store.cloning_count() == 0
    assert all(world.store.get_vm(host).raw.get("clone_task") for host in refilled.became_ready)




def test_each_round_of_instant_clones_costs_six_round_trips(make_world: HarnessFactory) -> None:
    """Instant clones are refilled in rounds of the task limit within a pass (manager/rounds.py).
    A round: the provider's clone tasks and VMs read at once (Provider.clone_outcomes), one
    write noting the clones done by their moves to ready (Store.note_pending), the reservation,
    the mark that the provider is being asked (``clone_asked``: a run killed after the call keeps
    the slot counted, docs/reliability.md), the clones' start and the notes of their tasks; the
    records of the clones it follows are the ones the pass wrote, not read back. Main at 8a38472
    made 8 (records, tasks, the finish, the VMs, the moves: 25 and 41 round trips here)."""
    world = make_world(CONFIG.replace("task_limit: 20", "task_limit: 5"))
    world.fill("alpha")
    world.settle("alpha", seconds=1)
    return_and_refill(world, 1)  # every script loaded

    one_round = return_and_refill(world, 5)
    three_rounds = return_and_refill(world, 15)

    assert three_rounds[0] - one_round[0] == 2 * 6
    # The destroys' pass: no rounds; its last write (a round trip of its own here) forgets the
    # returned VMs' next looks (manager/running.py).
    assert one_round[1] == three_rounds[1] == 13


def test_a_refill_pass_reads_its_counts_with_what_it_reads_or_writes_anyway(make_world: HarnessFactory) -> None:
    """The pass's fixed round trips: the pool's counts come with its open on-demand requests
    (one ZRANGE more in the same pipeline) and, at the end, with the pass's last writes (the
    pool's last boot time, the day's durations) instead of a round trip each (the clone round's
    ``clone_asked`` mark is one more since 64f22b9). Main at 8a38472:
    [25, 13] (the counts read twice on their own, the last boot and the durations). The
    destroys' pass stays at 13: its last write forgets the returned VMs' next looks."""
    world = make_world(CONFIG.replace("task_limit: 20", "task_limit: 5"))
    world.fill("alpha")
    world.settle("alpha", seconds=1)
    return_and_refill(world, 1)  # every script loaded

    assert return_and_refill(world, 5) == [20, 13]
