"""The local stack SIGKILLed mid-pass and started again on its state directory: its pools serve
again within seconds (not after the dead stack's leases expire, a minute), with exactly the VMs
they had in vCenter and their DNS records; a pool another live process holds is not tried in a
busy loop meanwhile."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import yaml

from chalicelib.store import Store
from chalicelib.store.keys import Keys
from chalicelib.store.migrations import MigrationStore
from chalicelib.store.ondemand import OnDemandStore
from tests.dns.bind import BindServer
from tests.local.stack import RunningStack, call, group_members, local_stack, wait_for
from tests.support import redis_commands
from tests.vsphere.vcsim import VcsimServer, vms_in_folders
from tools.vcsim import launcher

KEYS = Keys()
LEASE_SECONDS_LEFT = 40_000
"""A lease the killed stack held with at least this many ms to go: without the fix the restarted
stack waits that long before its first pass of the pool."""

DUMMY_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.2}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n"
    "  - {name: left-by-dead, size: 2, provider: dummy}\n"
    "  - {name: held-by-live, size: 2, provider: dummy}\n"
    "  - {name: held-elsewhere, size: 2, provider: dummy}\n"
)


def client(stack: RunningStack) -> redis.Redis:
    return redis.Redis(port=stack.redis_port, decode_responses=True)


def kill_stack(stack: RunningStack) -> None:
    """SIGKILL the stack's whole process group (`kill -9 -<pgid>`): no handler, no cleanup."""
    os.killpg(stack.process.pid, signal.SIGKILL)
    stack.process.wait()
    # Each process of the group dies when it next runs, and redis-server holds the state
    # directory's lock until then: on a loaded machine the next start found it still held.
    wait_for(lambda: not group_members(stack.process.pid), 20, "every process of the killed stack to die")


def ready(client: redis.Redis, pool: str) -> list[str]:
    return sorted(client.zrange(KEYS.pool_state(pool, "ready"), 0, -1))


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


