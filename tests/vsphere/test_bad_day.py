"""An operator's bad day with vCenter, against our simulator: passes killed around a clone, vCenter
restarted with its state gone, slow, unreachable or refusing our login, a session expired behind
our back, pools configured wrong, clone tasks failing in a burst.

Manager time is a FakeClock; what waits on the wall clock is the simulator's own timing (clone
tasks that run ``clone_delay``, guests that boot after ``boot_delay``, idle sessions expiring).
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import redis
from moto import mock_aws

from chalicelib.clock import FakeClock
from chalicelib.config import PoolConfig
from chalicelib.manager import pending
from chalicelib.manager.context import PassReport
from chalicelib.manager.runner import RETRY_SECONDS, run_pool
from chalicelib.providers.base import ProviderError, Readiness, VMInfo
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import connection as connections
from chalicelib.services import Services
from chalicelib.store.ondemand import OnDemandStore
from tests.harness import Harness, HarnessFactory, Killed, assert_consistent, run_at_once
from tests.support import counts_by_reason, emf_documents, eventually
from tests.vsphere import admin
from tests.vsphere.vcsim import DATACENTER, VcsimServer, vcsim_config
from tools.vcsim import launcher

POOL = "bad-day"


def pool_harness(make_harness: HarnessFactory, server: VcsimServer, service: dict[str, Any] | None = None,
                 provider: dict[str, Any] | None = None, **settings: Any) -> Harness:
    """A harness of one pool ``POOL`` (tools readiness) in a folder of its own on ``server``."""
    settings.setdefault("folder", f"vmpool/bad-{secrets.token_hex(4)}")
    pool = {"name": POOL, "ready_check": "tools", **settings}
    return make_harness(vcsim_config(server, [pool], service, provider))


def in_vcsim(harness: Harness) -> set[str]:
    return {vm.name for vm in harness.provider.list_vms(harness.pool(POOL))}


def converge(harness: Harness, size: int, timeout: float = 20,
             in_use: frozenset[str] = frozenset()) -> list[ProviderError]:
    """Passes a minute apart on the fake clock until the pool has ``size`` ready VMs and nothing in
    flight (the simulator's clones and boots end on its own clock); the passes that failed, as the
    runner would have reported them. ``in_use``: VMs checked out that are still in the folder."""
    failed: list[ProviderError] = []

    def converged() -> bool:
        harness.clock.advance(60)
        try:
            harness.reconcile(POOL)
        except ProviderError as error:
            failed.append(error)
            return False
        counts = harness.store.counts([POOL])[POOL]
        return (counts["ready"], counts["pending"], counts["completed"]) == (size, 0, 0)

    eventually(converged, timeout, f"{size} VMs ready and nothing in flight", interval=0.2)
    assert in_vcsim(harness) == harness.hosts(POOL, "ready") | in_use
    assert harness.store.cloning_count() == 0
    assert_consistent(harness, POOL, pass_completed=False)  # the folder is compared above
    return failed


@pytest.fixture
def slow_clones(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """A simulator whose clone tasks run 1 s (the VM is in its folder meanwhile)."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"slow-{secrets.token_hex(3)}.pem",
                     clone_delay=1.0) as server:
        yield server


# --- 1. a pass killed around a clone's start ----------------------------------------------------


@pytest.mark.parametrize("killed_at", ["clone_started", "done"])
def test_a_pass_killed_around_a_clone_start_leaks_and_doubles_nothing(
        slow_clones: VcsimServer, make_harness: HarnessFactory, killed_at: str) -> None:
    """``clone_started``: the first clone runs in vCenter but its task is not in Redis, the second
    never started. ``done``: both tasks recorded, still running when the pass dies."""
    harness = pool_harness(make_harness, slow_clones, size=2, service={"task_limit": 2})

    def kill(step: str) -> None:
        if step == killed_at:
            raise Killed(step)

    with pytest.raises(Killed):
        harness.reconcile(POOL, kill)
    assert len(in_vcsim(harness)) == (1 if killed_at == "clone_started" else 2)
    converge(harness, 2)


