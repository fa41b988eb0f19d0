"""/status, /poolstat, /totalrunning and /config: what the pools look like right now."""

from __future__ import annotations

from typing import Any

from chalicelib.answer_sizes import WIDEST_COUNT, alias_as_written, configuration_entry
from chalicelib.api.http import ApiRequest, ApiResponse, not_found
from chalicelib.api.summary import day_metrics
from chalicelib.services import Services
from chalicelib.sizing.controller import current_sizes
from chalicelib.store.ondemand import OnDemandStore
from chalicelib.store.templates import TemplateStore, template_key
from chalicelib.template_names import template_names
from chalicelib.timestamps import day_of

STATUS_VIEWS = ("boot", "capacity", "clone", "pools", "queue")
OK_MESSAGE = "Battle station fully armed and operational."


def status(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /status[?view=capacity,queue,clone,boot,pools]. Keys sorted as vmpooler sorts them."""
    view = request.query.get("view")
    # No view, or ``?view`` without a value: every section.
    wanted = set(STATUS_VIEWS) if not view else {part.strip() for part in view.split(",")}
    config = services.config
    now = services.clock.now()
    counts = services.store.counts(config.pool_names)
    pools_now = services.pools()
    sizes = current_sizes(services.store, pools_now, now, config.service.sizing_timezone)
    body: dict[str, Any] = {}
    if "boot" in wanted or "clone" in wanted:
        today = services.store.day_figures([day_of(now)])[0]
        for kind in ("boot", "clone"):
            if kind in wanted:
                metrics = day_metrics(today, kind, per_pool=False)
                body[kind] = {"duration": metrics["duration"], "count": {"total": metrics["count"]["total"]}}
    if "capacity" in wanted:
        current = sum(c["ready"] for c in counts.values())
        total = sum(size.size for size in sizes.values())
        body["capacity"] = {
            "current": current,
            "total": total,
            "percent": round(current / total * 100, 1) if total else 0,
        }
    if "pools" in wanted:
        last_boots = services.store.last_boots()
        clone_failures = services.store.failing_clones()
        dns_waiting = services.store.dns_waiting()
        pools: dict[str, Any] = {}
        for pool in pools_now:
            entry: dict[str, Any] = {
                "ready": counts[pool.name]["ready"],
                "running": counts[pool.name]["running"],
                "pending": counts[pool.name]["pending"],
                "max": sizes[pool.name].size,
                "lastBoot": last_boots.get(pool.name, ""),  # "" if never, as vmpooler shows it (nil.to_s)
            }
            if pool.alias:
                entry["alias"] = alias_as_written(pool)
            entry["size_reason"] = sizes[pool.name].reason  # ours, after vmpooler's keys
            # Only for a pool whose clones are failing now (its clone backoff): the dashboard's
            # red flag, which a pool's counts alone do not raise until it runs empty.
            if pool.name in clone_failures:
                failed, kind = clone_failures[pool.name]
                entry["clone_failures"] = min(failed, WIDEST_COUNT)
                if kind:  # why: the last one's kind (a backoff an older release wrote has none)
                    entry["clone_failure"] = kind
            # Only for a pool whose last pass left pending VMs waiting on their DNS records (the
            # DNS service refused them or did not answer): it looked as if it were refilling.
            if pool.name in dns_waiting and pool.dns_plugin:  # (a plugin removed since: no more)
                entry["dns_waiting"] = min(dns_waiting[pool.name][0], WIDEST_COUNT)
                entry["dns_waiting_reason"] = dns_waiting[pool.name][1]
            pools[pool.name] = entry
        body["pools"] = pools
    if "queue" in wanted:
        pending = sum(c["pending"] for c in counts.values())
        # Every clone vCenter runs, those of VMs already out of service (held) too; booting:
        # the pending VMs whose clone is done.
        cloning, cloning_pending = services.store.clone_counts(config.pool_names)
        queue = {
            "requested": OnDemandStore(services.store).waiting(config.pool_names),
            "pending": pending,
            "cloning": cloning,
            "booting": max(pending - cloning_pending, 0),
            "ready": sum(c["ready"] for c in counts.values()),
            "running": sum(c["running"] for c in counts.values()),
            "completed": sum(c["completed"] for c in counts.values()),
        }
        queue["total"] = queue["requested"] + queue["pending"] + queue["ready"] + queue["running"] + queue["completed"]
        body["queue"] = queue
    state: dict[str, Any] = {"ok": True, "message": OK_MESSAGE}
    if "pools" in wanted:
        empty = [p.name for p in pools_now if sizes[p.name].size > 0 and counts[p.name]["ready"] == 0]
        if empty:
            state = {"ok": False, "message": f"Found {len(empty)} empty pools.", "empty": empty}
    # The service's, not this process's (a worker's, a Lambda instance's): the same from each.
    state["uptime"] = round(max(now - services.service_started(), 0.0), 1)
    body["status"] = state
    return ApiResponse(200, dict(sorted(body.items())))


_UPTIME_KEY = ',"uptime":'
_UPTIME_TAIL = 48
"""How far from the end of /status's text its uptime starts at most (a float and two braces)."""


def status_tag_basis(text: str) -> str:
    """/status's rendered answer without ``status.uptime``, what its ETag is computed from
    (conditional.py): the uptime changes at every tenth of a second, so an ETag over it changed
    at every poll and no caller got 304. The uptime is the last key of ``status``, the last
    section (the answer's keys sorted), so the text ends with ``,"uptime":<n>}}``; any other
    text is its own basis (its tag then changes with it: never a 304 for a changed answer)."""
    start = text.rfind(_UPTIME_KEY, max(len(text) - _UPTIME_TAIL, 0))
    if start < 0 or not text.endswith("}}"):
        return text
    try:
        float(text[start + len(_UPTIME_KEY):-2])
    except ValueError:
        return text
    return text[:start] + "}}"


def poolstat(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /poolstat?pool=a,b: size and ready count of the pools named (or aliased)."""
    names = {part for part in request.query.get("pool", "").split(",") if part}
    chosen = [p for p in services.pools() if p.name in names or names.intersection(p.alias)]
    counts = services.store.counts(p.name for p in chosen)
    sizes = current_sizes(services.store, chosen, services.clock.now(), services.config.service.sizing_timezone)
    pools: dict[str, Any] = {}
    for pool in chosen:
        # vmpooler's order (max, alias, ready), our own key after it.
        entry: dict[str, Any] = {"max": sizes[pool.name].size}
        if pool.alias:
            entry["alias"] = alias_as_written(pool)
        entry["ready"] = counts[pool.name]["ready"]
        entry["size_reason"] = sizes[pool.name].reason
        pools[pool.name] = entry
    return ApiResponse(200, {"pools": pools})


def total_running(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /totalrunning."""
    counts = services.store.counts(services.config.pool_names)
    return ApiResponse(200, {"running": sum(c["running"] for c in counts.values())})


def pool_configuration(services: Services, request: ApiRequest) -> ApiResponse:
    """GET /config: each pool as the config wrote it, its runtime overrides (size, template,
    clone target) applied, and ``template_ready``, as vmpooler shows it: keys the config did not
    give are not made up (vmpooler's clients read ``alias`` or ``template`` as given, and an empty
    one is truthy in Ruby). Only pool keys are shown, and pools hold no secrets.
    ``template_ready`` is false while the pool's clones wait for its template's preparation
    (``create_template_delta_disks``: manager/templates.py), true otherwise."""
    if not services.config.pools:
        raise not_found(error="no pools configured")
    waiting = (TemplateStore(services.store).clones_waiting()
               if services.config.service.create_template_delta_disks else set())
    pools = [configuration_entry(pool, template_ready=not any(
        template_key(pool.provider, name) in waiting for name in template_names(pool))) for pool in services.pools()]
    return ApiResponse(200, {"pool_configuration": pools, "status": {"ok": True}})

