"""A checkout's script arguments are laid out once per requests, owner and token and reused
(``Store._checkout_layout``): what one caller's checkouts were laid out with never serves
another's. Each owner's limit counts its own VMs, each token's checkout is refused only when
that token is gone, whoever asked before with the same pool."""

from __future__ import annotations

import pytest
import redis

from chalicelib.store import CheckoutRequest, Quota, QuotaExceeded, Store, TokenGone
from tests.core.test_checkout_concurrency import add_ready

NOW = 1_765_000_000.0


def _quota(owner: str) -> Quota:
    return Quota(owner=owner, max_owner_vms=1, max_vms=100, pools=("debian",))


def _take(store: Store, owner: str, token_key: str = "") -> bool:
    result = store.checkout([CheckoutRequest("debian", ["debian"], 1)], NOW, {"lifetime": "2"}, _quota(owner),
                            token_key)
    return result.ok


def test_each_owner_is_held_to_its_own_limit_when_checkouts_alternate(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    add_ready(store, "debian", [f"vm{n}" for n in range(6)], NOW)
    assert _take(store, "user:alice")
    assert _take(store, "user:bob")  # bob's first: alice's VM is not his
    for owner in ("user:alice", "user:bob"):
        with pytest.raises(QuotaExceeded):  # the owner already holds its one VM
            _take(store, owner)
    assert _take(store, "addr:10.0.0.1")  # a third owner still gets one
    assert store.counts(["debian"])["debian"]["ready"] == 3


def test_a_gone_token_is_refused_though_a_live_one_asked_the_same_way(redis_client: redis.Redis) -> None:
    store = Store(redis_client)
    add_ready(store, "debian", [f"vm{n}" for n in range(4)], NOW)
    live, gone = "vmpool:token:live", "vmpool:token:gone"
    redis_client.hset(live, mapping={"user": "alice"})
    assert _take(store, "user:alice", live)
    with pytest.raises(TokenGone):
        _take(store, "user:carol", gone)
    assert store.counts(["debian"])["debian"]["ready"] == 3
