"""GET /config's ``template_ready`` says whether the pool's clones may go on: false while they wait
for its template's preparation (``create_template_delta_disks``), true once it is done or given
up (it outlasted the clone ``timeout``), and for the pools whose template needs nothing. It was
always true, and an operator whose pool did not refill could not see that it waited on vCenter."""

from __future__ import annotations

from chalicelib.providers.base import TaskState, TaskStatus


def template_ready(stack) -> dict[str, bool]:
    status, body = stack.answer("GET", "/api/v3/config")
    assert status == 200, body
    return {pool["name"]: pool["template_ready"] for pool in body["pool_configuration"]}


def preparing_until_told(stack, monkeypatch) -> list[TaskState]:
    """The dummy's template preparations run until the returned list holds their end."""
    provider = stack.services.provider("dummy")
    statuses = provider.task_statuses
    ending: list[TaskState] = []

    def read(refs):
        known = statuses([ref for ref in refs if ref != "prepare-1"])
        state = ending[0] if ending else TaskState.RUNNING
        return {ref: known.get(ref, TaskStatus(state)) for ref in refs}

    monkeypatch.setattr(provider, "prepare_template", lambda pool: "prepare-1")
    monkeypatch.setattr(provider, "task_statuses", read)
    return ending


def test_template_ready_is_false_while_the_pools_clones_wait_for_its_preparation(make_stack, monkeypatch):
    stack = make_stack(size=1, create_template_delta_disks="true")
    ending = preparing_until_told(stack, monkeypatch)
    assert template_ready(stack) == {"debian-12": True, "win-2022": True}  # nothing under way yet
    stack.reconcile("debian-12")
    assert stack.count("debian-12", "pending") == 0  # its clones wait
    assert template_ready(stack) == {"debian-12": False, "win-2022": True}

    ending.append(TaskState.SUCCESS)
    stack.clock.advance(10)
    stack.reconcile("debian-12")
    assert template_ready(stack) == {"debian-12": True, "win-2022": True}
    assert stack.count("debian-12", "pending") == 1  # cloning again


def test_template_ready_is_true_again_once_the_clones_stop_waiting_for_a_preparation_that_hangs(
        make_stack, monkeypatch):
    stack = make_stack(size=1, create_template_delta_disks="true")
    preparing_until_told(stack, monkeypatch)
    stack.reconcile("debian-12")
    assert template_ready(stack)["debian-12"] is False
    stack.clock.advance(stack.config.service.timeout * 60 + 1)
    stack.reconcile("debian-12")
    assert stack.count("debian-12", "pending") == 1  # given up: cloned without it
    assert template_ready(stack)["debian-12"] is True


def test_template_ready_is_true_without_create_template_delta_disks(make_stack, monkeypatch):
    stack = make_stack(size=1)
    preparing_until_told(stack, monkeypatch)
    stack.reconcile("debian-12")
    assert stack.count("debian-12", "pending") == 1
    assert template_ready(stack) == {"debian-12": True, "win-2022": True}
