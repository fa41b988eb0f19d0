"""How long Redis keeps on-demand requests, as tests see it: Redis's key expiry runs on Redis's
own clock, not the harness's fake one, so a test letting days pass moves both (``advance``); and
the bound on the requests kept, seen from a caller (shared by
tests/ondemand/test_ondemand_ready_kept.py and test_ondemand_kept_bound.py)."""

from __future__ import annotations

from tests.harness import PREFIX, Harness


def advance(stack: Harness, seconds: float) -> None:
    """Let ``seconds`` pass for the service and for Redis's expiries alike: the fake clock moves,
    and every key's time to live shrinks by as much (a key whose time is up is gone, as Redis
    forgets it)."""
    stack.clock.advance(seconds)
    client = stack.services.client
    for key in list(client.scan_iter(match=f"{PREFIX}*", count=1000)):
        left = client.pttl(key)
        if left < 0:
            continue  # no expiry (or gone meanwhile)
        if left <= seconds * 1000:
            client.delete(key)
        else:
            client.pexpire(key, left - int(seconds * 1000))


def request_records(stack: Harness) -> int:
    """How many on-demand requests Redis holds a record of."""
    client = stack.services.client
    return sum(1 for key in client.scan_iter(stack.services.store.keys.ondemand("*")) if client.type(key) == "hash")


def assert_three_new_requests_forget(stack: Harness, old: list[str]) -> None:
    """Three new requests, a second apart, make the bound forget the ``old`` three: they answer
    404, the new ones 202 (waiting), and Redis holds three request records."""
    new = []
    for _ in range(3):
        stack.clock.advance(1)
        status, body = stack.answer("POST", "/api/v3/ondemandvm", {"win-2022": 1})
        assert status == 201
        new.append(body["request_id"])
    answers = [stack.answer("GET", f"/api/v3/ondemandvm/{request_id}")[0] for request_id in old + new]
    assert answers == [404] * 3 + [202] * 3
    assert request_records(stack) == 3
