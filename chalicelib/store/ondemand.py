"""On-demand requests in Redis: VMs cloned for one request and handed to it, not to the pool.

A request is a hash ``ondemand:<id>`` (state ``open`` -> ``ready``, or ``failed``/``deleted``),
the zset ``ondemand:<id>:vms`` of every VM reserved for it, and its id in ``ondemand:open:<pool>``
for each pool it still needs VMs from, so each pool's reconcile pass finds the requests it
serves without scanning. Each VM's record names its request (``request``) and the name it was
asked for under (``request_name``, a pool or an alias); ``delivered_at`` marks the ones handed
over. Every change of more than one key is one of the ``ondemand_*`` Lua scripts.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Iterable, Sequence, cast

from chalicelib.store.connection import written_behind_a_lost_reply
from chalicelib.store.keys import KEY_PART, quota_owner
from chalicelib.store.leases import holder_label
from chalicelib.store.records import VMRecord
from chalicelib.store.scripts import KeyList, ScriptCall, run_many
from chalicelib.store.store import (
    UNCONFIRMED_SECONDS,
    UNUSED_RECORD_TTL_SECONDS,
    Quota,
    QuotaExceeded,
    RequestNotDurable,
    StoreUnavailable,
    TokenGone,
    _translate_errors,
    token_index,
)
from chalicelib.store.substore import SubStore

OPEN = "open"
READY = "ready"
FAILED = "failed"
DELETED = "deleted"
NOT_REPLICATED_MESSAGE = "the request could not be replicated in time; it was never served"
NOT_CONFIRMED_MESSAGE = "the request was never confirmed (its creation was answered 503); it was never served"
"""Why a request the API answered 503 for ended (``OnDemandStore.create``)."""
NEVER_SERVED_MESSAGES = (NOT_CONFIRMED_MESSAGE, NOT_REPLICATED_MESSAGE)
"""A failed request with one of these never served its caller: the same request sent again by
the same owner is made again (lua/ondemand_create.lua)."""
GONE_WHILE_RUNNING = "gone from the provider while running"
"""The reason of a running VM a pass dropped because the provider no longer has it
(manager/running.py). One delivered to a request that is not ready yet is built again, without
counting as a failed attempt (lua/ondemand_reserve.lua): its clone did not fail, and vmpooler
counts no retry for a request's VM gone from its provider either."""
GONE_WHILE_BOOTING = "gone from the provider while booting"
"""The reason of a pending VM whose clone ended and which then vanished from the provider
(manager/pending.py). One of a request is replaced without counting as a failed attempt
(lua/ondemand_reserve.lua is given this text to match): its clone did not fail, as in vmpooler,
whose ``remove_nonexistent_vm`` counts no retry."""
CLONE_FAILED = "clone failed"
"""How the reason of a VM whose clone failed (manager/pending.py) or failed to start
(manager/clones.py) begins: one of a request is a failed attempt (lua/ondemand_reserve.lua is
given this text to match), spending one of its ``max_vm_retries``."""
CLONE_NOT_MADE = "clone asked for but not made by the provider"
"""How the reason of a VM begins whose clone was asked for (marked ``clone_asked``), its task never
noted, and that the provider says it does not make (manager/pending.py): not known to have been
under way (the pass may have died before its call reached the provider), so no failed attempt of
its request. Any other VM marked asked that leaves undelivered was under way (made and never
ready, or still cloning past the pool's timeout): a failed attempt, as with its task noted
(lua/ondemand_reserve.lua is given this text to match)."""
CLONE_CLAIMED = "clone_claimed"
"""A field of a VM reserved for a request: when the pass that reserved it claimed its clone's start
(``OnDemandStore.claim``, lua/ondemand_claim.lua); from then on its clone may be running."""
CLONE_HELD = "clone_held"
"""A field of a completed VM of an ended request: since when its slot under
``ondemand_clone_limit`` is held (it stays in the cloning set) because its clone may still be
running (lua/ondemand_end.lua); the completed step releases it once the clone ended."""
OPEN_SETS_PER_CALL = 1000
"""Pools' open-request sets one call of lua/union_members.lua reads (OnDemandStore.waiting)."""
REQUESTS_KEPT_PER_OWNER = 100
"""Ended (deleted or failed) requests an owner's GET may still see: when the owner opens another,
the oldest beyond these are forgotten (lua/ondemand_create.lua). What a caller keeps in Redis by
opening and deleting requests is bounded by it, not by how fast it can send them."""
READY_REQUEST_KEPT_SECONDS = 30 * 24 * 3600
"""How long a request answers at least once it became ready, as vmpooler keeps it (2,592,000 s,
``check_ondemand_request_ready``). It answers longer while its VMs may run: until ``data_ttl``
past the latest end of their lifetimes, as their own records answer (lua/ondemand_deliver.lua),
pushed out when a user extends one (lua/vm_modify.lua). Its VMs can be read and released by
its id for as long as they run. The sets counting it toward REQUESTS_KEPT_PER_OWNER and
REQUESTS_KEPT_IN_TOTAL are kept as long (lua/request_sets.lua), so it is never kept uncounted."""
REQUESTS_KEPT_IN_TOTAL = 10000
"""Requests Redis keeps, whoever owns them, unless the quota says otherwise
(``Quota.max_kept_requests``, config ``max_ondemand_requests_kept``): a caller with many
addresses or user names is many owners."""


