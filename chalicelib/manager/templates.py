"""The reconcile pass's part in preparing a pool's template before it is cloned, as vmpooler's
``prepare_template`` does: with ``create_template_delta_disks``, vSphere templates get a delta
disk layer once (chalicelib/providers/vsphere/templates.py), so linked clones share their disks.

The provider plans the preparation and returns its reference without changing anything; the
pass records it, then reads it, and each read moves it on. This pool's clones are held until a
read says it is over. The reference is recorded before vCenter changes, so a pass killed at any
point leaves a preparation the next pass finishes. Passes of pools sharing a template read it
one at a time (a lease in Redis): two reads at once would convert and reconfigure the template
twice. Done once per provider and template (a new template from POST /config/pooltemplate is
prepared again). A pass also reads on a few of the provider's other preparations under way: the
one of a template a pool left while it was being prepared is read by nobody else. A pool that
does not need it (vSphere: one cloning full) never plans it, so another pool on the template
still gets it; while one is under way it helps it on and waits for it like the others. A
preparation that fails is logged and clones go on without it, as in vmpooler; one whose template
was removed or replaced meanwhile is planned again on the next pass. One still under way after
the service's clone ``timeout`` (a vCenter task that never ends, ours or an admin's on the
template) is given up the same way: logged and counted once, and the clones stop waiting for it;
the passes still read it on, so it is finished (the template a template again) and recorded
done if vCenter ends it at last.
"""

from __future__ import annotations

from typing import Iterable

from chalicelib import observability as metric
from chalicelib.config import PoolConfig
from chalicelib.manager.context import PassContext
from chalicelib.observability import emit, logger
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.providers.failures import FailureKind
from chalicelib.store import Store
from chalicelib.store.keys import template_lease_name
from chalicelib.store.pool_overrides import PoolOverrides
from chalicelib.store.templates import DONE, TemplateStore, Underway, template_key
from chalicelib.template_names import template_names

LEASE_SECONDS = 60.0
"""How long a pass may advance a template's preparation before another pass may take over (a
pass killed holding it delays the others this long at most)."""

OTHERS_PER_PASS = 3
"""How many preparations of other templates a pass reads on at most (``_advance_others``)."""


def prepare_template(context: PassContext) -> None:
    """The step: hold this pass's clones (on-demand ones too) while the template is prepared."""
    context.clones_held = not ready_for_clones(context)


def ready_for_clones(context: PassContext) -> bool:
    """Whether the pool's template is ready to be cloned; plans, records and advances its
    preparation, and moves on the provider's other preparations under way."""
    if not getattr(context.service, "create_template_delta_disks", False):
        return True
    pool = context.pool
    templates = TemplateStore(context.store)
    recorded = templates.all()
    _advance_others(context, templates, recorded)
    template = context.provider.template_name(pool)
    state = recorded.get(template_key(pool.provider, template))
    if state == DONE:
        return True
    needs = context.provider.clones_need_prepared_template(pool) and not pool.draining
    if not state and not needs:
        # Nothing under way, and this pool would not plan it: a full clone needs no layer, and a
        # pool removed from the config clones nothing (its template, no pool's now, the tick drops).
        return True
    ready = _leased(context, templates, template, needs)
    if ready is None:  # another pass is at it: still, clones wait no longer for one given up
        return bool(state) and templates.given_up(template_key(pool.provider, template), state or "")
    return ready


def forget_unused(store: Store, pools: Iterable[PoolConfig]) -> list[str]:
    """Drop the records of templates prepared that none of ``pools`` (every configured pool, its
    overrides applied) uses now: each template an admin ever set (POST /config/pooltemplate) left
    one, for good, and every pass reads them all. A preparation under way is kept (a pass reads it
    on, ``_advance_others``, and then it is dropped). A template used again is planned again:
    the provider finds it prepared and it needs nothing. The ``<provider>:<template>`` dropped."""
    templates = TemplateStore(store)
    in_use = {template_key(pool.provider, name) for pool in pools for name in template_names(pool)}
    unused = [key for key, state in templates.all().items() if state == DONE and key not in in_use]
    dropped = templates.forget_done(unused)
    templates.forget_stale_underway()
    if dropped:
        logger.info("records of templates no pool uses dropped", extra={"templates": len(dropped)})
    return dropped


def release_stale(store: Store, pool: PoolConfig, token: str) -> None:
    """Release the template leases a run whose lease on ``pool`` was ``token`` may still hold
    (its passes take them with that token, ``PassContext.lease_token``): the leases of the pool's
    template, as configured and as overridden, and of the provider's preparations under way (its
    passes read those on, ``_advance_others``). A release lost with a failover (made while the
    replica lagged, the promoted replica holds the lease) held the pools on the template, clones
    and all, until the lease expired. A lease another run holds (another token) stays."""
    templates = TemplateStore(store)
    prefix = f"{pool.provider}:"
    names = template_names(pool) | template_names(pool, PoolOverrides(store).get(pool.name).template)
    names |= {key[len(prefix):] for key, state in templates.all().items() if key.startswith(prefix) and state != DONE}
    for template in sorted(names):
        store.release_lease(template_lease_name(pool.provider, template), token)


