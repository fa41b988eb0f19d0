"""After Redis lost its data, no clone takes the name of a VM Redis forgot in another pool's
folder (manager/names.py): dummy provider, whose VMs live under their own keys and survive the
loss, as vCenter's do. The vSphere case: tests/vsphere/test_names_after_redis_loss_vcsim.py."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import pytest
import redis

from chalicelib import observability as metric
from chalicelib.config import PoolConfig, parse
from chalicelib.manager import clones, ondemand
from chalicelib.manager.hostnames import random_name
from chalicelib.providers.base import ProviderError
from chalicelib.store import Store, StoreUnavailable
from chalicelib.store import names as names_store
from chalicelib.store.names import NamesStore
from tests.harness import Harness, HarnessFactory
from tests.support import emf_documents, emitted, json_lines

CONFIG = """
:config: {domain: example.com, experimental_features: true}
:providers:
  :dummy: {createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}
  :other: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}
:pools:
  - {name: a, size: 1, provider: dummy, folder: f/a}
  - {name: b, size: 1, provider: dummy, folder: f/b}
  - {name: c, size: 1, provider: other, folder: f/c}
"""


def redis_loses_its_data(world: Harness) -> None:
    """Everything vmpool knew goes; the dummy providers' VMs (vCenter's, in life) stay."""
    for key in world.client.keys("*"):
        if ":dummy:" not in key:
            world.client.delete(key)


def forgotten_vm(make_harness: HarnessFactory) -> tuple[Harness, str]:
    """Pool a's VM, in its folder, after Redis lost everything vmpool knew."""
    world = make_harness(parse(CONFIG))
    world.fill("a")
    (name,) = world.hosts("a", "ready")
    redis_loses_its_data(world)
    return world, name


def first_candidate(monkeypatch: pytest.MonkeyPatch, module: object, name: str) -> None:
    """Every reservation's first candidate is ``name`` (the word names are 900: in a fleet of a
    few hundred VMs a reuse is likely, not rare)."""

    def candidates(count: int, prefix: str = "") -> list[str]:
        return [name, *(random_name(prefix) for _ in range(2 * count))]

    monkeypatch.setattr(module, "candidate_names", candidates)


def folders_holding(world: Harness, name: str) -> list[str]:
    return [folder for folder in ("f/a", "f/b")
            if world.client.hexists(world.store.keys.dummy_folder("dummy", folder), name)]


def names_reads(monkeypatch: pytest.MonkeyPatch, provider: Any,
                fail: Callable[[], bool] = lambda: False) -> list[list[str]]:
    """The pools of each of the provider's name reads; each fails while ``fail()``."""
    reads: list[list[str]] = []
    read = provider.vm_names

    def recorded(pools: Sequence[PoolConfig], out_of_time: Callable[[], bool]) -> set[str]:
        reads.append(sorted(pool.name for pool in pools))
        if fail():
            raise ProviderError("vCenter: read refused")
        return set(read(pools, out_of_time))

    monkeypatch.setattr(provider, "vm_names", recorded)
    return reads