@dataclass(frozen=True)
class OnDemandEntry:
    """``count`` VMs asked for under ``name`` (a pool or an alias), built in ``pool``."""

    name: str
    pool: str
    count: int


@dataclass(frozen=True)
class OnDemandRequest:
    id: str
    state: str
    entries: tuple[OnDemandEntry, ...]
    created: float
    expires: float
    token_user: str = ""
    token_entry: str = ""
    """The directory entry of the token's user at creation ("" when unknown): api/identity.same_owner."""
    message: str = ""
    id_generated: bool = False
    """The service drew the id (a UUID 4 only the creator was told), rather than the client."""
    vms: tuple[VMRecord, ...] = field(default=(), repr=False)
    """Every VM reserved for the request that still has a record, in reservation order."""

    def delivered(self, name: str) -> list[VMRecord]:
        """The VMs handed to the request under ``name``; while it is open, not one gone from the
        provider since (lua/ondemand_reserve.lua builds another)."""
        return [vm for vm in self.vms if vm.raw.get("request_name") == name and vm.raw.get("delivered_at")
                and not (self.state == OPEN and vm.state == "destroyed" and vm.reason == GONE_WHILE_RUNNING)]

    def building(self, name: str) -> list[VMRecord]:
        return [vm for vm in self.vms
                if vm.raw.get("request_name") == name and not vm.raw.get("delivered_at") and vm.state == "pending"]

    @property
    def names(self) -> list[str]:
        """The names asked for, in request order, each once."""
        return list(dict.fromkeys(entry.name for entry in self.entries))

    def wanted(self, name: str) -> int:
        return sum(entry.count for entry in self.entries if entry.name == name)

    @property
    def waiting(self) -> int:
        """VMs the request still waits for that no clone has been started for yet."""
        if self.state != OPEN:
            return 0
        return sum(max(self.wanted(name) - len(self.delivered(name)) - len(self.building(name)), 0)
                   for name in self.names)


@dataclass(frozen=True)
class Reservation:
    state: str
    """``open``, ``confirming`` (its creation not confirmed yet: nothing reserved), ``unconfirmed``
    (its confirmation overdue), ``expired``, ``retries_exhausted``, or the state of a request
    already closed."""
    reserved: tuple[str, ...] = ()
    failed: int = 0
    lacking: int = 0
    """VMs the request still lacks in the pool, neither delivered nor building, before this
    reservation (``reserved`` included); 0: the pool only hands over what boots."""
    seen: Seen | None = None
    """The request as the script read it, with the states that fail it (None otherwise): the pass
    ends that request only (``OnDemandStore.end``'s ``seen``), not a new one under its id."""


@dataclass(frozen=True)
class Seen:
    """A request as a reader found it, its ``created`` and ``token_user`` as stored: an end given
    it (``OnDemandStore.end``) ends that request only, not another that took its id since."""

    created: str
    token_user: str


@dataclass(frozen=True)
class Ending:
    result: str
    """``ended``, ``already`` (it had ended before) or ``missing``."""
    state: str
    pools: tuple[str, ...] = ()


