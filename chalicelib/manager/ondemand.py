"""The reconcile pass's part in on-demand requests: build their VMs and hand them over.

Each pool's pass serves the open requests that need VMs from it (``ondemand:open:<pool>``), so
there is no extra worker. On-demand VMs are always cloned for their request, never taken from
the ready pool: a request does not drain the pool that plain checkouts rely on, and its VMs are
fresh. They go through pending like any clone (clone task, readiness, timeout), then straight to
running for the request (``deliver``), so a plain checkout never sees them.
"""

from __future__ import annotations

from typing import AbstractSet

from chalicelib.config import PoolConfig, ServiceConfig
from chalicelib.manager import clones, dns_records
from chalicelib.manager.context import PassContext
from chalicelib.manager.hostnames import candidate_names, random_candidates
from chalicelib.providers.base import VMInfo
from chalicelib.providers.failures import Failure
from chalicelib.store import DurationSample, Store, VMRecord
from chalicelib.store.ondemand import FAILED, NOT_CONFIRMED_MESSAGE, OnDemandStore, Reservation, Seen, logged_request
from chalicelib.store.records import finite_number
from chalicelib.store.store import NEWEST_CONFIG_SECONDS


def expired_message(ttl_minutes: int) -> str:
    """vmpooler's words for a request that ran out of time."""
    return f"The request failed to provision instances within the configured ondemand_request_ttl '{ttl_minutes}'"


def serve_requests(context: PassContext) -> None:
    """Reserve and clone the VMs each open request still lacks in this pool; fail the requests
    that ran out of time or retries (their VMs go to completed), and those whose creation the
    API never confirmed (answered 503, the script ran all the same) once that is overdue. Nothing is cloned while the
    pool's template is being prepared, but requests still fail at their ttl (a preparation may
    hang). A pool removed from the config builds nothing more: its open requests fail at once
    (no pass would serve them, nor see them expire, once it is forgotten)."""
    requests = OnDemandStore(context.store)
    if context.draining:
        # Only the requests read: a pass paused here must not fail a new one that took an id since.
        for request_id, seen in requests.open_requests_seen(context.pool.name).items():
            _fail(context, requests, request_id, removed_message(context.pool.name), seen=seen)
        return
    service = context.service
    limit = 0 if context.clones_held else service.ondemand_clone_limit  # 0: the script only checks
    known = context.names_known  # random names only until they are (manager/names.py, clones.py)
    candidates = candidate_names if known else random_candidates
    for request_id in _open_requests(context, requests):
        reservation = requests.reserve(
            request_id, context.pool.name, limit, service.max_vm_retries, context.pool.template,
            context.pool.domain or "", candidates(limit, service.prefix), context.now,
            provider=context.pool.provider if known else None, lease_token=context.lease_token,
        )
        context.checkpoint("ondemand_reserved")
        failure = _failure(reservation, service)
        if failure:
            _fail(context, requests, request_id, failure, seen=reservation.seen)
        elif reservation.state == "confirming":
            context.report.followups += 1  # its API process confirms it in a moment: look again soon
        elif reservation.state == "open" and limit:
            # Only the clones still wanted: the request may have ended since they were reserved.
            claimed = requests.claim(request_id, reservation.reserved, context.now)
            context.checkpoint("ondemand_claimed")
            clones.start_clones(context, claimed)
            if reservation.lacking:
                # Look again soon: clones just asked for, or slots to wait for. VMs building are
                # followed as the pool's pending ones; a pool that delivered its share has nothing
                # to look at while the request's other pools build theirs (it was passed every
                # check_loop_delay_min until then, each pass reading the provider's inventory).
                context.report.followups += 1


def removed_message(pool: str) -> str:
    """What a request is told when its pool is no longer configured."""
    return f"The request failed: its pool {pool} was removed from the configuration"


def fail_removed(store: Store, pool: str, now: float, grace_seconds: float = 0.0) -> tuple[list[str], float | None]:
    """Fail the open requests of a pool no pass serves any more (removed from the config, drained
    and forgotten): one an API function a config refresh behind opened after the drain forgot the
    pool would otherwise stay open (202, counted by the quotas) until its record expired, no pass
    serving it or seeing its ttl. Only those at least ``grace_seconds`` old: a younger one may be
    an API function's a push *ahead*, which put the pool back (``UNSERVED_GRACE_SECONDS``).
    Returns their ids, and the seconds until the youngest left passes the grace (None: none left)."""
    requests = OnDemandStore(store)
    failed: list[str] = []
    wait: float | None = None
    for request_id, seen in requests.open_requests_seen(pool).items():
        left = (finite_number(seen.created) or 0.0) + grace_seconds - now
        if grace_seconds > 0 and left > 0:
            wait = max(wait or 0.0, left)
            continue
        # Only the request read: a caller paused here must not fail a new one that took its id since.
        if _end_failed(store, requests, pool, request_id, removed_message(pool), now, seen=seen):
            failed.append(request_id)
    return failed, wait


UNSERVED_GRACE_SECONDS = NEWEST_CONFIG_SECONDS
"""How old a request built in a pool no pass serves must be before the tick fails it
(``fail_unserved``): an API function may read a push that adds a pool up to
``config_source.REFRESH_SECONDS`` before the tick's function does, and a request it opens for the
new pool meanwhile is not for a removed one. The newest config's overlap, as ``newest_config``
allows it."""


