"""A rolling deploy and its rollback: the previous release (``PREVIOUS``, its own checkout in a
process of its own: tests/upgrade/release_driver.py) and this one (in-process) on one
redis-server and one dummy provider (whose VMs live in that Redis: the shared vCenter), with
checkouts, disks, snapshots, on-demand requests, tokens and runtime pool changes sent to either,
passes of both alternating, then the previous release alone (docs/deploy.md, "Upgrade and
rollback"). No answer may be a 5xx, no VM checked out may be destroyed, every task and request
must end, and the pools must converge.

Skipped when the previous release's commit is not in the repository (a shallow clone)."""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis

from chalicelib import config as config_module
from chalicelib.store.vm_tasks import VMTaskStore, in_flight
from local.redis_server import RedisServer
from tests.harness import Harness, HarnessFactory, assert_consistent, basic

PREVIOUS = "0544acb"
"""The release before this one (docs/deploy.md, "Upgrade and rollback")."""

ANSWER_SECONDS = 60
"""The longest the previous release's process may take to answer one command (a hang fails the test)."""
ROOT = Path(__file__).resolve().parents[2]
DRIVER = Path(__file__).with_name("release_driver.py")

CONFIG = """
:config:
  domain: example.com
  vm_lifetime: 2
  vm_lifetime_auth: 12
  task_limit: 10
  max_ondemand_instances_per_request: 5
  ondemand_clone_limit: 3
  ondemand_request_ttl: 5
  experimental_features: true
  rate_limiting_enabled: true
:rate_limits:
  global_per_ip: {limit: 1000, period: 60}
  authenticated: {limit: 1000, period: 60}
  vm_creation: {limit: 1000, period: 60}
  vm_deletion: {limit: 1000, period: 60}
:auth:
  provider: dummy
  admins: [admin]
:providers:
  :dummy:
    createvm_max_time: 0
    boot_time: 30
    destroyvm_max_time: 0
    createdisk_max_time: 20
    createsnapshot_max_time: 20
    revertsnapshot_max_time: 20
:pools:
  - name: debian-12
    alias: [debian]
    template: templates/debian-12
    size: 2
    provider: dummy
  - name: win-2022
    template: templates/win-2022
    size: 1
    provider: dummy
"""
POOLS = ("debian-12", "win-2022")

pytestmark = pytest.mark.slow