class OnDemandStore(SubStore):
    """Typed operations on on-demand requests; every method raises StoreUnavailable."""

    def create(
        self,
        request_id: str,
        entries: Sequence[OnDemandEntry],
        now: float,
        ttl_seconds: float,
        lifetime_hours: int,
        token_user: str = "",
        token_id: str = "",
        quota: Quota | None = None,
        id_generated: bool = False,
        token_key: str = "",
        token_entry: str = "",
    ) -> bool:
        """Record a new open request and queue it for its pools. False when the id is taken;
        QuotaExceeded (nothing recorded) when it would pass a limit of ``quota``. With a quota, the
        request joins its owner's kept requests, and the oldest beyond REQUESTS_KEPT_PER_OWNER
        that have ended are forgotten; so are the service's oldest that hold nothing beyond
        ``quota.max_kept_requests`` (REQUESTS_KEPT_IN_TOTAL without a quota), whoever owns them.
        ``token_user``/``token_id`` are copied onto its VMs, so GET /token/<t> lists them, and
        ``token_entry`` (the directory entry of the token's user), so that only that entry owns them;
        ``id_generated`` says the service drew the id (not the client). TokenGone (nothing
        recorded) when ``token_key``, the record of the token the request was made with, is gone.

        The same request sent again (a client-chosen id, the same owner, the same names and
        counts: ``retry_mark``) after its creation was answered 503, the request never served
        (unconfirmed, or failed unconfirmed or unreplicated), is confirmed, or made again as a
        new one would be (limits checked), and True. A request confirmed already is False, as
        vmpooler answers a duplicate id (409) whoever sends it: nothing changes.

        The request is served only once confirmed, in a second round trip made after the
        script's answer arrived, as a checkout is: an answer lost on its way (a timeout: the
        script may still run, its caller answered 503) leaves it unconfirmed, nothing is built for
        it, and a pass fails it after UNCONFIRMED_SECONDS. A failed confirmation ends it at once
        (best effort) and raises StoreUnavailable.

        Where replicas must acknowledge (``Store.replica_acks``, as a checkout), a new request is
        kept only once one has it: else it is ended at once (failed, NOT_REPLICATED_MESSAGE) and
        RequestNotDurable raised. A failover would lose it, and its caller, told 201, would poll
        for a request no longer known while its VMs were built for nobody."""
        fields = {
            "id": request_id,
            "state": OPEN,
            "entries": json.dumps([{"name": e.name, "pool": e.pool, "count": e.count} for e in entries]),
            "created": repr(now),
            "expires": repr(now + ttl_seconds),
            "lifetime": str(lifetime_hours),
            "confirm_by": repr(now + UNCONFIRMED_SECONDS),
        }
        if token_user:
            fields["token_user"] = token_user
        if token_id:
            fields["token_id"] = token_id
        if token_entry:
            fields["token_entry"] = token_entry
        if id_generated:
            fields["id_generated"] = "1"
        owner = quota.owner if quota is not None else quota_owner(token_user, "")
        mark = "" if id_generated else retry_mark(owner, entries)
        if mark:
            fields["retry_mark"] = mark
        pools = sorted({entry.pool for entry in entries})
        wanted = sum(entry.count for entry in entries)
        key_list = KeyList(self.keys.ondemand(request_id))
        for pool in pools:
            key_list.add(self.keys.ondemand_open(pool))
            key_list.add(self.keys.wake(pool))
        limits = "" if quota is None else json.dumps(
            quota.payload(self.keys, key_list, self.store.holdings_ttl_seconds, now))
        owner_requests = 0 if quota is None else key_list.add(quota.requests_key(self.keys))
        confirm_window = self.store.confirm_window_ms()
        args: list[str | int] = [
            request_id, repr(now), self.store.data_ttl_seconds, json.dumps(fields), wanted, limits, len(pools),
            owner_requests, REQUESTS_KEPT_PER_OWNER, self.keys.ondemand(KEY_PART), self.keys.ondemand_vms(KEY_PART),
            self.keys.vm(KEY_PART), key_list.add(self.keys.ondemand_kept_requests),
            REQUESTS_KEPT_IN_TOTAL if quota is None else quota.max_kept_requests,
            "" if quota is None else quota.owner_hash, self.keys.holdings(KEY_PART), self.keys.owner_requests(KEY_PART),
            key_list.add(token_key) if token_key else 0,
            "" if confirm_window is None else confirm_window, mark, *NEVER_SERVED_MESSAGES, READY_REQUEST_KEPT_SECONDS,
        ]
        answer = self.store.run_counted(quota, now, lambda: self.scripts.ondemand_create(keys=key_list.keys, args=args),
                                        lambda answer: answer)
        if isinstance(answer, str):
            raise QuotaExceeded(answer)
        if answer == -1:
            raise TokenGone()
        if answer:
            self._confirm(request_id, now)
            vm_reason = f"on-demand request {request_id} was not replicated"
            keys, args = self._end_call(request_id, FAILED, NOT_REPLICATED_MESSAGE, vm_reason, now)
            try:
                # WAIT's answer lost (Redis stalled, or slower than the socket timeout) is a 503
                # too: the request confirmed, its caller told it failed, must not be built.
                replicated = self.store.writes_replicated(
                    undo=[("EVAL", self.scripts.ondemand_end.script, len(keys), *keys, *args)])
            except StoreUnavailable:
                replicated = False
            if not replicated:
                try:
                    self.end(request_id, FAILED, NOT_REPLICATED_MESSAGE, vm_reason, now)
                except StoreUnavailable:
                    pass  # Redis is failing already: the caller, answered 503, asks again
                raise RequestNotDurable(f"redis: no replica acknowledged {logged_request(request_id)} in time")
        return bool(answer)

    def _confirm(self, request_id: str, now: float) -> None:
        """Confirm a request just created (lua/ondemand_confirm.lua); when that fails, end it at
        once (best effort, once: Redis is failing already; a pass fails it after its deadline
        otherwise) and raise StoreUnavailable. A confirmation whose reply times out has the end
        written right behind it on its connection (``Store._confirm`` says why)."""
        vm_reason = f"on-demand request {request_id} was not confirmed"
        keys, args = self._end_call(request_id, FAILED, NOT_CONFIRMED_MESSAGE, vm_reason, now)
        end = ("EVAL", self.scripts.ondemand_end.script, len(keys), *keys, *args)
        try:
            with _translate_errors(), written_behind_a_lost_reply(end):
                confirmed = self.scripts.ondemand_confirm(keys=[self.keys.ondemand(request_id)])
        except StoreUnavailable:
            confirmed = None
        if confirmed:
            return
        try:
            self.end(request_id, FAILED, NOT_CONFIRMED_MESSAGE, vm_reason, now)
        except StoreUnavailable:
            pass
        raise StoreUnavailable(f"redis: {logged_request(request_id)} could not be confirmed")

    def get(self, request_id: str) -> OnDemandRequest | None:
        """The request and the records of its VMs, in two round trips."""
        return self.get_many([request_id])[request_id]

    def get_many(self, request_ids: Sequence[str]) -> dict[str, OnDemandRequest | None]:
        """Each request (None when unknown) with the records of its VMs, in two round trips
        whatever their number."""
        if not request_ids:
            return {}
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            for request_id in request_ids:
                pipe.hgetall(self.keys.ondemand(request_id))
                pipe.zrange(self.keys.ondemand_vms(request_id), 0, -1)
            found = pipe.execute()
            hashes = dict(zip(request_ids, found[0::2], strict=True))
            hostnames = {request_id: names for request_id, names, data
                         in zip(request_ids, found[1::2], found[0::2], strict=True) if data}
            wanted = [hostname for names in hostnames.values() for hostname in names]
            raws: dict[str, dict[str, str]] = {}
            if wanted:
                pipe = self.client.pipeline(transaction=False)
                for hostname in wanted:
                    pipe.hgetall(self.keys.vm(hostname))
                raws = dict(zip(wanted, pipe.execute(), strict=True))
        return {request_id: _request(request_id, hashes[request_id], hostnames.get(request_id, []), raws)
                for request_id in request_ids}

    def open_requests(self, pool: str) -> list[str]:
        """Ids of the requests that may still need VMs from ``pool``, oldest first."""
        with _translate_errors():
            # decode_responses=True: redis-py's types cannot say so
            return cast("list[str]", self.client.zrange(self.keys.ondemand_open(pool), 0, -1))

    def open_requests_seen(self, pool: str) -> dict[str, Seen]:
        """The requests that may still need VMs from ``pool``, oldest first, each as read
        (``Seen``, for ``end``: a caller that acts on the read later ends that request only, not a
        new one that took its id since). Two round trips when some are listed, one otherwise;
        ids whose request is no longer open are left out (``end`` would change nothing)."""
        found = self._open_fields(self.keys.ondemand_open(pool), "created", "token_user")
        return {request_id: Seen(created or "0", token_user or "")
                for request_id, (created, token_user) in found.items()}

    def open_request_pools(self) -> dict[str, tuple[float, tuple[str, ...], Seen]]:
        """Every open request the service counts (``ondemand:requests:open``, which each request
        the API opens joins: lua/quota.lua) with when it was made and the pools it is built in.
        One round trip when none is open, two otherwise (the set is bounded by
        ``max_ondemand_requests``), and what was read of it (``Seen``, for ``end``)."""
        found = self._open_fields(self.keys.ondemand_open_requests, "created", "entries", "token_user")
        requests: dict[str, tuple[float, tuple[str, ...], Seen]] = {}
        for request_id, (created, entries, token_user) in found.items():
            pools = tuple(dict.fromkeys(str(entry["pool"]) for entry in json.loads(entries or "[]")))
            requests[request_id] = (float(created or 0), pools, Seen(created or "0", token_user or ""))
        return requests

    def _open_fields(self, listed: str, *fields: str) -> dict[str, list[str | None]]:
        """``fields`` of each request the sorted set ``listed`` holds, oldest first, of those still
        open (not one that ended, or whose record expired, since it was listed). One round trip
        when none is listed, two otherwise."""
        with _translate_errors():
            request_ids = cast("list[str]", self.client.zrange(listed, 0, -1))
            if not request_ids:
                return {}
            pipe = self.client.pipeline(transaction=False)
            for request_id in request_ids:
                pipe.hmget(self.keys.ondemand(request_id), "state", *fields)
            found = pipe.execute()
        return {request_id: values[1:] for request_id, values in zip(request_ids, found, strict=True)
                if values[0] == OPEN}

    def waiting(self, pools: Iterable[str]) -> int:
        """VMs that open requests still wait for and that are not being built yet (/status
        ``queue.requested``: each VM is counted once, here or as pending, ready...). Three round
        trips whatever the number of pools and requests."""
        keys = [self.keys.ondemand_open(pool) for pool in pools]
        calls: list[ScriptCall] = [(self.scripts.union_members, keys[start:start + OPEN_SETS_PER_CALL], ())
                                   for start in range(0, len(keys), OPEN_SETS_PER_CALL)]
        with _translate_errors():
            ids = list(dict.fromkeys(request_id for found in run_many(self.client, calls) for request_id in found))
        return sum(request.waiting for request in self.get_many(ids).values() if request is not None)

    def building(self, pool: str) -> int:
        """On-demand VMs of ``pool`` being built (pending)."""
        with _translate_errors():
            hostnames = cast("list[str]", self.client.zrange(self.keys.pool_state(pool, "pending"), 0, -1))
            if not hostnames:
                return 0
            pipe = self.client.pipeline(transaction=False)
            for hostname in hostnames:
                pipe.hexists(self.keys.vm(hostname), "request")
            return sum(1 for found in pipe.execute() if found)

    def reserve(
        self,
        request_id: str,
        pool: str,
        clone_limit: int,
        max_retries: int,
        template: str,
        domain: str,
        candidates: Sequence[str],
        now: float,
        provider: str | None = None,
        lease_token: str | None = None,
    ) -> Reservation:
        """Reserve names for the VMs the request still lacks in ``pool`` (see the script): no
        candidate held (manager/names.py), nor any while the names where ``provider`` (the pool's)
        makes VMs are not known since Redis lost its data (None: not looked at, as for
        ``Store.reserve_clones``), nor any once Redis runs it after the caller's socket timeout
        (``Store.answer_deadline``: the caller gave up and starts no clone). Each record names
        ``lease_token``, the reserving run's lease (``records.RESERVER_LEASE``; None: outside a
        leased run)."""
        keys = [self.keys.ondemand(request_id), self.keys.ondemand_vms(request_id), self.keys.ondemand_open(pool),
                self.keys.cloning, self.keys.pool_state(pool, "pending"), self.keys.pool_clones,
                self.keys.pool_clones_counted, self.keys.ondemand_open_requests, self.keys.ondemand_open_waiting,
                self.keys.names_known(provider or ""), self.keys.names_held,
                *(self.keys.vm(host) for host in candidates)]
        args: list[str | int] = [request_id, pool, clone_limit, max_retries, repr(now), template, domain,
                                 self.store.data_ttl_seconds, self.keys.vm(KEY_PART), holder_label(),
                                 GONE_WHILE_RUNNING, "" if provider is None else "1",
                                 self.store.answer_deadline(), lease_token or "", GONE_WHILE_BOOTING,
                                 CLONE_FAILED, CLONE_NOT_MADE, *candidates]
        with _translate_errors():
            answer = json.loads(self.scripts.ondemand_reserve(keys=keys, args=args))
        return Reservation(answer["state"], tuple(answer.get("reserved") or ()), int(answer.get("failed") or 0),
                           int(answer.get("lacking") or 0),
                           Seen(str(answer["created"]), str(answer.get("token_user") or ""))
                           if answer.get("created") else None)

    def claim(self, request_id: str, hostnames: Sequence[str], now: float) -> list[str]:
        """Of ``hostnames``, reserved for the request, the ones whose clone may start now (still
        pending for it, the request open), each marked ``CLONE_CLAIMED`` in the same step: a
        request ended before never has a clone started for it (lua/ondemand_claim.lua)."""
        if not hostnames:
            return []
        with _translate_errors():
            return cast("list[str]", self.scripts.ondemand_claim(
                keys=[self.keys.ondemand(request_id), *(self.keys.vm(host) for host in hostnames)],
                args=[request_id, repr(now), *hostnames]))

    def deliver(self, hostname: str, pool: str, now: float, ip: str, host: str) -> tuple[bool, str]:
        """Hand a booted VM to its request. Returns (moved to running, the request's state). The
        delivery that makes the request ready sets how long it is kept from then on
        (``READY_REQUEST_KEPT_SECONDS``), and keeps the sets that count it as long."""
        with _translate_errors():
            answer = json.loads(self.scripts.ondemand_deliver(
                keys=[self.keys.vm(hostname), *(self.keys.pool_state(pool, state) for state in ("pending", "running",
                      "completed")), self.keys.cloning, self.keys.changes, self.keys.running_due(pool),
                      self.keys.ondemand_open_requests, self.keys.running, self.keys.pool_clones,
                      self.keys.ondemand_open_waiting, self.keys.ondemand_kept_requests],
                args=[hostname, repr(now), ip or "", host or "", self.keys.ondemand(KEY_PART),
                      self.keys.ondemand_vms(KEY_PART), self.keys.vm(KEY_PART), self.keys.ondemand_open(KEY_PART),
                      GONE_WHILE_RUNNING, self.store.data_ttl_seconds, READY_REQUEST_KEPT_SECONDS,
                      self.keys.holdings(KEY_PART), self.keys.owner_requests(KEY_PART)]))
        return bool(answer["moved"]), answer["state"]

    def end(self, request_id: str, state: str, message: str, vm_reason: str, now: float,
            token_key: str = "", seen: OnDemandRequest | Seen | None = None, member: str = "") -> Ending:
        """Mark the request ``deleted`` or ``failed`` and send its VMs to completed, those whose
        clone may still run holding their clone slots (``CLONE_HELD``), those reserved and not
        yet claimed destroyed at once (never cloned: lua/ondemand_end.lua). TokenGone
        (nothing changed) when ``token_key``, the record of the token the end was asked with, is
        gone. ``seen``: the request as the caller read it (and checked whose it is); a request
        that has since taken its id (``seen`` forgotten, the id reused by another) is left as it
        is, and the result is ``missing`` (``seen`` may be a ``Seen``: what a pass read of
        it); so is one that does not hold the VM ``member`` ("": no such check), the VM
        whose failure ends the request (a pass that read it before its request ended, the id
        another request's since, must not fail that one)."""
        keys, args = self._end_call(request_id, state, message, vm_reason, now, token_key, seen, member)
        with _translate_errors():
            answer = json.loads(self.scripts.ondemand_end(keys=keys, args=args))
        if answer["result"] == "token_gone":
            raise TokenGone()
        return Ending(answer["result"], answer["state"], tuple(answer.get("pools") or ()))

    def _end_call(self, request_id: str, state: str, message: str, vm_reason: str, now: float,
                  token_key: str = "", seen: OnDemandRequest | Seen | None = None,
                  member: str = "") -> tuple[list[str], list[str | int]]:
        """The keys and arguments of lua/ondemand_end.lua for ``end``."""
        keys = [self.keys.ondemand(request_id), self.keys.ondemand_vms(request_id), self.keys.cloning,
                self.keys.ondemand_open_requests, self.keys.running, self.keys.pool_clones,
                self.keys.ondemand_open_waiting, self.keys.ondemand_kept_requests]
        args: list[str | int] = [
            request_id, state, message, repr(now), vm_reason, self.store.data_ttl_seconds,
            self.keys.ondemand_open(KEY_PART), self.keys.wake(KEY_PART), self.keys.vm(KEY_PART),
            *(self.keys.pool_state(KEY_PART, vm_state) for vm_state in ("pending", "running", "completed")),
            self.keys.running_due(KEY_PART),
        ]
        args.append(token_index(keys, token_key))
        if isinstance(seen, Seen):
            args += [seen.created, seen.token_user]  # as stored
        else:
            args += ["", ""] if seen is None else [repr(seen.created), seen.token_user]
        args += [UNUSED_RECORD_TTL_SECONDS, self.keys.holdings(KEY_PART), self.keys.owner_requests(KEY_PART), member]
        return keys, args