def fail_unserved(store: Store, served: AbstractSet[str], now: float) -> dict[str, list[str]]:
    """Fail the open requests built in a pool no pass serves (neither in ``served``, the pools
    the tick's config has or drains, nor opened within ``UNSERVED_GRACE_SECONDS``), with the
    removed pool's message; return their ids by such pool. An API function a config behind
    opens them after the drain forgot the pool: its nudge fails them (``look_at``), unless the
    nudge was lost (an SQS send that failed; the local stack's listener, which hears only the
    pools its own config has) or came more than ``FORGOTTEN_SECONDS`` after the forget (taken for
    a pool not configured here yet). Nothing else would: the request answered 202 (pending) for
    good and counted against the on-demand limits until its record expired."""
    requests = OnDemandStore(store)
    failed: dict[str, list[str]] = {}
    for request_id, (created, pools, seen) in requests.open_request_pools().items():
        unserved = [pool for pool in pools if pool not in served]
        # Only the request read: a tick paused here must not fail a new one that took its id since.
        if unserved and now - created >= UNSERVED_GRACE_SECONDS and _end_failed(
                store, requests, unserved[0], request_id, removed_message(unserved[0]), now, seen=seen):
            failed.setdefault(unserved[0], []).append(request_id)
    return failed


def fail_overdue(store: Store, pool: PoolConfig, service: ServiceConfig, now: float) -> list[str]:
    """Fail the pool's open requests past their ttl, their retries or their confirmation, as
    serve_requests does, but without the provider and building nothing: for a pass the provider
    failed (vCenter down, hung, refusing us) before it served them. Those requests would
    otherwise stay open for as long as the outage lasts, past the ttl their callers were
    promised, counted by the quotas; their VMs are destroyed once the provider answers again.
    Returns what each failed request was told."""
    requests = OnDemandStore(store)
    failed: list[str] = []
    for request_id in requests.open_requests(pool.name):
        # A limit of 0 and no names: the script only judges the request, as while clones are held.
        reservation = requests.reserve(request_id, pool.name, 0, service.max_vm_retries, pool.template,
                                       pool.domain or "", [], now)
        failure = _failure(reservation, service)
        if failure and _end_failed(store, requests, pool.name, request_id, failure, now, seen=reservation.seen):
            failed.append(f"{logged_request(request_id)}: {failure}")
    return failed


def _failure(reservation: Reservation, service: ServiceConfig) -> str:
    """Why the request a reservation judged fails now ("" when it does not)."""
    if reservation.state == "expired":
        return expired_message(service.ondemand_request_ttl)
    if reservation.state == "unconfirmed":
        return NOT_CONFIRMED_MESSAGE
    if reservation.state == "retries_exhausted":
        return (f"The request failed: {reservation.failed} attempts to build its VMs failed "
                f"(max_vm_retries {service.max_vm_retries})")
    return ""


def _open_requests(context: PassContext, requests: OnDemandStore) -> list[str]:
    """The pool's open requests, read with the pool's counts in one round trip when the pass has
    not read those yet (the refill after this step needs them). The counts are kept only when no
    request is open: serving one changes them, and the refill then reads them again."""
    if context.counts is not None:
        return requests.open_requests(context.pool.name)
    counts, open_requests = context.store.counts_and_open_requests(context.pool.name)
    if not open_requests:
        context.counts = counts
    return open_requests


def clone_failed(context: PassContext, request_id: str, failure: Failure, hostname: str) -> None:
    """A clone for a request failed: end the request now when retrying cannot help (a missing
    template, network or folder, a permission refused: ``FailureKind.permanent``), keeping its
    retries for failures worth retrying (timeouts, capacity, connections). Only the request
    that holds the VM ``hostname``: the pass read the VM before, and its request may have ended
    and a new one taken its id since (that one never had the VM, and is left as it is)."""
    if failure.kind.permanent:
        _fail(context, OnDemandStore(context.store), request_id,
              f"The request failed: a VM could not be built and retrying cannot help: {failure.message}",
              member=hostname)


def _fail(context: PassContext, requests: OnDemandStore, request_id: str, message: str, member: str = "",
          seen: Seen | None = None) -> None:
    if _end_failed(context.store, requests, context.pool.name, request_id, message, context.now, member, seen):
        context.report.errors.append(f"{logged_request(request_id)}: {message}")
    context.checkpoint("ondemand_failed")


def _end_failed(store: Store, requests: OnDemandStore, pool_name: str, request_id: str, message: str,
                now: float, member: str = "", seen: Seen | None = None) -> bool:
    """End the request as failed (only the one holding the VM ``member`` unless "", only the one
    ``seen`` judged failed unless None: a pass paused after its judgment must not fail a new
    request under its id); the other pools it was built in are nudged. Returns whether the
    request was found."""
    ending = requests.end(request_id, FAILED, message, f"on-demand request {request_id} failed", now,
                          seen=seen, member=member)
    if ending.result == "missing":
        return False
    for pool in ending.pools:
        if pool != pool_name:
            store.wake(pool)  # its pass destroys the request's VMs there
    return True


def deliver(context: PassContext, record: VMRecord, vm: VMInfo, age: float) -> None:
    """A booted VM of a request: to running for the request (or completed if it ended)."""
    moved, state = OnDemandStore(context.store).deliver(
        record.name, context.pool.name, context.now, dns_records.reachable_ip(vm) or vm.ip or "", vm.host or ""
    )
    if moved:
        context.report.became_ready.append(record.name)
        context.report.samples.append(DurationSample("boot", context.pool.name, age))
    elif state and state != "open":
        context.report.completed[record.name] = f"its on-demand request is {state}"
    context.checkpoint("ready")

