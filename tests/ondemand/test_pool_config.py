"""Runtime pool configuration: POST/DELETE /config/poolsize, /config/pooltemplate and
/config/clonetarget, POST /poolreset."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest
import redis

import app
from chalicelib.api import pool_config
from chalicelib.api.routes import Route
from chalicelib.config import parse
from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pool_queue import DRAIN, Delayed, PoolMessage
from chalicelib.services import Services
from chalicelib.store.connection import ReplyLost, _TcpConnection
from chalicelib.store.pool_overrides import SETTINGS, PoolOverrides
from chalicelib.store.templates import TemplateStore
from tests.harness import route_target, routes_of
from tests.ondemand.conftest import BASE_CONFIG
from tests.support import production_client

BODIES = {
    "config_poolsize": {"debian-12": "3"},
    "config_pooltemplate": {"debian-12": "templates/other"},
    "poolreset": {"debian-12": "1"},
    "config_clonetarget": {"debian-12": "cluster2"},
}
"""route name -> a valid body, for the POST routes that change pools."""

POOL_CHANGES = routes_of(pool_config)
"""Every route that changes pools at runtime, from the route table: one added there is tested here."""


def request_of(route: Route) -> tuple[str, str, object]:
    """(method, path, body) of a valid request to the route for pool debian-12."""
    body = BODIES[route.name] if route.method == "POST" else None  # a new POST route needs its body here
    return route.method, route_target(route, {"pool": "debian-12"}), body


def test_the_pool_changes_are_the_ones_expected() -> None:
    # routes_of() finds them by their handlers' module: a move out of it must not empty the tests.
    assert {route.name for route in POOL_CHANGES} >= set(BODIES) | {"config_poolsize_clear"}


@pytest.mark.parametrize("route", POOL_CHANGES, ids=lambda route: route.name)
def test_405_without_experimental_features(make_stack, route):
    stack = make_stack(experimental=False)
    method, path, body = request_of(route)
    assert stack.answer(method, path, body) == (405, {"ok": False})
    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")


@pytest.mark.parametrize("route", POOL_CHANGES, ids=lambda route: route.name)
def test_token_required_when_auth_is_configured(make_stack, route):
    stack = make_stack(extra="\n:auth:\n  provider: dummy\n")
    method, path, body = request_of(route)
    assert stack.answer(method, path, body) == (401, {"ok": False, "error": "a token is required (X-AUTH-TOKEN)"})
    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")


@pytest.mark.parametrize("route", [route for route in POOL_CHANGES if route.method == "POST"],
                         ids=lambda route: route.name)
def test_bad_json_is_a_400(make_stack, route):
    stack = make_stack()
    path = route_target(route, {})
    assert stack.answer("POST", path, raw=b'{"debian-12": ') == (
        400, {"ok": False, "message": "JSON payload could not be parsed"})
    # No body at all is vmpooler's "no payload" 404: tests/compat/test_vmpooler_poolreset_spec.py.
    assert stack.answer("POST", path, ["debian-12"])[0] == 400


def test_pool_size_change_shows_everywhere_survives_restarts_and_retires_surplus(make_stack, redis_client, clock):
    stack = make_stack(size=3)
    stack.run_passes("debian-12")
    assert stack.answer("GET", "/api/v3/status?view=pools")[1]["pools"]["debian-12"]["ready"] == 3

    assert stack.answer("POST", "/api/v3/config/poolsize", {"debian-12": "1"}) == (201, {"ok": True})
    assert stack.refill.pools == ["debian-12"]
    assert stack.answer("POST", "/api/v3/config/poolsize", {"debian-12": 1}) == (200, {"ok": True})
    status = stack.answer("GET", "/api/v3/status?view=pools,capacity")[1]
    assert status["pools"]["debian-12"]["max"] == 1 and status["capacity"]["total"] == 2
    assert stack.answer("GET", "/api/v3/poolstat?pool=debian")[1]["pools"]["debian-12"]["max"] == 1
    config = {p["name"]: p for p in stack.answer("GET", "/api/v3/config")[1]["pool_configuration"]}
    assert config["debian-12"]["size"] == 1 and config["win-2022"]["size"] == 1
    # Another process (a new Lambda) sees the override.
    assert Services(stack.services.config, redis_client, clock=clock).pool("debian-12").size == 1

    ready_before = stack.services.store.hostnames("debian-12", "ready")
    report = stack.reconcile("debian-12")
    assert sorted(report.completed.values()) == ["pool size reduced to 1"] * 2
    assert stack.services.store.hostnames("debian-12", "ready") == ready_before[-1:]  # the newest stays
    retired = next(iter(report.completed))
    assert stack.answer("GET", f"/api/v3/vm/{retired}")[1][retired]["reason"] == "pool size reduced to 1"

    # As vmpooler: the size until now and the configured one.
    assert stack.answer("DELETE", "/api/v3/config/poolsize/debian-12") == (
        201, {"ok": True, "pool_size_before_reset": 1, "pool_size_before_overrides": 3})
    assert stack.answer("DELETE", "/api/v3/config/poolsize/debian-12") == (
        200, {"ok": True, "pool_size_before_reset": 3, "pool_size_before_overrides": 3})
    assert stack.answer("GET", "/api/v3/status?view=pools")[1]["pools"]["debian-12"]["max"] == 3
    assert len(stack.reconcile("debian-12").clones_started) == 2


def test_pool_size_errors(make_stack):
    stack = make_stack()
    post = lambda body: stack.answer("POST", "/api/v3/config/poolsize", body)  # noqa: E731
    assert post({"centos": "1", "debian-12": "2"}) == (400, {"ok": False, "not_configured": ["centos"]})
    assert post({"debian-12": "-1"}) == (400, {"ok": False, "not_configured": ["debian-12"]})
    assert post({"debian-12": "three"}) == (400, {"ok": False, "not_configured": ["debian-12"]})
    assert post({"debian-12": True}) == (400, {"ok": False, "not_configured": ["debian-12"]})
    assert post({"debian": "2"}) == (400, {"ok": False, "not_configured": ["debian"]})  # an alias is no pool
    assert stack.answer("DELETE", "/api/v3/config/poolsize/centos")[0] == 404
    assert post({"debian-12": "2"}) == (200, {"ok": True})  # the size it has
    assert stack.services.pool("debian-12").size == 2


def test_template_change_drains_and_refills_from_the_new_template(make_stack):
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    old_ready = stack.services.store.hostnames("debian-12", "ready")
    status, checkout = stack.answer("POST", "/api/v3/vm", {"debian-12": 1})
    assert status == 200
    checked_out = checkout["debian-12"]["hostname"].split(".")[0]
    assert stack.answer("GET", f"/api/v3/vm/{checked_out}")[1][checked_out]["source_template"] == "templates/debian-12"
    stack.reconcile("debian-12")  # refill the one checked out, from the old template
    pending_old = stack.services.store.hostnames("debian-12", "pending")
    assert len(pending_old) == 1

    new_template = {"debian-12": "templates/debian-12-v2"}
    assert stack.answer("POST", "/api/v3/config/pooltemplate", new_template) == (201, {"ok": True})
    assert stack.answer("POST", "/api/v3/config/pooltemplate", new_template) == (200, {"ok": True})
    config = {p["name"]: p for p in stack.answer("GET", "/api/v3/config")[1]["pool_configuration"]}
    assert config["debian-12"]["template"] == "templates/debian-12-v2"

    report = stack.reconcile("debian-12")
    drained = set(old_ready) - {checked_out} | set(pending_old)
    assert set(report.completed) == drained
    assert set(report.completed.values()) == {"pool template changed to templates/debian-12-v2"}
    assert stack.state_of(checked_out) == "running"  # a checked-out VM is never touched
    stack.run_passes("debian-12")
    new_ready = stack.services.store.hostnames("debian-12", "ready")
    assert len(new_ready) == 2 and not set(new_ready) & drained
    for hostname in new_ready:
        vm = stack.answer("GET", f"/api/v3/vm/{hostname}")[1][hostname]
        assert vm["state"] == "ready" and vm["source_template"] == "templates/debian-12-v2"
    provider = stack.services.provider("dummy")
    assert provider._vms(stack.services.pool("debian-12"))[new_ready[0]]["template"] == "templates/debian-12-v2"

    assert stack.answer("DELETE", "/api/v3/config/pooltemplate/debian-12") == (
        201, {"ok": True, "template_before_reset": "templates/debian-12-v2",
              "template_before_overrides": "templates/debian-12"})
    assert stack.answer("DELETE", "/api/v3/config/pooltemplate/debian-12") == (
        200, {"ok": True, "template_before_reset": "templates/debian-12",
              "template_before_overrides": "templates/debian-12"})
    report = stack.reconcile("debian-12")
    assert set(report.completed) == set(new_ready)
    assert set(report.completed.values()) == {"pool template changed to templates/debian-12"}


class DroppedQueue:
    """The reconcile queue, for a test that runs the passes itself."""

    def send(self, messages: list[Delayed], budget_seconds: float | None = None) -> None:
        pass


def test_templates_set_over_time_do_not_grow_what_redis_keeps_or_what_a_pass_reads(make_stack):
    """POST /config/pooltemplate with 1,000 distinct templates over time, a pass after each and
    the scheduler's tick every tenth: the templates recorded prepared (create_template_delta_disks;
    every pass reads them all) are at most the ones set since the last tick, and after a tick only
    the one in use. Before: one more for good with each template ever set."""
    stack = make_stack(size=0, create_template_delta_disks="true")
    prepared, ticker, most = stack.store.keys.templates_prepared, Ticker(), 0
    for number in range(1000):
        template = {"debian-12": f"templates/debian-12-build{number}"}
        assert stack.answer("POST", "/api/v3/config/pooltemplate", template) == (201, {"ok": True})
        most = max(most, stack.client.hlen(prepared))  # what the pass reads
        stack.reconcile("debian-12")
        if number % 10 == 9:
            ticker.tick(stack.services, DroppedQueue())
    assert most <= 10
    assert stack.client.hkeys(prepared) == ["dummy:templates/debian-12-build999"]


def test_the_tick_keeps_a_preparation_under_way_of_a_template_no_pool_uses(make_stack):
    """A template left while it was being prepared: its preparation stays recorded for the passes
    that finish it (else it would stay half made); prepared ones no pool uses are dropped."""
    stack = make_stack(size=0, create_template_delta_disks="true")
    templates = TemplateStore(stack.store)
    templates.started("dummy:templates/left-mid-preparation", "task:task-7")
    templates.done("dummy:templates/left")
    templates.done("dummy:templates/debian-12")
    Ticker().tick(stack.services, DroppedQueue())
    assert templates.all() == {"dummy:templates/left-mid-preparation": "task:task-7",
                               "dummy:templates/debian-12": "done"}


def test_a_removed_pool_draining_does_not_record_its_template_again(make_stack):
    """A pool removed from the config: its template, which no pool uses now, is dropped by the
    tick, and its drain passes (which clone nothing) do not plan and record it again each time."""
    stack, ticker = make_stack(size=0, create_template_delta_disks="true"), Ticker()
    ticker.tick(stack.services, DroppedQueue())
    stack.reconcile("win-2022")
    text = BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0).replace(
        ":config:\n", ":config:\n  create_template_delta_disks: true\n")
    stack.services.use_config(parse(text[:text.index("  - name: win-2022")]))
    ticker.tick(stack.services, DroppedQueue())  # win-2022 drains from now on
    reports = [look_at(stack.services, PoolMessage("win-2022", DRAIN), DroppedQueue()) for _ in range(2)]
    assert all(report is not None and report.passes for report in reports)
    assert "dummy:templates/win-2022" not in TemplateStore(stack.store).all()


def test_template_errors(make_stack):
    stack = make_stack()
    post = lambda body: stack.answer("POST", "/api/v3/config/pooltemplate", body)  # noqa: E731
    for template in ("noslash", "/abs/path", "trailing/", 7):
        assert post({"debian-12": template}) == (400, {"ok": False, "bad_templates": ["debian-12"]})
    assert post({"centos": "a/b"}) == (400, {"ok": False, "bad_templates": ["centos"]})
    assert stack.answer("DELETE", "/api/v3/config/pooltemplate/centos")[0] == 404
    assert stack.services.pool("debian-12").template == "templates/debian-12"


def test_pool_reset_drains_and_refills(make_stack):
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    old_ready = stack.services.store.hostnames("debian-12", "ready")
    stack.clock.advance(1)
    assert stack.answer("POST", "/api/v3/poolreset", {"debian-12": "1"}) == (201, {"ok": True})
    assert stack.refill.pools == ["debian-12"]
    report = stack.reconcile("debian-12")
    assert report.completed == {hostname: "pool reset" for hostname in old_ready}
    assert len(report.clones_started) == 2
    stack.run_passes("debian-12")
    new_ready = stack.services.store.hostnames("debian-12", "ready")
    assert len(new_ready) == 2 and not set(new_ready) & set(old_ready)
    assert stack.reconcile("debian-12").completed == {}  # VMs cloned after the reset stay

    assert stack.answer("POST", "/api/v3/poolreset", {"centos": "1", "debian-12": "1"}) == (
        400, {"ok": False, "bad_pools": ["centos"]})


STALE_MAKING_CHANGES = [("/poolreset", {"debian-12": "1"}),
                        ("/config/pooltemplate", {"debian-12": "templates/debian-12-v2"})]
"""The changes that make a pool's ready VMs stale: a reset, a template change."""


