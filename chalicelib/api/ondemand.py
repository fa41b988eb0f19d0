"""/ondemandvm: VMs built for one request, for bursts the ready pools cannot serve.

POST answers at once with a request id (201); the pools' reconcile passes clone the VMs and hand
them to the request as they boot; GET shows progress (202) and then the hostnames (200). The
on-demand VMs are running (checked out) for the request, so DELETE /vm/<host> returns one and
DELETE /ondemandvm/<id> returns them all. POST /vm falls back to a request when asked to
(``checkout.fallback_checkout``).
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from chalicelib.api.checkout import check_requested_name, hostnames_by_name, names_in_path, open_request, parse_count
from chalicelib.api.http import (
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    capped_names,
    ok,
    shown,
    vmpooler_json_body,
)
from chalicelib.api.identity import Caller, refuse_without_a_live_token, required_caller, same_owner, sends_token
from chalicelib.api.vm_lookup import shown_domain
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable
from chalicelib.store.ondemand import (
    DELETED,
    FAILED,
    READY,
    OnDemandRequest,
    OnDemandStore,
    deleted_vm_reason,
    logged_request,
)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}\Z")
DELETED_MESSAGE = "The request has been deleted"
DELETION_NOT_REPLICATED = ("the request was deleted, but the deletion could not be replicated in time; "
                           "send the DELETE again shortly to be sure it holds")


def create_from_body(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /ondemandvm with ``{"pool-or-alias": count, ..., "request_id": "optional"}``."""
    refuse_without_a_live_token(services, request)
    body = vmpooler_json_body(request)
    if body is None:
        raise ApiError(404, {"message": "no pool requested"})
    if not isinstance(body, dict):
        raise bad_request("Request body must be a JSON object")
    request_id = body.pop("request_id", None)
    if request_id is not None and (not isinstance(request_id, str) or not REQUEST_ID_PATTERN.match(request_id)):
        raise bad_request("request_id must be 1 to 100 letters, digits, '.', '_', ':' or '-', "
                          "starting with a letter or digit")
    wanted: dict[str, int] = {}
    for name, count in body.items():
        check_requested_name(name)
        wanted[name] = parse_count(count, most=None)  # bounded by max_ondemand_instances_per_request
    return _create(services, request, wanted, request_id)


