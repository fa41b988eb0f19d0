"""Redis slower than the client's socket timeout (a long script, a failover, a saturated node):
the request fails fast with StoreUnavailable and its checkout runs at most once.

A command that timed out may still run once Redis gets to it; it must never run again because
the client retried it (redis-py 8 retried every command 10 times: one checkout took up to 11
VMs). The busy script of another client stands in for the slow Redis.
"""

from __future__ import annotations

import threading
import time

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.manager.reconcile import reconcile_pool
from chalicelib.providers.dummy import DummyProvider
from chalicelib.store import CheckoutRequest, Store, StoreUnavailable
from chalicelib.store import store as store_module
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


def test_a_checkout_that_timed_out_runs_at_most_once(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    config = parse(f"""
:config: {{task_limit: 100}}
:redis: {{server: 127.0.0.1, port: {redis_server.port}, socket_timeout: {SOCKET_TIMEOUT}}}
:providers:
  :dummy: {{createvm_max_time: 0, boot_time: 0}}
:pools:
  - {{name: slow, size: 20, provider: dummy}}
""")
    clock = FakeClock()
    store = Store(store_module.connect(config.redis))  # the client a Lambda builds from the config
    provider = DummyProvider(config.providers["dummy"], redis_client, clock)
    for _ in range(2):
        reconcile_pool(store, provider, config.pool("slow"), clock, config.service)
    assert store.counts(["slow"])["slow"]["ready"] == 20

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
    running = store.counts(["slow"])["slow"]["running"]
    assert running <= 1, f"one checkout request took {running} VMs"