class Release:
    """The previous release: its API and passes, in a process running its own checkout."""

    def __init__(self, root: Path, port: int, config_path: Path, harness: Harness, log_path: Path) -> None:
        self.harness = harness  # for the shared fake clock
        self.log_path = log_path
        """Its logs (and a traceback should it die)."""
        with log_path.open("w") as log:
            self.process = subprocess.Popen([sys.executable, str(DRIVER), str(root), str(port), str(config_path)],
                                            cwd=root, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                            text=True)

    def _send(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"now": self.harness.clock.now(), **command}) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], ANSWER_SECONDS)
        assert ready, f"the previous release did not answer {command['op']} in {ANSWER_SECONDS} s"
        line = self.process.stdout.readline()
        assert line, f"the previous release's process died: {self.log_path.read_text()[-2000:]}"
        answer: dict[str, Any] = json.loads(line)
        assert "crash" not in answer, answer.get("trace")
        return answer

    def request(self, method: str, target: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        command: dict[str, Any] = {"op": "request", "method": method, "target": target, "headers": headers or {}}
        if body is not None:
            command["body"] = body
        answer = self._send(command)
        return int(answer["status"]), answer["body"]

    def reconcile(self, pool: str) -> list[str]:
        return list(self._send({"op": "reconcile", "pool": pool})["errors"])

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Current:
    """This release, in-process, answering as ``Release`` does."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness

    def request(self, method: str, target: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        reply = self.harness.request(method, target, body, headers)
        return reply.status, reply.json

    def reconcile(self, pool: str) -> list[str]:
        return list(self.harness.reconcile(pool).errors)


@pytest.fixture
def previous_checkout(tmp_path: Path) -> Path:
    """The previous release's files (``git archive``: nothing of the repository's own changes)."""
    found = subprocess.run(["git", "cat-file", "-e", f"{PREVIOUS}^{{commit}}"], cwd=ROOT, capture_output=True)
    if found.returncode != 0:
        pytest.skip(f"commit {PREVIOUS} is not in this repository")
    tree = tmp_path / "previous"
    tree.mkdir()
    archive = subprocess.run(["git", "archive", "--format=tar", PREVIOUS], cwd=ROOT, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


class Deploy:
    """Both releases on one Redis; every answer either gives is checked and kept."""

    def __init__(self, new: Current, old: Release) -> None:
        self.new = new
        self.old = old
        self.harness = new.harness
        self.answers: list[tuple[str, str, str, int, Any]] = []
        self.errors: list[tuple[str, str]] = []

    def request(self, side: Current | Release, method: str, target: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any]:
        status, answer = side.request(method, target, body, headers)
        name = "new" if side is self.new else "old"
        self.answers.append((name, method, target, status, answer))
        assert status < 500 or status == 503, (name, method, target, status, answer)
        return status, answer

    def passes(self, side: Current | Release, seconds: float = 31) -> None:
        self.harness.clock.advance(seconds)
        for pool in POOLS:
            errors = side.reconcile(pool)
            self.errors.extend(("new" if side is self.new else "old", error) for error in errors)
            if side is self.new:
                assert_consistent(self.harness, pool)


def short(name: str) -> str:
    return name.split(".")[0]


@pytest.fixture
def deploy(make_harness: HarnessFactory, redis_server: RedisServer, previous_checkout: Path,
           tmp_path: Path) -> Iterator[Deploy]:
    """This release (in-process) and the previous one (its own process) on one Redis and clock."""
    config_path = tmp_path / "vmpool.yaml"
    config_path.write_text(CONFIG)
    harness = make_harness(config_module.parse(CONFIG))
    old = Release(previous_checkout, redis_server.port, config_path, harness, tmp_path / "previous.log")
    try:
        yield Deploy(Current(harness), old)
    finally:
        old.close()


def test_previous_and_this_release_share_redis_through_a_deploy_and_a_rollback(deploy: Deploy) -> None:
    new, old, harness = deploy.new, deploy.old, deploy.harness
    # Before the deploy: the previous release alone fills the pools, hands out a token and a VM.
    for _ in range(3):
        deploy.passes(old)
    status, body = deploy.request(old, "POST", "/api/v3/token", headers=basic("alice", "secret"))
    assert status == 200, body
    alice = {"X-AUTH-TOKEN": body["token"]}
    status, body = deploy.request(old, "POST", "/api/v3/token", headers=basic("admin", "secret"))
    assert status == 200, body
    admin = {"X-AUTH-TOKEN": body["token"]}
    status, body = deploy.request(old, "POST", "/api/v3/vm/debian-12", headers=alice)
    assert status == 200, body
    in_use = [short(body["debian-12"]["hostname"])]
    assert deploy.request(old, "POST", f"/api/v3/vm/{in_use[0]}/disk/8", headers=alice)[0] == 202
    disks: dict[str, list[str]] = {in_use[0]: ["+8gb"]}
    snapshots: dict[str, list[str]] = {}

    # The deploy: both releases answer and reconcile, alternating.
    sides: list[Current | Release] = [new, old]
    request_ids: list[str] = []
    returned: list[str] = []
    for round_ in range(8):
        side = sides[round_ % 2]
        other = sides[(round_ + 1) % 2]
        status, body = deploy.request(side, "POST", "/api/v3/vm/debian", headers=alice)
        if status == 200:
            in_use.append(short(body["debian"]["hostname"]))
        host = in_use[-1]
        assert deploy.request(other, "POST", f"/api/v3/vm/{host}/disk/{4 + round_}", headers=alice)[0] == 202
        disks.setdefault(host, []).append(f"+{4 + round_}gb")
        status, body = deploy.request(side, "POST", f"/api/v3/vm/{host}/snapshot", headers=alice)
        assert status == 202, body
        snapshots.setdefault(host, []).append(body[host]["snapshot"])
        if round_ in (3, 6):  # a VM the other release handed out (and changed) goes back
            returned.append(in_use.pop(-2))
            assert deploy.request(side, "DELETE", f"/api/v3/vm/{returned[-1]}", headers=alice)[0] == 200
        if round_ in (1, 2):
            status, body = deploy.request(side, "POST", "/api/v3/ondemandvm", {"debian": 1, "win-2022": 1},
                                          headers=alice)
            assert status == 201, body
            request_ids.append(body["request_id"])
        if round_ == 3:
            assert deploy.request(side, "POST", "/api/v3/config/poolsize", {"win-2022": "2"},
                                  headers=admin)[0] == 201
        if round_ == 4:
            assert deploy.request(side, "POST", "/api/v3/poolreset", {"debian-12": "1"}, headers=admin)[0] == 201
        if round_ == 5:
            assert deploy.request(side, "POST", "/api/v3/config/pooltemplate", {"win-2022": "templates/win-2025"},
                                  headers=admin)[0] == 201
        if round_ == 6:  # the second request ends early, ended by the release that did not open it
            assert deploy.request(side, "DELETE", f"/api/v3/ondemandvm/{request_ids.pop()}", headers=alice)[0] == 200
        deploy.request(other, "GET", f"/api/v3/token/{alice['X-AUTH-TOKEN']}")
        for request_id in request_ids:
            deploy.request(other, "GET", f"/api/v3/ondemandvm/{request_id}", headers=alice)
        deploy.request(other, "GET", "/api/v3/token", headers=basic("alice", "secret"))
        deploy.request(side, "GET", "/api/v3/status")
        deploy.passes(side)
        deploy.passes(other, seconds=5)

    # The rollback: the previous release alone, on what both wrote.
    for request_id in request_ids:
        deploy.request(old, "GET", f"/api/v3/ondemandvm/{request_id}", headers=alice)
    for _ in range(8):
        deploy.passes(old)
    for host in in_use:
        status, body = deploy.request(old, "GET", f"/api/v3/vm/{host}")
        assert status == 200 and body[host]["state"] == "running", (host, body)
    # Rolled forward again: this release alone.
    for _ in range(6):
        deploy.passes(new)
    for request_id in request_ids:
        status, body = deploy.request(new, "GET", f"/api/v3/ondemandvm/{request_id}", headers=alice)
        assert status == 200 and body["ready"] is True, body
    provider_vms = set().union(*(harness.provider_vms(pool) for pool in POOLS))
    for host in returned:
        assert harness.state_of(host) == "destroyed" and host not in provider_vms, host
    windows = harness.provider._vms(harness.pool("win-2022"))
    ready = harness.hosts("win-2022", "ready")  # the runtime size and template, whoever changed them
    assert len(ready) == 2 and {windows[host]["template"] for host in ready} == {"templates/win-2025"}
    for host in in_use:
        record = harness.store.get_vm(host)
        assert record is not None and record.state == "running", (host, record and record.state)
        assert host in provider_vms, f"{host}, in use, was destroyed"
        details = harness.describe(host)
        assert "task_errors" not in details, (host, details)
        assert (details["disk"], details["snapshots"]) == (disks.get(host, []), snapshots.get(host, [])), host
        assert harness.client.llen(harness.store.keys.vm_tasks(host)) == 0, f"{host}: tasks left queued"
    for pool in POOLS:
        assert_consistent(harness, pool)

    assert deploy.errors == []


class _FailingTaskWrites:
    """The dummy provider's Redis client whose next ``set`` (the write that starts a disk or
    snapshot task) fails with ``error``, after reaching Redis when ``reached``."""

    def __init__(self, client: redis.Redis, error: Exception, reached: bool) -> None:
        self._client, self._error, self._reached, self.armed = client, error, reached, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def set(self, *args: Any, **kwargs: Any) -> Any:
        if not self.armed:
            return self._client.set(*args, **kwargs)
        self.armed = False
        if self._reached:
            self._client.set(*args, **kwargs)
        raise self._error


def test_tasks_this_release_left_in_flight_or_queued_again_end_under_the_previous_one(
        deploy: Deploy, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rolled back while a disk task's start had its answer lost (in flight, ``answer_lost``, no
    ref) and another's start never reached the provider (queued again, ``first_taken``): the
    previous release ends both, the VMs stay in use."""
    new, old, harness = deploy.new, deploy.old, deploy.harness
    for _ in range(3):
        deploy.passes(new)
    token = {"X-AUTH-TOKEN": harness.new_token("bob", "secret")}
    hosts = harness.checkout_vms("debian-12", 2, token["X-AUTH-TOKEN"])
    provider = harness.services.provider("dummy")
    tasks = VMTaskStore(harness.store)
    for host, error, reached in ((hosts[0], redis.TimeoutError("Timeout reading from socket"), True),
                                 (hosts[1], redis.ConnectionError("Connection refused"), False)):
        assert deploy.request(new, "POST", f"/api/v3/vm/{host}/disk/8", headers=token)[0] == 202
        monkeypatch.setattr(provider, "client", _FailingTaskWrites(provider.client, error, reached))
        harness.reconcile("debian-12")
        monkeypatch.undo()
    record = harness.store.get_vm(hosts[0])
    assert record is not None and (in_flight(record) or {}).get("answer_lost")
    assert [task.get("first_taken") is not None for task in tasks.queued(hosts[1])] == [True]

    for _ in range(8):  # the rollback: the previous release alone, past its 120 s start grace
        deploy.passes(old)
    for host in hosts:
        record = harness.store.get_vm(host)
        assert record is not None and record.state == "running" and in_flight(record) is None, host
        assert tasks.queued(host) == [], host
        assert host in harness.provider_vms("debian-12"), f"{host}, in use, was destroyed"
    assert harness.describe(hosts[1])["disk"] == ["+8gb"]
    # The lost start: the previous release asks its dummy provider (which cannot tell) and reports
    # it never started; the dummy never applied it either (a status read would have): consistent.
    details = harness.describe(hosts[0])
    assert (details["disk"], details["task_errors"]) == ([], ["disk +8gb was never started (its pass was interrupted)"])
    assert [error for side, error in deploy.errors if side == "old"] == []
