"""The dummy provider: a slow, unreliable hypervisor kept in Redis, driven by a fake clock."""

from __future__ import annotations

import json
import secrets
from typing import Any, Callable

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from chalicelib.clock import FakeClock
from chalicelib.config import Config, parse
from chalicelib.providers.base import Provider, ProviderError, TaskState
from chalicelib.providers.dummy import DummyProvider
from tests.harness import HarnessFactory
from tests.support import RedisRoundTrips

CONFIG = """\
providers:
  dummy: {{provider_class: dummy, seed: 11, createvm_max_time: 60, boot_time: 30, destroyvm_max_time: 20,
          createdisk_max_time: 10, createsnapshot_max_time: 10, revertsnapshot_max_time: 10{extra}}}
pools:
  - {{name: alpha, size: 1, provider: dummy, folder: vmpool/alpha}}
  - {{name: flaky, size: 1, provider: dummy, createvm_fail_percent: 100}}
"""


def config_with(extra: str = "") -> Config:
    return parse(CONFIG.format(extra=extra))


def provider_for(config: Config, client: redis.Redis, clock: FakeClock, prefix: str = "vmpool:") -> DummyProvider:
    return DummyProvider(config.providers["dummy"], client, clock, prefix=prefix)


@pytest.fixture
def config() -> Config:
    return config_with()


@pytest.fixture
def provider(config: Config, redis_client: redis.Redis, clock: FakeClock) -> DummyProvider:
    return provider_for(config, redis_client, clock)


def names(provider: DummyProvider, config: Config, pool: str = "alpha") -> set[str]:
    return {vm.name for vm in provider.list_vms(config.pool(pool))}


def test_clone_appears_when_done_and_is_ready_once_booted(provider: DummyProvider, config: Config,
                                                          clock: FakeClock) -> None:
    pool = config.pool("alpha")
    task = provider.clone(pool, "vm-1")

    assert provider.task_status(task).state is TaskState.RUNNING
    assert names(provider, config) == set()  # a clone in progress is not in the inventory yet

    for _ in range(60):  # to the second the clone is done (within createvm_max_time)
        if provider.task_status(task).state is not TaskState.RUNNING:
            break
        clock.advance(1)
    assert provider.task_status(task).state is TaskState.SUCCESS
    (vm,) = provider.list_vms(pool)
    assert vm.name == "vm-1" and vm.powered_on and vm.ip is None  # cloned, booting for 30 s
    readiness = provider.check_ready(pool, vm)
    assert not readiness.ready and readiness.reason == "booting: no IP address yet"

    clock.advance(30)
    (vm,) = provider.list_vms(pool)
    assert vm.ip and vm.tools_running and vm.guest_hostname == "vm-1"
    assert provider.check_ready(pool, vm).ready


def test_vms_outlast_the_provider_instance(provider: DummyProvider, config: Config, redis_client: redis.Redis,
                                           clock: FakeClock) -> None:
    provider.clone(config.pool("alpha"), "vm-1")
    clock.advance(90)

    # A later Lambda invocation builds a new provider and sees the same hypervisor.
    assert names(provider_for(config, redis_client, clock), config) == {"vm-1"}


def test_same_seed_same_behaviour(config: Config, redis_client: redis.Redis, clock: FakeClock) -> None:
    one = provider_for(config, redis_client, clock, prefix="one:")
    two = provider_for(config, redis_client, clock, prefix="two:")
    pool = config.pool("alpha")
    for index in range(10):
        one.clone(pool, f"vm-{index}")
        two.clone(pool, f"vm-{index}")

    for seconds in (5, 10, 20, 40, 90):
        clock.advance(seconds)
        assert set(one.list_vms(pool)) == set(two.list_vms(pool))
    assert len(one.list_vms(pool)) == 10


def test_pool_setting_overrides_the_providers(provider: DummyProvider, config: Config, clock: FakeClock) -> None:
    tasks = {pool: provider.clone(config.pool(pool), f"{pool}-vm") for pool in ("alpha", "flaky")}
    clock.advance(60)

    assert provider.task_status(tasks["alpha"]).state is TaskState.SUCCESS
    failed = provider.task_status(tasks["flaky"])
    assert failed.state is TaskState.ERROR and failed.error == "dummy: clone failed (simulated failure)"
    clock.advance(60)
    assert names(provider, config, "flaky") == set()  # a failed clone leaves nothing behind


