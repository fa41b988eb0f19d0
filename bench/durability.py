"""What durability costs a checkout (docs/reliability.md).

    python bench/durability.py [--checkouts N]

Store.checkout (the checkout script, then its confirmation) p50/p99, one client and eight
threads, in process:

- a lone redis-server as the local stack runs it: no persistence, append-only file fsynced every
  second (the default), and fsynced at every write ("always"); its data directory on the same
  disk as the local stack's state (.run/);
- a real primary + replica pair of redis-server: without WAIT, and with WAIT 1 after the
  confirmation (redis.min_replica_acks 1), as in AWS.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

if __package__ in (None, ""):  # `python bench/durability.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, ms, percentile
from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import CheckoutRequest, ReplicaAcks, Store, connect
from local.redis_server import RedisServer

POOL = "bench"
CONFIG = """
:config: {{task_limit: 100000}}
:redis: {{server: 127.0.0.1, port: {port}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: bench, size: {size}, provider: dummy}}
"""


def filled_store(port: int, size: int, replica_acks: int = 0) -> Store:
    """A store on ``port`` (through connect(), as the service builds it) with ``size`` VMs ready."""
    config = parse(CONFIG.format(port=port, size=size))
    client = connect(config.redis)
    store = Store(client, replica_acks=ReplicaAcks(replica_acks, 500))
    clock = FakeClock()
    provider = DummyProvider(config.providers["dummy"], client, clock)
    for _ in range(2):
        reconcile_pool(store, provider, config.pool(POOL), clock, config.service)
    return store


def checkout_latencies(store: Store, checkouts: int, threads: int) -> list[float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(count: int) -> None:
        mine = []
        for _ in range(count):
            began = time.perf_counter()
            result = store.checkout([CheckoutRequest(POOL, [POOL], 1)], 0.0, {"lifetime": "2"})
            mine.append(time.perf_counter() - began)
            assert result.ok
        with lock:
            latencies.extend(mine)

    workers = [threading.Thread(target=client, args=(checkouts // threads,)) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return latencies


def lone(appendfsync: str | None, size: int) -> Iterator[Store]:
    directory = Path(tempfile.mkdtemp(prefix="durability-", dir=ROOT / ".run" if (ROOT / ".run").exists() else None))
    server = RedisServer(data_dir=directory, persist=appendfsync is not None, appendfsync=appendfsync or "everysec")
    server.start()
    try:
        yield filled_store(server.port, size)
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def paired(replica_acks: int, size: int) -> Iterator[Store]:
    """Replication straight from the primary, clients straight to it (no forwarder between)."""
    primary = RedisServer().start()
    replica = RedisServer(replica_of=primary.port).start()
    try:
        yield filled_store(primary.port, size, replica_acks)
    finally:
        replica.stop()
        primary.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkouts", type=int, default=2000)
    args = parser.parse_args()
    size = 2 * args.checkouts
    setups: list[tuple[str, Callable[[], Iterator[Store]]]] = [
        ("lone redis, no persistence", lambda: lone(None, size)),
        ("lone redis, appendfsync everysec", lambda: lone("everysec", size)),
        ("lone redis, appendfsync always", lambda: lone("always", size)),
        ("lone redis, appendfsync no", lambda: lone("no", size)),
        ("primary+replica, no WAIT", lambda: paired(0, size)),
        ("primary+replica, WAIT 1", lambda: paired(1, size)),
    ]
    for name, setup in setups:
        for store in setup():
            for threads in (1, 8):
                latencies = checkout_latencies(store, args.checkouts, threads)
                print(f"{name:36} {threads} client(s): checkout p50 {ms(percentile(latencies, 0.5)):6.2f} ms"
                      f"  p99 {ms(percentile(latencies, 0.99)):6.2f} ms  ({len(latencies)} checkouts)", flush=True)


if __name__ == "__main__":
    main()
