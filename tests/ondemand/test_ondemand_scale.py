"""Many distinct users at once: each opens on-demand requests across pools while the pools'
passes run, some delete theirs while it builds, everyone polls. Nobody sees or gets another's
VMs, every VM of a deleted request is destroyed, and the counts everyone reads agree."""

from __future__ import annotations

import threading

from chalicelib.store.ondemand import OnDemandStore
from tests.harness import assert_consistent

AUTH = "\n:auth:\n  provider: dummy\n"
USERS = 60
BODIES = [{"debian": 1, "win-2022": 1}, {"linux": 2}, {"windows": 1}, {"debian-12": 1, "windows": 2}]


def test_many_users_at_once_get_exactly_their_own_vms_and_deleted_requests_leave_nothing(make_stack):
    stack = make_stack(size=1, ondemand_clone_limit=20, ondemand_request_ttl=60, task_limit=20, extra=AUTH)
    tokens = [stack.new_token(f"user{n}", "password") for n in range(USERS)]
    requests: dict[int, str] = {}
    answers: list[int] = []
    barrier = threading.Barrier(USERS + 2)

    def user(n: int) -> None:
        mine = {"X-AUTH-TOKEN": tokens[n]}
        barrier.wait()
        status, body = stack.answer("POST", "/api/v3/ondemandvm", BODIES[n % len(BODIES)], headers=mine)
        answers.append(status)
        requests[n] = body["request_id"]
        stranger = {"X-AUTH-TOKEN": tokens[(n + 1) % USERS]}
        for _ in range(3):
            assert stack.answer("GET", f"/api/v3/ondemandvm/{requests[n]}", headers=stranger)[0] == 403
            assert stack.answer("DELETE", f"/api/v3/ondemandvm/{requests[n]}", headers=stranger)[0] == 403
            status, body = stack.answer("GET", f"/api/v3/ondemandvm/{requests[n]}", headers=mine)
            assert status in (200, 202) and body["request_id"] == requests[n]
            if n % 3 == 0:  # a third of them give up while theirs is being built
                assert stack.answer("DELETE", f"/api/v3/ondemandvm/{requests[n]}", headers=mine)[0] == 200

    def passes() -> None:
        barrier.wait()
        for _ in range(6):
            for pool in ("debian-12", "win-2022"):
                stack.reconcile(pool)

    threads = [threading.Thread(target=user, args=(n,)) for n in range(USERS)]
    threads += [threading.Thread(target=passes) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert answers == [201] * USERS
    store = stack.services.store
    for _ in range(12):  # ondemand_clone_limit at a time
        stack.run_passes(passes=1)
        if not any(OnDemandStore(store).open_requests(pool) for pool in ("debian-12", "win-2022")):
            break
    # The last destroys seen done. A VM reserved for a request deleted before its clone was asked
    # is never cloned (the asked mark is refused once it left pending): destroyed at the delete,
    # its slot free at once (lua/ondemand_end.lua), not CLONE_START_GRACE_SECONDS later.
    stack.run_passes(passes=1)

    expected_running: set[str] = set()
    for n, request_id in requests.items():
        mine = {"X-AUTH-TOKEN": tokens[n]}
        status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}", headers=mine)
        vms = OnDemandStore(store).get(request_id).vms
        if n % 3 == 0:
            assert (status, body["message"]) == (200, "The request has been deleted")
            assert {vm.name: stack.state_of(vm.name) for vm in vms if stack.state_of(vm.name) != "destroyed"} == {}
            continue
        assert status == 200 and body["ready"] is True, body
        hosts = {host.split(".")[0] for name in body if isinstance(body[name], dict)
                 for host in body[name]["hostname"]}
        assert len(hosts) == sum(BODIES[n % len(BODIES)].values())
        for host in hosts:
            record = store.get_vm(host)
            owner = (record.state, record.raw["request"], record.raw["token_user"])
            assert owner == ("running", request_id, f"user{n}")
        assert not hosts & expected_running
        expected_running |= hosts
    running = {host for pool in ("debian-12", "win-2022") for host in store.hostnames(pool, "running")}
    assert running == expected_running  # nothing else checked out, nothing handed to the pool
    for pool in ("debian-12", "win-2022"):
        assert_consistent(stack, pool)
        assert stack.provider_vms(pool) == stack.hosts(pool, "ready") | stack.hosts(pool, "running")
    status = stack.answer("GET", "/api/v3/status")[1]
    total = stack.answer("GET", "/api/v3/totalrunning")[1]["running"]
    assert status["queue"]["running"] == len(expected_running) == total
    assert status["queue"]["requested"] == status["queue"]["pending"] == 0