def test_failure_rate_is_about_the_percentage(redis_client: redis.Redis, clock: FakeClock) -> None:
    config = config_with(", createvm_fail_percent: 30")
    provider = provider_for(config, redis_client, clock)
    tasks = [provider.clone(config.pool("alpha"), f"vm-{i}") for i in range(300)]
    clock.advance(60)

    failures = sum(provider.task_status(task).state is TaskState.ERROR for task in tasks)

    assert 60 <= failures <= 120
    assert len(names(provider, config)) == 300 - failures


def test_destroy_removes_the_vm_or_fails_as_configured(redis_client: redis.Redis, clock: FakeClock) -> None:
    config = config_with()
    provider = provider_for(config, redis_client, clock)
    pool = config.pool("alpha")
    provider.clone(pool, "vm-1")
    clock.advance(90)

    task = provider.destroy(pool, "vm-1")
    assert task is not None and provider.task_status(task).state is TaskState.RUNNING
    assert names(provider, config) == {"vm-1"}
    clock.advance(20)
    assert provider.task_status(task).state is TaskState.SUCCESS
    assert names(provider, config) == set()
    assert provider.destroy(pool, "vm-1") is None  # nothing left to destroy

    failing = provider_for(config_with(", destroyvm_fail_percent: 100"), redis_client, clock)
    provider.clone(pool, "vm-2")
    clock.advance(90)
    task = failing.destroy(pool, "vm-2")
    clock.advance(20)
    status = failing.task_status(task)
    assert status.state is TaskState.ERROR and status.error == "dummy: destroy failed (simulated failure)"
    assert names(provider, config) == {"vm-2"}


def test_readiness_and_power_failures(redis_client: redis.Redis, clock: FakeClock) -> None:
    never_ready = provider_for(config_with(", vmready_fail_percent: 100"), redis_client, clock)
    pool = config_with().pool("alpha")
    never_ready.clone(pool, "vm-1")
    clock.advance(90)
    (vm,) = never_ready.list_vms(pool)
    assert never_ready.check_ready(pool, vm).reason == "dummy: readiness check failed (simulated failure)"

    powering_off = provider_for(config_with(", getvm_poweroff_percent: 100"), redis_client, clock)
    (vm,) = powering_off.list_vms(pool)
    assert not vm.powered_on and vm.ip is None
    assert powering_off.check_ready(pool, vm).reason == "powered off"
    # Powered off stays powered off: the next inventory, by any provider instance, says so too.
    assert not provider_for(config_with(), redis_client, clock).list_vms(pool)[0].powered_on


def test_disks_and_snapshots(provider: DummyProvider, config: Config, redis_client: redis.Redis,
                             clock: FakeClock) -> None:
    pool = config.pool("alpha")
    provider.clone(pool, "vm-1")
    clock.advance(90)

    disk = provider.add_disk(pool, "vm-1", 8)
    snapshot = provider.create_snapshot(pool, "vm-1", "snap-a")
    with pytest.raises(ProviderError, match="snapshot snap-a not found on vm-1"):
        provider.revert_snapshot(pool, "vm-1", "snap-a")  # not taken yet
    clock.advance(10)
    assert provider.task_status(disk).state is TaskState.SUCCESS
    assert provider.task_status(snapshot).state is TaskState.SUCCESS
    assert provider.task_status(disk).state is TaskState.SUCCESS  # asking again changes nothing
    vm = provider._require_vm(pool, "vm-1")
    assert [d["size_gb"] for d in vm["disks"]] == [8] and vm["snapshots"] == ["snap-a"]

    revert = provider.revert_snapshot(pool, "vm-1", "snap-a")
    clock.advance(10)
    assert provider.task_status(revert).state is TaskState.SUCCESS

    with pytest.raises(ProviderError, match="VM nope not found"):
        provider.add_disk(pool, "nope", 8)
    with pytest.raises(ProviderError, match="VM nope not found"):
        provider.create_snapshot(pool, "nope", "snap")

    failing = provider_for(config_with(", createdisk_fail_percent: 100"), redis_client, clock)
    task = failing.add_disk(pool, "vm-1", 16)
    clock.advance(10)
    assert failing.task_status(task).state is TaskState.ERROR
    assert [d["size_gb"] for d in provider._require_vm(pool, "vm-1")["disks"]] == [8]