def create_from_path(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /ondemandvm/<pool1>+<pool1>+<pool2>: one VM per mention."""
    refuse_without_a_live_token(services, request)
    return _create(services, request, names_in_path(request.params["name"]), None)


def _check_wanted(services: Services, wanted: Mapping[str, int]) -> None:
    """404 for unknown pools or aliases, 403 above max_ondemand_instances_per_request."""
    if not wanted:
        raise ApiError(404, {"message": "no pool requested"})
    unknown = [name for name in wanted if not services.config.resolve(name)]
    if unknown:
        raise ApiError(404, capped_names("bad_templates", unknown))
    maximum = services.config.service.max_ondemand_instances_per_request
    if sum(wanted.values()) > maximum:
        raise ApiError(403, {"message": f"requested amount of instances exceeds the maximum {maximum}"})


def _create(
    services: Services, request: ApiRequest, wanted: Mapping[str, int], request_id: str | None
) -> ApiResponse:
    """The request opened for ``wanted``, once it names known pools: the token was checked first
    (401), its use is recorded only for a request that names what exists (docs/auth.md)."""
    _check_wanted(services, wanted)
    caller = required_caller(services, request)
    request_id = open_request(services, request, wanted, request_id, caller)
    answer: dict[str, Any] = {"ok": True, "request_id": request_id}
    if request.version == 1:
        pools = [services.config.pool(pool) for name in wanted for pool in services.config.resolve(name)]
        _, domain = hostnames_by_name({"": [("", (pool.domain if pool else None) or "") for pool in pools]}, 1)
        if domain:
            answer["domain"] = domain
    return ApiResponse(201, answer)


def show(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /ondemandvm/<id>: 202 with counts while building, 200 with hostnames when ready,
    200 with a message when it failed or was deleted. With ``:auth:``, its owner's token may
    look (403 with another user's); so may a caller with no token when the service drew the id
    (vmfloaty polls without its token, as vmpooler lets anyone: a UUID 4 only the creator was
    told is the request's secret). An id the client chose needs the owner's token (401)."""
    ondemand = _by_drawn_id(services, request) or _owned(services, request)[0]
    answer: dict[str, Any] = {"ok": True, "request_id": ondemand.id, "ready": False}
    if ondemand.state == READY and delivery_replicated(services):
        answer["ready"] = True
        # Each VM under the domain GET /vm names it under: the pool's now, not the one noted when
        # the request was made (after a config.domain change the two answers named two hosts).
        named = {name: [(vm.name, shown_domain(services, vm)) for vm in ondemand.delivered(name)]
                 for name in ondemand.names}
        hostnames, domain = hostnames_by_name(named, request.version)
        for name in ondemand.names:
            answer[name] = {"hostname": hostnames[name]}
        if domain:
            answer["domain"] = domain
        return ApiResponse(200, answer)
    if ondemand.state in (FAILED, DELETED):
        answer["message"] = ondemand.message
        return ApiResponse(200, answer)
    for name in ondemand.names:
        delivered = len(ondemand.delivered(name))
        answer[name] = {"ready": str(delivered), "pending": str(ondemand.wanted(name) - delivered)}
    return ApiResponse(202, answer)


def delivery_replicated(services: Services) -> bool:
    """Whether a replica has the delivery of a ready request (``Store.writes_replicated``: one
    round trip where a replica is asked for, none in the local stack). Its VMs were cloned and
    handed to it by passes, whose writes wait for no replica: a failover that lost them left the
    promoted replica without any record of VMs its user was told are theirs, which the next
    passes found in the pool's folder and destroyed, in use. Until a replica has them the
    request is answered as still building (202, which pollers such as vmfloaty ask again after);
    a wait that fails too (Redis stalled, a demotion answering it ``UNBLOCKED``) likewise."""
    try:
        return services.store.writes_replicated()
    except StoreUnavailable:
        return False


def delete(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /ondemandvm/<id>: the request ends and its VMs go to completed."""
    ondemand, caller = _owned(services, request)
    ending = OnDemandStore(services.store).end(
        ondemand.id, DELETED, DELETED_MESSAGE, deleted_vm_reason(ondemand.id), services.clock.now(),
        caller.token_key if caller else "", seen=ondemand)
    if ending.result == "missing":
        # Forgotten since it was read, its id maybe another's new request now: that one is not
        # this caller's to end (it was left as it is).
        raise _unknown(ondemand.id)
    services.refill.pools_changed(ending.pools)  # nothing when it had ended already
    # A deletion a failover lost: the request open again, its VMs built for nobody. Its retry (the
    # request ended already) is answered the same way.
    services.store.require_replicated(DELETION_NOT_REPLICATED, f"the deletion of {logged_request(ondemand.id)}")
    return ok()


def _owned(services: Services, request: ApiRequest) -> tuple[OnDemandRequest, Caller | None]:
    """The request named in the path and its caller, its owner only when auth is configured. The
    token is checked first (401 whatever the id); its use is recorded once the request is found
    (an unknown id is no use of it, as an unknown VM is not: docs/auth.md)."""
    refuse_without_a_live_token(services, request)
    ondemand = _find(services, request.params["name"])
    caller = required_caller(services, request)
    if caller and ondemand.token_user and not same_owner(caller, ondemand.token_user, ondemand.token_entry):
        raise ApiError(403, {"error": "the request belongs to another user"})
    return ondemand, caller


def _by_drawn_id(services: Services, request: ApiRequest) -> OnDemandRequest | None:
    """With ``:auth:`` and no token sent, the request named in the path when the service drew
    its id; None otherwise (the caller then needs the owner's token). A caller without a token
    gets the same 401 for an unknown id and a chosen one; a caller with any valid token does
    learn whether an id is taken (403 for another user's request, 404 for an unknown id), as
    POST's 409 for a taken ``request_id`` tells it anyway: a chosen id is not a secret, only a
    drawn one (a UUID 4) is."""
    if services.config.auth is None or sends_token(request):
        return None
    request_id = request.params["name"]
    found = OnDemandStore(services.store).get(request_id) if REQUEST_ID_PATTERN.match(request_id) else None
    return found if found is not None and found.id_generated else None


def _find(services: Services, request_id: str) -> OnDemandRequest:
    found = OnDemandStore(services.store).get(request_id) if REQUEST_ID_PATTERN.match(request_id) else None
    if found is None:
        raise _unknown(request_id)
    return found


def _unknown(request_id: str) -> ApiError:
    return ApiError(404, {"message": f"no request found for request_id '{shown(request_id)}'"})
