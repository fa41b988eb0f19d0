"""The reconcile pass's part in preparing a pool's template before it is cloned, as vmpooler's
``prepare_template`` does: with ``create_template_delta_disks``, vSphere templates get a delta
disk layer once (chalicelib/providers/vsphere/templates.py), so linked clones share their disks.

The provider plans the preparation and returns its reference without changing anything; the
pass records it, then reads it, and each read moves it on. This pool's clones are held until a
read says it is over. The reference is recorded before vCenter changes, so a pass killed at any
point leaves a preparation the next pass finishes. Passes of pools sharing a template read it
one at a time (a lease in Redis): two reads at once would convert and reconfigure the template
twice. Done once per provider and template (a new template from POST /config/pooltemplate is
prepared again). A pool that does not need it (vSphere: one cloning full) never plans it, so
another pool on the template still gets it; while one is under way it helps it on and waits for
it like the others. A preparation that fails is logged and clones go on without it, as in vmpooler;
one whose template was removed or replaced meanwhile is planned again on the next pass.
"""

from __future__ import annotations

from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.providers.failures import FailureKind
from chalicelib.store.keys import template_lease_name
from chalicelib.store.templates import DONE, TemplateStore

LEASE_SECONDS = 60.0
"""How long a pass may advance a template's preparation before another pass may take over (a
pass killed holding it delays the others this long at most)."""


def prepare_template(context: PassContext) -> None:
    """The step: hold this pass's clones (on-demand ones too) while the template is prepared."""
    context.clones_held = not ready_for_clones(context)


def ready_for_clones(context: PassContext) -> bool:
    """Whether the pool's template is ready to be cloned; plans, records and advances its
    preparation."""
    if not getattr(context.service, "create_template_delta_disks", False):
        return True
    pool = context.pool
    templates = TemplateStore(context.store)
    key = f"{pool.provider}:{pool.template}"
    state = templates.state(key)
    if state == DONE:
        return True
    needs = context.provider.clones_need_prepared_template(pool)
    if not state and not needs:
        return True  # nothing under way, and this pool would not plan it (a full clone needs no layer)
    lease = template_lease_name(pool.provider, pool.template)
    token = context.store.acquire_lease(lease, LEASE_SECONDS)
    if token is None:  # another pool's pass is at it
        context.report.followups += 1
        return False
    try:
        return _advance(context, templates, key, needs)
    finally:
        context.store.release_lease(lease, token)


def _advance(context: PassContext, templates: TemplateStore, key: str, may_plan: bool) -> bool:
    """Under the template's lease: plan the preparation (when ``may_plan``) or read the one
    recorded, moving it on; whether the pool may clone now."""
    pool = context.pool
    fields = {"pool": pool.name, "template": pool.template}
    state = templates.state(key)  # again: the lease's previous holder may have moved it on
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
        templates.started(key, planned)
        logger.info("template delta disks being created", extra=fields)
        state = planned
    status = context.provider.task_status(state)
    if status.state is TaskState.RUNNING:
        context.report.followups += 1
        return False
    if status.state is TaskState.ERROR and status.kind is FailureKind.TEMPLATE:
        # Removed or replaced while being prepared: what is at the path now is planned afresh.
        logger.warning("template changed while being prepared; prepared again",
                       extra={**fields, "error": status.error})
        templates.forget(key, state)
        context.report.followups += 1
        return False
    if status.state is TaskState.ERROR:
        logger.warning("template delta disks could not be created; clones go on without them",
                       extra={**fields, "error": status.error})
    else:
        logger.info("template delta disks created", extra=fields)
    templates.finish(key, state)
    return True