@pytest.mark.parametrize("change", STALE_MAKING_CHANGES, ids=["reset", "template"])
def test_once_a_template_change_or_reset_is_answered_no_checkout_gets_a_vm_made_before_it(make_stack, change):
    """The drain of the VMs made before the change runs in the pool's next pass, seconds later in
    AWS (a queued message, a Lambda, the inventory read; longer while another pass holds the
    pool). Before, every checkout meanwhile, by the pool's name or an alias, was handed a VM of
    the old template, or one the reset was meant to take away, after the admin's 201."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    old_ready = set(stack.ready("debian-12"))
    stack.clock.advance(1)
    path, body = change
    assert stack.answer("POST", f"/api/v3{path}", body) == (201, {"ok": True})

    for name in ("debian-12", "debian"):
        assert stack.answer("POST", "/api/v3/vm", {name: 1}) == (503, {"ok": False})
    assert set(stack.ready("debian-12")) == old_ready  # refused, not taken

    assert set(stack.reconcile("debian-12").completed) == old_ready  # the pass drains them
    stack.run_passes("debian-12")
    host = stack.checkout("debian")
    assert host not in old_ready
    assert stack.describe(host)["source_template"] == stack.pool("debian-12").template


def test_a_template_set_and_set_back_before_a_pass_leaves_the_pool_serving(make_stack):
    """Nothing went stale: the pass that reads the last change drains nothing and lets
    checkouts take the pool's ready VMs again. A size change fences nothing."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    ready = set(stack.ready("debian-12"))
    assert stack.answer("POST", "/api/v3/config/pooltemplate", {"debian-12": "templates/v2"})[0] == 201
    assert stack.answer("DELETE", "/api/v3/config/pooltemplate/debian-12")[0] == 201
    assert stack.answer("POST", "/api/v3/vm", {"debian-12": 1})[0] == 503
    assert stack.reconcile("debian-12").completed == {}
    assert stack.checkout("debian-12") in ready
    assert stack.answer("POST", "/api/v3/config/poolsize", {"debian-12": "3"})[0] == 201
    assert stack.checkout("debian-12") in ready


