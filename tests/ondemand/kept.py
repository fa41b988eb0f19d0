"""How long Redis keeps on-demand requests, as tests see it: Redis's key expiry runs on Redis's
own clock, not the harness's fake one, so a test letting days pass moves both (shared by
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
