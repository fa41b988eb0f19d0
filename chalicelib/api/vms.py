"""/vm routes: list pools, check out, look at, change and return VMs."""

from __future__ import annotations

import math
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from chalicelib import observability as metric
from chalicelib.api.checkout import MAX_COUNT, check_requested_name, checkout, names_in_path, parse_count
from chalicelib.api.http import (
    TOO_LARGE,
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    capped_failures,
    json_length,
    json_object,
    not_found,
    ok,
    short_hostnames,
    shown,
    whole_number,
)
from chalicelib.api.identity import caller_for_change, may_change, optional_caller, refuse_a_dead_token
from chalicelib.api.vm_lookup import find_vm, shown_domain
from chalicelib.api.vm_tasks import disk_size, refuse_unless_queued
from chalicelib.config import MAX_TAG_KEY_CHARACTERS
from chalicelib.observability import emit, logger
from chalicelib.services import Services
from chalicelib.store import ModifyResult, VMRecord
from chalicelib.store.ondemand import deleted_vm_reason, shown_vm_reason
from chalicelib.store.records import TAG_FIELD_PREFIX
from chalicelib.store.vm_tasks import DISK, EnqueueResult, VMTaskStore, new_task, task_errors, task_errors_dropped
from chalicelib.tagfilter import TAG_VALUE_PATTERN

TAG_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+\Z")
MAX_TAG_KEY = MAX_TAG_KEY_CHARACTERS
MAX_TAG_VALUE = 255
"""The longest tag value as JSON shows it (``json_length``): /summary shows each value a day
counted, and its budget (a day of tags fits one answer) holds only if no value is longer there."""
RETURNED = "returned by its user"
"""The reason a VM returned by DELETE /vm/<hostname> left service (its record's ``reason``)."""
RETURN_NOT_REPLICATED = ("the VM was returned, but the return could not be replicated in time; "
                         "send the DELETE again shortly to be sure it holds")
CHANGE_NOT_REPLICATED = ("the change was made, but it could not be replicated in time; "
                         "send the PUT again shortly to be sure it holds")
CHANGE_WITH_DISK_NOT_REPLICATED = (
    "the change was made and the disk queued, but they could not be replicated in time; send the "
    "lifetime and tags again shortly to be sure they hold, and the disk only if GET /vm/<hostname> "
    "does not list it once the VM's tasks have run (sent again, it is added again)")
"""A PUT with a disk (`floaty modify --disk`) sent again queues the disk again: two disks unless
a failover lost the first."""
MAX_LIFETIME_HOURS = 10 * 365 * 24
"""The ceiling when ``max_lifetime_upper_limit`` is not configured: nobody needs a CI VM for over
ten years. A configured limit is at most ``config.MAX_HOURS``, which keeps a VM's end time a date."""