def test_a_change_made_while_a_pass_runs_stays_fenced_until_a_pass_reads_it(make_stack, monkeypatch):
    """A pass that read its overrides before a template change drains by the template it read:
    it must not let checkouts take the VMs the later change made stale; the next pass does."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    ready = set(stack.ready("debian-12"))
    assert stack.answer("POST", "/api/v3/config/pooltemplate", {"debian-12": "templates/v2"})[0] == 201
    assert stack.answer("DELETE", "/api/v3/config/pooltemplate/debian-12")[0] == 201  # fenced, nothing stale
    read = PoolOverrides.all
    changed: list[int] = []

    def read_then_change(self: PoolOverrides, pools: Any) -> Any:
        found = read(self, pools)
        if not changed:  # the pass's one read of its overrides; the change lands right after it
            changed.append(stack.answer("POST", "/api/v3/config/pooltemplate", {"debian-12": "templates/v3"})[0])
        return found

    monkeypatch.setattr(PoolOverrides, "all", read_then_change)
    assert stack.reconcile("debian-12").completed == {}  # nothing stale for the template it read
    monkeypatch.undo()
    assert changed == [201]
    assert stack.answer("POST", "/api/v3/vm", {"debian-12": 1}) == (503, {"ok": False})
    assert set(stack.reconcile("debian-12").completed) == ready
    stack.run_passes("debian-12")
    assert stack.describe(stack.checkout("debian-12"))["source_template"] == "templates/v3"


@pytest.mark.parametrize("change", STALE_MAKING_CHANGES, ids=["reset", "template"])
def test_a_vm_checked_out_while_a_pass_drains_its_pool_stays_with_its_user(make_stack, monkeypatch, change):
    """The drain listed the pool's ready VMs; a user checked one out before the drain read their
    records (the next round trip). Before: the drain moved that VM from the state its record
    showed (running) to completed, and the next pass destroyed the VM the user had just been
    handed (7 of 1,006 checkouts racing resets and template changes on the local stack)."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    stack.clock.advance(1)
    path, body = change
    assert stack.answer("POST", f"/api/v3{path}", body)[0] == 201
    # The change fences the ready VMs from checkouts until the drain; a failover that lost the
    # fence's write (async replication) leaves them open to the race below.
    stack.client.delete(stack.store.keys.ready_fence)
    store = stack.services.store
    read_records = store.records
    ready = set(store.hostnames("debian-12", "ready"))
    handed: list[str] = []

    def a_user_checks_out_first(hostnames):
        if not handed and ready <= set(hostnames):
            handed.append(stack.checkout("debian-12"))
        return read_records(hostnames)

    monkeypatch.setattr(store, "records", a_user_checks_out_first)
    report = stack.reconcile("debian-12")
    monkeypatch.undo()
    (host,) = handed
    assert host not in report.completed
    stack.run_passes("debian-12")
    assert stack.describe(host)["state"] == "running"
    assert host in stack.provider_vms("debian-12"), "the VM in use was destroyed"
    assert stack.answer("DELETE", f"/api/v3/vm/{host}") == (200, {"ok": True})


