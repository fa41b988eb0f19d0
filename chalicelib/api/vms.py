"""/vm routes: list pools, check out, look at, change and return VMs."""

from __future__ import annotations

import random
import re
from datetime import datetime, timezone
from typing import Any, Mapping

from chalicelib import observability as metric
from chalicelib.api.http import (
    ApiError,
    ApiRequest,
    ApiResponse,
    bad_request,
    json_object,
    not_found,
    ok,
    short_hostname,
)
from chalicelib.api.identity import caller_for_change, optional_caller
from chalicelib.manager.reconcile import day_of
from chalicelib.observability import emit, logger
from chalicelib.services import Services
from chalicelib.store import CheckoutRequest, VMRecord
from chalicelib.store.vm_tasks import task_errors

MAX_COUNT = 100
REQUEST_NAME_PATTERN = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
COUNT_PATTERN = re.compile(r"^[0-9]+$")
TAG_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_.-]+$")
TAG_VALUE_PATTERN = re.compile(r"^[A-Za-z0-9_ \t\r\n\f\v.,@:/-]*$")
"""vmpooler's characters, and a comma: beaker tags a host's roles as ``agent, master``."""
MAX_TAG_KEY = 50
MAX_TAG_VALUE = 255
MAX_LIFETIME_HOURS = 10 * 365 * 24
"""The ceiling when ``max_lifetime_upper_limit`` is not configured: beyond it a VM's end time
is no longer a date (GET /vm would fail), and nobody needs a CI VM for over ten years."""