@pytest.mark.slow
def test_a_dead_stacks_leases_are_released_at_the_restart_and_a_live_holders_are_kept(tmp_path: Path) -> None:
    """`kill -9` of the stack while it held pool leases (its append-only file keeps them): the
    stack started next on the state directory waited up to 60 s, the lease's time, before its
    first pass of those pools. Leases name their holder now; the restarted stack releases those
    of a process of this machine that is gone, and only those."""
    host = socket.gethostname()
    with local_stack(tmp_path, DUMMY_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        for pool in ("left-by-dead", "held-by-live", "held-elsewhere"):
            wait_for(lambda pool=pool: len(ready(store, pool)) == 2, 30, f"{pool} to fill", stack.log)
        # The leases as a pass of each holder would leave them, then a checkout each (a VM the
        # pool's next pass makes again).
        leases = {"left-by-dead": f"{host}:{dead_pid()}:0123456789abcdef",
                  "held-by-live": f"{host}:{os.getpid()}:0123456789abcdef",
                  "held-elsewhere": "another-machine:1:0123456789abcdef"}
        for pool, token in leases.items():
            take_lease(store, pool, token, 120_000)
            assert call("POST", f"{stack.api}/vm/{pool}")[0] == 200
        state_dir = stack.state_dir
        kill_stack(stack)

    with local_stack(tmp_path, DUMMY_CONFIG, workers=1, interval=30, name="again", state_dir=state_dir) as again:
        store = client(again)
        # The pool whose lease a dead process held refills at once (its checkout left one to make).
        wait_for(lambda: len(ready(store, "left-by-dead")) == 2, 15, "the dead holder's pool to refill", again.log)
        assert store.get(KEYS.lease("held-by-live")) == leases["held-by-live"]
        assert store.get(KEYS.lease("held-elsewhere")) == leases["held-elsewhere"]
        assert len(ready(store, "held-by-live")) == 1 and len(ready(store, "held-elsewhere")) == 1



@pytest.mark.slow
def test_a_pool_another_process_holds_is_tried_once_a_second_not_in_a_loop(tmp_path: Path) -> None:
    """A pool whose lease another live process holds (a second scheduler on the Redis, or one
    paused): each try nudges the holder through the pool's wake list, which the stack's own
    listener popped at once and tried again: tens of thousands of tries, most of a core, for as
    long as the lease was held (a minute after a restart before the fix above)."""
    host = socket.gethostname()
    with local_stack(tmp_path, DUMMY_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: len(ready(store, "held-by-live")) == 2, 30, "the pool to fill", stack.log)
        take_lease(store, "held-by-live", f"{host}:{os.getpid()}:0123456789abcdef", 60_000)
        assert call("POST", f"{stack.api}/vm/held-by-live")[0] == 200  # its nudge: a try
        store.config_resetstat()
        time.sleep(4)
        tries = redis_commands(store).get("set", 0)
        assert tries < 20, f"{tries} SETs in 4 s while the pool was held elsewhere"

        # Once the holder lets go, the pool is looked at within about a second.
        store.delete(KEYS.lease("held-by-live"))
        wait_for(lambda: len(ready(store, "held-by-live")) == 2, 10, "the released pool to refill", stack.log)


@pytest.fixture
def slow_clones(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A vCenter of its own (it outlives the stack, as a real one does) whose clone calls take a
    second each, so a pass filling a pool holds its lease long enough to be killed mid-pass."""
    with VcsimServer(boot_delay=0.5, cert_path=vcsim_dir / "restart.pem",
                     method_delays={"CloneVM_Task": 1.0}) as server:
        yield server


@pytest.mark.slow
def test_a_vsphere_stack_killed_mid_clone_serves_again_within_seconds_with_exactly_its_vms(
        tmp_path: Path, slow_clones: VcsimServer) -> None:
    with BindServer() as bind:
        config = yaml.safe_dump({
            "config": {"domain": "example.com", "create_folders": True, "check_loop_delay_min": 0.5},
            "providers": {"vsphere": {"provider_class": "vsphere", "server": slow_clones.server,
                                      "username": launcher.USERNAME, "password": launcher.PASSWORD,
                                      "ca_bundle": str(slow_clones.cert_path), "ready_check": "tools"}},
            "dns_configs": {"zone": bind.dns_config()},
            "pools": [{"name": "restarted", "template": launcher.TEMPLATE, "folder": "vmpool/restarted",
                       "size": 3, "provider": "vsphere", "dns_plugin": "zone"}],
        })
        with local_stack(tmp_path, config, workers=1, interval=30) as stack:
            store = client(stack)
            lease = KEYS.lease("restarted")
            wait_for(lambda: store.pttl(lease) > LEASE_SECONDS_LEFT, 30, "a pass of the pool", stack.log)
            kill_stack(stack)  # mid-pass: its clones asked for one by one, a second each
            state_dir = stack.state_dir

        with local_stack(tmp_path, config, workers=1, interval=30, name="again", state_dir=state_dir) as again:
            store = client(again)
            # wait_for's 30 s is the bound ("within seconds": a few here), generous for a loaded
            # machine; timing the wait again after it could only fail where it had passed.
            wait_for(lambda: len(ready(store, "restarted")) == 3, 30, "the pool to fill again", again.log)

            def converged() -> bool:
                unsettled = sum(store.zcard(KEYS.pool_state("restarted", state))
                                for state in ("pending", "completed", "discovered"))
                return not unsettled and vms_in_folders(slow_clones).get("restarted") == ready(store, "restarted")

            # No clone of the killed pass left behind, none twice under one name.
            wait_for(converged, 60, "vCenter to hold exactly the pool's VMs", again.log)
            for host in ready(store, "restarted"):
                assert bind.addresses(f"{host}.{bind.zone}") == ["127.0.0.1"], host


TASKS_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.2}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: tasks, size: 1, provider: dummy}\n"
)


@pytest.mark.slow
def test_a_task_the_dead_stack_took_but_never_started_fails_at_the_restart_and_the_next_one_runs(
        tmp_path: Path) -> None:
    """A stack SIGKILLed between taking a VM's disk task and starting it on the provider: the next
    stack on the state directory left it in flight for two minutes (the grace for a paused pass
    still about to start it), and the snapshot its user queued after it waited as long. The
    process that took it is known dead there: the task fails at the restart, visibly."""
    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: ready(store, "tasks"), 30, "a ready VM", stack.log)
        status, body = call("POST", f"{stack.api}/vm/tasks")
        assert status == 200, body
        host = body["tasks"]["hostname"].split(".")[0]
        # What the killed pass left: the task taken (by a process now gone), no provider ref yet.
        now = time.time()
        store.hset(KEYS.vm(host), "task", json.dumps({
            "id": "0123456789abcdef", "kind": "disk", "size_gb": 8, "queued": now, "started": now,
            "taker": f"{socket.gethostname()}:{dead_pid()}"}))
        store.zadd(KEYS.pool_vm_tasks("tasks"), {host: now})
        status, body = call("POST", f"{stack.api}/vm/{host}/snapshot")
        assert status == 202, body
        snapshot = body[host]["snapshot"]
        assert store.hget(KEYS.vm(host), "task")  # still waiting for its provider ref
        state_dir = stack.state_dir
        kill_stack(stack)

    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30, name="again", state_dir=state_dir) as again:
        def vm() -> dict[str, Any]:
            return dict(call("GET", f"{again.api}/vm/{host}")[1][host])

        wait_for(lambda: snapshot in vm()["snapshots"], 20, "the queued snapshot to be taken", again.log)
        assert vm()["task_errors"] == ["disk +8gb was never started (its pass was interrupted)"]
        assert vm()["disk"] == [] and vm()["state"] == "running"


def reserve_and_die(redis_port: int, pool: str, hostname: str) -> None:
    """In a child process that then exits: reserve a clone of ``pool`` as a pass does just before
    it asks the provider for the clone, as a pass SIGKILLed right there leaves it."""
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_reserve, args=(redis_port, pool, hostname))
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _reserve(redis_port: int, pool: str, hostname: str) -> None:
    store = Store(redis.Redis(port=redis_port, decode_responses=True))
    made = store.get_vm(store.hostnames(pool, "ready")[0])  # a clone of the pool's template, as it is now
    assert made is not None
    template, domain = made.raw["template"], made.raw.get("domain", "")
    assert store.reserve_clones(pool, 2, 10, template, domain, [hostname], time.time()) == [hostname]


@pytest.mark.slow
def test_a_clone_the_dead_stack_reserved_but_never_started_gives_its_place_back_at_the_restart(
        tmp_path: Path) -> None:
    """A stack SIGKILLed between reserving a clone's name and asking the provider for it: the
    pending VM held its place in the pool for two minutes (the grace for a pass still about to
    start it), so a pool emptied by a checkout was not refilled that long (measured: 122 s for
    `make run PROVIDER=vcsim` killed mid-clone). Its reserver is known dead at the restart."""
    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: ready(store, "tasks"), 30, "a ready VM", stack.log)
        reserve_and_die(stack.redis_port, "tasks", "never-cloned")
        status, body = call("POST", f"{stack.api}/vm/tasks")  # the pool's one VM: it needs another
        assert status == 200, body
        assert not ready(store, "tasks")  # the reserved clone counts as the pool's one VM to come
        state_dir = stack.state_dir
        kill_stack(stack)

    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30, name="again", state_dir=state_dir) as again:
        store = client(again)
        wait_for(lambda: ready(store, "tasks"), 20, "the pool to refill", again.log)
        assert "never-cloned" not in store.zrange(KEYS.pool_state("tasks", "pending"), 0, -1)


def take_lease(store: redis.Redis, pool: str, token: str, ms: int) -> None:
    """Hold the pool's lease as ``token`` once the stack's own run of the pool has let it go: the
    wait for a full pool can return while the pass that filled it still holds the lease, and a
    lease overwritten then is not one the stack's next passes of that run check again."""
    wait_for(lambda: store.set(KEYS.lease(pool), token, px=ms, nx=True), 30, f"{pool}'s lease to be free")


def dead_lease(store: redis.Redis, pool: str) -> None:
    """The pool's lease as a pass killed mid-pass leaves it (its holder, of this machine, gone):
    the stack's own passes of the pool wait while the test plays that pass."""
    take_lease(store, pool, f"{socket.gethostname()}:{dead_pid()}:0123456789abcdef", 120_000)


def in_a_process_that_dies(target: Any, *args: Any) -> None:
    """Run ``target(*args)`` in a child process that then exits, as a pass SIGKILLed right after."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    child.join(30)
    assert child.exitcode == 0


def _reserve_for_request(redis_port: int, request_id: str, pool: str, hostname: str) -> None:
    store = Store(redis.Redis(port=redis_port, decode_responses=True))
    made = store.get_vm(store.hostnames(pool, "ready")[0])
    assert made is not None
    reservation = OnDemandStore(store).reserve(request_id, pool, 5, 3, made.raw["template"],
                                               made.raw.get("domain", ""), [hostname], time.time())
    assert reservation.reserved == (hostname,)


@pytest.mark.slow
def test_a_clone_the_dead_stack_reserved_for_an_ondemand_request_but_never_started_is_replaced_at_the_restart(
        tmp_path: Path) -> None:
    """A stack SIGKILLed between reserving a clone for an on-demand request and asking the
    provider for it: the request's VM slot was held two minutes after the restart (the grace for
    a pass still about to start it), so the request was not ready that long. Its reserver is
    known dead at the restart: the clone is replaced at once, not counted as a failed attempt."""
    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: ready(store, "tasks"), 30, "a ready VM", stack.log)
        dead_lease(store, "tasks")
        status, body = call("POST", f"{stack.api}/ondemandvm", {"tasks": 1})
        assert status == 201, body
        request_id = body["request_id"]
        in_a_process_that_dies(_reserve_for_request, stack.redis_port, request_id, "tasks", "never-cloned")
        state_dir = stack.state_dir
        kill_stack(stack)

    with local_stack(tmp_path, TASKS_CONFIG, workers=1, interval=30, name="again", state_dir=state_dir) as again:
        wait_for(lambda: call("GET", f"{again.api}/ondemandvm/{request_id}")[0] == 200, 20,
                 "the request to be ready", again.log)
        body = call("GET", f"{again.api}/ondemandvm/{request_id}")[1]
        assert body["ready"] is True and len(body["tasks"]["hostname"]) == 1
        assert not body["tasks"]["hostname"][0].startswith("never-cloned")


MIGRATION_CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.2, migration_limit: 1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0,"
    " migratevm_couldmove_percent: 100, migratevm_max_time: 0}\n"
    "pools:\n  - {name: moves, size: 2, provider: dummy}\n"
)


def _take_migration_slot(redis_port: int, hostname: str) -> None:
    store = Store(redis.Redis(port=redis_port, decode_responses=True))
    assert MigrationStore(store).take_slot(hostname, 1, time.time()) == "started"


@pytest.mark.slow
def test_a_migration_slot_the_dead_stack_took_but_never_started_is_freed_at_the_restart(tmp_path: Path) -> None:
    """A stack SIGKILLed between taking a migration slot for a checked-out VM and asking the
    provider for the move: the slot (one of ``migration_limit``, service-wide) was held two
    minutes after the restart (the grace for a pass still about to start it), so no VM checked
    out meanwhile moved off its busy host that long. Its taker is known dead at the restart."""
    with local_stack(tmp_path, MIGRATION_CONFIG, workers=1, interval=30) as stack:
        store = client(stack)
        wait_for(lambda: len(ready(store, "moves")) == 2, 30, "the pool to fill", stack.log)
        dead_lease(store, "moves")
        status, body = call("POST", f"{stack.api}/vm/moves")
        assert status == 200, body
        first = body["moves"]["hostname"].split(".")[0]
        in_a_process_that_dies(_take_migration_slot, stack.redis_port, first)
        state_dir = stack.state_dir
        kill_stack(stack)

    with local_stack(tmp_path, MIGRATION_CONFIG, workers=1, interval=30, name="again", state_dir=state_dir) as again:
        def vm(hostname: str) -> dict[str, Any]:
            return dict(call("GET", f"{again.api}/vm/{hostname}")[1][hostname])

        wait_for(lambda: ready(client(again), "moves"), 20, "a ready VM", again.log)
        status, body = call("POST", f"{again.api}/vm/moves")
        assert status == 200, body
        second = body["moves"]["hostname"].split(".")[0]
        wait_for(lambda: vm(second).get("migrated") == "true", 20,
                 "the VM checked out after the restart to move", again.log)
        assert vm(first)["state"] == "running" and "migrated" not in vm(first)
