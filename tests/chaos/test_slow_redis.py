"""Redis slower than the client's socket timeout (a long script, a failover, a saturated node):
the request fails fast with StoreUnavailable, its checkout runs at most once, and a VM it took
nonetheless goes back to the pool within a minute instead of running with no owner.

A command that timed out may still run once Redis gets to it; it must never run again because
the client retried it (redis-py 8 retried every command 10 times: one checkout took up to 11
VMs). The busy script of another client stands in for the slow Redis.
"""

from __future__ import annotations

import threading
import time

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import Config, parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import CheckoutRequest, Store, StoreUnavailable, connect
from chalicelib.store.store import UNCONFIRMED_SECONDS
from local.redis_server import RedisServer

BUSY_SECONDS = 1.0
SOCKET_TIMEOUT = 0.2
BUSY_SCRIPT = """
local t0 = redis.call('TIME')
while true do
  local t = redis.call('TIME')
  if (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > tonumber(ARGV[1]) then return 1 end
end
"""


def _slow_pool(redis_server: RedisServer, redis_client: redis.Redis) -> tuple[Config, FakeClock, Store, DummyProvider]:
    """A full pool of 20, and a store on the client a Lambda builds from the config."""
    config = parse(f"""
:config: {{task_limit: 100}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 20, provider: dummy}}
""")
    clock = FakeClock()
    store = Store(connect(config.redis))
    provider = DummyProvider(config.providers["dummy"], redis_client, clock)
    for _ in range(2):
        reconcile_pool(store, provider, config.pool("slow"), clock, config.service)
    assert store.counts(["slow"])["slow"]["ready"] == 20
    # As in a warm Lambda, Redis knows the checkout script: a slow EVALSHA runs it, not NOSCRIPT.
    redis_client.script_load(store.scripts.checkout.script)
    return config, clock, store, provider


def test_a_checkout_that_timed_out_runs_at_most_once_and_its_vm_comes_back(
        redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    busy = threading.Thread(target=lambda: redis.Redis(port=redis_server.port).eval(
        BUSY_SCRIPT, 0, int(BUSY_SECONDS * 1_000_000)))
    busy.start()
    time.sleep(0.1)  # the busy script is running: Redis answers nobody until it ends
    started = time.monotonic()
    try:
        store.checkout([CheckoutRequest("slow", ["slow"], 1)], clock.now(), {"lifetime": "2"})
        raised = False
    except StoreUnavailable:
        raised = True
    took = time.monotonic() - started
    busy.join()
    time.sleep(0.2)  # whatever was queued behind the busy script has run by now

    assert raised, "the checkout answered although Redis was busy for longer than the timeout"
    assert took < SOCKET_TIMEOUT + 0.5, f"the failed checkout took {took:.2f} s"
    taken = store.hostnames("slow", "running")
    assert len(taken) == 1, f"the checkout queued behind the busy script took {len(taken)} VMs"

    # The request answered 503, so nobody has the VM it took: within a minute a pass returns it
    # to ready, and the pool is whole again.
    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(store, provider, config.pool("slow"), clock, config.service)
    assert report.returned == taken
    counts = store.counts(["slow"])["slow"]
    assert (counts["running"], counts["ready"]) == (0, 20), counts
    record = store.get_vm(taken[0])
    assert record is not None and record.state == "ready" and not record.checkout and not record.lifetime_hours


def test_a_confirmed_checkout_is_never_returned(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config, clock, store, provider = _slow_pool(redis_server, redis_client)
    result = store.checkout([CheckoutRequest("slow", ["slow"], 2)], clock.now(), {"lifetime": "2"})

    clock.advance(UNCONFIRMED_SECONDS + 1)
    report = reconcile_pool(store, provider, config.pool("slow"), clock, config.service)

    assert report.returned == []
    assert set(store.hostnames("slow", "running")) == {vm.hostname for vm in result.vms}