def test_clone_target_change_reaches_the_pool_the_pass_clones_with(make_stack):
    stack = make_stack(extra="    clone_target: cluster1\n")  # on win-2022, the last pool
    post = lambda body: stack.answer("POST", "/api/v3/config/clonetarget", body)  # noqa: E731
    assert post({"debian-12": "cluster2", "win-2022": "cluster1"}) == (201, {"ok": True})
    assert post({"debian-12": "cluster2"}) == (200, {"ok": True})
    # What the reconcile pass hands the provider's clone (vSphere reads pool.clone_target).
    assert stack.services.pool("debian-12").clone_target == "cluster2"
    assert stack.services.pool("win-2022").clone_target == "cluster1"
    config = {p["name"]: p for p in stack.answer("GET", "/api/v3/config")[1]["pool_configuration"]}
    assert config["debian-12"]["clone_target"] == "cluster2"
    # Kept in Redis: another process (a new Lambda) sees it.
    assert Services(stack.services.config, stack.services.client).pool("debian-12").clone_target == "cluster2"

    assert post({"win-2022": "cluster3"}) == (201, {"ok": True})
    assert stack.answer("DELETE", "/api/v3/config/clonetarget/win-2022") == (
        201, {"ok": True, "clone_target_before_reset": "cluster3", "clone_target_before_overrides": "cluster1"})
    assert stack.answer("DELETE", "/api/v3/config/clonetarget/win-2022") == (
        200, {"ok": True, "clone_target_before_reset": "cluster1", "clone_target_before_overrides": "cluster1"})
    assert stack.services.pool("win-2022").clone_target == "cluster1"
    assert stack.answer("DELETE", "/api/v3/config/clonetarget/debian-12")[1]["clone_target_before_overrides"] is None
    assert stack.services.pool("debian-12").clone_target is None