class ReadsThenWaits:
    """The Redis client of a pass that stops right after its first read of a VM (``hget``) while
    ``meanwhile`` runs: a second pass overlapping it (a run whose lease ran out while it was
    paused, and the next run of the pool)."""

    def __init__(self, client: redis.Redis, meanwhile: Callable[[], object]) -> None:
        self.client, self.meanwhile = client, meanwhile

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def hget(self, *args: Any, **kwargs: Any) -> Any:
        return self._then_wait(self.client.hget(*args, **kwargs))

    def hgetall(self, *args: Any, **kwargs: Any) -> Any:
        return self._then_wait(self.client.hgetall(*args, **kwargs))

    def _then_wait(self, value: Any) -> Any:
        meanwhile, self.meanwhile = self.meanwhile, lambda: None
        meanwhile()
        return value


def test_a_disk_and_a_snapshot_finished_by_two_overlapping_passes_are_both_on_the_vm(
        provider: DummyProvider, config: Config, redis_client: redis.Redis, clock: FakeClock) -> None:
    """Each pass reads its task's status and the read applies the task to the VM. Before, each
    read the VM, added its disk or snapshot and wrote the whole VM back: the pass that read first
    and wrote last dropped the other's snapshot, which GET /vm/<host> went on listing (the
    service recorded it as taken) while a revert to it failed, "snapshot not found"."""
    pool = config.pool("alpha")
    provider.clone(pool, "vm-1")
    clock.advance(90)
    disk = provider.add_disk(pool, "vm-1", 8)
    snapshot = provider.create_snapshot(pool, "vm-1", "snap-a")
    clock.advance(10)

    def other_pass() -> None:
        assert provider.task_status(snapshot).state is TaskState.SUCCESS

    paused = DummyProvider(config.providers["dummy"], ReadsThenWaits(redis_client, other_pass),  # type: ignore[arg-type]
                           clock, prefix="vmpool:")
    assert paused.task_status(disk).state is TaskState.SUCCESS

    vm = provider._require_vm(pool, "vm-1")
    assert ([d["size_gb"] for d in vm["disks"]], vm["snapshots"]) == ([8], ["snap-a"])
    revert = provider.revert_snapshot(pool, "vm-1", "snap-a")
    clock.advance(10)
    assert provider.task_status(revert).state is TaskState.SUCCESS


def test_a_vm_powered_off_by_an_inventory_read_keeps_the_snapshot_a_pass_added_since_the_read(
        provider: DummyProvider, config: Config, redis_client: redis.Redis, clock: FakeClock) -> None:
    """``getvm_poweroff_percent``: the read that powers a VM off wrote the VM back as it had read
    it, over a snapshot another pass applied in between."""
    pool = config.pool("alpha")
    provider.clone(pool, "vm-1")
    clock.advance(90)
    snapshot = provider.create_snapshot(pool, "vm-1", "snap-a")
    clock.advance(10)

    def other_pass() -> None:
        assert provider.task_status(snapshot).state is TaskState.SUCCESS

    powering_off = DummyProvider(config_with(", getvm_poweroff_percent: 100").providers["dummy"],
                                 ReadsThenWaits(redis_client, other_pass), clock, prefix="vmpool:")  # type: ignore[arg-type]
    powering_off.list_vms(pool)
    assert provider._require_vm(pool, "vm-1")["snapshots"] == ["snap-a"]
    (vm,) = powering_off.list_vms(pool)  # the next read powers it off
    assert not vm.powered_on and provider._require_vm(pool, "vm-1")["snapshots"] == ["snap-a"]


def test_unknown_task_is_an_error(provider: DummyProvider) -> None:
    status = provider.task_status("clone-doesnotexist")
    assert status.state is TaskState.ERROR and "unknown task" in status.error


def test_redis_failure_is_a_provider_error_without_details(config: Config, clock: FakeClock, closed_port: int) -> None:
    client = redis.Redis(port=closed_port, socket_connect_timeout=0.2, decode_responses=True,
                         retry=Retry(NoBackoff(), 0))
    provider = provider_for(config, client, clock)

    with pytest.raises(ProviderError) as raised:
        provider.list_vms(config.pool("alpha"))
    assert str(raised.value) == "dummy provider storage: ConnectionError"
    with pytest.raises(ProviderError):
        provider.clone(config.pool("alpha"), "vm-1")


def test_hand_made_and_hand_deleted_vms(provider: DummyProvider, config: Config) -> None:
    pool = config.pool("alpha")
    provider.create_by_hand(pool, "stray")
    assert names(provider, config) == {"stray"}
    provider.delete_by_hand(pool, "stray")
    assert names(provider, config) == set()


def test_calls_are_counted(provider: DummyProvider, config: Config) -> None:
    before = provider.call_count()
    provider.list_vms(config.pool("alpha"))
    provider.clone(config.pool("alpha"), "vm-1")
    assert provider.call_count() > before + 1


