"""Names the DNS server refuses alone (a real BIND 9 whose ``update-policy`` denies the key some
names) never keep the pool's other VMs unpublished: a refused name is sent again after a back-off
that doubles (fake clock), and after the names never refused, so the same names do not lead every
pass's update and use up its refusals."""

from __future__ import annotations

import pytest

from chalicelib.manager import dns_records
from chalicelib.manager.dns_records import REFUSALS_PER_CALL
from tests.dns.bind import BindServer
from tests.dns.test_dns_batches import pool_published_by
from tests.dns.test_dns_records import names_sent
from tests.harness import HarnessFactory

SIZE = 12


def test_names_the_server_refuses_do_not_keep_the_others_unpublished_pass_after_pass(
        make_harness: HarnessFactory, policy_bind: BindServer, monkeypatch: pytest.MonkeyPatch) -> None:
    world = make_harness(pool_published_by(policy_bind, SIZE, timeout=60))
    world.passes("dns", 1)  # the clones: their names are known
    pending = sorted(world.hosts("dns", "pending"))
    assert len(pending) == SIZE

    def reason(host: str) -> str:
        return world.store.get_vm(host).not_ready_reason  # type: ignore[union-attr]

    # Every name denied: the update is refused, then 5 names alone, and the rest is not sent.
    policy_bind.refuse_updates_of(pending)
    world.passes("dns", 1)
    first = [host for host in pending if "REFUSED" in reason(host)]
    assert len(first) == REFUSALS_PER_CALL
    unsent = [host for host in pending if host not in first]
    assert all("not sent" in reason(host) for host in unsent)

    # The operator's policy now denies those 5 and one more: the 6 others must be published.
    # Before, the 5 refused names led the next pass's update again, were refused again, and the
    # VMs behind them were never sent: pending until their timeout, pass after pass.
    denied = [*first, unsent[0]]
    allowed = set(unsent[1:])
    policy_bind.refuse_updates_of(denied)
    sent = names_sent(world, monkeypatch)
    world.passes("dns", 1)
    assert world.hosts("dns", "ready") == allowed
    for host in denied:
        assert reason(host).startswith("DNS record not created: ") and "REFUSED" in reason(host), reason(host)
    assert set(sent) == allowed | {unsent[0]}  # the 5 refused a pass ago wait out their back-off

    # 10 minutes of passes (one each 30 s): a denied name is sent again after 1, 2, 4 and 5
    # minutes (at most REFUSED_NAME_BACKOFF_MAX_SECONDS), not every pass: 5 times at most, not 20.
    sent.clear()
    world.passes("dns", 20)
    for host in denied:
        assert 3 <= sent.count(host) <= 5, (host, sent.count(host))
        assert "REFUSED" in reason(host)

    # The policy lifted: each is published within its back-off, then its note is gone.
    policy_bind.refuse_updates_of([])
    world.passes("dns", int(dns_records.REFUSED_NAME_BACKOFF_MAX_SECONDS // 30) + 1)
    assert world.hosts("dns", "ready") == set(pending)
    assert all(dns_records.REFUSED_NOTE not in world.store.get_vm(host).raw for host in pending)  # type: ignore[union-attr]
    for host in pending:
        assert policy_bind.addresses(f"{host}.{policy_bind.zone}") == [world.store.get_vm(host).ip]  # type: ignore[union-attr]