def test_passes_at_once_and_a_stale_pass_over_slow_clones_start_each_clone_once(
        slow_clones: VcsimServer, make_harness: HarnessFactory) -> None:
    """A pass that read the empty folder, then stalled while another filled the pool, goes on
    from its stale read; then three passes at once while the clones run: no clone is started
    twice, none leaks, and every clone slot is freed."""
    harness = pool_harness(make_harness, slow_clones, size=2, service={"task_limit": 4})
    stalled, go = threading.Event(), threading.Event()
    reports: list[PassReport] = []

    def stall_after_reading(step: str) -> None:
        if step == "inventory":
            stalled.set()
            go.wait(30)

    stale = threading.Thread(target=lambda: reports.append(harness.reconcile(POOL, stall_after_reading)))
    stale.start()
    assert stalled.wait(30)
    reports.append(harness.reconcile(POOL))
    go.set()
    stale.join(30)
    run_at_once(lambda: reports.append(harness.reconcile(POOL)), 3)
    assert len(reports) == 5
    started = [name for report in reports for name in report.clones_started]
    assert len(started) == 2 and in_vcsim(harness) == set(started), started
    converge(harness, 2)


# --- 2. vCenter restarted, its state gone ---------------------------------------------------------


def test_vcsim_restarted_empty_drops_ready_vms_and_tells_the_user_of_a_vanished_one(
        private_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    harness = pool_harness(make_harness, private_vcsim, size=2)
    assert converge(harness, 2) == []
    taken = harness.checkout(POOL)
    before = harness.hosts(POOL, "ready")
    private_vcsim.stop()
    private_vcsim.start()  # a fresh inventory: every VM vanished
    # The first pass's first call (the inventory read), on the socket the old process closed,
    # is made again on a fresh one: no pass fails (before, the first one failed, SSLEOFError).
    assert converge(harness, 2) == []
    assert not harness.hosts(POOL, "ready") & before
    assert harness.describe(taken)["state"] == "destroyed"
    assert taken not in harness.checkout_vms(POOL, 2)


def test_every_warm_process_reads_on_a_fresh_socket_after_vcenter_restarted_but_never_starts_a_task_twice(
        private_vcsim: VcsimServer, make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture) -> None:
    """vCenter restarted under warm processes: the socket each keeps is closed. A read (the
    inventory, every pass's first call) is made again once on a fresh socket; a call that starts
    a task is not (vCenter may have done it before the socket broke): it fails, and the call
    after it has the fresh connection."""
    harness = pool_harness(make_harness, private_vcsim, size=1)
    assert converge(harness, 1) == []
    pool = harness.pool(POOL)
    provider = harness.provider
    caplog.set_level(logging.INFO)
    private_vcsim.stop()
    private_vcsim.start()  # the same port; the process keeps its connection
    assert provider.list_vms(pool) == []
    assert "closed the kept connection" in caplog.text
    private_vcsim.stop()
    private_vcsim.start()
    with pytest.raises(ProviderError) as broken:
        provider.clone(pool, "clone-on-a-closed-socket")
    assert broken.value.kind is FailureKind.CONNECTION and "cannot talk to vCenter" in str(broken.value)
    assert in_vcsim(harness) == set()  # not started on the fresh socket behind the caller's back
    assert converge(harness, 1) == []


def test_vcsim_restarted_empty_with_clones_in_flight_fails_them_honestly_and_refills(
        slow_clones: VcsimServer, make_harness: HarnessFactory) -> None:
    harness = pool_harness(make_harness, slow_clones, size=2, service={"task_limit": 2})
    in_flight = set(harness.reconcile(POOL).clones_started)
    slow_clones.stop()
    slow_clones.start()  # the clone tasks and their VMs are gone
    converge(harness, 2)
    for name in in_flight:
        record = harness.store.get_vm(name)
        assert record is not None and record.state == "destroyed" and "no VM" in (record.reason or ""), record


def test_vcsim_restarted_empty_with_a_request_half_delivered_builds_it_again_and_lists_live_vms_only(
        slow_clones: VcsimServer, make_harness: HarnessFactory) -> None:
    """A request for 2: the first VM delivered (running for it), the second cloning, when vCenter
    comes back empty. The vanished VM was never the caller's to use: both are built again (the
    vanished one spends no retry, its clone worked); the request becomes ready with 2 VMs that
    exist, not with the name of one that is gone."""
    harness = pool_harness(make_harness, slow_clones, size=0,
                           service={"ondemand_clone_limit": 1, "ondemand_request_ttl": 30})
    request_id = harness.post("/api/v3/ondemandvm", {POOL: 2}).json["request_id"]
    requests = OnDemandStore(harness.store)

    def half_delivered() -> bool:
        harness.clock.advance(5)
        harness.reconcile(POOL)
        vms = requests.get(request_id).vms  # type: ignore[union-attr]
        return len(vms) == 2 and [bool(vm.raw.get("delivered_at")) for vm in vms] == [True, False]

    eventually(half_delivered, 20, "one VM delivered, the other cloning", interval=0.2)
    [vanished] = [vm.name for vm in requests.get(request_id).vms if vm.raw.get("delivered_at")]  # type: ignore[union-attr]
    slow_clones.stop()
    slow_clones.start()

    def answered() -> bool:
        harness.clock.advance(5)
        try:
            harness.reconcile(POOL)
        except ProviderError:
            pass  # the first pass, on the socket the old process closed
        return harness.get(f"/api/v3/ondemandvm/{request_id}").status != 202

    eventually(answered, 30, "the request built again", interval=0.2)
    reply = harness.get(f"/api/v3/ondemandvm/{request_id}")
    assert reply.status == 200 and reply.json["ready"] is True, reply.json
    hostnames = reply.json[POOL]["hostname"]
    assert len(hostnames) == 2 and vanished not in hostnames
    assert set(hostnames) == in_vcsim(harness)
    assert {harness.describe(name)["state"] for name in hostnames} == {"running"}
    assert harness.describe(vanished)["state"] == "destroyed"
    assert_consistent(harness, POOL, pass_completed=False)  # the folder is compared above


# --- 3. vCenter slow, unreachable, refusing us, our session expired -------------------------------


def test_wrong_password_fails_each_pass_as_a_permission_error_and_never_shows_it(
        vcsim: VcsimServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    secret = "wrong-but-secret-4711"
    config = vcsim_config(vcsim, [{"name": POOL, "size": 2, "folder": "vmpool/wrong-password"}],
                          provider={"password": secret, "server": f"localhost:{vcsim.port}"})
    services = Services(config, redis_client, FakeClock())
    # No session left from another test: the process keeps one per (host, port, user), and a
    # password takes effect at its next login (test_provider.py's tests log in as localhost too).
    connections.drop(connections.Endpoint("localhost", vcsim.port, launcher.USERNAME, password=""))
    caplog.set_level(logging.DEBUG)
    reports = [run_pool(services, POOL, 0.0) for _ in range(2)]
    assert all(report.failures and "refused the login" in report.failures[0] for report in reports)
    assert counts_by_reason(emf_documents(capsys.readouterr().out), "ReconcileErrors") == {"permission": 2}
    assert secret not in caplog.text and all(secret not in failure for report in reports for failure in report.failures)


def test_a_vcenter_password_secret_that_cannot_be_fetched_fails_each_pass_as_a_secret_error(
        vcsim: VcsimServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Before, SecretUnavailable (raised building the provider) escaped run_pool: no
    # ReconcileErrors, and its message failed: redelivered after its visibility timeout, not retried
    # RETRY_SECONDS later as after other provider failures.
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    config = vcsim_config(vcsim, [{"name": POOL, "size": 1, "folder": "vmpool/no-secret"}],
                          provider={"password": {"secret": "vmpool/vsphere-gone"}})
    with mock_aws():
        services = Services(config, redis_client, FakeClock())
        reports = [run_pool(services, POOL, 0.0) for _ in range(2)]
    assert all(report.failures and "vmpool/vsphere-gone" in report.failures[0] for report in reports)
    assert all(report.look_again_in == RETRY_SECONDS and report.unreleased_lease is None for report in reports)
    assert counts_by_reason(emf_documents(capsys.readouterr().out), "ReconcileErrors") == {"secret": 2}
    assert services.store.acquire_lease(POOL, 10, token="next-run") is not None  # the runs released it


def test_a_slow_vcenter_ends_the_pass_as_a_timeout_and_the_api_serves_ready_vms(
        vcsim_dir: Path, make_harness: HarnessFactory, capsys: pytest.CaptureFixture[str]) -> None:
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "slow-calls.pem")
    server.start()
    try:
        harness = pool_harness(make_harness, server, size=1, provider={"call_timeout": 1})
        converge(harness, 1)
        server.stop()
        server.method_delays = {"RetrievePropertiesEx": 2.0}  # every inventory read outlasts call_timeout
        server.start()
        # A fresh container's connection: the dead socket a restart leaves is another test's subject.
        connections.drop(harness.provider.endpoint)
        report = run_pool(harness.services, POOL, 0.0)
        assert report.failures and "timed out" in report.failures[0]
        assert counts_by_reason(emf_documents(capsys.readouterr().out), "ReconcileErrors") == {"timeout": 1}
        # The VM vanished with the restart, but the API does not ask vCenter: it still hands it out.
        assert harness.checkout(POOL)
    finally:
        server.stop()


def test_a_vcenter_address_that_accepts_but_never_answers_fails_the_pass_as_a_timeout(
        vcsim: VcsimServer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    """A port that takes connections and says nothing (a stuck load balancer, a half-dead
    vCenter): the pass ends after connect_timeout with a typed failure, it does not hang."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # the kernel completes the handshakes; nobody ever reads
        config = vcsim_config(vcsim, [{"name": POOL, "size": 1, "folder": "vmpool/silent"}],
                              provider={"server": f"127.0.0.1:{silent.getsockname()[1]}", "connect_timeout": 1})
        report = run_pool(Services(config, redis_client, FakeClock()), POOL, 0.0)
    assert report.failures and "timed out" in report.failures[0]
    assert counts_by_reason(emf_documents(capsys.readouterr().out), "ReconcileErrors") == {"timeout": 1}


def test_a_hung_vcenter_costs_a_pass_one_call_timeout_not_one_per_clone(
        vcsim_dir: Path, make_harness: HarnessFactory) -> None:
    """vCenter answers the inventory but hangs on clones (as behind a firewall dropping its
    port mid-pass, or overloaded): the first clone's timeout tells the pass the others would
    wait as long; they are not sent."""
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "hung.pem", method_delays={"CloneVM_Task": 1.5})
    server.start()
    try:
        harness = pool_harness(make_harness, server, size=3, service={"task_limit": 3}, provider={"call_timeout": 1})
        report = harness.reconcile(POOL)
        failures = list(report.clone_failures.values())
        assert [failure.kind for failure in failures] == [FailureKind.TIMEOUT] * 3
        waited = [failure for failure in failures if not failure.message.startswith("not started: ")]
        assert len(waited) == 1 and "timed out" in waited[0].message, failures
    finally:
        server.stop()


def test_passes_timing_out_on_a_slow_vcenter_take_up_their_session_instead_of_piling_up_new_ones(
        vcsim_dir: Path, make_harness: HarnessFactory) -> None:
    """Each pass times out (the folder's view takes longer than call_timeout), which drops the
    connection. The next pass's connection takes up the same vCenter session: before, each pass
    logged in anew and left a session behind until vCenter expired it idle (30 minutes), a pile
    growing with every pool and pass towards vCenter's session limit."""
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "slow-views.pem",
                         method_delays={"CreateContainerView": 2.0})
    server.start()
    try:
        harness = pool_harness(make_harness, server, size=1, provider={"call_timeout": 1})

        def sessions() -> int:
            return int(harness.provider._run("count sessions",
                                             lambda connection: len(connection.content.sessionManager.sessionList)))

        harness.reconcile(POOL)  # no folder yet (no view to make): it makes it and starts a clone
        with pytest.raises(ProviderError):
            harness.reconcile(POOL)
        before = sessions()
        for _ in range(4):
            with pytest.raises(ProviderError) as timed_out:
                harness.reconcile(POOL)
            assert timed_out.value.kind is FailureKind.TIMEOUT
        assert sessions() == before
    finally:
        server.stop()


def test_an_expired_session_logs_in_again_without_showing_the_password(
        vcsim_dir: Path, make_harness: HarnessFactory, caplog: pytest.LogCaptureFixture) -> None:
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "idle.pem", session_idle=0.5)
    server.start()
    try:
        harness = pool_harness(make_harness, server, size=1)
        caplog.set_level(logging.DEBUG)
        harness.reconcile(POOL)
        time.sleep(1.2)  # vcsim's own clock: our session, idle for longer than 0.5 s, is gone
        converge(harness, 1)
        assert "logging in again" in caplog.text
        assert launcher.PASSWORD not in caplog.text
    finally:
        server.stop()


def paused_after_inventory(server: VcsimServer) -> Callable[[str], None]:
    """A pass checkpoint that SIGSTOPs the simulator once the pass has read its inventory: vCenter
    hangs mid-pass (the caller resumes it)."""

    def pause(step: str) -> None:
        if step == "inventory":
            server.pause()

    return pause


def test_vcenter_hung_mid_pass_costs_disk_and_snapshot_tasks_one_timeout_and_fails_none(
        private_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """vCenter hangs after the pass read its inventory, with snapshots and a disk queued on VMs in
    use: the first task's call times out; the pass starts no other, they wait for the next passes,
    which do them once vCenter is back. Before, the pass waited once per task (a timeout each, 60 s
    by default: the whole invocation's time) and failed every one of the users' tasks; then it
    still failed the first ("failed to start ... timed out") though a task whose start never
    reached vCenter can simply be started again, and one whose answer was lost may have been done
    (manager/vm_tasks.py TASK_SETTLE_SECONDS): now none fails, and each is done once."""
    harness = pool_harness(make_harness, private_vcsim, size=3, service={"task_limit": 3},
                           provider={"call_timeout": 1, "connect_timeout": 1})
    converge(harness, 3)
    taken = harness.checkout_vms(POOL, 3)
    for name in taken:
        assert harness.post(f"/api/v3/vm/{name}/snapshot").status == 202
    assert harness.post(f"/api/v3/vm/{taken[0]}/disk/4").status == 202
    try:
        report = harness.reconcile(POOL, paused_after_inventory(private_vcsim))
    finally:
        private_vcsim.resume()
    assert report.followups
    failed = {name: harness.describe(name).get("task_errors", []) for name in taken}
    assert failed == {name: [] for name in taken}

    def tasks_done() -> bool:
        harness.clock.advance(60)
        harness.reconcile(POOL)
        shown = [harness.describe(name) for name in taken]
        return all(len(vm.get("snapshots") or []) == 1 for vm in shown) and shown[0]["disk"] == ["+4gb"]

    eventually(tasks_done, 30, "the tasks left queued to be done once vCenter is back", interval=0.2)
    assert sum(len(harness.describe(name).get("task_errors", [])) for name in taken) == 0


def test_passes_of_a_batch_waiting_for_a_hung_vcenter_fail_with_the_one_timeout_not_one_each(
        private_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """The consumer runs the passes of a batch's pools at once, on the one connection the process
    keeps to a vCenter: a pass waits for the call of another to end. vCenter hangs: the first call
    waits its timeout; the passes that were waiting meanwhile now fail with it, not each after a
    timeout of its own in turn (10 pools: call_timeout + 9 connect_timeouts, 150 s by default, for
    the last: the whole batch's time, and the passes given up kept holding the connection in the
    next invocations). A call made after vCenter is back is answered."""
    pools = [{"name": f"hung-{index}", "size": 0, "folder": f"vmpool/hung-{index}"} for index in range(4)]
    config = vcsim_config(private_vcsim, pools, provider={"call_timeout": 1, "connect_timeout": 1})
    harness = make_harness(config)
    provider = harness.provider
    for pool in config.pools:
        provider.list_vms(pool)
    errors: list[ProviderError] = []
    unlisted = list(config.pools)

    def list_one_pool() -> None:
        try:
            provider.list_vms(unlisted.pop())
        except ProviderError as error:
            errors.append(error)

    private_vcsim.pause()
    try:
        run_at_once(list_one_pool, len(unlisted))
    finally:
        private_vcsim.resume()
    assert len(errors) == 4 and {error.kind for error in errors} == {FailureKind.TIMEOUT}, errors
    waited = [error for error in errors if "not tried" not in str(error)]
    assert len(waited) == 1, errors
    assert all(str(waited[0]).partition(": ")[2] in str(error) for error in errors), errors
    assert provider.list_vms(config.pools[0]) == []


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A local port whose connects are never answered: its accept queue is full (as a guest
    behind a firewall that drops packets)."""
    listener = socket.socket()
    fillers = []
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_guests_that_never_answer_the_ready_port_cost_a_pass_its_readiness_budget_not_3_s_each(
        vcsim: VcsimServer, make_harness: HarnessFactory, silent_port: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """``ready_check: tcp`` with the guests' port dropping packets (a firewall between vmpool and
    the guests): each check waits 3 s, and a pass checked every pending VM: twenty were the
    reconcile function's 60 s, every pass. Now a pass stops checking once its budget is spent
    (15 s; 5 here) and the next pass checks the others first."""
    monkeypatch.setattr(pending, "READY_CHECK_SECONDS_PER_PASS", 5.0, raising=False)
    harness = pool_harness(make_harness, vcsim, size=4, service={"task_limit": 4}, ready_check="tcp",
                           ready_port=silent_port)
    check_ready = harness.provider.check_ready

    def checked_on_the_pass_clock(pool: PoolConfig, vm: VMInfo) -> Readiness:
        started = time.monotonic()
        try:
            return check_ready(pool, vm)
        finally:
            harness.clock.advance(time.monotonic() - started)  # the pass's clock sees the wait

    monkeypatch.setattr(harness.provider, "check_ready", checked_on_the_pass_clock)
    assert len(harness.reconcile(POOL).clones_started) == 4

    def booted() -> bool:  # the simulator's guests report their IP after its boot delay
        return all(vm.ip for vm in harness.provider.list_vms(harness.pool(POOL))) and len(in_vcsim(harness)) == 4

    eventually(booted, 10, "the guests to report an IP", interval=0.2)

    def checked() -> set[str]:
        return {name for name in harness.hosts(POOL, "pending")
                if "cannot connect" in (harness.describe(name).get("not_ready_reason") or "")}

    harness.reconcile(POOL)
    first = checked()
    assert len(first) == 2, first  # 2 checks of 3 s: past the 5 s budget
    harness.reconcile(POOL)
    assert checked() == harness.hosts(POOL, "pending") and len(checked()) == 4


def test_an_ondemand_request_fails_at_its_ttl_while_vcenter_hangs_and_its_vms_go_once_it_is_back(
        private_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """vCenter hangs with a request's clones under way: each pass of the pool fails (a timeout)
    before it serves requests. The request still fails at its ttl with vmpooler's reason, not
    'open' for as long as the outage lasts (its caller polling, its VMs counted by the quotas);
    its VMs are destroyed once vCenter answers again."""
    harness = pool_harness(make_harness, private_vcsim, size=0,
                           service={"ondemand_clone_limit": 2, "ondemand_request_ttl": 5},
                           provider={"call_timeout": 1, "connect_timeout": 1})
    request_id = harness.post("/api/v3/ondemandvm", {POOL: 2}).json["request_id"]
    assert len(harness.reconcile(POOL).clones_started) == 2
    private_vcsim.pause()
    try:
        harness.clock.advance(5 * 60 + 1)
        report = run_pool(harness.services, POOL, 0.0)
        assert report.failures and "timed out" in report.failures[0]
        reply = harness.get(f"/api/v3/ondemandvm/{request_id}")
        assert (reply.status, reply.json) == (200, {
            "ok": True, "request_id": request_id, "ready": False,
            "message": "The request failed to provision instances within the configured ondemand_request_ttl '5'"})
        assert harness.get("/api/v3/status?view=queue").json["queue"]["requested"] == 0
    finally:
        private_vcsim.resume()
    converge(harness, 0)  # nothing of the request left in vCenter


# --- 4. and 5. clones that fail: configured wrong, or failing in vCenter ------------------------------


def passes_for(harness: Harness, minutes: int) -> list[PassReport]:
    """Passes every 10 s for ``minutes`` (fake clock)."""
    reports = []
    for _ in range(minutes * 6):
        reports.append(harness.reconcile(POOL))
        harness.clock.advance(10)
    return reports


def failure_kinds(reports: list[PassReport]) -> set[str]:
    return {failure.kind.value for report in reports for failure in report.clone_failures.values()}


@pytest.mark.parametrize(("settings", "service", "reason", "named"), [
    ({"template": "templates/no-such-template"}, {}, "template",
     "template DC0/vm/templates/no-such-template not found"),
    ({"folder": "vmpool/never-made"}, {"create_folders": False}, "placement",
     "folder DC0/vm/vmpool/never-made not found (set create_folders: true to create it)"),
    ({"datastore": "NoSuchDS"}, {}, "placement", "datastore DC0/datastore/NoSuchDS not found"),
    ({"clone_target": "NoSuchCluster"}, {}, "placement", "clone_target DC0/host/NoSuchCluster not found"),
    ({"datacenter": "DC9"}, {}, "placement", "datacenter DC9 not found"),
])
def test_a_misconfigured_pool_backs_off_instead_of_a_clone_storm(
        vcsim: VcsimServer, make_harness: HarnessFactory, settings: dict[str, str], service: dict[str, Any],
        reason: str, named: str) -> None:
    harness = pool_harness(make_harness, vcsim, size=4, service={"task_limit": 4, **service}, **settings)
    reports = passes_for(harness, 5)
    started = [len(report.clones_started) for report in reports]
    # Not 30 passes x 4 clones: after the first burst failed, one clone now and then, less often.
    assert started[0] == 4 and max(started[1:]) == 1, started
    assert 2 <= sum(started[1:]) <= 4, started
    assert failure_kinds(reports) == {reason}
    # GET /vm of a failed VM names what to fix.
    failed = next(name for report in reports for name in report.clone_failures)
    record = harness.store.get_vm(failed)
    assert record is not None and named in (record.reason or ""), record
    assert in_vcsim(harness) == set()


def test_once_the_operator_makes_the_folder_the_backed_off_pool_fills(
        vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    folder = f"vmpool/bad-{secrets.token_hex(4)}"
    harness = pool_harness(make_harness, vcsim, size=3, service={"task_limit": 3, "create_folders": False},
                           folder=folder)
    passes_for(harness, 3)
    admin.create_folder(harness.provider, f"{DATACENTER}/vm/{folder}")
    assert converge(harness, 3) == []


def test_a_burst_of_failed_clone_tasks_is_cleaned_up_counted_and_bounded(
        vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    folder = f"vmpool/bad-{secrets.token_hex(4)}/{launcher.FAIL_CLONE_FOLDER}"
    harness = pool_harness(make_harness, vcsim, size=5, service={"task_limit": 3}, folder=folder)
    first = harness.reconcile(POOL)
    assert len(first.clones_started) == 3
    assert len(in_vcsim(harness)) == 3  # vCenter made the VMs, then failed their tasks
    in_flight = []
    reports = []
    for _ in range(12):
        harness.clock.advance(10)
        reports.append(harness.reconcile(POOL))
        in_flight.append(harness.store.cloning_count())
    assert max(in_flight) <= 3
    assert failure_kinds(reports) == {"other"}
    assert set(first.clones_started) <= {name for report in reports for name in report.clone_failures}
    debris = set(first.clones_started)

    def debris_destroyed() -> bool:
        harness.reconcile(POOL)
        return not debris & in_vcsim(harness)

    eventually(debris_destroyed, 10, "the failed clones' VMs to be destroyed in vCenter")
    assert all(harness.state_of(name) == "destroyed" for name in debris)


# --- 4. two datacenters ------------------------------------------------------------------------------


def test_two_datacenters_with_the_same_folder_keep_their_vms_apart(
        vcsim_dir: Path, make_harness: HarnessFactory) -> None:
    server = VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / "two-dc.pem", datacenters=2)
    server.start()
    try:
        folder = "vmpool/shared-name"
        harness = pool_harness(make_harness, server, size=1, folder=folder, datacenter="DC1")
        admin.create_vm(harness.provider, f"{DATACENTER}/vm/{folder}", "dc0-bystander")
        converge(harness, 1)
        for _ in range(3):
            harness.reconcile(POOL)
        assert admin.exists(harness.provider, f"{DATACENTER}/vm/{folder}/dc0-bystander")
        (vm,) = harness.hosts(POOL, "ready")
        assert admin.exists(harness.provider, f"DC1/vm/{folder}/{vm}")
    finally:
        server.stop()


@pytest.fixture
def three_datacenters(vcsim_dir: Path) -> Iterator[VcsimServer]:
    """DC0, DC1 and DC2, each with cluster, template ``templates/vmpool-template`` and folder
    ``vmpool`` of the same names."""
    with VcsimServer(boot_delay=0.2, cert_path=vcsim_dir / f"three-dc-{secrets.token_hex(3)}.pem",
                     datacenters=3) as server:
        yield server


def test_pools_of_datacenters_not_the_first_clone_there_and_list_only_their_own(
        three_datacenters: VcsimServer, make_harness: HarnessFactory) -> None:
    """Pools with the same folder in DC1 and DC2 (host selection on, DC2's through its cluster),
    and one of the provider's default datacenter DC2: each clone lands in its pool's datacenter,
    on its hosts, and each pool lists only its own VMs."""
    folder = "vmpool/same-everywhere"
    pools = [
        {"name": "in-dc1", "size": 1, "folder": folder, "datacenter": "DC1", "ready_check": "tools"},
        {"name": "in-dc2", "size": 1, "folder": folder, "datacenter": "DC2", "clone_target": "DC2_C0",
         "ready_check": "tools"},
        {"name": "default-dc2", "size": 1, "folder": "vmpool/default", "ready_check": "tools"},
    ]
    harness = make_harness(vcsim_config(three_datacenters, pools, {"manage_host_selection": True},
                                        {"datacenter": "DC2"}))
    for name, datacenter in (("in-dc1", "DC1"), ("in-dc2", "DC2"), ("default-dc2", "DC2")):
        def ready(pool: str = name) -> bool:
            harness.clock.advance(60)
            harness.reconcile(pool)
            return len(harness.hosts(pool, "ready")) == 1

        eventually(ready, 20, f"pool {name} to fill", interval=0.2)
        (vm,) = harness.hosts(name, "ready")
        listed = harness.provider.list_vms(harness.pool(name))
        assert [(item.name, (item.host or "")[:4]) for item in listed] == [(vm, f"{datacenter}_")], listed
        assert admin.exists(harness.provider, f"{datacenter}/vm/{harness.pool(name).folder}/{vm}")


@pytest.mark.parametrize(("template", "says"), [
    ("DC0/vm/templates/vmpool-template",
     ("template DC0/vm/templates/vmpool-template is in datacenter DC0, not in the pool's datacenter DC1: "
     "set the pool's datacenter to DC0, or name a template in DC1")),
    ("templates/only-in-dc2",
     ("template DC1/vm/templates/only-in-dc2 not found (vCenter has no VM at that inventory path); datacenter "
     "DC2 has DC2/vm/templates/only-in-dc2, but the pool clones in DC1: set the pool's datacenter to use it")),
])
def test_a_template_only_another_datacenter_has_is_refused_naming_that_datacenter(
        three_datacenters: VcsimServer, make_harness: HarnessFactory, template: str, says: str) -> None:
    """A pool of DC1 naming a template only DC0 or DC2 has: the clone fails as ``template`` and
    the VM's reason says where the template is. It said "template DC1/vm/DC0/vm/templates/...
    not found", or just "not found", leaving the operator to guess."""
    harness = pool_harness(make_harness, three_datacenters, size=1, datacenter="DC1", template=template)
    admin.copy_vm(harness.provider, f"DC2/vm/{launcher.TEMPLATE}", "DC2/vm/templates", "only-in-dc2",
                  template=True)
    reports = passes_for(harness, 1)
    (failed, failure), *_ = [item for report in reports for item in report.clone_failures.items()]
    assert failure.kind is FailureKind.TEMPLATE and says in failure.message, failure
    record = harness.store.get_vm(failed)
    assert record is not None and says in (record.reason or ""), record
    assert in_vcsim(harness) == set()


def test_a_simulator_started_on_a_port_used_before_is_met_with_a_fresh_connection(
        private_vcsim: VcsimServer, make_harness: HarnessFactory) -> None:
    """The system hands a new simulator the port of an earlier one whose connection this process
    still caches: forgetting that server's connections, even a call that is not retried on a
    closed socket (one that could start a task) gets a fresh one (on the reused socket the old
    server closed it failed, SSLEOFError)."""
    harness = pool_harness(make_harness, private_vcsim, size=1)
    assert converge(harness, 1) == []
    private_vcsim.stop()
    private_vcsim.start()  # the same port: as a new simulator reusing it
    connections.forget_server("127.0.0.1", private_vcsim.port)
    assert connections.cached(harness.provider.endpoint) is None
    sessions = harness.provider._run("count sessions",
                                     lambda connection: len(connection.content.sessionManager.sessionList))
    assert sessions >= 1
