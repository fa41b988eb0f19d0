"""A pass starting many clones looks up what they share once and reads their tasks' queue times
in one retrieval (``VSphereProvider.clone_vms``), against vcsim; SOAP calls counted at the stub.

Before, each clone looked up the template, its facts, the folder and the placement again and read
its task's queue time on its own: 7 calls a clone (200 clones: 1,209 calls in the pass)."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import Any

import pytest

from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.providers.failures import FailureKind
from chalicelib.providers.vsphere import connection as connections
from tests.vsphere.vcsim import Setup, VcsimServer, make_setup, record_soap_calls, refuse_on_stub


def clone_calls(setup: Setup, monkeypatch: pytest.MonkeyPatch, count: int,
                **settings: Any) -> tuple[dict[str, str | ProviderError], Counter[str]]:
    """``clone_vms`` of ``count`` names in a pool of its own, and the SOAP methods it sent."""
    pool = setup.pool(size=count, **settings)
    setup.provider.list_vms(pool)  # the folder's view, as a pass's inventory makes it first
    names = [f"batch-{secrets.token_hex(3)}-{index}" for index in range(count)]
    methods: Counter[str] = Counter()
    with monkeypatch.context() as counting:
        refuse_on_stub(setup.provider, counting, lambda method, args: methods.update([method]))
        started = setup.provider.clone_vms(pool, names)
    assert list(started) == names
    return started, methods


@pytest.mark.parametrize("settings", [{}, {"clone_target": "DC0_C0", "datastore": "LocalDS_0"}])
def test_the_clones_of_a_pass_cost_one_call_each_and_a_few_for_all(
        setup: Setup, monkeypatch: pytest.MonkeyPatch, settings: dict[str, Any]) -> None:
    """2 clones and 8 clones: the same calls but one ``CloneVM_Task`` a clone (before: 7 a clone);
    each reference reads as its clone's task (its queue time kept) and ends in success."""
    few, few_calls = clone_calls(setup, monkeypatch, 2, **settings)
    many, many_calls = clone_calls(setup, monkeypatch, 8, **settings)
    assert (few_calls["CloneVM_Task"], many_calls["CloneVM_Task"]) == (2, 8)
    assert sum(many_calls.values()) - sum(few_calls.values()) == 6, (few_calls, many_calls)
    refs = [ref for ref in (*few.values(), *many.values()) if isinstance(ref, str)]
    assert len(refs) == 10 and all(ref.startswith("clone:") and not ref.endswith(":q") for ref in refs), refs
    statuses = setup.provider.task_statuses(refs)
    assert {status.state for status in statuses.values()} == {TaskState.SUCCESS}, statuses


def test_a_missing_template_is_looked_for_once_for_all_the_clones_of_a_pass(
        setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each clone fails as ``template`` with the reason; before, each looked for the template in
    every other datacenter again."""
    few, few_calls = clone_calls(setup, monkeypatch, 2, template="templates/no-such-template")
    many, many_calls = clone_calls(setup, monkeypatch, 8, template="templates/no-such-template")
    assert many_calls == few_calls, (few_calls, many_calls)
    assert "CloneVM_Task" not in many_calls
    statuses = setup.provider.task_statuses([str(ref) for ref in (*few.values(), *many.values())])
    assert {(status.state, status.kind) for status in statuses.values()} == {(TaskState.ERROR, FailureKind.TEMPLATE)}
    assert all("templates/no-such-template not found" in (status.error or "") for status in statuses.values())


def test_a_session_ended_between_two_clones_of_a_pass_starts_each_once(
        vcsim: VcsimServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """An admin ends the service account's session right after the pass's first clone was sent:
    the second clone's call is refused (NotAuthenticated), the provider logs in again and sends it
    with what the first looked up (the same objects in vCenter); every clone is made once and has
    its reference."""
    methods: list[str] = []
    record_soap_calls(monkeypatch, lambda method, args: methods.append(method))
    connections.forget_server("localhost", vcsim.port)
    try:
        local = make_setup(vcsim, server=f"localhost:{vcsim.port}")
        pool = local.pool(size=3)
        local.provider.list_vms(pool)
        names = [f"relogin-{secrets.token_hex(3)}-{index}" for index in range(3)]
        first = names[0]

        def end_session_after_first(hostname: str) -> None:
            if hostname == first:
                local.provider.connection().logout()

        started = local.provider.clone_vms(pool, names, end_session_after_first)
        assert all(isinstance(ref, str) and ref.startswith("clone:") for ref in started.values()), started
        # The second clone's first CloneVM_Task refused (NotAuthenticated: vCenter did nothing), sent
        # again after the new login; no lookup made again.
        assert methods.count("CloneVM_Task") == 4 and methods.count("Login") == 2, Counter(methods)
        assert sorted(vm.name for vm in local.provider.list_vms(pool)) == sorted(names)
    finally:
        connections.forget_server("localhost", vcsim.port)
