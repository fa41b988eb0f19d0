"""Typed operations on the service's state in Redis.

Reads that the API and the manager make often are one round trip each (a pipeline or a script).
Changes that touch several keys go through the Lua scripts in ``lua/`` so that many Lambdas can
act at once without any lock held in a process.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import itertools
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Collection, Iterable, Mapping, Sequence, TypeVar, cast

import redis

from chalicelib.answer_sizes import CLONE_FAILURE_CHARS
from chalicelib.config import RedisConfig
from chalicelib.sizing import demand as demand_history
from chalicelib.store.connection import (
    reconnect_pooled_connections,
    spare_connection,
    written_behind_a_lost_reply,
    written_on,
    written_on_a_spare_connection_too,
)
from chalicelib.store.deadline import answer_deadline, socket_timeout_ms
from chalicelib.store.keys import DEFAULT_PREFIX, KEY_PART, SIZE_OVERRIDES, STATES, Keys
from chalicelib.store.leases import holder_label, lease_token
from chalicelib.store.records import MARKS_ASKED, RESERVER_LEASE, CloneBackoff, VMRecord, finite_number
from chalicelib.store.scripts import KeyList, ScriptCall, Scripts, run_many
from chalicelib.store.settle import answered_or_settled, settled_done
from chalicelib.timestamps import day_of

DAILY_STATS_TTL_SECONDS = 400 * 24 * 3600
"""How long per-day statistics stay for /summary: a bit more than a year."""


UNCONFIRMED_SECONDS = 60.0
"""How long a checkout may stay unconfirmed before a reconcile pass returns its VMs to ready:
far longer than the API takes between the checkout and its confirmation."""

REPLICAS_RECHECK_SECONDS = 5.0
"""How often a process looks up how many replicas its primary has in sync, while it knows of as
many as it waits for (``Store._replicas_to_wait_for``; fewer: at each write that waits)."""

REPLICA_LOSS_GRACE_SECONDS = 60.0
"""The default of ``redis.replica_loss_grace`` (``ReplicaAcks.loss_grace_seconds``): how long
after a primary was last seen with the replicas a write waits for (``keys.replicas_seen``) a
write there still waits for them though they are gone, answered 503 for want
of them: a primary cut off from its replica (a partition) and still named by the endpoint may be
replaced by that replica when the failover's detection ends, and the writes it took alone are
lost then. Past it, a primary short of replicas is taken for one left alone (its replica lost
for good, being rebuilt) and answers without waiting, as a just-promoted one does at once."""

LAMBDA_ENV = "AWS_LAMBDA_FUNCTION_NAME"
MIN_REPLICA_ACKS_ENV = "VMPOOL_REDIS_MIN_REPLICA_ACKS"

BatchItem = TypeVar("BatchItem")


@dataclass(frozen=True)
class SettingRead:
    """A hash field as a caller read it ('' for none): its move happens only while it still
    holds that value (lua/move.lua's settings_read)."""

    key: str
    field: str
    value: str


@dataclass(frozen=True)
class DnsClaim:
    """A pass's claim of the publication of a VM's address (``Store.claim_dns``)."""

    version: int
    """The version claimed (> 0); 0 when those addresses are the ones published (then
    ``published`` is None: not read back); -1 when this pass is not to publish them (a later
    look claimed, or the VM left service); ``DNS_ELSEWHERE`` when its record is published under
    another name or by another entry (the pool's ``dns_plugin`` or the entry's domain changed):
    that one is to be deleted first (``forget_dns``)."""
    published: str | None
    """The addresses noted published before (``?`` when unknown), None for none."""


DNS_ELSEWHERE = -2
"""``DnsClaim.version`` of a VM in service whose record is published under another name or by
another ``:dns_configs:`` entry than the one claiming."""

MOVE_BATCH = 200
"""The most VMs one run of lua/move.lua or lua/update.lua changes: a pass changing thousands (a
pool drained) holds Redis a few milliseconds at a time, not for the whole batch."""

COUNT_POOLS_PER_CALL = 200
"""Pools one call of lua/state_counts.lua counts (Store.counts)."""

UNUSED_RECORD_TTL_SECONDS = 3600
"""How long the record of a destroyed VM no one ever held lives (one cloned for an on-demand
request deleted or failed before its delivery), instead of ``data_ttl``: a create/delete loop
from many addresses makes the service clone at its clone rate, and each record kept a week.
Longer than any pass lives (a Lambda: 15 minutes), so a pass whose inventory predates the
destroy still finds the record's ``destroyed_at`` (lua/discover.lua)."""

DESTROYED_RECORDS_KEPT = 10_000
"""Destroyed VMs whose records live ``data_ttl`` (GET /vm/<host> answers ``destroyed`` from them,
as vmpooler's do): past this many, the records of those destroyed longest ago expire within
UNUSED_RECORD_TTL_SECONDS (lua/move.lua). ``data_ttl`` alone let them grow with the churn: ~840
bytes each (up to ~10 KB with a caller's tags), and 10,000 checkouts a day kept ~70,000 for the
default week (~60 MB, up to 700 MB). A record whose DNS record is still to delete keeps
``data_ttl`` (manager/dns_records.py retries while the record names it). The records of VMs no one
held (no ``checkout``: recycled ready VMs, failed clones) go before any of a VM someone held (a
checkout or an on-demand delivery)."""

CLONE_DEMAND_TTL_SECONDS = 120.0
"""A short pool's claim on clone slots lapses when its passes stop renewing it for this long
(its passes died, or it left the config), so the slots go to the pools still asking."""

NEWEST_CONFIG_SECONDS = 90.0
"""How long the newest config stays the newest once no reconcile function runs with it: three
times the functions' refresh (config_source.REFRESH_SECONDS), so it outlasts any overlap after a
push, yet a push undone by deleting its S3 version holds the pools up for no longer than this
(manager/dispatch.py newest_config; lua/reserve_clones.lua asks the same of a pass's config)."""


class StoreUnavailable(Exception):
    """Redis cannot be reached or answered with an error; the API turns this into a 503."""

    public_message = "the state store is unavailable, try again shortly"
    """What the API tells the client (the exception's own text may name hosts: logs only)."""


class CheckoutNotDurable(StoreUnavailable):
    """No replica confirmed the checkout in time: its VMs went back to the pool, none was handed out."""

    public_message = ("the checkout could not be replicated in time, so no VM was handed out; "
                      "try again shortly")


class TokenNotDurable(StoreUnavailable):
    """No replica had a new API token in time: it was deleted at once (a failover could lose it,
    and its user, told 200, would be refused with it)."""

    public_message = "the token could not be replicated in time, so it was not made; try again shortly"


class NotYetReplicated(StoreUnavailable):
    """A change made on the primary that no replica had in time (``Store.require_replicated``): a
    failover could still undo it, so it is not answered as done. The 503 (``public_message``)
    says what was done and to send the same request again, which is answered once a replica has
    the change."""

    def __init__(self, public_message: str, detail: str) -> None:
        super().__init__(detail)
        self.public_message = public_message


class RequestNotDurable(StoreUnavailable):
    """No replica had a new on-demand request in time: it was ended at once (a failover could
    lose it, and the caller would poll for a request no longer known)."""

    public_message = ("the on-demand request could not be replicated in time, so it was not opened; "
                      "try again shortly")


@dataclass(frozen=True)
class ReplicaAcks:
    """How many replicas must have a checkout before the API answers it (Redis ``WAIT``)."""

    replicas: int = 0
    timeout_ms: int = 500
    loss_grace_seconds: float = REPLICA_LOSS_GRACE_SECONDS
    """``redis.replica_loss_grace`` (``REPLICA_LOSS_GRACE_SECONDS`` unless configured)."""

    @classmethod
    def from_config(cls, config: RedisConfig, environ: Mapping[str, str]) -> "ReplicaAcks":
        """``redis.min_replica_acks`` (VMPOOL_REDIS_MIN_REPLICA_ACKS in ``environ`` wins); unset:
        1 in AWS Lambda, where ElastiCache runs a replica that a failover promotes, 0 elsewhere."""
        replicas = config.min_replica_acks
        if environ.get(MIN_REPLICA_ACKS_ENV, "").strip():
            replicas = int(environ[MIN_REPLICA_ACKS_ENV])
        if replicas is None:
            replicas = 1 if environ.get(LAMBDA_ENV) else 0
        return cls(replicas, config.replica_ack_timeout_ms, float(config.replica_loss_grace))


SLOT_CHOICES_SENT = 10
"""The most of its pools each VM of a checkout names to the script in its own order of
preference; a name of more pools also sends all of them once, in the order of ``pools``, which
each VM tries next (lua/checkout.lua). Every VM sent its whole order: a request for 100 VMs of an
alias of 1,000 pools was 100,000 names for Redis to read (80 ms of its time), of 5,000 pools
half a million (450 ms), and anyone may send one."""


@dataclass(frozen=True)
class CheckoutRequest:
    """``count`` VMs asked for under ``name`` (a pool or an alias), served from any of ``pools``."""

    name: str
    pools: Sequence[str]
    """In the order a VM tries them once its own first choices have none (SLOT_CHOICES_SENT)."""
    count: int
    preferences: Sequence[Sequence[str]] = ()
    """Optional: for each VM, ``pools`` in the order it prefers them (a weighted or random
    choice). The script still takes another order when that is what serves every VM."""

    def slots(self) -> list[Sequence[str]]:
        """Each VM's pools, in its order of preference."""
        return [self.preferences[i] if i < len(self.preferences) else self.pools for i in range(self.count)]


@dataclass(frozen=True)
class CheckedOut:
    requested: str
    pool: str
    hostname: str
    published_domain: str | None = None
    """The domain a DNS plugin published the VM under (None: not published): the name its
    caller is given, as GET /vm gives it, until a pass moves the record (api/vm_lookup.py)."""


@dataclass(frozen=True)
class CheckoutResult:
    vms: tuple[CheckedOut, ...] = ()
    short: tuple[str, ...] = ()
    """Requested names that could not be served; non-empty means nothing was checked out."""

    @property
    def ok(self) -> bool:
        return not self.short


HOLDERS_KEPT = 10000
"""Owners' holdings sets the service keeps before the scheduler's tick looks for ones holding
nothing any more (lua/holders_sweep.lua): a caller with many addresses is many owners."""
HOLDERS_SWEPT_PER_CALL = 20
"""Owners one run of lua/holders_sweep.lua looks at: each a record read per entry of its set (at
most about max_running_vms_per_user), so a run holds Redis a few milliseconds."""
HOLDERS_SWEEP_CALLS = 50
"""Runs a tick makes at most: 1,000 owners a minute, more than takes add past HOLDERS_KEPT."""


@dataclass(frozen=True)
class Quota:
    """Limits on what one owner, and everyone together, may hold: checked in the script that
    takes the VMs (store/lua/quota.lua), so concurrent requests cannot pass them together."""

    owner: str
    """Who takes the VMs (``keys.quota_owner``): ``entry:<id>`` or ``user:<canonical name>`` for
    a token's user, ``addr:<address>`` for an anonymous client."""
    max_owner_vms: int
    max_vms: int
    pools: Sequence[str]
    """Every configured pool: the service's running set (what counts against ``max_vms``) is
    rebuilt from their running sets when it is not known to be whole (``Store.recount_running``)."""
    max_owner_requests: int = 0
    max_requests: int = 0
    """Open on-demand requests, per owner and in total."""
    max_kept_requests: int = 10000
    """On-demand requests Redis keeps in total, ended ones included (lua/ondemand_create.lua)."""

    def holdings_key(self, keys: Keys) -> str:
        """The owner's holdings set (named by a hash of the owner)."""
        return keys.holdings(self.owner_hash)

    def requests_key(self, keys: Keys) -> str:
        """The set of the owner's on-demand requests Redis keeps (named by a hash of the owner)."""
        return keys.owner_requests(self.owner_hash)

    @property
    def owner_hash(self) -> str:
        """What names the owner in its keys (hex: never a space or ``:``)."""
        return _owner_hash(self.owner)

    def payload(self, keys: Keys, key_list: KeyList, ttl_seconds: int, now: float) -> dict[str, Any]:
        """What lua/quota.lua reads, its keys added to ``key_list``."""
        owner_hash = self.owner_hash
        holders, running, counted, open_requests, open_waiting, templates = _quota_keys(keys)
        return {"key": key_list.add(keys.holdings(owner_hash)), "ttl": ttl_seconds, "max_owner_vms": self.max_owner_vms,
                "holders": key_list.add(holders), "owner_hash": owner_hash, "now": now,
                "max_holders": HOLDERS_KEPT, "max_vms": self.max_vms, "running": key_list.add(running),
                "counted": key_list.add(counted), "open_requests": key_list.add(open_requests),
                "open_waiting": key_list.add(open_waiting), **templates,
                "max_owner_requests": self.max_owner_requests, "max_requests": self.max_requests}


@functools.lru_cache(maxsize=4096)
def _checkout_pool_keys(keys: Keys, pool: str) -> tuple[str, str, str, str]:
    """A pool's keys a checkout names (ready, running, running_due, wake), kept for the last
    4,096 pools (configured ones only reach a checkout): four key names less per pool and request."""
    return keys.pool_state(pool, "ready"), keys.pool_state(pool, "running"), keys.running_due(pool), keys.wake(pool)


@functools.lru_cache(maxsize=16)
def _return_layout(keys: Keys, data_ttl_seconds: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``Store.return_vm``'s lua/move.lua keys after the VM's record and its arguments between
    ``now`` and the hostname: the same for every VM returned, worked out once per prefix (nine
    key names a return)."""
    return ((keys.changes, keys.cloning, keys.pool_clones, keys.running),
            (str(data_ttl_seconds), "1", "", "", keys.pool_state(KEY_PART, "running"),
             keys.pool_state(KEY_PART, "completed"), keys.wake(KEY_PART), *_checkout_condition(None), "0",
             str(UNUSED_RECORD_TTL_SECONDS), keys.running_due(KEY_PART), "", "", "", "0"))


@functools.lru_cache(maxsize=4096)
def _owner_hash(owner: str) -> str:
    """``Quota.owner_hash``: kept for the last 4,096 owners (a checkout names it three times, and
    every checkout, refused ones too, hashed it again)."""
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:32]


@functools.lru_cache(maxsize=16)
def _quota_keys(keys: Keys) -> tuple[str, str, str, str, str, Mapping[str, str]]:
    """The keys and key templates of ``Quota.payload`` that are the same for every owner:
    worked out once per prefix instead of nine key names per checkout."""
    return (keys.holders, keys.running, keys.running_counted, keys.ondemand_open_requests,
            keys.ondemand_open_waiting,
            MappingProxyType({"holdings_template": keys.holdings(KEY_PART), "vm_template": keys.vm(KEY_PART),
                              "request_template": keys.ondemand(KEY_PART),
                              "request_vms_template": keys.ondemand_vms(KEY_PART)}))


RECOUNT = "recount"
"""lua/quota.lua's answer when the service's running set is not known to be whole: nothing was
taken; the caller rebuilds the set (``Store.recount_running``) and asks again."""


@dataclass(frozen=True)
class RunningCount:
    """What lua/running_recount.lua did to the service's running set."""

    running: int
    """VMs it counts now."""
    added: int
    removed: int
    was_whole: bool
    """Whether the set was marked whole before: then any VM added or removed is drift that some
    path moving VMs left (a bug), not a set being built."""

    @property
    def drifted(self) -> bool:
        return self.was_whole and bool(self.added or self.removed)


class TokenGone(Exception):
    """The token a change was asked with was deleted (or expired) after the API checked it and
    before the change's step ran: nothing changed (lua/token_live.lua). The API answers 401."""


def token_index(keys: list[str], token_key: str) -> int:
    """Append ``token_key`` (the record of the token a change was asked with; "" for none) to a
    script's ``keys``: its index there, as lua/token_live.lua takes it (0 for none)."""
    if not token_key:
        return 0
    keys.append(token_key)
    return len(keys)


class QuotaExceeded(Exception):
    """A request would pass a limit of ``Quota``; ``limit`` says which: ``owner_vms``,
    ``owner_requests``, ``service_vms`` or ``service_requests``. Nothing was changed."""

    def __init__(self, limit: str) -> None:
        super().__init__(limit)
        self.limit = limit


class ModifyResult(enum.Enum):
    CHANGED = "changed"
    NO_VM = "no_vm"
    TOO_MANY_TAGS = "too_many_tags"
    QUEUE_FULL = "queue_full"
    """The VM has as many tasks waiting as it may (the task asked for with the change)."""
    LIST_FULL = "list_full"
    """The VM has (or will have, with its tasks) as many disks or snapshots as it may."""


@dataclass(frozen=True)
class TaskQueueing:
    """A task to queue on a VM within its bounds, as lua/vm_task_queue.lua reads it (built by
    ``VMTaskStore.queueing``): its keys (the VM's task queue, its pool's set of VMs with tasks,
    the pool's wake list, the request's settled mark: store/settle.py) and the rest of what the
    script reads."""

    keys: tuple[str, str, str, str]
    payload: Mapping[str, Any]

    def argument(self, first_key: int) -> str:
        """The queue's JSON for a script given ``keys`` from its ``KEYS[first_key]`` on."""
        return json.dumps({**self.payload, "tasks": first_key, "pool_tasks": first_key + 1, "wake": first_key + 2,
                           "settled": first_key + 3})

    @property
    def settled_key(self) -> str:
        """The request's settled mark: looked at when the script's answer is lost."""
        return self.keys[3]


@dataclass(frozen=True)
class PoolSnapshot:
    """Every VM a pool tracks, by state, with their records: what a reconcile pass starts from."""

    members: Mapping[str, Mapping[str, float]]
    """state -> hostname -> time it entered the state."""
    records: Mapping[str, VMRecord]
    cloning_total: int = 0
    wants_clones: bool = False
    """Whether the pool has a clone demand registered (it was short when it last reserved)."""
    loaded: frozenset[str] = frozenset()
    """Hostnames whose records were read (present in ``records`` unless missing in Redis)."""
    ready_checked: str = ""
    """The pool's ``ready_checked`` mark: what every ready VM was last checked against."""
    sizes: Mapping[str, int] = field(default_factory=dict)
    """state -> how many VMs it holds, when ``members`` lists only some (``Store.pool_snapshot_due``)."""

    @property
    def complete(self) -> bool:
        """Whether ``members`` lists every VM of every state."""
        return not self.sizes

    def hostnames(self, state: str) -> list[str]:
        return list(self.members.get(state, {}))

    def count(self, state: str) -> int:
        return self.sizes.get(state, len(self.members.get(state, {})))

    @property
    def tracked(self) -> set[str]:
        return {host for hosts in self.members.values() for host in hosts}


@dataclass(frozen=True)
class DurationSample:
    kind: str
    """``clone`` or ``boot``."""
    pool: str
    seconds: float


@dataclass
class DayStats:
    """One day's statistics as kept in ``daily:<day>`` (durations) and ``daily:<day>:tags``."""

    day: str
    values: dict[str, str] = field(default_factory=dict)

    def number(self, field_name: str) -> float:
        """A figure of the day; 0.0 when absent or broken in Redis (``nan``, ``inf``, text: /summary
        and /status were a 500 on them)."""
        return finite_number(self.values.get(field_name)) or 0.0


@dataclass(frozen=True)
class RequestCount:
    """A request counted under its rate limit (``Store.count_request``)."""

    count: int
    """Requests on its counter in the window, this one included."""
    left_ms: int
    """Until the window ends."""
    shared: bool
    """Counted on a counter clients share: the class counted its most clients on their own."""


CHECKOUT_LAYOUTS_KEPT = 1024
"""Checkout layouts a Store keeps (``Store._checkout_layout``): each is a few hundred bytes of
JSON, one per requests, owner (an anonymous caller's address) and token seen."""


@dataclass(frozen=True)
class _CheckoutLayout:
    """What a checkout's script is given that is the same for the same requests, owner and token."""

    keys: tuple[str, ...]
    """Its ``KEYS[]``."""
    members: str
    """The members of its JSON argument that do not change, without the braces."""
    quota: str | None
    """The members of the argument's ``quota`` object but ``now``; None without a quota."""


class Store:
    """The service's state. Every method raises StoreUnavailable when Redis fails."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX, data_ttl_hours: int = 168,
                 replica_acks: ReplicaAcks = ReplicaAcks()) -> None:
        self.client = client
        self.replica_acks = replica_acks
        self._online_replicas = 0
        self._replicas_known_until = 0.0
        self._primary_history = ""
        self._replicas_seen_mark = ("", 0.0)
        """The primary (history) this process last marked as having its replicas online
        (``keys.replicas_seen``), and until when (monotonic) that mark needs no renewal."""
        self._waiting_for_lost = False
        """The primary was last found short of the replicas asked for, though it had them within
        REPLICA_LOSS_GRACE_SECONDS: writes wait for them all the same."""
        self._rejoin_due = 0.0
        """Meanwhile, when (monotonic) its connections are next made again through the endpoint."""
        self.keys = Keys(prefix)
        self.scripts = Scripts(client)
        self.data_ttl_seconds = data_ttl_hours * 3600
        self.holdings_ttl_seconds = 400 * 24 * 3600
        """How long an owner's holdings set outlives its last change (longer than any lifetime
        worth counting; entries are pruned as they are read)."""
        self.demand_pools: Mapping[str, int] = {}
        """Demand-sized pools, each with its demand ``max`` (``services.demand_sized_pools``): the
        checkout script counts their checkouts and misses, a miss at most ``max`` VMs."""
        self._checkout_layouts: dict[tuple[Any, ...], _CheckoutLayout] = {}
        """``_checkout_layout``'s answers for checkouts of no demand-sized pool, up to
        CHECKOUT_LAYOUTS_KEPT (then forgotten all at once): one per requests, owner and token."""

    # --- reads --------------------------------------------------------------------------------

    def get_vm(self, hostname: str) -> VMRecord | None:
        with _translate_errors():
            # decode_responses=True: redis-py's types cannot say so
            data = cast("dict[str, str]", self.client.hgetall(self.keys.vm(hostname)))
        return VMRecord.from_hash(data) if data else None

    def get_first_vm(self, hostnames: Sequence[str]) -> VMRecord | None:
        """The record of the first of ``hostnames`` the service knows, in one round trip."""
        found = self.records(hostnames)
        return next((found[host] for host in hostnames if host in found), None)

    def pool_snapshot(self, pool: str, without_records: Sequence[str] = ()) -> PoolSnapshot:
        """All of a pool's VMs (with the time each entered its state) and the records of those
        not in a ``without_records`` state, in two round trips whatever the pool's size. A
        steady pass leaves out ``ready``: it needs their scores only, and reading a record costs
        far more than a score (issue 14: 178 ms for 2,000 ready VMs)."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for state in STATES:
                pipe.zrange(self.keys.pool_state(pool, state), 0, -1, withscores=True)
            pipe.zcard(self.keys.cloning)
            pipe.zscore(self.keys.clone_demand, pool)
            pipe.get(self.keys.ready_checked(pool))
            *state_members, cloning_total, wants_clones, ready_checked = pipe.execute()
            members = {state: dict(pairs) for state, pairs in zip(STATES, state_members, strict=True)}
        hostnames = [host for state, hosts in members.items() if state not in without_records for host in hosts]
        return PoolSnapshot(members=members, records=self.records(hostnames), cloning_total=cloning_total,
                            wants_clones=wants_clones is not None, loaded=frozenset(hostnames),
                            ready_checked=ready_checked or "")

    def pool_snapshot_due(self, pool: str, now: float, ready_ttl_seconds: float,
                          also: Iterable[str] = ()) -> PoolSnapshot:
        """What a pass must look at, in one round trip, in time independent of how many VMs
        wait unchanged: every pending, completed and discovered VM with its record; the ready
        VMs whose ready_ttl has passed (records read when acted on); the running VMs due for a
        look (``schedule_running``) with their records; and the VMs of ``also`` (the provider
        says they changed) in whatever state, with records unless ready. ``sizes`` has the counts."""
        keys = [self.keys.pool_state(pool, state) for state in STATES]
        keys += [self.keys.running_due(pool), self.keys.cloning, self.keys.clone_demand,
                 self.keys.ready_checked(pool)]
        with _translate_errors():
            counts, state_members, cloning_total, wants_clones, ready_checked = self.scripts.pool_snapshot(
                keys=keys, args=[pool, repr(now), repr(now - ready_ttl_seconds), *also])
        members = {state: {pairs[i]: float(pairs[i + 1]) for i in range(0, len(pairs), 2)}
                   for state, pairs in zip(STATES, state_members, strict=True)}
        hostnames = [host for state, hosts in members.items() if state != "ready" for host in hosts]
        return PoolSnapshot(members=members, records=self.records(hostnames), cloning_total=cloning_total,
                            wants_clones=bool(wants_clones), loaded=frozenset(hostnames),
                            ready_checked=ready_checked or "",
                            sizes=dict(zip(STATES, counts, strict=True)))

    def state_members(self, pool: str, state: str) -> dict[str, float]:
        """hostname -> time it entered ``state``, for every VM of the pool in it."""
        with _translate_errors():
            pairs = cast("list[tuple[str, float]]",
                         self.client.zrange(self.keys.pool_state(pool, state), 0, -1, withscores=True))
        return dict(pairs)

    def schedule_running(self, pool: str, due: Mapping[str, tuple[VMRecord, float]]) -> list[str]:
        """When a pass must next look at each running VM of ``due`` (hostname -> its record as
        the pass read it, its next look; see pool_snapshot_due), in one round trip: only while
        the VM is still running in ``pool`` for the checkout, and with the lifetime, the record
        shows (lua/schedule_running.lua): a stale pass does not bring back the look of a VM
        returned or reaped since, nor overwrite one a later change wrote. Returns the hostnames
        whose look was written."""
        if not due:
            return []
        keys = self.keys.pool_state(pool, "running"), self.keys.running_due(pool)
        calls: list[ScriptCall] = []
        for batch in _batches(due):
            args: list[Any] = []
            for host, (record, look) in batch.items():
                args += [host, repr(look), record.raw.get("checkout", ""), record.raw.get("lifetime", "")]
            calls.append((self.scripts.schedule_running, [*keys, *(self.keys.vm(host) for host in batch)], args))
        with _translate_errors():
            return _done(due, run_many(self.client, calls))

    def begin_pass(self, pool: str, provider: str = "") -> tuple[int | None, str, bool]:
        """``mark_changes``, the pool's ``inventory_checked`` mark ("" when none) and whether the names where
        ``provider`` makes VMs are known since Redis last lost its data, or last failed over
        (``Keys.names_known``, manager/names.py; a mark a promoted replica inherited is dropped),
        in one round trip. The changes mark is None when no replica asked for
        (``replica_acks``) acknowledged it in time: a failover could lose it, and the promoted
        replica's counter, behind the mark, would stamp the VMs changed there (checked out after the
        failover) below it, so they would look unchanged since the pass's older inventory read
        (gone, in use as they are). A pass without a mark drops no VM as gone. WAIT in the same
        round trip: it counts the writes of its own connection, the INCR among them."""
        replicas = self._replicas_to_wait_for()
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(self.keys.changes)
            pipe.get(self.keys.inventory_checked(pool))
            pipe.get(self.keys.names_known(provider))
            pipe.info("replication")
            if replicas:
                pipe.execute_command("WAIT", *self._wait_arguments(replicas))
            mark, checked, names_mark, replication, *acks = pipe.execute()
            # The names mark holds the replication id of the primary that set it (lua/names_hold.lua).
            # Another one here: a replica was promoted since, and a failover may have lost the
            # latest clones' records while the older mark survived (their VMs still in their
            # folders, their names free for another pool's clone). Dropped: the names are read again.
            names_known = names_mark is not None and names_mark == (replication.get("master_replid") or "-")
            if names_mark is not None and not names_known:
                self.client.delete(self.keys.names_known(provider))
        durable = not acks or int(acks[0]) >= replicas
        return (int(mark) if durable else None), checked or "", names_known

    def tracked(self, hostnames: Collection[str]) -> set[str]:
        """Of ``hostnames``, the VMs with a record in a state other than destroyed (one round
        trip): what a purge must leave alone (Provider.purge_unconfigured)."""
        records = self.records(list(hostnames))
        return {name for name, record in records.items() if record.state != "destroyed"}

    def config_is_newest(self, generation: float, now: float, ttl_seconds: float) -> bool:
        """Note the generation of the config this function runs with; whether no function has
        run with a newer one within ``ttl_seconds`` (lua/config_generation.lua)."""
        with _translate_errors():
            return bool(self.scripts.config_generation(keys=[self.keys.config_generation],
                                                       args=[repr(generation), repr(now), repr(ttl_seconds)]))

    def pushed_config_in_use(self, now: float, ttl_seconds: float) -> bool:
        """Whether a function ran with a config pushed to S3 (a generation, ``config_is_newest``'s
        record) within ``ttl_seconds``. Read only: the config without generation asking writes
        nothing (the local stack asks once a pass)."""
        with _translate_errors():
            recorded = self.client.get(self.keys.config_generation)
        try:
            newest, seen = (float(part) for part in str(recorded or "").split(" "))
        except ValueError:
            return False
        return newest > 0 and now - seen <= ttl_seconds

    def mark_inventory_checked(self, pool: str, checked: str) -> None:
        """Note the provider's inventory token the pool's VMs were compared with, and when the
        last whole comparison was (see ``begin_pass``)."""
        with _translate_errors():
            self.client.set(self.keys.inventory_checked(pool), checked)

    def records(self, hostnames: Sequence[str]) -> dict[str, VMRecord]:
        """The records of ``hostnames`` that exist, in one round trip."""
        if not hostnames:
            return {}
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for host in hostnames:
                pipe.hgetall(self.keys.vm(host))
            replies = pipe.execute()
        return {host: VMRecord.from_hash(data) for host, data in zip(hostnames, replies, strict=True) if data}

    def mark_ready_checked(self, pool: str, mark: str) -> None:
        """Note what every ready VM of the pool was checked against (see PoolSnapshot.ready_checked)."""
        with _translate_errors():
            self.client.set(self.keys.ready_checked(pool), mark)

    def counts_and_open_requests(self, pool: str) -> tuple[dict[str, int], list[str]]:
        """The pool's ``counts`` and the ids of its open on-demand requests, oldest first
        (``OnDemandStore.open_requests``), in one round trip."""
        with _translate_errors():
            open_requests, counts = run_many(self.client, [self._counts_call(pool)],
                                             commands=[("ZRANGE", self.keys.ondemand_open(pool), 0, -1)])
        return dict(zip(STATES, counts, strict=True)), list(open_requests)

    def end_pass(self, pool: str, last_boot: str | None, day: str, samples: Sequence[DurationSample],
                 read_counts: bool, looks_forgotten: Sequence[str] = (), ips: Mapping[str, str] | None = None,
                 ips_seen: float = 0.0,
                 dns_waiting: tuple[int, str] | None = None) -> tuple[dict[str, int] | None, list[str]]:
        """A pass's last writes and read, in one round trip: the pool's ``last_boot`` (when VMs
        became ready: ``set_last_boot``), the day's duration ``samples`` (``record_durations``),
        the next looks of ``looks_forgotten`` (VMs that left running for good: a VM returned
        before its lifetime's end would otherwise keep its look until then, a lifetime a caller
        may set to ten years, long after its record expired), the addresses GET /vm is to give
        for ready and running VMs (``ips``: hostname -> the address the provider showed at
        ``ips_seen``), noted where they differ unless a later look noted one (lua/vm_ip.lua), the
        pool's VMs waiting on DNS (``dns_waiting``: how many and the first's reason, for GET
        /status: set, or cleared when none; None for a pool whose records are not managed, which
        /status never flags) and, with ``read_counts``, the pool's counts
        afterwards (else None). Returns those counts and the hostnames whose address changed."""
        commands: list[tuple[Any, ...]] = [("HSET", self.keys.last_boot, pool, last_boot)] if last_boot else []
        if dns_waiting is not None:
            waiting, reason = dns_waiting
            commands.append(("HSET", self.keys.dns_waiting, pool, f"{waiting}\n{reason}") if waiting > 0
                            else ("HDEL", self.keys.dns_waiting, pool))
        if looks_forgotten:
            commands.append(("ZREM", self.keys.running_due(pool), *looks_forgotten))
        ip_batches = _batches(ips or {})
        calls = [*self._durations_calls(day, samples),
                 *((self.scripts.vm_ip, [self.keys.vm(host) for host in batch], [repr(ips_seen), *batch.values()])
                   for batch in ip_batches),
                 *([self._counts_call(pool)] if read_counts else [])]
        with _translate_errors():
            replies = run_many(self.client, calls, commands=commands)
        noted = replies[len(replies) - len(ip_batches) - read_counts:len(replies) - read_counts]
        changed = [list(batch)[int(index) - 1]
                   for batch, reply in zip(ip_batches, noted, strict=True) for index in reply]
        return (dict(zip(STATES, replies[-1], strict=True)) if read_counts else None), changed

    def _counts_call(self, pool: str) -> ScriptCall:
        return self.scripts.state_counts, [self.keys.pool_state(pool, state) for state in STATES], ()

    def counts(self, pools: Iterable[str]) -> dict[str, dict[str, int]]:
        """pool -> state -> number of VMs, in one round trip: COUNT_POOLS_PER_CALL pools a call
        of lua/state_counts.lua, every call in one pipeline (a command per pool and state cost
        the feeds about 60 ms of CPU per 1,000 pools to send and parse; a call holds Redis
        about a millisecond)."""
        pools = list(pools)
        keys = [self.keys.pool_state(pool, state) for pool in pools for state in STATES]
        step = COUNT_POOLS_PER_CALL * len(STATES)
        calls: list[ScriptCall] = [(self.scripts.state_counts, keys[start:start + step], ())
                                   for start in range(0, len(keys), step)]
        with _translate_errors():
            values = iter([count for answer in run_many(self.client, calls) for count in answer])
        return {pool: {state: next(values) for state in STATES} for pool in pools}

    def running_with(self, pools: Sequence[str], field_name: str, value: str) -> list[str]:
        """The running VMs of ``pools`` whose record has ``field_name`` set to ``value``, in two
        round trips whatever the number of pools and VMs."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for pool in pools:
                pipe.zrange(self.keys.pool_state(pool, "running"), 0, -1)
            running = [host for hosts in pipe.execute() for host in hosts]
            if not running:
                return []
            pipe = self.client.pipeline(transaction=False)
            for host in running:
                pipe.hget(self.keys.vm(host), field_name)
            return [host for host, found in zip(running, pipe.execute(), strict=True) if found == value]

    def hostnames(self, pool: str, state: str) -> list[str]:
        with _translate_errors():
            return cast("list[str]", self.client.zrange(self.keys.pool_state(pool, state), 0, -1))

    def cloning_count(self) -> int:
        with _translate_errors():
            return self.client.zcard(self.keys.cloning)

    def clone_counts(self, pools: Iterable[str]) -> tuple[int, int]:
        """The clones in flight (``cloning_count``, held ones included) and how many of them are
        the pools' pending VMs (the others are out of service, their slots held until vCenter
        ends their clones), in one round trip: COUNT_POOLS_PER_CALL pools a call of
        lua/cloning_pending.lua."""
        keys = [self.keys.pool_state(pool, "pending") for pool in pools]
        calls: list[ScriptCall] = [(self.scripts.cloning_pending,
                                    [self.keys.cloning, *keys[start:start + COUNT_POOLS_PER_CALL]], ())
                                   for start in range(0, len(keys), COUNT_POOLS_PER_CALL)]
        with _translate_errors():
            cloning, *pending = run_many(self.client, calls, commands=[("ZCARD", self.keys.cloning)])
        return int(cloning), sum(int(count) for count in pending)

    def exists(self, hostnames: Sequence[str]) -> list[bool]:
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for host in hostnames:
                pipe.exists(self.keys.vm(host))
            return [bool(found) for found in pipe.execute()]

    # --- atomic changes -----------------------------------------------------------------------

    def checkout(
        self, requests: Sequence[CheckoutRequest], now: float, fields: Mapping[str, str],
        quota: Quota | None = None, token_key: str = "",
    ) -> CheckoutResult:
        """Take every requested VM or none, in one round trip; on success the pools taken from
        are nudged to refill in the same step, and demand-sized pools count the minute's demand
        (misses too). Raises QuotaExceeded (nothing taken) when the VMs
        would pass a limit of ``quota``, TokenGone (nothing taken) when ``token_key`` (the record
        of the token the checkout was asked with) is gone.

        The VMs taken are the caller's only once confirmed, in a second round trip made after
        the script's answer arrived (with ``WAIT`` when replica acknowledgements are required).
        An answer lost on its way (a timeout: the script may have run) leaves them unconfirmed,
        and a reconcile pass returns them to ready after UNCONFIRMED_SECONDS. A failed
        confirmation releases them at once and raises StoreUnavailable (CheckoutNotDurable when
        no replica acknowledged in time)."""
        checkout_id = os.urandom(8).hex()  # secrets.token_hex(8), without its two calls of Python
        tracked = {pool for r in requests for pool in r.pools if pool in self.demand_pools}
        day, minute = demand_history.day_and_minute(demand_history.epoch_minute(now)) if tracked else ("", 0)
        if tracked:  # its keys name the day: laid out for this call
            layout = self._checkout_layout(requests, quota, token_key, tracked, day)
        else:  # the same requests, owner and token are laid out the same every time
            shape = (tuple((r.name, tuple(r.pools), r.count, tuple(map(tuple, r.preferences))) for r in requests),
                     None if quota is None else (quota.owner, quota.max_owner_vms, quota.max_vms,
                                                 quota.max_owner_requests, quota.max_requests),
                     token_key, self.holdings_ttl_seconds)
            kept = self._checkout_layouts.get(shape)
            if kept is None:
                kept = self._checkout_layout(requests, quota, token_key, tracked, day)
                if len(self._checkout_layouts) >= CHECKOUT_LAYOUTS_KEPT:
                    self._checkout_layouts.clear()
                self._checkout_layouts[shape] = kept
            layout = kept
        # The members of the script's argument that change with each call, before the layout's.
        # A number's repr is its JSON (json.dumps writes floats so), and needs no escape in a string.
        at = repr(now)
        window = self.confirm_window_ms()
        text = (f'{{"checkout_id":"{checkout_id}","confirm_by":"{now + UNCONFIRMED_SECONDS!r}",'
                f'"fields":{json.dumps(dict(fields))},')
        if window is not None:
            text += f'"confirm_window_ms":{window},'
        if layout.quota is not None:
            text += f'"quota":{{"now":{at},{layout.quota}}},'
        if tracked:
            text += f'"demand":{{"minute":{minute},"ttl":{demand_history.HISTORY_TTL_SECONDS}}},'
        args = [at, f"{text}{layout.members}}}"]
        keys = layout.keys
        # The replicas to wait for (a look-up may cost a round trip) and the spare connection for
        # the confirmation (a handshake when the pool has no idle one) before the script: what
        # comes between the script and its confirmation counts against the confirm window.
        replicas = self._replicas_to_wait_for()
        with spare_connection(self.client) if replicas else nullcontext() as spare:
            answer = self.run_counted(quota, now, lambda: json.loads(self.scripts.checkout(keys=keys, args=args)),
                                      lambda answer: answer.get("quota"))
            if answer.get("quota"):
                raise QuotaExceeded(answer["quota"])
            if answer.get("token"):
                raise TokenGone()
            if not answer["ok"]:
                return CheckoutResult(short=tuple(answer["short"]))
            result = CheckoutResult(vms=tuple(CheckedOut(*entry) for entry in answer["vms"]))
            self._confirm(checkout_id, result.vms, now, quota.holdings_key(self.keys) if quota is not None else "",
                          replicas, spare)
        return result

    def _checkout_layout(self, requests: Sequence[CheckoutRequest], quota: Quota | None, token_key: str,
                         tracked: set[str], day: str) -> _CheckoutLayout:
        """What lua/checkout.lua is given for ``requests`` that is the same at every call: its
        keys, and the members of its JSON argument but the call's own (``Store.checkout``)."""
        key_list = KeyList()
        slots: list[dict[str, Any]] = []
        orders: list[list[str]] = []
        for r in requests:
            if len(r.pools) <= SLOT_CHOICES_SENT:
                slots += [{"name": r.name, "pools": list(pools)} for pools in r.slots()]
                continue
            orders.append(list(r.pools))  # what each slot tries after its own first choices
            slots += [{"name": r.name, "pools": list(pools[:SLOT_CHOICES_SENT]), "rest": len(orders)}
                      for pools in r.slots()]
        pool_keys: dict[str, dict[str, int]] = {}
        for pool in dict.fromkeys([*(pool for r in requests for pool in r.pools),
                                   *(pool for slot in slots for pool in slot["pools"])]):
            ready, running, running_due, wake = _checkout_pool_keys(self.keys, pool)
            pool_keys[pool] = {"ready": key_list.add(ready), "running": key_list.add(running),
                               "running_due": key_list.add(running_due), "wake": key_list.add(wake)}
            if pool in tracked:
                pool_keys[pool]["demand"] = key_list.add(self.keys.demand(pool, day))
                pool_keys[pool]["demand_max"] = self.demand_pools[pool]
        checkout: dict[str, Any] = {
            "slots": slots,
            "changes": key_list.add(self.keys.changes),
            "running": key_list.add(self.keys.running),
            "fence": key_list.add(self.keys.ready_fence),
            "vm_template": self.keys.vm(KEY_PART),
            "pools": pool_keys,
        }
        if orders:
            checkout["orders"] = orders
        quota_members = None
        if quota is not None:
            payload = quota.payload(self.keys, key_list, self.holdings_ttl_seconds, 0.0)
            del payload["now"]  # the call's own
            quota_members = json.dumps(payload)[1:-1]
        if token_key:
            checkout["token"] = key_list.add(token_key)
        return _CheckoutLayout(tuple(key_list.keys), json.dumps(checkout)[1:-1], quota_members)

    def settled_done(self, settled_key: str) -> bool:
        """Whether the change whose settled mark is ``settled_key`` was made, its answer lost;
        when it was not, it never will be (store/settle.py). One round trip."""
        return settled_done(self.client, self.scripts.settle, settled_key)

    def confirm_window_ms(self) -> int | None:
        """How long after a checkout script ran its confirmation may still confirm it, in ms of
        Redis's clock: this client's socket timeout (after it the API has given up on the
        confirmation's answer and answers 503); None without a timeout."""
        return socket_timeout_ms(self.client)

    def answer_deadline(self) -> str:
        """The time on Redis's clock (ms) after which a change's script changes nothing: now
        plus this client's socket timeout, by when the caller has given up on the script's answer
        and said the change failed (503). A script that waited in Redis longer (paused, behind a
        slow script) would otherwise make the change after its 503, and the retry the 503 asks for
        would make it again. "" without a timeout. Redis's clock is estimated from an offset
        measured once a minute (store/deadline.py), not read per call: no round trip of its own."""
        with _translate_errors():
            return answer_deadline(self.client)

    def run_counted(self, quota: Quota | None, now: float, run: Callable[[], Any],
                    refusal: Callable[[Any], Any]) -> Any:
        """The answer of ``run`` (a script that checks ``quota`` with lua/quota.lua; ``refusal``
        picks the limit out of its answer). When the script found the service's running set not
        known to be whole (RECOUNT), the set is rebuilt and the script run once more."""
        for _ in range(2):
            with _translate_errors():
                answer = run()
            if quota is None or refusal(answer) != RECOUNT:
                return answer
            self.recount_running(quota.pools, now)
        raise StoreUnavailable("redis: the service's running set went missing again as it was rebuilt")

    def sweep_holders(self, now: float) -> tuple[int, int]:
        """Past HOLDERS_KEPT owners with a holdings set, drop the sets of those that took something
        longest ago and hold nothing now (lua/holders_sweep.lua), HOLDERS_SWEPT_PER_CALL at a time,
        at most HOLDERS_SWEEP_CALLS runs. Returns (owners dropped, owners still listed past the
        bound). For the scheduler's tick: a take costs the same however many owners there are."""
        sweep = json.dumps({"max_holders": HOLDERS_KEPT, "batch": HOLDERS_SWEPT_PER_CALL, "now": now,
                            "holdings_template": self.keys.holdings(KEY_PART), "vm_template": self.keys.vm(KEY_PART),
                            "request_template": self.keys.ondemand(KEY_PART),
                            "request_vms_template": self.keys.ondemand_vms(KEY_PART)})
        dropped, left = 0, 0
        with _translate_errors():
            for _ in range(HOLDERS_SWEEP_CALLS):
                _, gone, left = (int(n) for n in self.scripts.holders_sweep(keys=[self.keys.holders],
                                                                             args=[sweep]))
                dropped += gone
                if not left or not gone:  # none over the bound, or every one looked at still holds
                    break
        return dropped, left

    def recount_running(self, pools: Iterable[str], now: float) -> RunningCount:
        """Rebuild the service's running set from the running sets of ``pools`` (every pool the
        caller knows) in one step (lua/running_recount.lua), and mark it whole. The scripts that
        move VMs keep it exact; this bounds in time any drift a path left, and builds the set
        where it is missing. Holds Redis for time that grows with the pools and running VMs
        (docs/performance.md: about 2 ms of its CPU at 1,000 pools, 37 ms at 10,000): for the
        scheduler's tick, and for a quota check only when the set is not known to be whole."""
        pools = list(dict.fromkeys(pools))
        keys = [self.keys.running, self.keys.running_counted, self.keys.running_rebuild,
                *(self.keys.pool_state(pool, "running") for pool in pools)]
        args = [repr(now), self.keys.vm(KEY_PART), self.keys.pool_state(KEY_PART, "running")]
        with _translate_errors():
            running, added, removed, was_whole = self.scripts.running_recount(keys=keys, args=args)
        return RunningCount(int(running), int(added), int(removed), bool(was_whole))

    def _confirm(self, checkout_id: str, vms: Sequence[CheckedOut], now: float, holdings: str, replicas: int,
                 spare: redis.Connection | None) -> None:
        """Confirm a checkout (and wait for the replicas to have it); on any failure, release
        (``holdings``: the owner's holdings set, "" for none).

        A confirmation whose reply times out may have run (Redis stalled right after running it,
        its reply sent late): the release is written right behind it on the same connection
        (``written_behind_a_lost_reply``), so Redis runs it after the confirmation whenever it
        resumes. The release sent afterwards on a new connection could not reach a stalled Redis
        (its handshake times out too), and the VM stayed confirmed to a caller answered 503 for
        its whole lifetime. Sent by EVAL with the script's text: it must run whatever scripts
        the Redis it reaches has loaded. No reply is awaited for it: the 503 comes no later.
        ``replicas``: ``_replicas_to_wait_for`` before the checkout; ``spare``: the connection
        held since then for the release (``spare_connection``)."""
        wait = self._wait_arguments(replicas) if replicas else (0, 0)
        keys, args = self._release_call(checkout_id, [(vm.hostname, vm.pool, holdings) for vm in vms], now,
                                        unconfirmed_only=False)
        release = ("EVAL", self.scripts.release.script, len(keys), *keys, *args)

        def confirm_and_wait(by_text: bool = False) -> list[Any]:
            if not replicas:  # no pipeline for one command: the script's lean call (store/connection.py)
                return [self.scripts.confirm(keys=[self.keys.vm(vm.hostname) for vm in vms], args=[checkout_id])]
            # One round trip on one connection: WAIT counts the writes of its own connection.
            # EVALSHA by hand: a pipeline given a Script object first asks SCRIPT EXISTS.
            pipe = self.client.pipeline(transaction=False)
            script = ("EVAL", self.scripts.confirm.script) if by_text else ("EVALSHA", self.scripts.confirm.sha)
            pipe.execute_command(*script, len(vms), *(self.keys.vm(vm.hostname) for vm in vms), checkout_id)
            pipe.execute_command("WAIT", *wait)
            return pipe.execute()

        # Behind WAIT the release written on the confirmation's connection may be dropped: it is
        # written on a spare connection too (``written_on_a_spare_connection_too``).
        release_on_spare = written_on(spare, release) if replicas else nullcontext()
        try:
            with _translate_errors(), written_behind_a_lost_reply(release), release_on_spare:
                try:
                    confirmed, *acks = confirm_and_wait()
                except redis.exceptions.NoScriptError:  # a Redis that never ran it (a new primary)
                    # Its text, once: one round trip inside the confirm window, not a load and a retry.
                    confirmed, *acks = confirm_and_wait(by_text=True)
        except StoreUnavailable:
            self._release_after_failure(checkout_id, vms, now, holdings)
            raise
        if not confirmed:
            self._release_after_failure(checkout_id, vms, now, holdings)
            raise StoreUnavailable("redis: checkout returned to the pool before it was confirmed")
        if acks and int(acks[0]) < replicas:
            self._count_replicas_again()
            self._release_after_failure(checkout_id, vms, now, holdings)
            raise CheckoutNotDurable(
                f"redis: {acks[0]} of {replicas} replicas acknowledged the checkout within {wait[1]} ms" if wait[0]
                else f"redis: the checkout was not waited for: {self._online_replicas} of {replicas} replicas "
                     f"online, lost within redis.replica_loss_grace (WAIT 0 0)")

    def writes_replicated(self, undo: Sequence[Sequence[Any]] = ()) -> bool:
        """Whether every write Redis has applied so far, from any connection, is on the replicas
        a checkout waits for (``replica_acks``, within its timeout); True at once when none is
        asked for or attached. A pass asks before it acts on the hypervisor on the strength of
        its moves (destroying VMs it moved to completed): a failover that promoted a replica
        without those moves would put a destroyed VM back in ready, to be handed out. ``undo``:
        commands Redis is to run should the answer be lost (StoreUnavailable), written on a spare
        connection (``written_on_a_spare_connection_too``): the caller answers 503 then."""
        replicas, moved = self._replica_wait()
        if moved:
            # Reconnected (a failover, perhaps): the writes before went to the node left behind.
            return False
        if not replicas:
            return True
        spare = written_on_a_spare_connection_too(self.client, *undo) if undo else nullcontext()
        with _translate_errors(), spare:
            # WAIT counts the writes of its own connection: one write on it (the changes counter
            # only ever goes up) comes after every write Redis applied before, in the one
            # replication stream, so its acknowledgement covers them all.
            pipe = self.client.pipeline(transaction=False)
            pipe.incr(self.keys.changes)
            pipe.execute_command("WAIT", *self._wait_arguments(replicas))
            _, acknowledged = pipe.execute()
        if int(acknowledged) < replicas:
            self._count_replicas_again()
            return False
        return True

    def _count_replicas_again(self) -> None:
        """A wait went unacknowledged: the replica count this process keeps for up to
        REPLICAS_RECHECK_SECONDS may be stale (the primary killed and its replica promoted, a
        primary left alone, which waits for no one), so the next write looks it up. Before, every
        write of those seconds waited ``replica_ack_timeout`` for a replica the new primary did
        not have and was answered 503 (a pass's lease retry skipped, once per pool every 2 s)."""
        self._replicas_known_until = 0.0

    def require_replicated(self, public_message: str, what: str) -> None:
        """Raise NotYetReplicated (a 503 saying ``public_message``) unless every write so far is
        on the replicas asked for (``writes_replicated``). For an answer that tells a caller a
        change was made (``what``, for the log), where a failover undoing it would hurt them:
        the change stays made on the primary, and the request sent again (each such route
        answers its retry the same way) is answered once a replica has it.

        The wait failing is answered the same way: the change was made (its own answer came
        before), only whether a replica has it is unknown. The fault the wait guards against
        cuts it short: a primary demoted while it holds the ``WAIT`` answers ``UNBLOCKED``, one
        stalled past the socket timeout loses its answer. Before, that was the generic 503 ("try
        again shortly"), and the caller who did so queued a second disk or snapshot."""
        try:
            replicated = self.writes_replicated()
        except StoreUnavailable as error:
            raise NotYetReplicated(public_message, f"{error} while waiting for a replica to have {what}") from error
        if not replicated:
            raise NotYetReplicated(public_message, f"redis: no replica acknowledged {what} in time")

    def _replicas_to_wait_for(self) -> int:
        """The replica acknowledgements a checkout needs: as configured, but no more than the
        replicas attached and in sync. A primary left alone (just promoted, its replica being
        rebuilt) has no replica a failover could promote, so its checkouts are answered, not
        refused for the minutes the rebuild takes. The count is looked up again every
        REPLICAS_RECHECK_SECONDS, and at every call while it is short of the configured one: a
        replica that came online can be promoted from then on, and the writes answered in the
        seconds before a look-up found it were lost with a failover that promoted it."""
        return self._replica_wait()[0]

    def _replica_wait(self) -> tuple[int, bool]:
        """``_replicas_to_wait_for``, and whether the look-up found replicas lost and had every
        connection reconnect: this process's writes until then may have gone to a node a
        failover left behind (whose demotion drops them), so none of them is known replicated."""
        wanted = self.replica_acks.replicas
        if not wanted:
            return 0, False
        moved = False
        if time.monotonic() >= self._replicas_known_until or self._online_replicas < wanted:
            online, history, seen = self._online_replicas_and_history()
            # Still short of the replicas this primary had (``_waiting_for_lost``): its old
            # connections keep reaching it after the endpoint moves to the replica promoted, so
            # they reconnect again, every REPLICAS_RECHECK_SECONDS while that lasts.
            rejoin = self._waiting_for_lost and online < wanted and time.monotonic() >= self._rejoin_due
            if online < wanted <= self._online_replicas or rejoin:
                # Replicas lost since the last look: a failover may have promoted one while this
                # node was paused or cut off. Such a node, resumed, is still a primary, alone, and
                # takes writes on the connections opened to it before the endpoint moved; they are
                # lost when it is made a replica, and a checkout answered there hands out a VM the
                # new primary has in ready. Every connection reconnects through the endpoint and
                # the count is read where it now leads: the same node when it only lost a replica
                # (its replication history the same), else a promoted one.
                reconnect_pooled_connections(self.client)
                online, history, seen = self._online_replicas_and_history()
                moved = history != self._primary_history
                self._rejoin_due = time.monotonic() + REPLICAS_RECHECK_SECONDS
            self._online_replicas, self._primary_history = online, history
            self._replicas_known_until = time.monotonic() + REPLICAS_RECHECK_SECONDS
            if online >= wanted:
                self._mark_replicas_seen(history, seen)
            self._waiting_for_lost = online < wanted and seen == history != ""
        if self._waiting_for_lost:
            # This primary had its replicas moments ago: it may be cut off from them, one of them
            # about to be promoted. Wait for them (a 503) rather than answer what it would lose.
            return wanted, moved
        return min(wanted, self._online_replicas), moved

    def _wait_arguments(self, replicas: int) -> tuple[int, int]:
        """``WAIT``'s arguments for a write given ``replicas`` (``_replicas_to_wait_for``, just
        called): ``replicas`` and ``replica_ack_timeout``; but ``0 0`` while this process waits
        for replicas its primary lost (within ``loss_grace_seconds``) and fewer are online than
        it waits for, as the look-up made for this very write found (while short, each write
        looks). None of them can acknowledge before it is back and synced; ``WAIT 0`` answers at
        once how many replicas have the write (none here), and the write counts unacknowledged:
        the 503 at once. Before, with a replica lost for good, every write of the grace was held
        the whole timeout first (measured: 600 ms a checkout with the default 500, Redis's
        timer adding up to 100 ms; a Lambda busy that long per 503)."""
        if self._waiting_for_lost and self._online_replicas < replicas:
            return 0, 0
        return replicas, self.replica_acks.timeout_ms

    def _mark_replicas_seen(self, history: str, seen: str) -> None:
        """Note on the primary (``keys.replicas_seen``, for ``replica_acks.loss_grace_seconds``;
        no note when it is 0) that it had the replicas a write waits for: every process, one
        started later too, then waits for them that long after they are lost. Written once a
        quarter of that per process, and whenever the mark read (``seen``) names another
        primary or none; a failed write only shortens the grace (the look-up answered already)."""
        marked, until = self._replicas_seen_mark
        grace = self.replica_acks.loss_grace_seconds
        if not history or grace <= 0 or (seen == marked == history and time.monotonic() < until):
            return
        try:
            self.client.set(self.keys.replicas_seen, history, px=int(grace * 1000))
        except redis.RedisError:
            return
        self._replicas_seen_mark = (history, time.monotonic() + grace / 4)

    def _online_replicas_and_history(self) -> tuple[int, str, str]:
        """The replicas online at the primary a pooled connection reaches, that primary's
        replication history id (``INFO replication``: ``master_replid``, new at each promotion),
        and the history last seen with its replicas online (``keys.replicas_seen``, "" none)."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.info("replication")
            pipe.get(self.keys.replicas_seen)
            info, seen = pipe.execute()
        online = sum(1 for name, value in info.items()
                     if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")
        return online, str(info.get("master_replid", "")), str(seen or "")

    def _release_after_failure(self, checkout_id: str, vms: Sequence[CheckedOut], now: float, holdings: str) -> None:
        """Best effort, once (Redis is failing already: each try may cost a socket timeout);
        whatever it cannot release while unconfirmed is returned by a pass after its deadline."""
        try:
            self._release(checkout_id, [(vm.hostname, vm.pool, holdings) for vm in vms], now, unconfirmed_only=False)
        except StoreUnavailable:
            pass

    def release_checkout(self, checkout_id: str, hostnames: Sequence[str], now: float,
                         unconfirmed_only: bool = False) -> list[str]:
        """Return a checkout's VMs to ready (all of them, or only those still unconfirmed past
        their deadline). Returns the hostnames returned. Two round trips: the VMs' pools (and
        their owners' holdings sets) are read first, so that the script is given every key it
        touches."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for host in hostnames:
                pipe.hmget(self.keys.vm(host), "pool", "holdings")
            found = pipe.execute()
        return self._release(checkout_id, [(host, pool, holdings or "")
                                           for host, (pool, holdings) in zip(hostnames, found, strict=True) if pool],
                             now, unconfirmed_only)

    def _release(self, checkout_id: str, vms: Sequence[tuple[str, str, str]], now: float,
                 unconfirmed_only: bool) -> list[str]:
        """lua/release.lua over (hostname, pool, holdings set or "") triples; a VM no longer in
        that pool is left alone, one released leaves the holdings set."""
        if not vms:
            return []
        keys, args = self._release_call(checkout_id, vms, now, unconfirmed_only)
        with _translate_errors():
            return cast("list[str]", self.scripts.release(keys=keys, args=args))

    def _release_call(self, checkout_id: str, vms: Sequence[tuple[str, str, str]], now: float,
                      unconfirmed_only: bool) -> tuple[list[str], list[str]]:
        """The keys and arguments of lua/release.lua for ``_release``."""
        keys, args = [self.keys.changes, self.keys.running], [repr(now), checkout_id, "1" if unconfirmed_only else "0"]
        for host, pool, holdings in vms:
            ready, running, running_due, _ = _checkout_pool_keys(self.keys, pool)
            record = self.keys.vm(host)
            keys += [record, running, ready, holdings or record, running_due]
            args += [host, pool, "1" if holdings else ""]
        return keys, args

    def move(
        self, hostname: str, pool: str, from_state: str, to_state: str, now: float,
        nudge: bool = False, unchanged_since: int | None = None, lifetime_ended: float | None = None,
        checked_out_as: VMRecord | None = None, token_key: str = "", hold_clone: bool = False,
        unless_set: str = "", settings_read: Sequence[SettingRead] = (), **fields: Any,
    ) -> bool:
        """Move a VM between states if it is still in ``from_state``; set ``fields`` on its record
        (a value of None deletes the field). ``nudge`` wakes the pool's reconcile in the same step.

        ``unchanged_since`` (a mark from ``mark_changes``): move only if the VM's state has not
        changed since the mark. ``lifetime_ended`` (the default lifetime in hours): move only if
        the VM's lifetime, as recorded at the time of the move, has ended by ``now``.
        ``checked_out_as`` (the VM as the caller read it): move only while the VM is still
        checked out by that checkout (its time and owner), not by one that took it since.
        ``token_key`` (the record of the token the move was asked with): TokenGone, nothing
        moved, when it is gone. ``hold_clone`` (to completed): a VM whose clone is still counted
        in flight keeps its slot, marked ``clone_held``, until the completed step sees the clone
        end (lua/move.lua). ``unless_set`` (a field of the VM's record): move only while the
        record lacks it. ``settings_read``: move only while each still holds the value read
        (``reservation_taken_over``'s among them). Returns whether it moved."""
        unset = [SettingRead(self.keys.vm(hostname), unless_set, "")] if unless_set else []
        unset += settings_read
        keys, args = self._move_call(pool, from_state, to_state, now, {hostname: fields}, nudge, unchanged_since,
                                     lifetime_ended, checked_out_as, token_key, hold_clone, unset)
        with _translate_errors():
            (moved,) = self.scripts.move(keys=keys, args=args)
        if moved == -1:
            raise TokenGone()
        return bool(moved)

    def move_many(self, pool: str, from_state: str, to_state: str, now: float,
                  fields: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """``move`` for each VM of ``fields`` (hostname -> the fields to set on its record), in
        one round trip and one script run per MOVE_BATCH VMs: each VM is checked on its own, as
        ``move`` does. Returns the hostnames moved."""
        with _translate_errors():
            replies = run_many(self.client, self._move_many_calls(pool, from_state, to_state, now, fields))
        return _done(fields, replies)

    def _move_many_calls(self, pool: str, from_state: str, to_state: str, now: float,
                         fields: Mapping[str, Mapping[str, Any]],
                         settings_read: Sequence[SettingRead] = ()) -> list[ScriptCall]:
        return [(self.scripts.move, *self._move_call(pool, from_state, to_state, now, batch,
                                                     settings_read=settings_read))
                for batch in _batches(fields)]

    def _move_call(self, pool: str, from_state: str, to_state: str, now: float,
                   fields: Mapping[str, Mapping[str, Any]], nudge: bool = False, unchanged_since: int | None = None,
                   lifetime_ended: float | None = None,
                   checked_out_as: VMRecord | None = None, token_key: str = "",
                   hold_clone: bool = False, settings_read: Sequence[SettingRead] = ()) -> tuple[list[str], list[str]]:
        """The KEYS and ARGV of lua/move.lua for VMs of a known pool (hostname -> its fields).
        ``settings_read``: the VMs move only while each of those hash fields still holds the
        value read (lua/move.lua)."""
        keys = [*(self.keys.vm(hostname) for hostname in fields), self.keys.changes, self.keys.cloning,
                self.keys.pool_clones, self.keys.running, self.keys.pool_state(pool, from_state),
                self.keys.pool_state(pool, to_state), self.keys.wake(pool), self.keys.running_due(pool),
                self.keys.destroyed, *(setting.key for setting in settings_read)]
        # A VM leaving running leaves its next look too (move.lua); the others need no ZREM.
        leave_running_due = "1" if from_state == "running" and to_state != "running" else ""
        args: list[str] = [
            to_state, repr(now), str(self.data_ttl_seconds), "1" if nudge else "0",
            "" if unchanged_since is None else str(unchanged_since),
            "" if lifetime_ended is None else repr(float(lifetime_ended)),
            "", "", "", *_checkout_condition(checked_out_as), str(token_index(keys, token_key)),
            str(UNUSED_RECORD_TTL_SECONDS), leave_running_due, "1" if hold_clone else "",
            str(DESTROYED_RECORDS_KEPT), self.keys.vm(KEY_PART),
            str(len(settings_read)), *(part for setting in settings_read for part in (setting.field, setting.value)),
        ]
        for hostname, changes in fields.items():
            args += [hostname, *update_args(changes)]
        return keys, args

    def mark_changes(self) -> int:
        """A mark on the counter every state change stamps its VM with (``change_seq``): a VM
        stamped with this mark or a later one changed state after the mark was taken."""
        with _translate_errors():
            return int(self.client.incr(self.keys.changes))

    def return_vm(self, hostname: str, now: float, reason: str) -> str | None:
        """Move a running VM, whatever its pool, to completed and nudge its pool, in one round
        trip. Returns its pool, or None when it is unknown or not running."""
        # The pool comes from the record inside the script: templates name its keys (keys.DERIVED_KEYS).
        shared_keys, shared_args = _return_layout(self.keys, self.data_ttl_seconds)
        keys = [self.keys.vm(hostname), *shared_keys]
        args = ["completed", repr(now), *shared_args, hostname, "1", "reason", reason]
        with _translate_errors():
            (pool,) = self.scripts.move(keys=keys, args=args)
        return str(pool) if pool else None

    def reserve_clones(
        self,
        pool: str,
        size: int,
        task_limit: int,
        template: str,
        domain: str,
        candidates: Sequence[str],
        now: float,
        clone_limit: int = 0,
        generation: float = 0.0,
        settings_read: Sequence[SettingRead] = (),
        provider: str | None = None,
        lease_token: str | None = None,
    ) -> list[str]:
        """Create pending records for as many candidates as the pool lacks and its fair share of
        the task limit allows (lua/reserve_clones.lua: the limit is shared max-min fairly among
        the pools that are short; ``clone_limit`` > 0 caps the pool's clones in flight), counted
        atomically. ``generation``: of the config ``size`` and ``template`` were read from
        (``Config.generation``); none is reserved when a function has run with a newer one
        within ``NEWEST_CONFIG_SECONDS`` (0: not checked), nor once one of ``settings_read``
        (the pool's runtime template and reset as the pass read them: ``PoolOverride.read``)
        changed. No candidate held (manager/names.py) is reserved; nor any while the names
        where ``provider`` (the pool's) makes VMs are not known since Redis lost its data (None:
        not looked at: candidates no VM Redis forgot can be expected to hold, random names, or a
        caller outside a pass). Nothing once Redis runs it after the caller's socket timeout
        (``answer_deadline``: a freeze): the caller gave up on it and starts no clone, so names
        reserved then would hold the pool's slots for the start grace. Each record names
        ``lease_token``, the reserving run's lease (``RESERVER_LEASE``; None: outside a leased
        run). Returns the hostnames reserved."""
        with _translate_errors():
            return self.scripts.reserve_clones(
                keys=[self.keys.pool_state(pool, "ready"), self.keys.pool_state(pool, "pending"),
                      self.keys.clone_demand, self.keys.clone_demand_renewed, self.keys.cloning,
                      self.keys.pool_clones, self.keys.pool_clones_counted,
                      self.keys.pool_state(pool, "completed"), self.keys.pool_override(SIZE_OVERRIDES),
                      self.keys.config_generation, self.keys.names_known(provider or ""),
                      self.keys.names_held, *(setting.key for setting in settings_read),
                      *(self.keys.vm(host) for host in candidates)],
                args=[pool, size, task_limit, repr(now), template, domain, clone_limit,
                      repr(CLONE_DEMAND_TTL_SECONDS), self.keys.vm(KEY_PART), holder_label(), repr(generation),
                      repr(NEWEST_CONFIG_SECONDS), "" if provider is None else "1", self.answer_deadline(),
                      lease_token or "", len(settings_read),
                      *(part for setting in settings_read for part in (setting.field, setting.value)), *candidates]
            )

    @staticmethod
    def reserved_record(pool: str, template: str, domain: str, hostname: str, now: float,
                        **fields: str) -> VMRecord:
        """The record ``reserve_clones`` wrote for ``hostname`` at ``now`` (lua/reserve_clones.lua),
        with ``fields`` the reserving pass wrote since: what that pass knows without reading it."""
        return VMRecord.from_hash({"name": hostname, "pool": pool, "template": template, "domain": domain,
                                   "state": "pending", "clone_start": repr(now), "pending_at": repr(now),
                                   "reserver": holder_label(), MARKS_ASKED: "1", **fields})

    def withdraw_clone_demand(self, pool: str) -> None:
        """The pool is full: it no longer claims a share of the task limit."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)  # both sets name the same pools
            pipe.zrem(self.keys.clone_demand, pool)
            pipe.zrem(self.keys.clone_demand_renewed, pool)
            pipe.execute()

    def clone_backoff(self, pool: str) -> CloneBackoff:
        """The pool's clone backoff (manager/clones.py); ``CloneBackoff()`` when its clones are
        not failing."""
        with _translate_errors():
            value = cast("str | None", self.client.hget(self.keys.clone_backoff, pool))
        return CloneBackoff.parse(value)

    def clone_failures(self) -> dict[str, int]:
        """Pool -> clones failed in a row since its last good one, for the pools whose clones are
        failing now (the clone backoffs: one field a pool, so bounded by the pools ever failing)."""
        return {pool: count for pool, (count, _) in self.failing_clones().items()}

    def failing_clones(self) -> dict[str, tuple[int, str]]:
        """Pool -> (clones failed in a row, the last failure's kind) for the pools whose clones
        are failing now, in one round trip; the kind is "" for a backoff written by a release
        that did not note it."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.clone_backoff)
            pipe.hgetall(self.keys.clone_failure)
            backoffs, failures = cast("list[dict[str, str]]", pipe.execute())
        failing: dict[str, tuple[int, str]] = {}
        for pool, value in backoffs.items():
            count = CloneBackoff.parse(value).failed
            if count > 0:
                failing[pool] = (count, failures.get(pool, ""))
        return failing

    def dns_waiting(self, raw: bool = False) -> dict[str, tuple[int, str]]:
        """Pool -> (pending VMs waiting on their DNS records, the first one's reason), for the
        pools whose last pass left some (``end_pass``: one field a pool, cleared by the next pass
        that leaves none, so bounded by the pools; the tick drops those of pools whose passes no
        longer note it, ``dispatch.drop_unmanaged_dns_flags``, and ``Fleet.forget`` a removed
        pool's). ``raw``: every field, unreadable ones too (as (0, ""))."""
        with _translate_errors():
            noted = cast("dict[str, str]", self.client.hgetall(self.keys.dns_waiting))
        waiting: dict[str, tuple[int, str]] = {}
        for pool, value in noted.items():
            count, _, reason = value.partition("\n")
            if count.isascii() and count.isdigit() and int(count) > 0:
                waiting[pool] = (int(count), reason)
            elif raw:
                waiting[pool] = (0, "")
        return waiting

    def forget_dns_waiting(self, pools: Sequence[str]) -> None:
        """Drop the DNS waiting flags of ``pools`` (``dns_waiting``)."""
        if pools:
            with _translate_errors():
                self.client.hdel(self.keys.dns_waiting, *pools)

    def cached_feed(self, name: tuple[str, ...]) -> tuple[float, str] | None:
        """A feed's kept answer (api/feed_cache.py): when it was computed and its JSON text; None
        when none is kept (or it is unreadable)."""
        with _translate_errors():
            value = cast("str | None", self.client.get(self.keys.feed_cache(*name)))
        at, _, text = (value or "").partition("\n")
        when = finite_number(at)
        return (when, text) if when is not None and text else None

    def cache_feed(self, name: tuple[str, ...], now: float, text: str, seconds: int) -> None:
        """Keep a feed's answer, computed at ``now``, for ``seconds``."""
        with _translate_errors():
            self.client.set(self.keys.feed_cache(*name), f"{now!r}\n{text}", ex=seconds)

    def set_clone_backoff(self, pool: str, backoff: CloneBackoff, failure_kind: str = "") -> None:
        """Record the pool's clone backoff (an empty one clears it, and its last failure's kind)
        and, when given, the kind of its last clone failure (cut to CLONE_FAILURE_CHARS), for
        GET /status."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=True)
            if backoff.failed:
                pipe.hset(self.keys.clone_backoff, pool, backoff.dump())
                if failure_kind:
                    pipe.hset(self.keys.clone_failure, pool, failure_kind[:CLONE_FAILURE_CHARS])
            else:
                pipe.hdel(self.keys.clone_backoff, pool)
                pipe.hdel(self.keys.clone_failure, pool)
            pipe.execute()

    def note_dns_left(self, pool: str, hostname: str, now: float) -> None:
        """Remember that the VM's A record is still there after a failed delete, so that passes
        delete it once DNS answers again, whatever became of the VM meanwhile."""
        key = self.keys.dns_left(pool)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.zadd(key, {hostname: now})
            pipe.expire(key, self.data_ttl_seconds)  # a record past data_ttl is left: see dns_records
            pipe.execute()

    def dns_left(self, pool: str, limit: int) -> list[str]:
        """The oldest ``limit`` VMs of ``note_dns_left`` still waiting."""
        with _translate_errors():
            return cast("list[str]", self.client.zrange(self.keys.dns_left(pool), 0, limit - 1))

    def forget_dns_left(self, pool: str, hostnames: Sequence[str]) -> None:
        """Their records are deleted, or no longer ours to delete."""
        if hostnames:
            with _translate_errors():
                self.client.zrem(self.keys.dns_left(pool), *hostnames)

    def claim_dns(self, seen: float, entry: str, addresses: Mapping[str, tuple[str, str]],
                  domain: str = "") -> dict[str, DnsClaim]:
        """Claim the publication of VMs' addresses (hostname -> (the name it is published under,
        the addresses seen at time ``seen``, as ``dns.base.address_text`` notes them)) by the
        ``:dns_configs:`` entry ``entry`` of ``domain``, in one round trip (lua/dns_claim.lua).
        Returns per VM its ``DnsClaim``."""
        batches = _batches(addresses)
        calls: list[ScriptCall] = [
            (self.scripts.dns_claim, [self.keys.vm(host) for host in batch],
             [repr(seen), entry, domain, *(part for pair in batch.values() for part in pair)])
            for batch in batches]
        with _translate_errors():
            replies = run_many(self.client, calls)
        claims = dict.fromkeys(addresses, DnsClaim(0, None))
        for batch, reply in zip(batches, replies, strict=True):
            hosts = list(batch)
            for at in range(0, len(reply), 3):  # only the VMs whose addresses are not the ones published
                index, version, published = reply[at:at + 3]
                claims[hosts[int(index) - 1]] = DnsClaim(int(version), published or None)
        return claims

    def confirm_dns(self, published: Mapping[str, tuple[int, str]]) -> list[str]:
        """Note VMs' addresses published (hostname -> (the version ``claim_dns`` gave, the
        addresses sent)), each only while its claim is the last (lua/dns_confirm.lua); otherwise
        what DNS holds is noted unknown, and the next pass publishes again. Returns the hostnames
        noted."""
        calls: list[ScriptCall] = [
            (self.scripts.dns_confirm, [self.keys.vm(host) for host in batch],
             [str(part) for pair in batch.values() for part in pair])
            for batch in _batches(published)]
        with _translate_errors():
            return _done(published, run_many(self.client, calls))

    def forget_dns(self, hostname: str, fqdn: str, entry: str) -> bool:
        """Drop the VM's notes of its DNS record, deleted under ``fqdn`` by the entry ``entry``
        ("" when the record noted none), if they still name that record (lua/dns_forget.lua): a
        record published again meanwhile is never forgotten (under that name by another entry,
        it is noted unknown, to be published again). Whether the notes were dropped."""
        with _translate_errors():
            return bool(self.scripts.dns_forget(keys=[self.keys.vm(hostname)], args=[fqdn, entry]))

    def update_vm(self, hostname: str, **fields: Any) -> bool:
        """Set fields on an existing record (None deletes a field). False for an unknown VM."""
        return bool(self.update_vms({hostname: fields}))

    def update_vms(self, fields: Mapping[str, Mapping[str, Any]]) -> list[str]:
        """``update_vm`` for each VM of ``fields`` (hostname -> its fields), in one round trip and
        one script run per MOVE_BATCH VMs. Returns the hostnames whose record existed (and was
        updated)."""
        with _translate_errors():
            return _done(fields, run_many(self.client, self._update_calls(fields)))

    def _update_calls(self, fields: Mapping[str, Mapping[str, Any]]) -> list[ScriptCall]:
        return [(self.scripts.update, [self.keys.vm(host) for host in batch],
                 [arg for changes in batch.values() for arg in update_args(changes)])
                for batch in _batches(fields)]

    def modify_vm(self, seen: VMRecord, fields: Mapping[str, str], max_tags: int, now: float,
                  task: TaskQueueing | None = None, token_key: str = "",
                  tag_bounds: tuple[int, int] = (50, 100)) -> ModifyResult:
        """A user's change (lifetime, tags as ``tag:<key>`` fields) of the running VM ``seen``
        (as the caller read it and checked who may change it): each field set on its own in one
        step, so concurrent changes of different fields all land. NO_VM, nothing changed, when the
        VM is no longer running for that checkout (returned, or checked out again, since). Refused
        whole when the VM would carry more than ``max_tags`` tags. A lifetime change makes the VM
        due for a pass's look now (a shortened lifetime ends on time). ``task`` (a disk asked for
        in the same change) is queued in the same step, within its bounds (else refused whole):
        the change is never made without it, nor it without the change. TokenGone, nothing
        changed, when ``token_key`` (the record of the token the change was asked with) is gone.
        Each tag that changes the VM's (new, or another value) is counted in the day's tag
        statistics (``record_tags``, within ``tag_bounds``: most names, most values per name) in
        the same step: a change not made counts nothing, and the same tags set again (the retry
        of a change whose answer was lost) count nothing more."""
        hostname, pool = seen.name, seen.pool
        day = day_of(now)
        keys = [self.keys.vm(hostname), self.keys.running_due(pool), self.keys.daily_tags(day), self.keys.daily(day)]
        args: list[Any] = [max_tags, hostname, repr(now), seen.raw.get("checkout", ""), seen.raw.get("token_user", ""),
                           task.argument(len(keys) + 1) if task else ""]
        if task:
            keys += task.keys
        args.append(token_index(keys, token_key))
        args.append(json.dumps({"ttl": DAILY_STATS_TTL_SECONDS, "max_names": tag_bounds[0],
                                "max_values": tag_bounds[1]}))
        request_id, request_kept = seen.raw.get("request", ""), self._request_kept(seen, fields, now)
        if request_id and request_kept > 0:
            keys += [self.keys.ondemand(request_id), self.keys.ondemand_vms(request_id)]
            args += [len(keys) - 1, request_kept]
            keys += self._request_count_sets(request_id)
        else:
            args += [0, 0]
        for name, value in fields.items():
            args += [name, value]
        with _translate_errors():
            def modify() -> int:
                return int(self.scripts.vm_modify(keys=keys, args=args))

            # With a task, its retry would queue it again: a lost answer is settled (store/settle.py).
            # Without one, the retry sets the same values: the 503 is right.
            result = answered_or_settled(modify, lambda: self.settled_done(task.settled_key), 1) if task else modify()
        if result == -4:
            raise TokenGone()
        if result == -5:
            raise StoreUnavailable("redis: the change with a task reached Redis after its deadline: not made")
        return {1: ModifyResult.CHANGED, 0: ModifyResult.NO_VM, -1: ModifyResult.TOO_MANY_TAGS,
                -2: ModifyResult.QUEUE_FULL}.get(result, ModifyResult.LIST_FULL)

    def _request_count_sets(self, request_id: str) -> list[str]:
        """The sets that count the on-demand request toward the bounds on kept requests
        (lua/ondemand_create.lua): the service's kept set, and its owner's requests set, named by
        the owner hash of the holdings set its record names (none for a request without an
        owner). vm_modify.lua keeps them as long as the request it pushes out. Read first: the
        record's owner never changes, and a stale read at worst keeps another owner's set longer."""
        with _translate_errors():
            holdings = self.client.hget(self.keys.ondemand(request_id), "holdings")
        sets = [self.keys.ondemand_kept_requests]
        before = self.keys.holdings("")
        if isinstance(holdings, str) and holdings.startswith(before) and len(holdings) > len(before):
            sets.append(self.keys.owner_requests(holdings[len(before):]))
        return sets

    def _request_kept(self, seen: VMRecord, fields: Mapping[str, str], now: float) -> int:
        """Seconds from ``now`` that the on-demand request of the VM ``seen`` must still answer
        once ``fields`` set its new lifetime: ``data_ttl`` past its new end (0 without a new
        lifetime or a readable checkout). See lua/vm_modify.lua."""
        checkout, hours = finite_number(seen.raw.get("checkout")), finite_number(fields.get("lifetime"))
        if checkout is None or hours is None:
            return 0
        return max(math.ceil(checkout + hours * 3600 - now + self.data_ttl_seconds), 0)

    def set_once(self, hostname: str, field_name: str, value: str = "1") -> bool:
        """Set a field on an existing record unless it is set already. True for the one caller
        that set it (racing passes: exactly one wins)."""
        with _translate_errors():
            return bool(self.scripts.set_once(keys=[self.keys.vm(hostname)], args=[field_name, value]))

    def note_found_clone_tasks(self, tasks: Mapping[str, str]) -> list[str]:
        """Note on each VM (hostname -> task reference) the clone task the provider found it
        made by, its pass having died before noting it: set only where no task is noted yet (the
        pass that started it may note it meanwhile), on records still there. One round trip.
        Returns the hostnames noted."""
        if not tasks:
            return []
        calls: list[ScriptCall] = [(self.scripts.set_once, [self.keys.vm(hostname)], ["clone_task", task])
                                   for hostname, task in tasks.items()]
        with _translate_errors():
            replies = run_many(self.client, calls)
        return [hostname for hostname, noted in zip(tasks, replies, strict=True) if noted]

    def add_discovered(self, hostname: str, pool: str, now: float, **fields: Any) -> bool:
        """Record a VM found in the pool's folder that no live record claims. Returns whether
        it was recorded (False when another pool or state knows it)."""
        args: list[str] = [hostname, pool, repr(now)]
        for name, value in fields.items():
            if value is not None:
                args += [name, _encode(value)]
        keys = [self.keys.vm(hostname), self.keys.changes, self.keys.pool_state(pool, "discovered")]
        with _translate_errors():
            return bool(self.scripts.discover(keys=keys, args=args))

    def finish_clones(self, hostnames: Sequence[str], now: float) -> None:
        """Their clone tasks are done: free their places under the task limit and note when, in
        one round trip (lua/finish_clones.lua: a record no longer there is not recreated)."""
        with _translate_errors():
            run_many(self.client, self._finish_calls(hostnames, now))

    def reservation_taken_over(self, pool: str, hostname: str, reserver_lease: str,
                               lease_token: str) -> list[SettingRead]:
        """The conditions (for ``move``) under which a pass of the run holding the pool's lease
        ``lease_token`` may give back at once a clone reserved under another run's lease,
        ``reserver_lease``, and not yet asked: the pool's lease is still ``lease_token``, so the
        reserving run can no longer mark it asked (lua/clone_asked.lua compares the lease with
        its own), and the VM still names that run (``RESERVER_LEASE``)."""
        return [SettingRead(self.keys.lease(pool), "", lease_token),
                SettingRead(self.keys.vm(hostname), RESERVER_LEASE, reserver_lease)]

    def mark_clones_asked(self, pool: str, hostnames: Sequence[str], now: float,
                          lease_token: str | None = None, placement: str = "") -> list[str]:
        """Note on each VM, just before its clone is asked of the provider, that it is
        (``CLONE_ASKED``), and where (``placement``, manager/placement.py; '' none), in one
        round trip; only VMs still pending in ``pool`` with their slot
        counted are marked, and none once the pool's lease is no longer ``lease_token`` (the
        caller's run lost it; None: no lease checked), nor once Redis runs it after the caller's
        socket timeout (``answer_deadline``: the caller gave up) (lua/clone_asked.lua). Returns the
        hostnames marked: the only ones the caller may clone."""
        if not hostnames:
            return []
        with _translate_errors():
            marked = self.scripts.clone_asked(
                keys=[self.keys.pool_state(pool, "pending"), self.keys.cloning, self.keys.lease(pool),
                      *(self.keys.vm(host) for host in hostnames)],
                args=[_encode(now), lease_token or "", placement, self.answer_deadline(), *hostnames])
        return [host for host, done in zip(hostnames, marked, strict=True) if done]

    def _finish_calls(self, hostnames: Sequence[str], now: float) -> list[ScriptCall]:
        if not hostnames:
            return []
        return [(self.scripts.finish_clones,
                 [self.keys.cloning, self.keys.pool_clones, *(self.keys.vm(host) for host in hostnames)],
                 [_encode(now), *hostnames])]

    def note_pending(self, pool: str, now: float, finished: Sequence[str],
                     reasons: Mapping[str, Mapping[str, Any]], ready: Mapping[str, Mapping[str, Any]],
                     settings_read: Sequence[SettingRead] = ()) -> list[str]:
        """What the pending step saw of its VMs, in one round trip: the clones of ``finished``
        noted done (``finish_clones``), the not-ready ``reasons`` written on the records that
        exist (``update_vms``: hostname -> fields) and the booted VMs of ``ready`` (hostname ->
        the fields to set) moved from pending to ready (``move_many``: each move conditional on
        its own VM). A move leaves the cloning set as a finish does: a clone that ended and
        booted at once is noted by its move alone (a ``clone_end`` among its fields). Each
        script call checks its own conditions as when run alone. ``settings_read``: the pool's
        settings as the pass read them (``PoolOverride.read``); no VM moves to ready once one of
        them has changed. Returns the hostnames moved."""
        moves = self._move_many_calls(pool, "pending", "ready", now, ready, settings_read)
        calls = [*self._finish_calls(finished, now), *self._update_calls(reasons), *moves]
        with _translate_errors():
            replies = run_many(self.client, calls)
        return _done(ready, replies[len(calls) - len(moves):])

    # --- per-pool lease and wake-ups ----------------------------------------------------------

    def acquire_lease(self, pool: str, ttl_seconds: float, token: str | None = None) -> str | None:
        """Take the pool's lease if nobody holds it. Returns the holder token, or None.

        A caller that passes its own ``token`` knows it even when this raises: a SET sent just
        before Redis stalled may still be applied, and the token is what releases it."""
        token = token or lease_token()
        with _translate_errors():
            taken = self.client.set(self.keys.lease(pool), token, nx=True, px=int(ttl_seconds * 1000))
        return token if taken else None

    def lease_tokens(self, names: Sequence[str]) -> dict[str, str]:
        """The token of each named lease that is held now (one round trip): whose it is
        (``leases.lease_holder``)."""
        if not names:
            return {}
        with _translate_errors():
            tokens = self.client.mget([self.keys.lease(name) for name in names])
        return {name: str(token) for name, token in zip(names, tokens, strict=True) if token is not None}

    def renew_lease(self, pool: str, token: str, ttl_seconds: float) -> bool:
        with _translate_errors():
            return bool(
                self.scripts.release_lease(keys=[self.keys.lease(pool)], args=[token, int(ttl_seconds * 1000)])
            )

    def release_lease(self, pool: str, token: str) -> None:
        with _translate_errors():
            self.scripts.release_lease(keys=[self.keys.lease(pool)], args=[token, 0])

    def wake(self, pool: str) -> None:
        """Nudge whoever runs the pool's reconcile to look again now."""
        key = self.keys.wake(pool)
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.lpush(key, "1")
            pipe.ltrim(key, 0, 0)
            pipe.expire(key, 60)
            pipe.execute()

    def wait_for_wake(self, pool: str, timeout_seconds: float) -> bool:
        """Block until nudged or the timeout passes. Returns whether nudged."""
        key = self.keys.wake(pool)
        with _translate_errors():
            # BLPOP's timeout must be shorter than the socket timeout, so wait in slices.
            deadline = time.monotonic() + timeout_seconds
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self.client.blpop([key], timeout=min(remaining, 1.0)):
                    return True

    def take_wake(self, pool: str) -> bool:
        """Whether the pool was nudged since its wake-ups were last cleared (without waiting)."""
        with _translate_errors():
            return bool(self.client.delete(self.keys.wake(pool)))

    def clear_wakes(self, pool: str) -> None:
        with _translate_errors():
            self.client.delete(self.keys.wake(pool))

    # --- statistics ---------------------------------------------------------------------------

    def record_durations(self, day: str, samples: Sequence[DurationSample]) -> None:
        """Add ``samples`` (seconds rounded to hundredths) to the day's statistics, in one
        script call whose cost barely grows with their number (lua/record_durations.lua)."""
        with _translate_errors():
            run_many(self.client, self._durations_calls(day, samples))

    def _durations_calls(self, day: str, samples: Sequence[DurationSample]) -> list[ScriptCall]:
        if not samples:
            return []
        args: list[Any] = [DAILY_STATS_TTL_SECONDS]
        for sample in samples:
            args += [sample.kind, sample.pool, repr(round(sample.seconds, 2))]
        return [(self.scripts.record_durations, [self.keys.daily(day)], args)]

    def record_tags(self, day: str, tags: Mapping[str, str], max_names: int, max_values: int) -> None:
        """Count tags in the day's tag statistics (``daily:<day>:tags``): at most ``max_names`` tag
        names and ``max_values`` values per name on their own, the rest as ``(other)``. A day the
        previous release counted in its durations hash has its counts moved over first
        (lua/record_tags.lua)."""
        if not tags:
            return
        args: list[Any] = [DAILY_STATS_TTL_SECONDS, max_names, max_values]
        for tag, value in tags.items():
            args += [tag, value]
        with _translate_errors():
            self.scripts.record_tags(keys=[self.keys.daily_tags(day), self.keys.daily(day)], args=args)

    def day_stats(self, days: Sequence[str]) -> list[DayStats]:
        """Each day's durations and tag counts (/summary, /summary/tag). A tag count found in both
        layouts (a day the previous release still counted in after this one moved its counts)
        is their sum."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for day in days:
                pipe.hgetall(self.keys.daily(day))
                pipe.hgetall(self.keys.daily_tags(day))
            found = pipe.execute()
        stats = []
        for index, day in enumerate(days):
            values: dict[str, str] = found[2 * index]
            for name, count in found[2 * index + 1].items():
                if not name.startswith("tag:"):
                    continue  # the script's own counters of distinct names and values
                if name in values:
                    count = str(int((finite_number(values[name]) or 0) + (finite_number(count) or 0)))
                values[name] = count
            stats.append(DayStats(day, values))
        return stats

    def day_figures(self, days: Sequence[str]) -> list[DayStats]:
        """Each day's clone and boot durations without its tag counts (/status,
        /summary/boot|clone): a day of the previous release's layout holds them in the same hash,
        and they are left out in Redis (lua/day_figures.lua)."""
        # One call a day, in one round trip: Redis serves others between days.
        with _translate_errors():
            found = run_many(self.client, [(self.scripts.day_figures, [self.keys.daily(day)], []) for day in days])
        return [DayStats(day, dict(zip(flat[::2], flat[1::2], strict=True)))
                for day, (flat,) in zip(days, found, strict=True)]

    def count_request(self, request_class: str, client: str, shared_counter: int, window_seconds: int,
                      max_clients: int) -> RequestCount:
        """Count a request of ``client`` under its rate-limit class (a fixed window of
        ``window_seconds``): on the client's own counter while the class counts fewer than
        ``max_clients`` clients on their own (or already counts this one), else on shared counter
        ``shared_counter`` (lua/rate_count.lua). Windows are timed on Redis's clock, which
        expires the counters: the service's clock is not asked."""
        keys = [self.keys.rate_limit(request_class, client), self.keys.rate_limit_shared(request_class, shared_counter),
                self.keys.rate_limit_clients(request_class)]
        with _translate_errors():
            count, left_ms, shared = self.scripts.rate_count(keys=keys, args=[window_seconds, max_clients, client])
        return RequestCount(int(count), int(left_ms), bool(shared))

    def set_last_boot(self, pool: str, when: str) -> None:
        with _translate_errors():
            self.client.hset(self.keys.last_boot, pool, when)

    def last_boots(self) -> dict[str, str]:
        with _translate_errors():
            return cast("dict[str, str]", self.client.hgetall(self.keys.last_boot))

    def service_started(self) -> float | None:
        """When the service started serving (epoch seconds), the same for all its processes; None
        before it is known (``mark_service_started``)."""
        with _translate_errors():
            return finite_number(self.client.get(self.keys.started))

    def mark_service_started(self, now: float) -> bool:
        """The service serves: record ``now`` as its start unless one is known (the scheduler's
        tick). Returns whether it was recorded."""
        with _translate_errors():
            return bool(self.scripts.service_started(keys=[self.keys.started], args=[repr(now)]))

    def restart_service(self, started: float) -> None:
        """The service starts now, whatever started before (the local stack, before its workers)."""
        with _translate_errors():
            self.client.set(self.keys.started, repr(started))

    def ping(self) -> None:
        with _translate_errors():
            self.client.ping()


