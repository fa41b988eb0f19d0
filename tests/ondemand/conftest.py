"""An API client and a manager driver over one Services on the test redis, with a fake clock.

HTTP goes through local/gateway.py's Gateway into the real Chalice app (``app.app``), whose
``app._services`` is replaced by a Services built here; the reconcile passes are run by hand.
Every answer is checked against docs/openapi.yaml, as the API tests do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import pytest
import redis

import app as chalice_app
from chalicelib import config as config_module
from chalicelib.clock import FakeClock
from chalicelib.manager.reconcile import PassReport, reconcile_pool
from chalicelib.services import Services
from local.gateway import Gateway
from tests.api.client import SpecOperations, load_spec

OPERATIONS = SpecOperations(load_spec())

BASE_CONFIG = """
:config:
  domain: example.com
  vm_lifetime: 2
  vm_lifetime_auth: 12
  task_limit: 10
  max_ondemand_instances_per_request: 5
  ondemand_clone_limit: 3
  ondemand_request_ttl: 5
  max_vm_retries: 2
  experimental_features: {experimental}
:providers:
  :dummy:
    createvm_max_time: 0
    boot_time: 30
    destroyvm_max_time: 0
    createdisk_max_time: {task_time}
    createsnapshot_max_time: {task_time}
    revertsnapshot_max_time: {task_time}
    createvm_fail_percent: {clone_fail}
    createdisk_fail_percent: {disk_fail}
:pools:
  - name: debian-12
    alias: [debian, linux]
    template: templates/debian-12
    size: {size}
    provider: dummy
  - name: win-2022
    alias: [windows]
    template: templates/win-2022
    size: 1
    provider: dummy
    domain: win.example.com
    ondemand_fallback: true
"""


class RecordingRefill:
    """Remembers which pools the API asked to reconcile at once."""

    def __init__(self) -> None:
        self.pools: list[str] = []

    def pools_changed(self, pools: Iterable[str]) -> None:
        self.pools.extend(sorted(set(pools)))


@dataclass
class Stack:
    services: Services
    clock: FakeClock
    refill: RecordingRefill
    gateway: Gateway
    headers: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, body: Any = None, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        status, _, payload = self.gateway(method, path, {**self.headers, **(headers or {})}, data, "127.0.0.1")
        body = json.loads(payload)
        OPERATIONS.check(method, path, status, body)
        return status, body

    def reconcile(self, pool: str, checkpoint: Callable[[str], None] | None = None) -> PassReport:
        pool_config = self.services.pool(pool)
        assert pool_config is not None
        return reconcile_pool(self.services.store, self.services.provider(pool_config.provider), pool_config,
                              self.clock, self.services.config.service, checkpoint or (lambda step: None))

    def settle(self, *pools: str, seconds: float = 31, passes: int = 3) -> None:
        """Run passes with time moving on, long enough for the dummy's clones to boot."""
        for _ in range(passes):
            for pool in pools or self.services.config.pool_names:
                self.reconcile(pool)
            self.clock.advance(seconds)
        for pool in pools or self.services.config.pool_names:
            self.reconcile(pool)

    def state(self, hostname: str) -> str:
        record = self.services.store.get_vm(hostname)
        return record.state if record else ""


@pytest.fixture
def make_stack(redis_client: redis.Redis, clock: FakeClock) -> Iterator[Any]:
    """Build the stack with a config: ``make_stack(experimental=True, size=2, ...)``."""
    saved = chalice_app._services

    def build(experimental: bool = True, size: int = 2, task_time: float = 0, clone_fail: float = 0,
              disk_fail: float = 0, extra: str = "") -> Stack:
        text = BASE_CONFIG.format(experimental=str(experimental).lower(), size=size, task_time=task_time,
                                  clone_fail=clone_fail, disk_fail=disk_fail) + extra
        config = config_module.parse(text)
        refill = RecordingRefill()
        services = Services(config, redis_client, clock=clock, prefix="vmpool:", refill=refill)
        chalice_app._services = services
        return Stack(services, clock, refill, Gateway(chalice_app.app))

    yield build
    chalice_app._services = saved