def test_clone_target_errors(make_stack):
    stack = make_stack()
    before = stack.services.client.hgetall(stack.services.store.keys.pool_override("clonetarget"))
    post = lambda body: stack.answer("POST", "/api/v3/config/clonetarget", body)  # noqa: E731
    assert post({"centos": "cluster1", "debian-12": "cluster2"}) == (400, {"ok": False, "bad_templates": ["centos"]})
    assert post({"debian": "cluster1"}) == (400, {"ok": False, "bad_templates": ["debian"]})  # an alias is no pool
    for bad in (3, "", "/cluster", "cluster/", "x" * 256, "tab\there", None, ["cluster1"]):
        assert post({"debian-12": bad}) == (400, {"ok": False, "bad_templates": ["debian-12"]}), bad
    assert stack.answer("DELETE", "/api/v3/config/clonetarget/centos")[0] == 404
    assert stack.services.client.hgetall(stack.services.store.keys.pool_override("clonetarget")) == before == {}


@pytest.mark.parametrize(("setting", "prefix", "first", "second", "configured"), [
    ("poolsize", "pool_size", "4", "5", 2),
    ("pooltemplate", "template", "templates/v2", "templates/v3", "templates/debian-12"),
    ("clonetarget", "clone_target", "cluster2", "cluster3", None),
], ids=["poolsize", "pooltemplate", "clonetarget"])
def test_a_reset_answers_the_value_it_removed_when_a_change_lands_just_before_it(make_stack, monkeypatch, setting,
                                                                                 prefix, first, second, configured):
    """The second request of a race: an administrator's POST changes the setting while another's
    DELETE of it is under way, just before the DELETE's change reaches Redis. The DELETE removes
    the POST's value and must say so. Before, it answered the value it had read before its
    change (``first``), which it did not remove."""
    stack = make_stack()
    path = f"/api/v3/config/{setting}"
    value = int if setting == "poolsize" else str
    assert stack.answer("POST", path, {"debian-12": first}) == (201, {"ok": True})
    scripts = stack.services.store.scripts
    change = scripts.pool_overrides
    landed: list[tuple[int, Any]] = []

    def another_change_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(scripts, "pool_overrides", change)  # the POST's own change runs as is
        # Another caller: its own thread (the app serves one request per thread at a time).
        other = threading.Thread(target=lambda: landed.append(stack.answer("POST", path, {"debian-12": second})))
        other.start()
        other.join()
        return change(*args, **kwargs)

    monkeypatch.setattr(scripts, "pool_overrides", another_change_first)
    answer = stack.answer("DELETE", f"{path}/debian-12")
    monkeypatch.undo()
    assert landed == [(201, {"ok": True})]
    assert answer == (201, {"ok": True, f"{prefix}_before_reset": value(second),
                            f"{prefix}_before_overrides": configured})
    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")


