"""The reaper (a pass ending a VM whose lifetime is over) racing its owner, who extends the
lifetime (``PUT /vm/<host>``) and returns it (``DELETE /vm/<host>``), at every interleaving: the
pass paused after each of its round trips while the owner acts, and killed after each, the
owner acting before the next run.

What must hold: every answer 200 or 404, never a 500; a VM whose extension was answered 200
(and not returned after) is kept running, in the provider; one returned, or reaped before its
owner's extension (then 404), is gone from Redis and the provider; the pool whole after.
"""

from __future__ import annotations

from typing import Callable

import pytest

from tests.chaos import test_crash_every_write
from tests.chaos.fleet import Fleet
from tests.chaos.test_crash_every_write import (
    POOL,
    Start,
    assert_whole,
    check_out,
    killed_run,
    stale_pass,
)

fleet = test_crash_every_write.fleet
"""The crash sweep's two pools, as its fixture makes them."""


OWNER_ACTS: dict[str, tuple[str, ...]] = {
    "extend": ("put",),
    "delete": ("delete",),
    "extend_then_delete": ("put", "delete"),
    "delete_then_extend": ("delete", "put"),
}
"""What the owner of the VM whose lifetime ended does meanwhile, in order."""


def lifetime_over(fleet: Fleet) -> str:
    """A full pool and one VM in use whose lifetime ended a second ago: the next pass reaps it."""
    fleet.converge()
    host = check_out(fleet, lifetime_hours=1)
    fleet.kept[POOL].discard(host)  # kept only once an extension of it is answered 200
    fleet.world.clock.advance(3601)
    return host


def owner_acts(fleet: Fleet, host: str, acts: tuple[str, ...], where: str) -> None:
    """The owner's requests, through the API; ``fleet.kept`` follows what they were told."""
    for act in acts:
        if act == "put":
            reply = fleet.world.put(f"/api/v3/vm/{host}", {"lifetime": 10})
        else:
            reply = fleet.world.delete(f"/api/v3/vm/{host}")
        assert reply.status in (200, 404), f"{where}: {act} answered {reply.status} {reply.raw}"
        if act == "put" and reply.status == 200:
            fleet.kept[POOL].add(host)
        if act == "delete":
            fleet.kept[POOL].discard(host)


def assert_told_the_truth(fleet: Fleet, host: str, where: str) -> None:
    """Once ordinary runs went on: the VM is in use exactly when its owner was told it is."""
    assert_whole(fleet, where)  # kept VMs running and in the provider; nothing leaked
    if host not in fleet.kept[POOL]:
        assert host not in fleet.world.provider_vms(POOL), f"{where}: {host} left in the provider"
        assert fleet.world.state_of(host) in (None, "destroyed"), f"{where}: {host} {fleet.world.state_of(host)}"


def sweep(fleet: Fleet, acts: tuple[str, ...], run: Callable[[Fleet, int | None, str, Callable[[], None]], int]) -> int:
    """``run(fleet, point, host, owner)`` from the lifetime-over state at every point; the cases run."""
    host = lifetime_over(fleet)
    start = Start.of(fleet)
    run(start.again(fleet), None, host, lambda: None)  # loads the Lua scripts the session's Redis lacks
    total = run(start.again(fleet), None, host, lambda: None)
    for point in range(total):
        current = start.again(fleet)
        where = f"{'/'.join(acts)} at round trip {point} of {total}"
        run(current, point, where, lambda current=current, where=where: owner_acts(current, host, acts, where))
        assert_told_the_truth(current, host, where)
    return total


@pytest.mark.parametrize("acts", OWNER_ACTS)
def test_the_reaper_paused_at_any_round_trip_while_the_owner_acts(fleet: Fleet, acts: str) -> None:
    def paused(current: Fleet, point: int | None, where: str, owner: Callable[[], None]) -> int:
        return stale_pass(current, point, owner)

    assert sweep(fleet, OWNER_ACTS[acts], paused) > 3


@pytest.mark.parametrize("acts", OWNER_ACTS)
def test_the_reaper_killed_after_any_round_trip_then_the_owner_acts(fleet: Fleet, acts: str) -> None:
    def killed(current: Fleet, point: int | None, where: str, owner: Callable[[], None]) -> int:
        sent = killed_run(current, point or None)
        owner()
        return sent

    assert sweep(fleet, OWNER_ACTS[acts], killed) > 3