def _batches(fields: Mapping[str, BatchItem]) -> list[dict[str, BatchItem]]:
    """``fields`` (hostname -> its fields, or what a script is given per VM) in runs of at most
    MOVE_BATCH VMs, in order."""
    items = iter(fields.items())
    return [dict(batch) for batch in iter(lambda: list(itertools.islice(items, MOVE_BATCH)), [])]


def _done(fields: Mapping[str, Any], replies: Sequence[Sequence[Any]]) -> list[str]:
    """The hostnames of ``fields`` (in order) whose script answer, in ``replies`` (one list per
    batch of ``_batches``), says it happened."""
    answers = [answer for batch in replies for answer in batch]
    return [host for host, answer in zip(fields, answers, strict=True) if answer]


def _checkout_condition(seen: VMRecord | None) -> list[str]:
    """lua/move.lua's same_checkout, checkout and token_user: the checkout ``seen`` shows (its
    time and owner, as a caller read them and checked who may change the VM), or no condition."""
    if seen is None:
        return ["", "", ""]
    return ["1", seen.raw.get("checkout", ""), seen.raw.get("token_user", "")]


def update_args(fields: Mapping[str, Any]) -> list[str]:
    """One record's part of the arguments of lua/update.lua and lua/move.lua: how many fields
    follow, then name, value, ... (None as "": the field is deleted)."""
    return [str(len(fields)), *_field_args(fields)]


def _field_args(fields: Mapping[str, Any]) -> list[str]:
    """A record's fields as script arguments: name, value, ... (None as "": the field is deleted)."""
    args: list[str] = []
    for name, value in fields.items():
        args += [name, _encode(value)]
    return args


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


class _translate_errors:
    """Turn redis-py's connection and server errors into StoreUnavailable."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        # Returns None (never True): any other exception propagates unchanged, so code after a
        # `with` block runs only when the block finished.
        if exc is not None and isinstance(exc, redis.RedisError):
            raise StoreUnavailable(f"redis: {type(exc).__name__}") from exc