class DroppingConnection(_TcpConnection):
    """Production's Redis connection (``connect``) that drops when its countdown (shared by every
    such connection) runs out: the ``sends_left``-th command (or pipeline) sent from now on never
    arrives, nor any after it. With ``reply_lost``, that one command reaches Redis and runs, and
    its reply is lost (the connection reset as it comes), the later ones arriving."""

    sends_left = 1_000_000
    reply_lost = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        DroppingConnection.sends_left -= 1
        if DroppingConnection.sends_left < 0 and not DroppingConnection.reply_lost:
            raise redis.ConnectionError("connection dropped by the test")
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        reply = super().read_response(*args, **kwargs)
        if DroppingConnection.reply_lost and DroppingConnection.sends_left == -1:
            DroppingConnection.sends_left = -2  # once
            self.disconnect()
            raise ReplyLost("Connection reset by peer (the test's)")
        return reply


@pytest.mark.parametrize("reply_lost", [False, True], ids=["dropped", "reply_lost"])
@pytest.mark.parametrize("path, body, field", [
    ("/config/poolsize", {"debian-12": "4", "win-2022": "3"}, "size"),
    ("/config/pooltemplate", {"debian-12": "templates/a", "win-2022": "templates/b"}, "template"),
    ("/config/clonetarget", {"debian-12": "cluster2", "win-2022": "cluster3"}, "clone_target"),
    ("/poolreset", {"debian-12": "1", "win-2022": "1"}, "reset_at"),
], ids=["poolsize", "pooltemplate", "clonetarget", "poolreset"])
def test_a_change_of_many_pools_cut_short_by_redis_changes_all_of_them_or_none(make_stack, redis_client, path, body,
                                                                               field, reply_lost):
    """Redis drops at each command of the request in turn: every pool has changed (201) or none
    has (503). Before, a drop between two pools left the first one changed and the second not;
    and a drop at the nudge of the pools' passes, sent after the change, answered 503 for a
    change made (the nudge is now made by the change's own script). On production's client
    (``connect``: a command never sent is sent once more, one whose reply was lost never is);
    ``reply_lost``: the command ran and its reply was lost, a 503 says the change may be made."""
    stack = make_stack()
    healthy = stack.services
    dropping = production_client(healthy.config.redis, redis_client.connection_pool.connection_kwargs["port"])
    dropping.connection_pool.connection_class = DroppingConnection
    try:
        for sends in range(30):
            for setting in SETTINGS:
                healthy.client.delete(healthy.store.keys.pool_override(setting))
            app._services = Services(healthy.config, dropping, clock=stack.clock, prefix=healthy.store.keys.prefix,
                                     refill=stack.refill)
            DroppingConnection.sends_left, DroppingConnection.reply_lost = sends, reply_lost
            status, _ = stack.answer("POST", f"/api/v3{path}", body)
            every_command_sent = DroppingConnection.sends_left >= 0  # the request ended before its drop
            DroppingConnection.sends_left, DroppingConnection.reply_lost = 1_000_000, False
            dropping.connection_pool.disconnect()
            changed = [getattr(PoolOverrides(healthy.store).get(pool), field) is not None for pool in body]
            allowed = [(201, [True, True]), (503, [False, False])] + ([(503, [True, True])] if reply_lost else [])
            assert (status, changed) in allowed, (sends, status, changed)
            woken = [healthy.client.llen(healthy.store.keys.wake(pool)) for pool in body]
            assert woken == ([1, 1] if changed[0] else [0, 0]), (sends, status, woken)
            healthy.client.delete(*(healthy.store.keys.wake(pool) for pool in body))
            if status == 201 and (every_command_sent or not reply_lost):
                break
        assert status == 201 and every_command_sent
    finally:
        app._services = healthy