def list_pools(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /vm: the configured pool names (aliases are not listed)."""
    return ApiResponse(200, list(services.config.pool_names))


# --- checkout ---------------------------------------------------------------------------------


def checkout_from_body(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm with ``{"pool-or-alias": count, ...}``. A dead token is a 401 before the body is
    read (an empty body was a 404 first)."""
    refuse_a_dead_token(services, request)
    body = json_object(request, empty={})
    if not body:
        raise not_found(error="no pool requested")
    wanted: dict[str, int] = {}
    for name, count in body.items():
        check_requested_name(name)
        wanted[name] = parse_count(count)
    return checkout(services, request, wanted)


def checkout_from_path(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm/<pool1>+<pool1>+<pool2>: one VM per mention. A dead token is a 401 before the
    names are read (an unknown pool was a 404 first)."""
    refuse_a_dead_token(services, request)
    wanted = names_in_path(request.params["name"])
    if any(count > MAX_COUNT for count in wanted.values()):
        raise bad_request(f"VM count must be at most {MAX_COUNT}")
    return checkout(services, request, wanted)


# --- one VM -------------------------------------------------------------------------------------


def rfc3339(timestamp: float) -> str:
    return datetime.fromtimestamp(int(timestamp), timezone.utc).isoformat()


def describe(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /vm/<hostname>: the VM's state, lifetime, tags, disks, snapshots and addresses."""
    record = find_vm(services, request)
    now = services.clock.now()
    lifetime = record.lifetime_hours or services.config.service.vm_lifetime
    info: dict[str, Any] = {"template": record.pool, "lifetime": lifetime}
    if record.checkout is not None:
        end = record.checkout + lifetime * 3600
        until = record.state_since if record.state in ("completed", "destroyed") and record.state_since else now
        info["running"] = round((until - record.checkout) / 3600, 2)
        info["remaining"] = round(max(end - now, 0) / 3600, 2) if record.state == "running" else 0
        info["start_time"] = rfc3339(record.checkout)
        info["end_time"] = rfc3339(end)
    info["state"] = "destroyed" if record.state in ("completed", "destroyed") else record.state
    info["tags"] = dict(record.tags)
    info["snapshots"] = list(record.snapshots)
    info["disk"] = list(record.disks)
    info["ip"] = record.ip
    domain = shown_domain(services, record)
    if request.version == 1 and domain:
        info["domain"] = domain  # the VM's own (its pool's), which v1 clients append
    else:
        # v2/v3; and v1 for a VM without a domain: vmfloaty prints `domain` appended, else `fqdn`
        # (`floaty list --active` printed an empty name for it before).
        info["fqdn"] = f"{record.name}.{domain}" if domain else record.name
    info["host"] = record.host
    if record.raw.get("migrated") == "true":
        # vmpooler's wire form: the string "true" once migrated, the key absent otherwise
        # (its v3.rb copies the Redis field as stored); scripts compare it to "true".
        info["migrated"] = "true"
    if record.not_ready_reason and record.state == "pending":
        info["not_ready_reason"] = record.not_ready_reason
    if record.reason:
        info["reason"] = shown_vm_reason(record)  # never another request's id: its secret
    if record.template:
        # Ours, not vmpooler's (a template change drains by it): absent where no template is
        # known (a dummy pool without one), as vmpooler's answer never has it.
        info["source_template"] = record.template
    if task_errors(record):
        info["task_errors"] = task_errors(record)
    if task_errors_dropped(record):
        # Ours: the older reasons dropped to keep the newest MAX_TASK_ERRORS (store/vm_tasks.py).
        info["task_errors_dropped"] = task_errors_dropped(record)
    return ApiResponse(200, {"ok": True, record.name: info})


def modify(services: Services, request: ApiRequest) -> ApiResponse:
    """PUT /vm/<hostname> with ``lifetime``, ``tags`` and/or ``disk`` of a checked-out VM. Each
    field is set on its own, so concurrent changes of different tags all land.

    Only a running VM (vmpooler changed any VM it knew): tags put on a ready VM would be on the
    next user's VM when it is checked out, and a change checked against one owner must not land
    on a VM handed to another since (the store's script checks both).

    ``disk`` (GB) queues a disk as POST /vm/<host>/disk/<gb> does: `floaty modify --disk 8`
    sends it here (vmfloaty 1.9.1 never calls the disk route). It is queued in the step that
    makes the other changes: a disk refused (too many queued or added) changes nothing, and a
    request killed half way leaves all of it done or none."""
    # Tags need no token (vmpooler's contract), but a token sent must be a live one (401), as on
    # every route that reads one: checked before the VM is looked up, so an invalid token is a
    # 401 whatever the VM (before, a VM not running answered 404 first). Its use is recorded once
    # the VM is found: a PUT to a VM that is not there is no use of the token, as in vmpooler.
    refuse_a_dead_token(services, request)
    record = find_vm(services, request, running=True)
    caller = optional_caller(services, request)
    body = json_object(request, empty={})
    failures: list[str] = []
    changes: dict[str, str] = {}
    tags: dict[str, str] = {}
    disk_gb: int | None = None
    config = services.config
    for key, value in body.items():
        if key == "lifetime":
            may_change(services, caller, record, token_required=True)
            lifetime = _parse_lifetime(value, config.service.max_lifetime_upper_limit, failures)
            if lifetime is not None:
                changes["lifetime"] = str(lifetime)
        elif key == "disk":
            may_change(services, caller, record, token_required=True)
            disk_gb = disk_size(value)
            if disk_gb is None:
                failures.append(f"You provided a disk size ({shown(value)}) that is not a whole number of GB "
                                "from 1 to 2048.")
        elif key == "tags":
            tags = _parse_tags(value, config.service.allowed_tags, config.tagfilter, failures)
        else:
            failures.append(f"Unknown argument {shown(key)}.")
    max_tags = config.service.max_tags_per_vm
    if len(tags) > max_tags:
        failures.append(f"You provided more than {max_tags} tags.")
    elif disk_gb is not None and len(set(record.tags) | set(tags)) > max_tags:
        # Known before the disk is queued (the script checks again, for changes made since).
        failures.append(f"A VM carries at most {max_tags} tags.")
    if failures:
        raise ApiError(400, {"failure": capped_failures(failures)})
    changes.update({TAG_FIELD_PREFIX + key: value for key, value in tags.items()})
    now = services.clock.now()
    # The disk is queued in the step that makes the other changes: a request killed (or refused
    # by a bound) half way never leaves a disk queued without the rest, nor the reverse.
    disk = None if disk_gb is None else VMTaskStore(services.store).queueing(
        record, new_task(DISK, now, size_gb=disk_gb), now)
    if changes or disk:
        result = services.store.modify_vm(
            record, changes, max_tags, now, disk, caller.token_key if caller else "",
            (config.service.max_tag_names_per_day, config.service.max_tag_values_per_day))
        if result is ModifyResult.NO_VM:
            raise not_found(error=f"VM {record.name} is not running")
        if result is ModifyResult.TOO_MANY_TAGS:
            raise ApiError(400, {"failure": [f"A VM carries at most {max_tags} tags."]})
        if result in (ModifyResult.QUEUE_FULL, ModifyResult.LIST_FULL):
            refuse_unless_queued(record, DISK, EnqueueResult(result.value))
    if disk:
        services.refill.pools_changed([record.pool])
    if changes or disk:
        # A lifetime extension a failover lost: the VM reaped on its old lifetime, in use.
        services.store.require_replicated(CHANGE_WITH_DISK_NOT_REPLICATED if disk else CHANGE_NOT_REPLICATED,
                                          f"the change of VM {record.name}")
    return ok()


LIFETIME_TEXT = re.compile(r"\+?([0-9]+)(?:\.([0-9]*))?[ \t]*(?:h|hrs?|hours?)?", re.IGNORECASE)
"""A lifetime written as text: hours, maybe with a fraction or an hour unit (``"2.5"``, ``"4h"``,
``"4 hours"``). vmpooler reads it with Ruby's ``to_i`` (the leading digits), so curl scripts
that send these work there."""


def lifetime_hours(value: Any) -> int | None:
    """The whole hours a PUT's ``lifetime`` asks for, a fraction rounded up; None when it names
    no number of hours. vmpooler's ``to_i`` takes what it accepts here, but cuts a fraction
    (``"2.5"`` was 2 hours: the VM reaped half an hour before its user asked) and reads any
    word after the digits as hours (``"4d"`` was 4 hours, ``"30m"`` 30): those stay a 400."""
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            return None
        return TOO_LARGE if value >= TOO_LARGE else math.ceil(value)
    if not isinstance(value, str):
        return whole_number(value)
    written = LIFETIME_TEXT.fullmatch(value.strip())
    if written is None:
        return None
    hours = whole_number(written.group(1))
    if hours is not None and hours < TOO_LARGE and (written.group(2) or "").strip("0"):
        hours += 1
    return hours


def _parse_lifetime(value: Any, upper_limit: int | None, failures: list[str]) -> int | None:
    text = shown(value)  # JSON's null as "null" (it read "(got )", as if nothing was sent)
    hours = lifetime_hours(value)
    if not hours:
        failures.append(f"Lifetime must be a positive integer (got {text})")
        return None
    if upper_limit is None:
        upper_limit = MAX_LIFETIME_HOURS + 1
    if hours >= upper_limit:
        # A fraction rounded up to the limit, or a unit: say what was read ("2.5 exceeds 3" reads as a bug).
        read_as = f", read as {hours} hours," if hours < TOO_LARGE and shown(hours) != text else ""
        failures.append(f"You provided a lifetime ({text}){read_as} that exceeds the configured maximum of "
                        f"{upper_limit}.")
        return None
    return hours


def _parse_tags(
    value: Any, allowed: tuple[str, ...], tagfilter: Mapping[str, str], failures: list[str]
) -> dict[str, str]:
    if not isinstance(value, dict):
        failures.append(f"You provided tags ({shown(value)}) as something other than a hash.")
        return {}
    tags: dict[str, str] = {}
    for key, tag_value in value.items():
        if not key:
            failures.append("Tag key is required")
        elif len(key) > MAX_TAG_KEY:
            failures.append("Tag key too long")
        elif not TAG_KEY_PATTERN.match(key):
            failures.append("Invalid tag key format")
        elif tag_value is None or tag_value == "":
            continue  # vmpooler skips empty tags
        elif not isinstance(tag_value, (str, int, float)):
            failures.append(f"Tag value for {shown(key)} must be a string")
        elif isinstance(tag_value, bool):
            # beaker sends a hosts file's host_tags as YAML read them (`preserve: true`), beside its
            # own tags: a 400 (vmpooler: a 500) lost every tag of the host. Kept as JSON spells it.
            tags[key] = _filter_tag("true" if tag_value else "false", tagfilter.get(key))
        elif len(str(tag_value)) > MAX_TAG_VALUE:
            failures.append("Tag value too long")
        elif not TAG_VALUE_PATTERN.match(str(tag_value)):
            failures.append("Tag value contains invalid characters")
        elif json_length(str(tag_value)) > MAX_TAG_VALUE:
            # Whitespace escaped: a vertical tab takes six characters (\u000b) of every answer
            # showing the value.
            failures.append("Tag value too long")
        else:
            tags[key] = _filter_tag(str(tag_value), tagfilter.get(key))
    if allowed:
        known = _allowed_set(allowed)  # a request's keys looked up at once, not each along the list
        unsupported = sorted(key for key in value if key not in known)
        if unsupported:
            failures.append(f"You provided unsupported tags ({shown(', '.join(unsupported), 200)}).")
    return tags


_allowed_tags: tuple[tuple[str, ...], frozenset[str]] = ((), frozenset())
"""The config's ``allowed_tags`` last asked for, and their set: built once per config (up to
1,000 names: 69 us each time), not at every PUT /vm. One pair replaced whole, so a thread reads a
tuple and its own set (two threads meeting a new config each build it once)."""


def _allowed_set(allowed: tuple[str, ...]) -> frozenset[str]:
    """``allowed`` as a set, the one built for this config's tuple when it is the one kept."""
    global _allowed_tags
    kept = _allowed_tags
    if kept[0] is not allowed:
        kept = _allowed_tags = (allowed, frozenset(allowed))
    return kept[1]


def _filter_tag(value: str, pattern: str | None) -> str:
    """vmpooler's tagfilter: a matching value is replaced by its capture groups, joined."""
    if not pattern:
        return value
    match = re.search(pattern, value)
    if not match or not match.groups():
        return value
    return "".join(group or "" for group in match.groups())


def give_back(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /vm/<hostname>: a running VM goes to completed; the manager destroys it. Answered
    once a replica has the return (``Store.require_replicated``): a return a failover lost would
    leave the VM running, its user's, counted against their quota. A VM its user returned
    already is answered ok as well (``_returned_before``).

    Without ``:auth:`` anyone may return any VM (as in vmpooler): one round trip, no read
    first; the record is read only to say why a VM could not be returned."""
    if services.config.auth is None:
        names = short_hostnames(request.params["name"])
        # A name in capitals may mean two VMs: the one it names is found first (find_vm).
        hostname = names[0] if len(names) == 1 else find_vm(services, request).name
        pool = services.store.return_vm(hostname, services.clock.now(), RETURNED)
        if pool is None:
            return _returned_before(services, request, find_vm(services, request))
        return _returned(services, pool, hostname)
    # A token sent is checked before the VM is looked up: an invalid one is a 401 whatever the VM
    # (unknown, ready or gone), as on every route that reads one. The same round trips as after.
    # Its use is recorded once the VM is found: a DELETE of an unknown VM is no use of the token,
    # as in vmpooler (whose need_token! runs only for a VM it has a record of).
    refuse_a_dead_token(services, request)
    record = find_vm(services, request)
    caller = optional_caller(services, request)
    if record.state != "running":
        return _returned_before(services, request, record)
    may_change(services, caller, record)
    now = services.clock.now()
    # Only while the checkout whose owner was checked still holds it: a checkout never confirmed
    # goes back to ready once its deadline passes, and the next caller may have taken the VM.
    if not services.store.move(record.name, record.pool, "running", "completed", now, nudge=True,
                               checked_out_as=record, token_key=caller.token_key if caller else "",
                               reason=RETURNED):
        # No longer running as read: its user's other DELETE (a retry sent while this one was
        # under way) may have returned it since, answered as a retry after that one's answer is.
        return _returned_before(services, request, find_vm(services, request))
    return _returned(services, record.pool, record.name)


def _returned(services: Services, pool: str, hostname: str) -> ApiResponse:
    services.refill.pools_changed([pool])
    emit(None, {metric.DELETES: 1})
    logger.info("VM returned", extra={"pool": pool, "hostname": hostname})
    services.store.require_replicated(RETURN_NOT_REPLICATED, f"the return of VM {hostname}")
    return ok()


def _returned_before(services: Services, request: ApiRequest, record: VMRecord) -> ApiResponse:
    """DELETE of a VM no longer running: ok when its user returned it and the caller may return
    it (the retry of a return answered 503 "send the DELETE again": vmfloaty reads only ``ok``,
    and lists a VM whose DELETE was not ok under "Unable to delete", exit 1), once a replica has
    that return; else 404, as vmpooler answers for a VM not running. A VM its user returned with
    its on-demand request (DELETE /ondemandvm/<id>, after it was delivered) is one its user
    returned too: vmpooler answers 200 to a DELETE of any VM it still has a record of."""
    if record.state not in ("completed", "destroyed") or not _returned_by_its_user(record):
        raise not_found(error=f"VM {record.name} is not running")
    try:
        caller_for_change(services, request, record)
    except ApiError:
        raise not_found(error=f"VM {record.name} is not running") from None
    services.store.require_replicated(RETURN_NOT_REPLICATED, f"the return of VM {record.name}")
    return ok()


def _returned_by_its_user(record: VMRecord) -> bool:
    """Whether the VM left service because its user returned it: by DELETE /vm/<hostname>, or,
    delivered to its on-demand request, by DELETE /ondemandvm/<id> (not one its request failed
    with, nor one still building then, whose name its user was never given)."""
    if record.reason == RETURNED:
        return True
    request_id = record.raw.get("request")
    return bool(request_id and record.raw.get("delivered_at") and record.reason == deleted_vm_reason(request_id))