def _advance_others(context: PassContext, templates: TemplateStore, recorded: dict[str, str]) -> None:
    """Read on the provider's preparations of templates other than the pool's: one whose pool
    took another template (POST /config/pooltemplate) is read by nobody else, and would leave
    its template a VM. A few a pass; their failures are logged, never this pass's."""
    provider = context.pool.provider
    own = template_key(provider, context.provider.template_name(context.pool))
    others = [key[len(provider) + 1:] for key, state in recorded.items()
              if key.startswith(f"{provider}:") and key != own and state != DONE]
    for template in others[:OTHERS_PER_PASS]:
        try:
            _leased(context, templates, template, may_plan=False)
        except ProviderError as error:
            logger.warning("template preparation could not be read", extra={
                "pool": context.pool.name, "template": template, "error": str(error)})


def _leased(context: PassContext, templates: TemplateStore, template: str, may_plan: bool) -> bool | None:
    """``_advance`` under the template's lease; None when another pass holds it (the pool waits)."""
    lease = template_lease_name(context.pool.provider, template)
    token = context.store.acquire_lease(lease, LEASE_SECONDS, token=context.lease_token)
    if token is None:  # another pool's pass is at it
        context.report.followups += 1
        return None
    try:
        return _advance(context, templates, template, may_plan)
    finally:
        context.store.release_lease(lease, token)


def _advance(context: PassContext, templates: TemplateStore, template: str, may_plan: bool) -> bool:
    """Plan the template's preparation (when ``may_plan``: it is the pool's own) or read the one
    recorded, moving it on; whether it is over (the pool may clone)."""
    pool = context.pool
    key = template_key(pool.provider, template)
    fields = {"pool": pool.name, "template": template}
    state = templates.state(key)  # again, under the lease: its previous holder may have moved it on
    if state == DONE or (not state and not may_plan):
        return True
    if not state:
        try:
            planned = context.provider.prepare_template(pool)
        except ProviderError as error:
            logger.warning("template preparation failed to start; clones go on", extra={**fields, "error": str(error)})
            return True
        if planned is None:
            templates.done(key)
            return True
        if templates.started(key, planned):
            logger.info("template delta disks being created", extra=fields)
            state = planned
        else:
            # Another pass recorded one first (this one's lease ran out while it planned): that
            # one is the preparation; two passes driving the template at once would prepare it twice.
            state = templates.state(key)
            if state == DONE:
                return True
            context.report.followups += 1
            return False
    underway = templates.underway(key, state, context.now)
    status = context.provider.task_statuses([state])[state]
    if status.state is TaskState.UNKNOWN:
        # The provider answered and could not read it (one it cannot reach raises): waited for as
        # one still under way, up to the clone timeout. Before, the failed read ended the pass
        # here, every pass: the pool never refilled while its template could not be read.
        logger.warning("template preparation could not be read", extra={**fields, "error": status.error})
        context.report.errors.append(f"template {template}: preparation not read: {status.error}")
    if status.state in (TaskState.RUNNING, TaskState.UNKNOWN):
        if _timed_out(context, templates, key, underway):
            return True  # not a follow-up: a task that never ends would keep the pool's passes looping
        context.report.followups += 1
        return False
    if status.state is TaskState.ERROR and status.kind is FailureKind.TEMPLATE:
        # Removed or replaced while being prepared: what is at the path now is planned afresh.
        logger.warning("template changed while being prepared; prepared again",
                       extra={**fields, "error": status.error})
        if templates.forget(key, state):
            templates.ended(key, underway)
        context.report.followups += 1
        return False
    if status.state is TaskState.ERROR:
        logger.warning("template delta disks could not be created; clones go on without them",
                       extra={**fields, "error": status.error})
        if not underway.given_up:  # one given up was counted then
            count_failure(pool.name, status.kind.value)
    else:
        logger.info("template delta disks created", extra=fields)
    if templates.finish(key, state):
        templates.ended(key, underway)
    return True


def count_failure(pool: str, reason: str) -> None:
    """Count a preparation given up (``TemplatePreparationFailures``): by pool and reason for the
    dashboard, service-wide for the alarm (``template-preparation-failures``)."""
    emit(pool, {metric.TEMPLATE_PREPARATION_FAILURES: 1}, dimensions={"reason": reason})
    emit(None, {metric.TEMPLATE_PREPARATION_FAILURES: 1})


def _timed_out(context: PassContext, templates: TemplateStore, key: str, underway: Underway) -> bool:
    """Whether the clones stop waiting for a preparation still under way: once it has been under
    way the service's clone ``timeout`` (a vCenter task that never ends would hold the pool's
    refill for ever). Given up once, logged and counted; it stays recorded, read on, and is
    recorded done if it ends."""
    if underway.given_up:
        return True
    timeout = context.service.timeout * 60
    if context.now - underway.since < timeout:
        return False
    if templates.give_up(key, underway):
        logger.error("template preparation still under way after the clone timeout; clones go on without it",
                     extra={"pool": context.pool.name, "template": key.split(":", 1)[1],
                            "minutes": round((context.now - underway.since) / 60, 1)})
        count_failure(context.pool.name, FailureKind.TIMEOUT.value)
    return True
