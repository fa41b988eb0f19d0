"""``make_stack(...)``: the harness (tests/harness.py) with the on-demand tests' config: pools
``debian-12`` and ``win-2022``, tasks and failures of the dummy provider as asked."""

from __future__ import annotations

import re
from typing import Callable

import pytest

from chalicelib import config as config_module
from tests.harness import Harness, HarnessFactory

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


@pytest.fixture
def make_stack(make_harness: HarnessFactory) -> Callable[..., Harness]:
    """Build the service with a config: ``make_stack(experimental=True, size=2, ...)``; other
    keyword arguments are keys of ``:config:`` (``max_running_vms=6``, ``ondemand_clone_limit=20``)."""

    def build(experimental: bool = True, size: int = 2, task_time: float = 0, clone_fail: float = 0,
              disk_fail: float = 0, extra: str = "", **settings: object) -> Harness:
        text = BASE_CONFIG.format(experimental=str(experimental).lower(), size=size, task_time=task_time,
                                  clone_fail=clone_fail, disk_fail=disk_fail) + extra
        for key, value in settings.items():  # :config: keys, the base's own replaced (YAML keeps the last)
            line = f"  {key}: {value}"
            text, replaced = re.subn(rf"(?m)^  {re.escape(key)}: .*$", line, text, count=1)
            if not replaced:
                text = text.replace(":config:\n", f":config:\n{line}\n", 1)
        return make_harness(config_module.parse(text))

    return build
