"""A pass that read a request's VM pending, and finds its clone failed for good only after the request
ended and its id went to a new request, must not fail that new request: it never had the VM. Nor
one that judged a request past its ttl and is paused before it ends it."""

from __future__ import annotations

from chalicelib.manager import ondemand, pending
from chalicelib.store import ondemand as ondemand_store
from tests.ondemand.test_ondemand_vanished import SLOW_BOOT_POOL

SLOW_BROKEN_POOL = """
  - name: broken
    template: templates/broken
    size: 0
    provider: dummy
    createvm_max_time: 60
    createvm_fail_percent: 100
    createvm_fail_kind: template
"""


def delete_and_reuse_the_id(stack) -> None:
    """The user deletes "job-1", opens "job-2" (which forgets the ended "job-1": one kept), then
    "job-1" again, for debian-12."""
    assert stack.answer("DELETE", "/api/v3/ondemandvm/job-1")[0] == 200
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1, "request_id": "job-2"})[0] == 201
    assert stack.answer("GET", "/api/v3/ondemandvm/job-1")[0] == 404  # forgotten
    assert stack.answer("POST", "/api/v3/ondemandvm", {"debian-12": 1, "request_id": "job-1"})[0] == 201


def the_new_request_is_served(stack) -> None:
    """The new "job-1" is still waiting for its debian-12 VM, and gets it."""
    status, body = stack.answer("GET", "/api/v3/ondemandvm/job-1")
    assert status == 202 and body["debian-12"] == {"ready": "0", "pending": "1"}, body
    stack.run_passes("debian-12")
    status, body = stack.answer("GET", "/api/v3/ondemandvm/job-1")
    assert status == 200 and body["ready"] is True, body


def test_a_stale_pass_never_fails_a_new_request_under_an_ended_ones_id(make_stack, monkeypatch):
    # Before, the pass failed whichever request had the id the VM's record names: the new request
    # "job-1" answered ready false, "a VM could not be built and retrying cannot help: dummy: clone
    # failed (simulated failure)", a failure of the ended request's clone in a pool it never asked for.
    monkeypatch.setattr(ondemand_store, "REQUESTS_KEPT_PER_OWNER", 1)  # one ended request kept per owner
    stack = make_stack(size=0, extra=SLOW_BROKEN_POOL)
    assert stack.answer("POST", "/api/v3/ondemandvm", {"broken": 1, "request_id": "job-1"})[0] == 201
    stack.reconcile("broken")  # its clone started, failing for good in 60 s
    [building] = stack.services.store.hostnames("broken", "pending")
    stack.clock.advance(61)
    judged = pending._clone_finished
    interleaved: list[str] = []

    def after_the_reads(context, record, *args):
        # The pass has read the VM pending and its clone's task failed; it acts on them only now.
        if not interleaved:
            interleaved.append(record.name)
            delete_and_reuse_the_id(stack)
        return judged(context, record, *args)

    monkeypatch.setattr(pending, "_clone_finished", after_the_reads)
    stack.reconcile("broken")
    assert interleaved == [building]
    the_new_request_is_served(stack)


def test_a_pass_paused_after_judging_a_request_expired_never_fails_a_new_one_under_its_id(make_stack, monkeypatch):
    # Before, the pass ended whichever request had the id once it resumed: the new "job-1", just
    # made, answered ready false, "The request failed to provision instances within the configured
    # ondemand_request_ttl '1'".
    monkeypatch.setattr(ondemand_store, "REQUESTS_KEPT_PER_OWNER", 1)
    stack = make_stack(size=0, extra=SLOW_BOOT_POOL, ondemand_request_ttl=1)
    assert stack.answer("POST", "/api/v3/ondemandvm", {"slow-boot": 1, "request_id": "job-1"})[0] == 201
    stack.reconcile("slow-boot")  # its clone started; its VM boots in 4 minutes
    stack.clock.advance(61)  # past ondemand_request_ttl (1 minute), not booted yet
    paused: list[str] = []

    def pause(step: str) -> None:
        if step == "ondemand_reserved" and not paused:  # judged expired; not ended yet
            paused.append(step)
            delete_and_reuse_the_id(stack)

    stack.reconcile("slow-boot", pause)
    assert paused
    status, body = stack.answer("GET", "/api/v3/ondemandvm/job-1")
    assert status == 202 and body["debian-12"] == {"ready": "0", "pending": "1"}, body


def test_a_tick_paused_after_reading_a_request_of_an_unserved_pool_never_fails_a_new_one_under_its_id(
        make_stack, monkeypatch):
    # Before, the tick ended whichever request had the id: the new "job-1", for debian-12, answered
    # ready false, "its pool win-2022 was removed from the configuration".
    monkeypatch.setattr(ondemand_store, "REQUESTS_KEPT_PER_OWNER", 1)
    stack = make_stack(size=0)
    assert stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 1, "request_id": "job-1"})[0] == 201
    stack.clock.advance(ondemand.UNSERVED_GRACE_SECONDS)
    read = ondemand_store.OnDemandStore.open_request_pools

    def then_paused(self):
        found = read(self)
        delete_and_reuse_the_id(stack)
        return found

    monkeypatch.setattr(ondemand_store.OnDemandStore, "open_request_pools", then_paused)
    # The tick's config serves debian-12 only (win-2022 removed, a config the API reads behind it).
    assert ondemand.fail_unserved(stack.services.store, {"debian-12"}, stack.clock.now()) == {}
    status, body = stack.answer("GET", "/api/v3/ondemandvm/job-1")
    assert status == 202 and body["debian-12"] == {"ready": "0", "pending": "1"}, body
