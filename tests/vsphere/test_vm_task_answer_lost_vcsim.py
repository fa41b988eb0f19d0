"""A disk or snapshot whose start vCenter received but whose answer did not come back in time
(vcsim acting on ``ReconfigVM_Task`` / ``CreateSnapshot_Task`` after the provider's
``call_timeout``), as the user sees it through the API.

Before: the pass finished the task as "failed to start" on the timeout while vCenter added the
disk, so GET /vm/<host> showed the failure and no disk, and the user's retry added a second disk.
Manager time is a FakeClock; vcsim's delays are its own (wall clock).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import pytest

from chalicelib.clock import FakeClock
from chalicelib.manager.vm_tasks import TASK_SETTLE_SECONDS
from chalicelib.providers.base import AnswerLost, ProviderError
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere.provider import VSphereProvider
from tests.harness import Harness, HarnessFactory
from tests.support import eventually, free_ports
from tests.vsphere import admin
from tests.vsphere.test_bad_day import POOL, converge, pool_harness
from tests.vsphere.vcsim import DATACENTER, VcsimServer, vcsim_config

CALL_TIMEOUT = 2.0
"""The provider's call_timeout in these tests."""
RECONFIGURE_SECONDS = 4.0
"""vcsim acts on (and answers) ReconfigVM_Task this long after receiving it: past CALL_TIMEOUT."""
SNAPSHOT_SECONDS = 60.0
"""vcsim acts on CreateSnapshot_Task this long after receiving it: not within a test."""


@pytest.fixture(scope="module")
def late_answers(vcsim_dir: Path) -> Iterator[VcsimServer]:
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "late-answers.pem",
                     method_delays={"ReconfigVM_Task": RECONFIGURE_SECONDS,
                                    "CreateSnapshot_Task": SNAPSHOT_SECONDS}) as server:
        yield server


def in_use(make_harness: HarnessFactory, server: VcsimServer) -> tuple[Harness, str]:
    harness = pool_harness(make_harness, server, size=1, provider={"call_timeout": CALL_TIMEOUT})
    converge(harness, 1)
    return harness, harness.checkout(POOL)


def in_vcenter(harness: Harness, host: str) -> dict[str, list]:
    details = admin.vm_details(harness.provider, f"{DATACENTER}/vm/{harness.pool(POOL).folder}/{host}")
    assert details is not None, host
    return {"disks_gb": details["disks_gb"], "snapshots": details["snapshots"]}


def test_a_disk_whose_reconfigure_answer_timed_out_is_listed_once_vcenter_added_it(
        late_answers: VcsimServer, make_harness: HarnessFactory) -> None:
    harness, host = in_use(make_harness, late_answers)
    template_disks = in_vcenter(harness, host)["disks_gb"]
    assert harness.put(f"/api/v3/vm/{host}", {"disk": 8}).status == 200, harness.replies[-1].body
    harness.reconcile(POOL)  # sends ReconfigVM_Task; its answer times out after CALL_TIMEOUT
    told = harness.describe(host)
    assert (told["disk"], told.get("task_errors")) == ([], None)
    eventually(lambda: len(in_vcenter(harness, host)["disks_gb"]) == len(template_disks) + 1, 20,
               "vCenter to add the disk it was sent")
    for _ in range(3):  # the next passes settle it, and start nothing more
        harness.clock.advance(15)
        harness.reconcile(POOL)
    told = harness.describe(host)
    assert (told["disk"], told.get("task_errors")) == (["+8gb"], None)
    assert in_vcenter(harness, host)["disks_gb"] == [*template_disks, 8]
    record = harness.store.get_vm(host)
    assert record is not None and json.loads(record.raw["disks"]) == ["+8gb"]


def test_a_snapshot_whose_answer_timed_out_and_vcenter_did_not_take_fails_after_the_settle_time(
        late_answers: VcsimServer, make_harness: HarnessFactory) -> None:
    harness, host = in_use(make_harness, late_answers)
    status = harness.post(f"/api/v3/vm/{host}/snapshot").status
    assert status == 202, harness.replies[-1].body
    snapshot = harness.replies[-1].json[host]["snapshot"]
    harness.reconcile(POOL)  # sends CreateSnapshot_Task; its answer times out
    harness.clock.advance(TASK_SETTLE_SECONDS - 5)
    harness.reconcile(POOL)  # not taken yet: it waits
    told = harness.describe(host)
    assert (told["snapshots"], told.get("task_errors")) == ([], None)
    harness.clock.advance(10)
    harness.reconcile(POOL)
    told = harness.describe(host)
    assert told["snapshots"] == [] and len(told["task_errors"]) == 1, told
    assert told["task_errors"][0].startswith(
        f"snapshot {snapshot} failed: not done 120 s after its start, whose answer was lost (snapshot {host}: "
        f"cannot talk to vCenter at "), told["task_errors"]
    assert "timed out" in told["task_errors"][0]


def test_a_start_that_never_reached_vcenter_is_no_lost_answer(
        late_answers: VcsimServer, make_harness: HarnessFactory) -> None:
    """A failure before the task call was sent (the VM not found, vCenter not reachable) started
    nothing: a plain ProviderError (the pass fails the task, or puts it back in its queue when
    vCenter was not reached), never AnswerLost; one after it is."""
    harness, host = in_use(make_harness, late_answers)
    pool = harness.pool(POOL)
    with pytest.raises(ProviderError) as missing:
        harness.provider.add_disk(pool, "no-such-vm", 8, task_key="k1")
    assert not isinstance(missing.value, AnswerLost)
    (closed,) = free_ports(1)
    config = vcsim_config(late_answers, [], provider={"server": f"127.0.0.1:{closed}", "connect_timeout": 1})
    unreached = VSphereProvider(config.providers["vsphere"], config.service, FakeClock())
    with pytest.raises(ProviderError) as refused:
        unreached.create_snapshot(pool, host, "s1")
    assert refused.value.kind is FailureKind.CONNECTION and not isinstance(refused.value, AnswerLost)
    with pytest.raises(AnswerLost) as lost:
        harness.provider.add_disk(pool, host, 1, task_key="k2")
    assert lost.value.kind is FailureKind.TIMEOUT
