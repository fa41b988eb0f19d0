"""A pass draining a removed pool, or the look at a forgotten one, that read the pool's open
requests and ends them only later must not fail a new request that took one's id meanwhile: it
never asked for the removed pool."""

from __future__ import annotations

from types import SimpleNamespace

from chalicelib import config as config_module
from chalicelib.manager import ondemand
from chalicelib.manager.dispatch import Ticker, look_at
from chalicelib.manager.pool_queue import DRAIN, PoolMessage
from chalicelib.store import ondemand as ondemand_store
from tests.ondemand.conftest import BASE_CONFIG
from tests.ondemand.test_ondemand_requests import SLOW_POOL, slow_pool_forgotten
from tests.ondemand.test_ondemand_stale_failure30 import delete_and_reuse_the_id, the_new_request_is_served

REMOVED = "The request failed: its pool slow was removed from the configuration"


def paused_before_each_end(stack, monkeypatch) -> list[str]:
    """Between the read of the pool's open requests and the first end a pass makes of one, the
    user deletes "job-1" and opens a new "job-1" for debian-12 (a second later: its own
    ``created``). Returns the ids ended under the pause (one: the first)."""
    end = ondemand_store.OnDemandStore.end
    paused: list[str] = []

    def after_a_pause(self, request_id, state, *args, **kwargs):
        if state == ondemand_store.FAILED and not paused:
            paused.append(request_id)
            stack.clock.advance(1)
            delete_and_reuse_the_id(stack)
        return end(self, request_id, state, *args, **kwargs)

    monkeypatch.setattr(ondemand_store.OnDemandStore, "end", after_a_pause)
    return paused


def test_a_draining_pass_paused_before_failing_a_request_never_fails_a_new_one_under_its_id(make_stack, monkeypatch):
    # Before, the drain's pass ended whichever request had the id: the new "job-1", for
    # debian-12, answered ready false, "its pool slow was removed from the configuration".
    monkeypatch.setattr(ondemand_store, "REQUESTS_KEPT_PER_OWNER", 1)  # one ended request kept per owner
    stack = make_stack(size=0, extra=SLOW_POOL)
    services = stack.services
    assert stack.answer("POST", "/api/v3/ondemandvm", {"slow": 1, "request_id": "job-1"})[0] == 201
    queue = SimpleNamespace(send=lambda messages, budget_seconds=None: None)
    Ticker().tick(services, queue)  # the fleet remembers the pool's settings, to drain it later
    services.use_config(config_module.parse(
        BASE_CONFIG.format(experimental="true", size=0, task_time=0, clone_fail=0, disk_fail=0)))
    paused = paused_before_each_end(stack, monkeypatch)
    look_at(services, PoolMessage("slow", DRAIN), queue)
    assert paused == ["job-1"]
    the_new_request_is_served(stack)


def test_a_look_at_a_forgotten_pool_paused_before_failing_never_fails_a_new_request_under_its_id(
        make_stack, monkeypatch):
    # Before, it ended whichever request had the id: the new "job-1", for debian-12, answered
    # ready false, "its pool slow was removed from the configuration".
    monkeypatch.setattr(ondemand_store, "REQUESTS_KEPT_PER_OWNER", 1)
    stack, with_slow, _ = slow_pool_forgotten(make_stack)
    services = stack.services
    without_slow = services.config
    services.use_config(with_slow)  # an API function a config behind opens a request for it
    assert stack.answer("POST", "/api/v3/ondemandvm", {"slow": 1, "request_id": "job-1"})[0] == 201
    services.use_config(without_slow)
    stack.clock.advance(ondemand.UNSERVED_GRACE_SECONDS)
    paused = paused_before_each_end(stack, monkeypatch)
    assert ondemand.fail_removed(services.store, "slow", stack.clock.now(), ondemand.UNSERVED_GRACE_SECONDS) \
        == ([], None)
    assert paused == ["job-1"]
    the_new_request_is_served(stack)