def test_a_refill_after_redis_lost_its_data_does_not_reuse_another_pools_vm_name(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, name = forgotten_vm(make_harness)
    first_candidate(monkeypatch, clones, name)

    report = world.reconcile("b")  # b's pass runs first after the loss

    assert len(report.clones_started) == 1 and name not in report.clones_started
    assert folders_holding(world, name) == ["f/a"]
    assert name in NamesStore(world.store).held()
    # Pool a's own pass then finds it (discovered) and destroys it, as for any VM Redis forgot.
    world.reconcile("a")
    assert world.state_of(name) == "discovered"


def test_an_ondemand_request_after_redis_lost_its_data_does_not_reuse_another_pools_vm_name(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, name = forgotten_vm(make_harness)
    first_candidate(monkeypatch, ondemand, name)
    assert world.post("/api/v3/ondemandvm", {"b": "1"}).status == 201
    world.reconcile("b")
    assert folders_holding(world, name) == ["f/a"]
    assert len(world.provider_vms("b")) == 2  # the request's VM and the pool's own


def test_the_names_are_read_once_per_provider_and_a_steady_pass_reads_none(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, _ = forgotten_vm(make_harness)
    reads = names_reads(monkeypatch, world.services.provider("dummy"))
    other_reads = names_reads(monkeypatch, world.services.provider("other"))

    world.fill()
    world.clock.advance(60)
    for pool in ("a", "b", "c"):
        world.reconcile(pool)

    assert reads == [["a", "b"]]  # one read for both pools of the provider, their folders in it
    assert other_reads == [["c"]]
    redis_loses_its_data(world)  # a second loss: read again
    world.reconcile("b")
    assert reads == [["a", "b"]] * 2


def random_names(names: Sequence[str]) -> bool:
    """Whether every name is a random one (hostnames.random_name), none a word name."""
    return bool(names) and all("-" not in name for name in names)


def test_a_provider_whose_names_cannot_be_read_clones_under_random_names_until_they_are(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No pool waits: word names (900: likely a forgotten VM's) only once the names are known."""
    world, name = forgotten_vm(make_harness)
    broken = [True]
    reads = names_reads(monkeypatch, world.services.provider("dummy"), fail=lambda: broken[0])
    first_candidate(monkeypatch, clones, name)

    refused = world.reconcile("b")

    assert refused.errors and reads == [["a", "b"]]
    assert random_names(refused.clones_started), refused.clones_started
    assert name not in NamesStore(world.store).held()

    broken[0] = False
    world.clock.advance(2)
    assert random_names(world.reconcile("a").clones_started) and len(reads) == 1  # no read each pass
    world.clock.advance(40)  # the failed read's claim lapsed: the next pass reads again
    world.reconcile("b")
    assert reads == [["a", "b"]] * 2 and name in NamesStore(world.store).held()
    assert world.client.exists(world.store.keys.names_known("dummy"))  # word names from now on
    (returned,) = world.check_out("b")
    assert world.delete(f"/api/v3/vm/{returned}").status == 200
    world.clock.advance(2)
    report = world.reconcile("b")  # destroys it and clones its replacement: word names tried
    assert report.clones_started and name not in report.clones_started  # that one held


def test_a_failed_names_read_is_counted_by_provider_and_reason(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A failed read was a warning line only: the pass goes on (no ReconcileErrors), so no
    metric or alarm said a provider's pools were cloning under random names, maybe for hours."""
    world, _ = forgotten_vm(make_harness)
    names_reads(monkeypatch, world.services.provider("dummy"), fail=lambda: True)
    capsys.readouterr()

    world.reconcile("b")
    world.reconcile("c")  # another provider, read fine: nothing counted

    documents = emf_documents(capsys.readouterr().out)
    found = emitted(documents)
    assert found[(metric.NAMES_READ_FAILURES, ("service",))] == [1.0]
    assert found[(metric.NAMES_READ_FAILURES, ("provider", "reason", "service"))] == [1.0]
    (by_provider,) = [document for document in documents
                      if metric.NAMES_READ_FAILURES in document and "provider" in document]
    assert (by_provider["provider"], by_provider["reason"]) == ("dummy", "other")


def test_a_pass_while_another_reads_the_names_clones_under_random_names_and_a_dead_readers_claim_lapses(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    world, name = forgotten_vm(make_harness)
    names = NamesStore(world.store)
    assert names.claim("dummy", world.clock.now(), 40.0, "killed-reader")  # a pass that died reading
    reads = names_reads(monkeypatch, world.services.provider("dummy"))
    first_candidate(monkeypatch, clones, name)

    waiting = world.reconcile("b")
    assert random_names(waiting.clones_started) and reads == []
    world.clock.advance(41)
    world.reconcile("a")
    assert reads == [["a", "b"]] and name in names.held()


def test_a_reservation_is_refused_when_redis_loses_its_data_during_the_pass(make_harness: HarnessFactory) -> None:
    """The pass read the mark, then Redis lost everything: its reservation reserves nothing."""
    world = make_harness(parse(CONFIG))
    world.fill("a")
    store = world.store
    assert store.reserve_clones("b", 1, 10, "t", "example.com", ["x-1"], world.clock.now(), provider="dummy") == ["x-1"]
    redis_loses_its_data(world)
    assert store.reserve_clones("b", 1, 10, "t", "example.com", ["x-2"], world.clock.now(), provider="dummy") == []


def refusing_the_first_call_of(client: redis.Redis, sha: str,
                               monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Redis refuses the first call of the script ``sha`` that ``client``'s pipelines send, as it
    refuses a write out of memory: before the script writes anything (its ``now``, the score
    of every name, is not a number). Returns the calls refused."""
    refused: list[tuple[Any, ...]] = []
    make = client.pipeline

    def pipeline(transaction: bool = True, shard_hint: Any = None) -> Any:
        pipe = make(transaction=transaction, shard_hint=shard_hint)
        send = pipe.execute_command

        def execute_command(*args: Any, **options: Any) -> Any:
            if args[:2] == ("EVALSHA", sha) and not refused:
                refused.append(args)
                args = (*args[:6], "not-a-time", *args[7:])  # EVALSHA sha 3 k1 k2 k3 now ...
            return send(*args, **options)

        pipe.execute_command = execute_command
        return pipe

    monkeypatch.setattr(client, "pipeline", pipeline)
    return refused


def test_names_held_by_several_calls_are_marked_known_only_once_every_call_held_its_own(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over ``NAMES_PER_CALL`` names are held by several calls. They went in one pipeline, where
    a call Redis refused did not stop the next: the last set the mark, and the names of the
    refused call were free for word-name clones, a second VM under a forgotten VM's name. The
    mark is set only after every other call held its names; until then random names only."""
    monkeypatch.setattr(names_store, "NAMES_PER_CALL", 2)
    store = Store(redis_client)
    names = NamesStore(store)
    found = ["alpha-one", "bravo-two", "charlie-three", "delta-four", "echo-five"]
    assert names.claim("vsphere", 100.0, 40.0, "reader")
    redis_client.script_load(store.scripts.names_hold.script)  # refused for itself, not as NOSCRIPT
    refused = refusing_the_first_call_of(redis_client, store.scripts.names_hold.sha, monkeypatch)

    with pytest.raises(StoreUnavailable):
        names.hold("vsphere", found, 100.0, 3600, "reader")

    assert len(refused) == 1
    assert not redis_client.exists(store.keys.names_known("vsphere"))  # word names stay off
    assert "alpha-one" not in names.held()
    # The claim lapses; the next pass's read holds them all and sets the mark.
    assert names.claim("vsphere", 141.0, 40.0, "next-reader")
    names.hold("vsphere", found, 141.0, 3600, "next-reader")
    assert names.held() == set(found)
    assert redis_client.exists(store.keys.names_known("vsphere"))
    assert not redis_client.exists(store.keys.names_reading("vsphere"))


@pytest.mark.parametrize("names_per_call", [5000, 2], ids=["one_call", "several_calls"])
def test_a_names_hold_whose_claim_was_taken_over_holds_nothing_and_sets_no_mark(
        redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, names_per_call: int) -> None:
    """A pass whose read outlasted its claim (a Lambda paused, Redis slow): another pass claimed
    and reads again. Before, the first pass's hold set the mark from its older read anyway and
    dropped the other's claim: word names came back on a read that could miss a VM Redis
    forgot since (a second VM of its name). Its hold now changes nothing; the claimant's holds."""
    monkeypatch.setattr(names_store, "NAMES_PER_CALL", names_per_call)
    store = Store(redis_client)
    names = NamesStore(store)
    assert names.claim("vsphere", 100.0, 40.0, "slow-reader")
    assert names.claim("vsphere", 141.0, 40.0, "next-reader")  # the slow reader's claim lapsed

    assert not names.hold("vsphere", ["alpha-one", "bravo-two", "charlie-three"], 100.0, 3600, "slow-reader")

    assert not redis_client.exists(store.keys.names_known("vsphere"))  # word names stay off
    assert names.held() == set()
    assert redis_client.get(store.keys.names_reading("vsphere")) == "141.0 next-reader"
    assert names.hold("vsphere", ["alpha-one", "delta-four", "echo-five"], 141.0, 3600, "next-reader")
    assert names.held() == {"alpha-one", "delta-four", "echo-five"}
    assert redis_client.exists(store.keys.names_known("vsphere"))


def test_a_names_hold_after_redis_lost_its_data_again_sets_no_mark(redis_client: redis.Redis) -> None:
    """Redis lost its data between the read and the hold: the claim went with it, and the read
    is from before the loss. Before, the hold set the mark all the same."""
    store = Store(redis_client)
    names = NamesStore(store)
    assert names.claim("vsphere", 100.0, 40.0, "reader")
    redis_client.flushdb()

    assert not names.hold("vsphere", ["alpha-one"], 100.0, 3600, "reader")

    assert redis_client.keys("*") == []


def test_a_pass_whose_names_claim_was_taken_over_while_it_read_clones_under_random_names(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pass's read outlasts its claim and pool a's pass claims meanwhile: b's pass holds
    nothing, sets no mark and clones under random names (before: it took the names as known,
    its word names were refused by the reservation without the mark, and it cloned nothing)."""
    world, name = forgotten_vm(make_harness)
    names = NamesStore(world.store)
    provider = world.services.provider("dummy")
    read = provider.vm_names

    def slow_read(pools: Sequence[PoolConfig], out_of_time: Callable[[], bool]) -> set[str]:
        found = set(read(pools, out_of_time))
        assert names.claim("dummy", world.clock.now() + 41, 40.0, "pool-a-pass")
        return found

    monkeypatch.setattr(provider, "vm_names", slow_read)
    first_candidate(monkeypatch, clones, name)

    report = world.reconcile("b")

    assert random_names(report.clones_started), report.clones_started
    assert not world.client.exists(world.store.keys.names_known("dummy"))
    assert names.held() == set()
    assert world.client.get(world.store.keys.names_reading("dummy")).endswith(" pool-a-pass")


def test_a_pass_that_started_first_but_claims_second_leaves_the_younger_claim_alone(
        make_harness: HarnessFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two pools' passes at start-up: b's started first, but its inventory read took longer, so
    a's pass (started a second later) claimed the names read first. A claim dated after the
    claimant's own start was taken as no claim at all: b read vCenter's whole inventory again
    and took the claim over, and a's read, done, was thrown away ("read but not held", logged
    on every fresh `make run PROVIDER=vcsim`; a's first pass cloned under random names). b
    now goes on with random names while a reads, as any pass does."""
    world, name = forgotten_vm(make_harness)
    names = NamesStore(world.store)
    reads = names_reads(monkeypatch, world.services.provider("dummy"))
    first_candidate(monkeypatch, clones, name)
    assert names.claim("dummy", world.clock.now() + 1, 40.0, "pool-a-pass")

    report = world.reconcile("b")

    assert reads == [] and random_names(report.clones_started), (reads, report.clones_started)
    assert world.client.get(world.store.keys.names_reading("dummy")).endswith(" pool-a-pass")
    assert names.hold("dummy", {name}, world.clock.now() + 1, 3600, "pool-a-pass")  # a's read counts


def test_a_names_claim_dated_far_ahead_of_the_claimant_is_taken_over(redis_client: redis.Redis) -> None:
    """A claim stamped by a clock a whole claim's hold ahead of the claimant's (a host whose
    clock was wrong) is not a live claim: it would keep every pass from reading for up to ten
    holds (its key's expiry). One a few seconds ahead is: the claimant merely started later."""
    names = NamesStore(Store(redis_client))
    assert names.claim("vsphere", 105.0, 40.0, "reader")
    assert not names.claim("vsphere", 100.0, 40.0, "started-earlier")
    assert names.claim("vsphere", 146.0, 40.0, "lapsed")  # the reader's claim lapsed (41 s)
    assert names.claim("vsphere", 105.0, 40.0, "right-clock")  # 41 s behind the last: not live
    assert redis_client.get(Store(redis_client).keys.names_reading("vsphere")) == "105.0 right-clock"


def names_read_levels(log_output: Any) -> list[str]:
    return [record["level"] for record in json_lines(log_output.getvalue())
            if "read and held before cloning" in record["message"]]


def test_a_first_start_on_an_empty_redis_reads_the_names_without_a_warning(
        make_harness: HarnessFactory, log_output: Any) -> None:
    """Every first start (``make run``, tests, a new deployment) warned that Redis had lost the
    names of the provider's VMs: with none in its pools' folders nothing was forgotten."""
    world = make_harness(parse(CONFIG))
    world.reconcile("a")
    assert names_read_levels(log_output) == ["INFO"]


def test_names_read_after_redis_lost_its_data_are_still_a_warning(
        make_harness: HarnessFactory, log_output: Any) -> None:
    world, _ = forgotten_vm(make_harness)
    log_output.seek(0)
    log_output.truncate()  # the first start's read, before the loss
    world.reconcile("b")
    assert names_read_levels(log_output) == ["WARNING"]