def test_a_template_is_printable_text_of_at_most_1024_characters(make_stack):
    """Before, a 60,000-character template (copied into every VM record the pool clones) and
    templates with a NUL byte or a line break were accepted."""
    stack = make_stack()
    post = lambda body: stack.answer("POST", "/api/v3/config/pooltemplate", body)  # noqa: E731
    for bad in ("templates/" + "t" * 1015, "templates/a\x00b", "templates/a\nb", "templates/a\u2028b"):
        assert post({"debian-12": bad}) == (400, {"ok": False, "bad_templates": ["debian-12"]}), bad[:20]
    longest = "/".join(["t" * 80] * 12 + ["t" * 52])  # names of at most 80 characters (vCenter's limit)
    assert len(longest) == 1024
    assert post({"debian-12": longest}) == (201, {"ok": True})
    assert post({"debian-12": "templates/débian-12"}) == (201, {"ok": True})


@pytest.mark.parametrize("route", [route for route in POOL_CHANGES if route.method == "POST"],
                         ids=lambda route: route.name)
def test_a_body_over_64_kib_is_a_413(make_stack, route):
    """Before, it was a 400 saying the JSON could not be parsed."""
    stack = make_stack()
    body = json.dumps({f"pool-{n}": "1" for n in range(7000)}).encode()
    assert stack.answer("POST", route_target(route, {}), raw=body) == (
        413, {"ok": False, "error": "Request body too large (at most 65536 bytes)"})
    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")


