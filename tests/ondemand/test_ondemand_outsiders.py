"""On-demand requests as distinct outside callers use them at once: the service's limit shared
by checkouts and requests, and a request failing in one pool after another pool delivered."""

from __future__ import annotations

import threading

from chalicelib.manager.runner import run_pool
from chalicelib.store.ondemand import OnDemandStore
from tests.ondemand.test_ondemand_requests import AUTH, SLOW_POOL, failing_pool


def test_checkouts_and_requests_sent_at_once_share_max_running_vms_exactly(make_stack):
    """Ten users at once, half checking out a ready VM and half asking for one on demand, with
    room for four VMs in the service: exactly four are answered yes, whichever route they took,
    and once the requests are built four VMs run. A checkout that did not count the VMs open
    requests still wait for (or a request that did not count running VMs) lets five or more in."""
    stack = make_stack(size=4, max_running_vms=4, extra=AUTH)
    stack.fill("debian-12", seconds=31)
    tokens = [stack.new_token(f"caller{n}", "password") for n in range(10)]
    answers: list[tuple[str, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(tokens))

    def send(index: int, token: str) -> None:
        route = "/api/v3/vm" if index % 2 else "/api/v3/ondemandvm"
        barrier.wait()
        status = stack.answer("POST", route, {"debian-12": 1}, headers={"X-AUTH-TOKEN": token})[0]
        with lock:
            answers.append((route, status))

    threads = [threading.Thread(target=send, args=(index, token)) for index, token in enumerate(tokens)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    granted = [route for route, status in answers if status in (200, 201)]
    assert len(granted) == 4, answers
    assert {status for _, status in answers} <= {200, 201, 503}
    stack.run_passes("debian-12", passes=4)
    assert stack.count("debian-12", "running") == 4


def test_a_request_failing_in_one_pool_after_another_delivered_frees_everything(make_stack):
    """A request for two pools: one pool delivers its VMs, the other's template is missing. The
    user sees the request failed with vCenter's reason, the VMs already delivered are destroyed
    (nothing of the request runs, none goes to a pool's ready set), no clone slot stays taken, and
    the user's limits are free again: a new request as large as allowed is accepted."""
    stack = make_stack(size=0, extra=failing_pool("template") + AUTH, max_running_vms_per_user=3,
                       max_ondemand_requests_per_user=1)
    headers = {"X-AUTH-TOKEN": stack.new_token("alice", "password")}
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 2, "fragile": 1}, headers=headers)
    assert status == 201
    request_id = body["request_id"]
    stack.run_passes("debian-12", passes=3)
    delivered = stack.hosts("debian-12", "running")
    assert len(delivered) == 2
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}", headers=headers)[1]["debian"] == {
        "ready": "2", "pending": "0"}
    # Its own limits are taken meanwhile: one open request, three VMs.
    assert stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 1}, headers=headers)[0] == 403

    stack.run_passes("fragile", seconds=1, passes=2)
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}", headers=headers)
    assert status == 200 and body["ready"] is False
    assert body["message"].startswith("The request failed: a VM could not be built and retrying cannot help")
    stack.run_passes("debian-12", "fragile", passes=3)
    assert {stack.state_of(host) for host in delivered} == {"destroyed"}
    assert stack.provider_vms("debian-12") == set() and stack.provider_vms("fragile") == set()
    for pool in ("debian-12", "fragile"):
        assert [stack.count(pool, state) for state in ("pending", "ready", "running", "completed")] == [0, 0, 0, 0]
    assert stack.services.store.cloning_count() == 0
    queue = stack.answer("GET", "/api/v3/status?view=queue")[1]["queue"]
    assert queue["requested"] == 0 and queue["total"] == 0
    assert OnDemandStore(stack.services.store).open_requests("debian-12") == []
    status, body = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 3}, headers=headers)
    assert status == 201, body


def test_a_pool_that_delivered_its_share_is_not_polled_while_the_requests_other_pool_builds(make_stack):
    """A request for two pools, one fast and one whose VMs take long: once the fast pool has
    delivered its share, its run asks for no early look (the next tick is soon enough). Before,
    every pass of it counted the open request as work in flight, and the pool was passed every
    check_loop_delay_min (5 s), each pass reading the provider's inventory, until the other pool
    delivered or the request's ttl ran out (60 passes at the default 5 minutes)."""
    stack = make_stack(size=0, extra=SLOW_POOL)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1, "slow": 1})[1]["request_id"]
    first = run_pool(stack.services, "debian-12")
    assert first.look_again_in is not None  # its clone started: looked at again soon
    stack.clock.advance(31)
    run_pool(stack.services, "debian-12")  # it booted: handed over
    stack.reconcile("slow")
    status, body = stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")
    assert status == 202 and body["debian"] == {"ready": "1", "pending": "0"} and body["slow"]["ready"] == "0"
    stack.clock.advance(5)
    assert run_pool(stack.services, "debian-12").look_again_in is None
    # Its delivered VM gone from the provider meanwhile (an admin deleted it): the next whole look
    # at the folder (the tick's pass) builds another, and looks again soon to hand it over.
    [delivered] = stack.hosts("debian-12", "running")
    stack.client.hdel(stack.provider._folder_key(stack.pool("debian-12")), delivered)
    stack.clock.advance(61)
    assert run_pool(stack.services, "debian-12").look_again_in is not None
    assert stack.state_of(delivered) == "destroyed" and len(stack.hosts("debian-12", "pending")) == 1


def test_a_request_that_asks_nothing_of_a_pool_leaves_that_pools_open_set(make_stack):
    """The same request sent again after a 503 chooses an alias's pool again; the first try's
    pool still lists it as open (lua/ondemand_create.lua replaces the record, not that set). Its
    pass finds nothing to build for it there and drops it, instead of treating it as work in flight
    (looked at every 5 s) until the request ends."""
    stack = make_stack(size=0)
    request_id = stack.answer("POST", "/api/v3/ondemandvm", {"debian": 1})[1]["request_id"]
    requests = OnDemandStore(stack.services.store)
    stack.services.client.zadd(stack.services.store.keys.ondemand_open("win-2022"), {request_id: 1})
    assert requests.open_requests("win-2022") == [request_id]
    assert run_pool(stack.services, "win-2022").look_again_in is not None  # its own clone for size 1
    assert requests.open_requests("win-2022") == []
    assert requests.open_requests("debian-12") == [request_id]
    assert stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] == 202
