"""The reconcile pass's part in on-demand requests: build their VMs and hand them over.

Each pool's pass serves the open requests that need VMs from it (``ondemand:open:<pool>``), so
there is no extra worker. On-demand VMs are always cloned for their request, never taken from
the ready pool: a request does not drain the pool that plain checkouts rely on, and its VMs are
fresh. They go through pending like any clone (clone task, readiness, timeout), then straight to
running for the request (``deliver``), so a plain checkout never sees them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.manager.hostnames import candidate_names
from chalicelib.providers.base import VMInfo
from chalicelib.providers.failures import Failure
from chalicelib.store import DurationSample, VMRecord
from chalicelib.store.ondemand import FAILED, OnDemandStore

if TYPE_CHECKING:
    from chalicelib.manager.reconcile import _Pass


def expired_message(ttl_minutes: int) -> str:
    """vmpooler's words for a request that ran out of time."""
    return f"The request failed to provision instances within the configured ondemand_request_ttl '{ttl_minutes}'"


def serve_requests(pass_: "_Pass") -> None:
    """Reserve and clone the VMs each open request still lacks in this pool; fail the requests
    that ran out of time or retries (their VMs go to completed)."""
    requests = OnDemandStore(pass_.store)
    service = pass_.service
    limit = int(service.ondemand_clone_limit)
    for request_id in requests.open_requests(pass_.pool.name):
        reservation = requests.reserve(
            request_id, pass_.pool.name, limit, int(service.max_vm_retries), pass_.pool.template,
            pass_.pool.domain or "", candidate_names(limit, service.prefix), pass_.now,
        )
        pass_.checkpoint("ondemand_reserved")
        if reservation.state == "expired":
            _fail(pass_, requests, request_id, expired_message(service.ondemand_request_ttl))
        elif reservation.state == "retries_exhausted":
            _fail(pass_, requests, request_id,
                  f"The request failed: {reservation.failed} attempts to build its VMs failed "
                  f"(max_vm_retries {service.max_vm_retries})")
        elif reservation.state == "open":
            pass_.start_clones(list(reservation.reserved))
            pass_.report.followups += 1  # look again soon: VMs to hand over or slots to wait for


def clone_failed(pass_: "_Pass", request_id: str, failure: Failure) -> None:
    """A clone for a request failed: end the request now when retrying cannot help (a missing
    template, network or folder, a permission refused: ``FailureKind.permanent``), keeping its
    retries for failures worth retrying (timeouts, capacity, connections)."""
    if failure.kind.permanent:
        _fail(pass_, OnDemandStore(pass_.store), request_id,
              f"The request failed: a VM could not be built and retrying cannot help: {failure.message}")


def _fail(pass_: "_Pass", requests: OnDemandStore, request_id: str, message: str) -> None:
    ending = requests.end(request_id, FAILED, message, f"on-demand request {request_id} failed", pass_.now)
    pass_.report.errors.append(f"on-demand request {request_id}: {message}")
    for pool in ending.pools:
        if pool != pass_.pool.name:
            pass_.store.wake(pool)  # its pass destroys the request's VMs there
    pass_.checkpoint("ondemand_failed")


def deliver(pass_: "_Pass", record: VMRecord, vm: VMInfo, age: float) -> None:
    """A booted VM of a request: to running for the request (or completed if it ended)."""
    moved, state = OnDemandStore(pass_.store).deliver(
        record.name, pass_.pool.name, pass_.now, vm.ip or "", vm.host or ""
    )
    if moved:
        pass_.report.became_ready.append(record.name)
        pass_.report.samples.append(DurationSample("boot", pass_.pool.name, age))
    elif state and state != "open":
        pass_.report.completed[record.name] = f"its on-demand request is {state}"
    pass_.checkpoint("ready")


def building(pass_: "_Pass") -> int:
    """On-demand VMs being built in this pool: they do not fill the pool's deficit."""
    return OnDemandStore(pass_.store).building(pass_.pool.name)