def test_with_createvm_min_time_equal_to_the_max_every_clone_takes_that_long(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    config = config_with(", createvm_min_time: 60")
    provider = provider_for(config, redis_client, clock)
    pool = config.pool("alpha")
    tasks = [provider.clone(pool, f"vm-{n}") for n in range(5)]

    clock.advance(59.9)
    assert {provider.task_status(task).state for task in tasks} == {TaskState.RUNNING}
    clock.advance(0.1)
    assert {provider.task_status(task).state for task in tasks} == {TaskState.SUCCESS}
    assert provider.clone_seconds(pool) == 60


def test_the_change_log_names_every_vm_written_or_deleted_since_a_token(
        provider: DummyProvider, config: Config, clock: FakeClock) -> None:
    pool = config.pool("alpha")
    start = provider.inventory_changes(pool, None)
    assert start is not None and start.names is None  # no token asked about: compare everything
    provider.create_by_hand(pool, "made")
    provider.create_by_hand(pool, "gone")
    middle = provider.inventory_changes(pool, start.token)
    provider.delete_by_hand(pool, "gone")

    assert middle is not None and middle.names == {"made", "gone"}
    later = provider.inventory_changes(pool, middle.token)
    assert later is not None and later.names == {"gone"}
    assert [vm.name for vm in provider.find_vms(pool, ["made", "gone", "never"])] == ["made"]
    unknown = provider.inventory_changes(pool, str(int(later.token) + 5))  # a token from another Redis
    assert unknown is not None and unknown.names is None


def test_clone_outcomes_are_the_tasks_and_vms_the_two_calls_answer_in_one_round_trip(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """Provider.clone_outcomes (the rounds of instant clones: manager/rounds.py): the dummy's
    one round trip answers what the base class's two calls (task_statuses, then find_vms of the
    clones that succeeded) answer: no VM for a clone still running or failed."""
    config = config_with(", createvm_fail_percent: 50")
    provider = provider_for(config, redis_client, clock)
    pool = config.pool("alpha")
    started = provider.clone_vms(pool, [f"vm-{index}" for index in range(20)])
    clock.advance(30)  # some done, some still cloning
    tasks = {hostname: task for hostname, task in started.items() if isinstance(task, str)}

    with RedisRoundTrips() as sent:
        statuses, vms = provider.clone_outcomes(pool, tasks)

    assert sent.count == 1
    two_calls = Provider.clone_outcomes(provider, pool, tasks)  # the default: two calls
    assert statuses == two_calls[0] and vms == two_calls[1]
    states = {status.state for status in statuses.values()}
    assert states == {TaskState.RUNNING, TaskState.SUCCESS, TaskState.ERROR}
    assert {vm.name for vm in vms} == {hostname for hostname, task in tasks.items()
                                        if statuses[task].state is TaskState.SUCCESS}


def test_a_clone_names_its_deployment_and_a_renamed_deployment_leaves_it_alone(
        make_harness: HarnessFactory) -> None:
    """The dummy's annotation said only ``creator``: a deployment renamed (``:config:``
    ``deployment``) took its VMs made before for its own, where the vSphere provider's are the
    old name's, left alone (docs/vsphere.md). The dummy writes the same annotation now."""
    text = CONFIG.replace("pools:", ":config:\n  deployment: {name}\npools:")
    prefix = f"renamed-{secrets.token_hex(3)}:"
    dev = make_harness(parse(text.format(extra="", name="dev")), prefix=prefix)
    dev.fill("alpha", seconds=30)
    (made,) = dev.hosts("alpha", "ready")
    (shown,) = dev.provider.list_vms(dev.pool("alpha"))
    assert json.loads(shown.annotation or "") == {"pool": "alpha", "creator": "vmpool", "deployment": "dev"}
    renamed = make_harness(parse(text.format(extra="", name="prod")), prefix=prefix)
    # Redis lost the service's state, not the hypervisor's (the dummy's VMs are in Redis too)
    lost = [key for key in renamed.client.scan_iter(f"{prefix}*") if not key.startswith(f"{prefix}dummy")]
    renamed.client.delete(*lost)
    foreign = []
    for _ in range(3):  # a VM found is judged on the pass after
        renamed.clock.advance(30)
        report = renamed.reconcile("alpha")
        assert made not in [*report.discovered, *report.completed]
        foreign += report.foreign
    assert made in foreign
    assert made in {vm.name for vm in renamed.provider.list_vms(renamed.pool("alpha"))}