@pytest.mark.parametrize(("path", "bad"), [
    ("/config/pooltemplate", "templates//debian-12"),
    ("/config/pooltemplate", "templates/../debian-12"),
    ("/config/pooltemplate", "./debian-12"),
    ("/config/pooltemplate", "templates/" + "t" * 81),
    ("/config/pooltemplate", "t/" * 32 + "t"),
    ("/config/clonetarget", "cluster//c2"),
    ("/config/clonetarget", "cluster/../c2"),
    ("/config/clonetarget", ".."),
    ("/config/clonetarget", "c" * 81),
], ids=lambda value: value if len(value) < 30 else f"{value[:12]}...{len(value)}")
def test_a_runtime_template_or_clone_target_is_held_to_the_configs_inventory_path_rules(make_stack, path, bad):
    """What the YAML refuses (config_fields.inventory_path: no empty name, no '.' or '..', names of
    at most 80 characters, at most 32 of them) the API refused neither: ``templates//debian-12``
    was stored and the pool's every clone looked for a template vCenter does not have."""
    stack = make_stack()
    before = stack.redis_state()
    assert stack.answer("POST", f"/api/v3{path}", {"debian-12": bad}) == (
        400, {"ok": False, "bad_templates": ["debian-12"]})
    assert stack.redis_state() == before
    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")


@pytest.mark.parametrize(("setting", "stored"), [
    ("poolsize", "three"),
    ("poolsize", "-1"),
    ("poolsize", "9" * 5000),
    ("poolreset", "soon"),
    ("poolreset", "inf"),
    ("poolreset", "nan"),
    ("pooltemplate", "templates//debian-12"),
    ("pooltemplate", "templates/" + "t" * 100_000),
    ("pooltemplate", "templates/a\x00b"),
    ("clonetarget", "cluster//c2"),
    ("clonetarget", "c" * 100_000),
], ids=lambda value: value if len(value) < 30 else f"{value[:12]}...{len(value)}")
def test_a_hostile_stored_override_is_ignored_and_breaks_no_pass(make_stack, setting, stored):
    """An override in Redis the API would refuse (one stored before its checks, or by another
    writer) is ignored: the pool keeps its configured value. Before, a size or reset that is not
    a number raised out of every pass and every read of the pools (GET /status was a 500), an
    infinite reset drained every ready VM in every pass, and a hostile template or clone target
    reached every clone."""
    stack = make_stack(size=2)
    stack.run_passes("debian-12")
    ready = set(stack.services.store.hostnames("debian-12", "ready"))
    assert len(ready) == 2
    stack.services.client.hset(stack.services.store.keys.pool_override(setting), "debian-12", stored)

    assert stack.services.pool("debian-12") == stack.services.config.pool("debian-12")
    report = stack.reconcile("debian-12")
    assert not report.completed, "the pass drained VMs for an override it should ignore"
    assert set(stack.services.store.hostnames("debian-12", "ready")) == ready
    status, answer = stack.answer("GET", "/api/v3/status?view=pools")
    assert status == 200 and answer["pools"]["debian-12"]["max"] == 2
    config = {p["name"]: p for p in stack.answer("GET", "/api/v3/config")[1]["pool_configuration"]}
    assert config["debian-12"]["template"] == "templates/debian-12"
