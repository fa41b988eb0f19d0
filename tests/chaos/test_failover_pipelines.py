"""Pipelined script calls (``run_many``) across a failover: the client's connections still reach
the demoted node, which refuses each write with READONLY (nothing of it made). Only those
refused calls are sent once more, on the new primary; what ran is not run twice. Set up as
tests/chaos/test_failover_reconcile.py (a primary + replica pair, the roles swapped by REPLICAOF,
the endpoint moved, open connections left where they were)."""

from __future__ import annotations

import pytest
import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.store import ReplicaAcks, Store, connect
from chalicelib.store.scripts import registered, run_many
from tests.chaos.test_failover_reconcile import POOL, reconcile, service_on
from tests.redis_pair import RedisPair

WRITES = "redis.call('INCR', KEYS[1]) return 1"
READS = "return redis.call('STRLEN', KEYS[1])"
"""Each script uses a command nothing else sends here, so INFO commandstats counts its runs."""


def command_calls(server: redis.Redis, command: str) -> int:
    return int(server.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_pass_whose_first_write_after_the_swap_is_pipelined_succeeds(
        redis_pair: RedisPair, redis_client: redis.Redis) -> None:
    """The swap while the pass waits for the provider's clones: the clones' tasks are noted on
    their VMs in one pipeline (Store.update_vms), the pass's first write on the demoted node.
    It failed (StoreUnavailable) and left the clones unnoted until a later pass."""
    services = service_on(redis_pair, redis_client, FakeClock())
    services.store.replica_acks = ReplicaAcks(0, 100)
    for _ in range(3):
        reconcile(services)
    services.clock.advance(120)  # past ready_ttl: the ready VMs leave, two clones replace them
    redis_pair.wait_synced()
    swapped: list[str] = []

    def swap_once_asked(name: str) -> None:
        if name == "clone_asked" and not swapped:
            redis_pair.wait_synced()
            redis_pair.swap_with_replicaof()
            swapped.append(name)

    pool = services.pool(POOL)
    assert pool is not None
    report = reconcile_pool(services.store, services.provider("dummy"), pool, services.clock,
                            services.config.service, checkpoint=swap_once_asked)

    assert swapped and len(report.clones_started) == 2, report
    new_primary = Store(RedisPair.client(redis_pair.primary))
    for hostname in report.clones_started:
        record = new_primary.get_vm(hostname)
        assert record is not None and record.raw.get("clone_task"), f"{hostname}'s clone task not noted"


def warm_client(pair: RedisPair) -> redis.Redis:
    """The service's client, its connection open to the primary and the scripts loaded there."""
    client = connect(parse(":redis: {socket_timeout: 5.0}").redis, url=pair.endpoint.url)
    client.set("read-me", "four")
    for text in (WRITES, READS):
        registered(client, text).load_into(client)
    return client


def test_only_the_calls_the_demoted_node_refused_run_again(redis_pair: RedisPair) -> None:
    client = warm_client(redis_pair)
    writes, reads = registered(client, WRITES), registered(client, READS)
    redis_pair.wait_synced()
    redis_pair.swap_with_replicaof()
    demoted, promoted = RedisPair.client(redis_pair.replica), RedisPair.client(redis_pair.primary)
    for server in (demoted, promoted):
        server.config_resetstat()

    replies = run_many(client, [(writes, ["counted"], []), (reads, ["read-me"], []), (writes, ["counted"], [])],
                       commands=[("GET", "read-me"), ("SET", "written", "yes")])

    runs = {command: (command_calls(demoted, command), command_calls(promoted, command))
            for command in ("strlen", "get")}
    assert replies == ["four", True, 1, 4, 1]
    assert runs == {"strlen": (1, 0), "get": (1, 0)}, "a call or command that ran on the demoted node ran again"
    assert promoted.get("counted") == "2", "each write call ran once, on the new primary"
    assert promoted.get("written") == "yes"
    assert command_calls(promoted, "eval") >= 1, "the new primary lacked the scripts: their text sent there (EVAL)"


def test_calls_refused_again_fail_without_a_third_try(redis_pair: RedisPair) -> None:
    """The endpoint not moved yet (its name still resolves to the demoted node): the refused
    calls are sent once more, refused again, and the error is raised (the store's caller sees
    StoreUnavailable; the next pass tries again); nothing is written anywhere."""
    client = warm_client(redis_pair)
    writes = registered(client, WRITES)
    redis_pair.wait_synced()
    promoted, demoted = RedisPair.client(redis_pair.replica), RedisPair.client(redis_pair.primary)
    promoted.execute_command("REPLICAOF", "NO", "ONE")
    demoted.execute_command("REPLICAOF", "127.0.0.1", redis_pair.replica.port)
    demoted.config_resetstat()

    with pytest.raises(redis.exceptions.ReadOnlyError):
        run_many(client, [(writes, ["counted"], [])])

    assert promoted.get("counted") is None
    assert command_calls(demoted, "evalsha") == 2