def list_pools(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /vm: the configured pool names (aliases are not listed)."""
    return ApiResponse(200, list(services.config.pool_names))


# --- checkout ---------------------------------------------------------------------------------


def checkout_from_body(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm with ``{"pool-or-alias": count, ...}``."""
    body = json_object(request, empty={})
    if not body:
        raise not_found(error="no pool requested")
    wanted: dict[str, int] = {}
    for name, count in body.items():
        if not REQUEST_NAME_PATTERN.match(name):
            raise bad_request("Invalid pool name format")
        wanted[name] = _parse_count(count)
    return _checkout(services, request, wanted)


def checkout_from_path(services: Services, request: ApiRequest) -> ApiResponse:
    """POST /vm/<pool1>+<pool1>+<pool2>: one VM per mention."""
    wanted: dict[str, int] = {}
    for name in request.params["name"].split("+"):
        if not REQUEST_NAME_PATTERN.match(name):
            raise bad_request("Invalid pool name format")
        wanted[name] = wanted.get(name, 0) + 1
    if any(count > MAX_COUNT for count in wanted.values()):
        raise bad_request(f"VM count must be at most {MAX_COUNT}")
    return _checkout(services, request, wanted)


def _parse_count(count: Any) -> int:
    if count is None:
        raise bad_request("VM count is required")
    if isinstance(count, bool) or not isinstance(count, (int, str)) or not COUNT_PATTERN.match(str(count)):
        raise bad_request("VM count must be a valid integer")
    number = int(count)
    if number < 1:
        raise bad_request("VM count must be at least 1")
    if number > MAX_COUNT:
        raise bad_request(f"VM count must be at most {MAX_COUNT}")
    return number


def _checkout(services: Services, request: ApiRequest, wanted: Mapping[str, int]) -> ApiResponse:
    config = services.config
    unknown = [name for name in wanted if not config.resolve(name)]
    if unknown:
        raise not_found(error=f"unknown pool or alias: {', '.join(unknown)}")
    caller = optional_caller(services, request)
    requests = []
    for name, count in wanted.items():
        pools = list(config.resolve(name))
        random.shuffle(pools)  # spread an alias's load over its pools
        requests.append(CheckoutRequest(name, pools, count))
    lifetime = config.service.vm_lifetime_auth if caller else config.service.vm_lifetime
    fields = {"lifetime": str(lifetime)}
    if config.service.migration_limit > 0:
        fields["migration"] = "queued"  # its pool's pass moves it off a busy host (manager/migrations.py)
    if caller:
        # The owner and the token's id (a hash prefix): never the token itself.
        fields["token_user"] = caller.user
        fields["token_id"] = caller.token_id
    now = services.clock.now()
    result = services.store.checkout(requests, now, fields)
    if not result.ok:
        emit(None, {metric.CHECKOUT_MISSES: 1})
        from chalicelib.api.ondemand import fallback_checkout  # ondemand builds on this module

        fallback = fallback_checkout(services, request, wanted, caller)
        if fallback is not None:
            return fallback
        raise ApiError(503, {"error": f"not enough ready VMs for: {', '.join(result.short)}"})
    services.refill.pools_changed({vm.pool for vm in result.vms})
    emit(None, {metric.CHECKOUTS: len(result.vms)})
    for vm in result.vms:
        logger.info("VM checked out", extra={"pool": vm.pool, "hostname": vm.hostname,
                                             "user": caller.user if caller else None})
    named: dict[str, list[tuple[str, str]]] = {}
    for vm in result.vms:
        pool = config.pool(vm.pool)
        named.setdefault(vm.requested, []).append((vm.hostname, (pool.domain if pool else None) or ""))
    hostnames, domain = hostnames_by_name(named, request.version)
    answer: dict[str, Any] = {"ok": True}
    for name, names in hostnames.items():
        answer[name] = {"hostname": names[0] if len(names) == 1 else names}
    if domain:
        answer["domain"] = domain
    return ApiResponse(200, answer)


def hostnames_by_name(
    named: Mapping[str, list[tuple[str, str]]], version: int
) -> tuple[dict[str, list[str]], str | None]:
    """The hostnames to answer for each requested name, from (short name, domain) pairs, and the
    top-level ``domain`` of a v1 answer.

    v2/v3 answer FQDNs. v1 clients (beaker, vmfloaty on a v1 URL) append the top-level ``domain``
    to every short name, so v1 answers short names with the one domain they all share, and FQDNs
    without a ``domain`` key when the VMs' domains differ (a pool with a domain of its own)."""
    domains = {domain for vms in named.values() for _, domain in vms}
    shared = domains.pop() if version == 1 and len(domains) == 1 else None
    short = shared is not None
    hostnames = {
        name: [hostname if short or not domain else f"{hostname}.{domain}" for hostname, domain in vms]
        for name, vms in named.items()
    }
    return hostnames, shared or None


# --- one VM -------------------------------------------------------------------------------------


def find_vm(services: Services, request: ApiRequest, running: bool = False) -> VMRecord:
    """The VM named in the path (short or FQDN): a 404 when unknown, or when ``running`` is
    asked for and it is not checked out."""
    hostname = short_hostname(request.params["name"])
    record = services.store.get_vm(hostname)
    if record is None or not record.pool:
        raise not_found(error=f"VM {hostname} not found")
    if running and record.state != "running":
        raise not_found(error=f"VM {hostname} is not running")
    return record


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
    if request.version == 1:
        if record.domain:
            info["domain"] = record.domain  # the VM's own (its pool's), which v1 clients append
    else:
        info["fqdn"] = record.fqdn()
    info["host"] = record.host
    info["migrated"] = record.raw.get("migrated") == "true"
    if record.not_ready_reason and record.state == "pending":
        info["not_ready_reason"] = record.not_ready_reason
    if record.reason:
        info["reason"] = record.reason
    info["source_template"] = record.template
    if task_errors(record):
        info["task_errors"] = task_errors(record)
    return ApiResponse(200, {"ok": True, record.name: info})


def modify(services: Services, request: ApiRequest) -> ApiResponse:
    """PUT /vm/<hostname> with ``lifetime`` and/or ``tags``."""
    record = find_vm(services, request)
    body = json_object(request, empty={})
    failures: list[str] = []
    changes: dict[str, Any] = {}
    tags: dict[str, str] = {}
    config = services.config
    for key, value in body.items():
        if key == "lifetime":
            caller_for_change(services, request, record, token_required=True)
            lifetime = _parse_lifetime(value, config.service.max_lifetime_upper_limit, failures)
            if lifetime is not None:
                changes["lifetime"] = lifetime
        elif key == "tags":
            tags = _parse_tags(value, config.service.allowed_tags, config.tagfilter, failures)
        else:
            failures.append(f"Unknown argument {key}.")
    if failures:
        raise ApiError(400, {"failure": failures})
    if tags:
        changes["tags"] = {**record.tags, **tags}
    if changes and not services.store.update_vm(record.name, **changes):
        raise not_found(error=f"VM {record.name} not found")
    if tags:
        services.store.record_tags(day_of(services.clock.now()), tags)
    return ok()


def _parse_lifetime(value: Any, upper_limit: int | None, failures: list[str]) -> int | None:
    text = "" if value is None else str(value)
    if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", text.strip()) or int(text) <= 0:
        failures.append(f"Lifetime must be a positive integer (got {text})")
        return None
    hours = int(text)
    if upper_limit is None:
        upper_limit = MAX_LIFETIME_HOURS + 1
    if hours >= upper_limit:
        failures.append(f"You provided a lifetime ({text}) that exceeds the configured maximum of {upper_limit}.")
        return None
    return hours


def _parse_tags(
    value: Any, allowed: tuple[str, ...], tagfilter: Mapping[str, str], failures: list[str]
) -> dict[str, str]:
    if not isinstance(value, dict):
        failures.append(f"You provided tags ({value}) as something other than a hash.")
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
        elif not isinstance(tag_value, (str, int, float)) or isinstance(tag_value, bool):
            failures.append(f"Tag value for {key} must be a string")
        elif len(str(tag_value)) > MAX_TAG_VALUE:
            failures.append("Tag value too long")
        elif not TAG_VALUE_PATTERN.match(str(tag_value)):
            failures.append("Tag value contains invalid characters")
        else:
            tags[key] = _filter_tag(str(tag_value), tagfilter.get(key))
    if allowed:
        unsupported = sorted(key for key in value if key not in allowed)
        if unsupported:
            failures.append(f"You provided unsupported tags ({', '.join(unsupported)}).")
    return tags


def _filter_tag(value: str, pattern: str | None) -> str:
    """vmpooler's tagfilter: a matching value is replaced by its capture groups, joined."""
    if not pattern:
        return value
    match = re.search(pattern, value)
    if not match or not match.groups():
        return value
    return "".join(group or "" for group in match.groups())


def give_back(services: Services, request: ApiRequest) -> ApiResponse:
    """DELETE /vm/<hostname>: a running VM goes to completed; the manager destroys it."""
    record = find_vm(services, request, running=True)
    caller_for_change(services, request, record)
    now = services.clock.now()
    if not services.store.move(record.name, record.pool, "running", "completed", now, nudge=True,
                               reason="returned by its user"):
        raise not_found(error=f"VM {record.name} is not running")
    services.refill.pools_changed([record.pool])
    emit(None, {metric.DELETES: 1})
    logger.info("VM returned", extra={"pool": record.pool, "hostname": record.name})
    return ok()

