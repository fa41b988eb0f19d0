"""A request's VM whose clone was asked for and whose task was never noted (its pass killed between
the provider's call and the note, or the call's answer lost: ``AnswerLost``) is an attempt like
any other once its clone was under way: one that then never became ready spends one of the
request's ``max_vm_retries``, as it does with its task noted."""

from __future__ import annotations

from chalicelib.store.ondemand import OnDemandStore
from tests.harness import Killed
from tests.ondemand.test_ondemand_unspent_retries import ATTEMPTS, killed_at

NEVER_READY_POOL = """
  - name: never-ready
    template: templates/never-ready
    size: 0
    provider: dummy
    timeout: 2
    vmready_fail_percent: 100
"""


def test_vms_whose_clone_task_was_never_noted_and_never_became_ready_spend_the_retries(make_stack):
    # Before, each such VM left the request's set uncounted ("not ready after 2 minutes", no task
    # on its record): the request was built again and again, answered 202 (pending), until its
    # ttl (60 minutes here), instead of failing after max_vm_retries with why.
    stack = make_stack(size=0, extra=NEVER_READY_POOL, ondemand_request_ttl=60)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"never-ready": 1})[1]["request_id"]
    for _ in range(4 * ATTEMPTS):  # a clone started by each pass that starts one, its task never noted
        try:
            stack.reconcile("never-ready", killed_at("clone_started"))
        except Killed:
            pass
        stack.clock.advance(61)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 200 and body["ready"] is False, body
    assert body["message"] == f"The request failed: {ATTEMPTS} attempts to build its VMs failed (max_vm_retries 2)"
    attempts = OnDemandStore(stack.services.store).get(request_id).vms
    assert len(attempts) == ATTEMPTS
    assert all(not vm.clone_task and vm.raw.get("clone_asked") and vm.reason.startswith("not ready after 2 minutes")
               for vm in attempts), attempts