def logged_request(request_id: str) -> str:
    """How logs and a pass's ``errors`` name an on-demand request: ``on-demand request #`` and the
    first 8 hex digits of its id's SHA-256, never the id. An id the service drew is the request's
    secret (token-less GET /ondemandvm/<id> shows it and its VMs), and whoever reads the logs
    need not own it; its owner, who has the id, finds its lines by hashing it."""
    return "on-demand request #" + hashlib.sha256(request_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def deleted_vm_reason(request_id: str) -> str:
    """The reason of the VMs of a request its user deleted (DELETE /ondemandvm/<id>): a delivered
    one's ``DELETE /vm/<host>`` is then answered as a VM its user returned (api/vms.py)."""
    return f"on-demand request {request_id} was deleted"


def shown_vm_reason(record: VMRecord) -> str:
    """The VM's reason as GET /vm/<hostname> shows it to anyone: one that names the on-demand
    request the VM was built for ("on-demand request <id> was deleted", "... failed") says "its
    on-demand request" instead. The id of a request the service drew is that request's secret
    (whoever has it reads the request and its VMs' names, token-less GET /ondemandvm/<id>), and
    whoever reads a VM need not be its owner, who knows the id already. The record keeps it
    (``deleted_vm_reason`` is matched against it)."""
    request_id = record.raw.get("request")
    named = f"on-demand request {request_id} "
    if request_id and record.reason.startswith(named):
        return "its on-demand request " + record.reason[len(named):]
    return record.reason


def retry_mark(owner: str, entries: Sequence[OnDemandEntry]) -> str:
    """What makes a request sent again the same request: its owner, and the names and counts it
    asked for (not the pools an alias's VMs were chosen from: each try chooses again), hashed."""
    asked: dict[str, int] = {}
    for entry in entries:
        asked[entry.name] = asked.get(entry.name, 0) + entry.count
    return hashlib.sha256(json.dumps([owner, sorted(asked.items())]).encode("utf-8")).hexdigest()[:32]


def _request(request_id: str, data: dict[str, str], hostnames: Sequence[str],
             raws: dict[str, dict[str, str]]) -> OnDemandRequest | None:
    """The request of hash ``data`` (None when empty), its VMs the records in ``raws`` of
    ``hostnames`` that still name it."""
    if not data:
        return None
    records = [VMRecord.from_hash(raw) for raw in (raws.get(hostname) for hostname in hostnames)
               if raw and raw.get("request") == request_id]
    return OnDemandRequest(
        id=request_id,
        state=data.get("state", ""),
        entries=tuple(OnDemandEntry(e["name"], e["pool"], int(e["count"]))
                      for e in json.loads(data.get("entries") or "[]")),
        created=float(data.get("created") or 0),
        expires=float(data.get("expires") or 0),
        token_user=data.get("token_user", ""),
        token_entry=data.get("token_entry", ""),
        message=data.get("message", ""),
        id_generated=data.get("id_generated") == "1",
        vms=tuple(records),
    )
