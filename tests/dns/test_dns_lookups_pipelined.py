"""New names' lookups of a ``dynamic-dns`` entry pipelined on its kept connection to a real BIND 9:
a clone pass checking 200 names writes their questions 50 at a time and then reads the answers,
so it waits a few round trips, not one a name (a server a few milliseconds away cost a pool's
fill 200 of them), and every answer is still its own name's (held, alias, AAAA only, free)."""

from __future__ import annotations

import itertools
from typing import Any, Iterator

import dns.query
import pytest

from chalicelib.config import build
from chalicelib.dns.registry import build_dns_plugin
from tests.dns.bind import BindServer
from tests.dns.test_dns_connections import pool_world
from tests.harness import HarnessFactory

NAMES = 200


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The TCP messages written and read by dnspython, in order ("send", "receive"): a round
    trip is a write followed by a read (the real functions run: BIND answers)."""
    events: list[str] = []
    real_send, real_receive = dns.query.send_tcp, dns.query.receive_tcp

    def send(*args: Any, **kwargs: Any) -> Any:
        events.append("send")
        return real_send(*args, **kwargs)

    def receive(*args: Any, **kwargs: Any) -> Any:
        events.append("receive")
        return real_receive(*args, **kwargs)

    monkeypatch.setattr(dns.query, "send_tcp", send)
    monkeypatch.setattr(dns.query, "receive_tcp", receive)
    yield events


def waits(events: list[str]) -> int:
    """Round trips: the times the client went from writing to waiting for answers."""
    return sum(1 for before, after in itertools.pairwise(events) if (before, after) == ("send", "receive"))


def test_200_lookups_are_5_round_trips_and_each_answer_is_its_names(bind: BindServer, round_trips: list[str]) -> None:
    plugin = build_dns_plugin(build({"dns_configs": {"e": bind.dns_config()}}).dns_configs["e"])
    bind.add_record(f"held-a.{bind.zone}", "A", "10.90.0.1")
    bind.add_record(f"held-six.{bind.zone}", "AAAA", "2001:db8::90")
    bind.add_record(f"held-both.{bind.zone}", "A", "10.90.0.2")
    bind.add_record(f"held-both.{bind.zone}", "AAAA", "2001:db8::91")
    bind.add_record(f"alias.{bind.zone}", "CNAME", f"elsewhere.{bind.zone}.")
    held = {"held-a": ["10.90.0.1"], "held-six": ["2001:db8::90"], "held-both": ["10.90.0.2", "2001:db8::91"],
            "alias": [f"elsewhere.{bind.zone} (CNAME)"]}
    names = [f"free-{i}" for i in range(NAMES - len(held))]
    names[7:7] = list(held)  # among the free ones, in the first batch of 50
    round_trips.clear()
    found = plugin.addresses_many(names)
    assert found == {name: held.get(name, []) for name in names}
    # 4 batches of A questions, then one of AAAA questions for the 3 names that exist (the alias
    # answers the A question). Before: 200 round trips, a name at a time (and 3 more for AAAA).
    # One question more, in the first batch: a name no VM has (dynamic.WILDCARD_PROBE).
    assert waits(round_trips) == 5
    assert round_trips.count("send") == NAMES + 3 + 1 and round_trips.count("receive") == NAMES + 3 + 1
    # One name alone answers as the batch does.
    assert all(plugin.addresses(name) == held[name] for name in held)


def test_a_clone_pass_of_200_names_looks_them_up_in_4_round_trips(
        make_harness: HarnessFactory, bind: BindServer, round_trips: list[str]) -> None:
    world = pool_world(make_harness, bind)
    world.passes("dns", 1)  # the clones: 200 new names checked, none held
    assert world.count("dns", "pending") == NAMES
    # One A question each (no name exists: NXDOMAIN), and one a lookup call of 50 for a name no
    # VM has (dynamic.WILDCARD_PROBE), sent with them.
    assert round_trips.count("send") == NAMES + NAMES // 50
    assert waits(round_trips) == NAMES // 50
