"""The reconcile pass's part in preparing a pool's template before it is cloned, as vmpooler's
``prepare_template`` does: with ``create_template_delta_disks``, vSphere templates get a delta
disk layer once (chalicelib/providers/vsphere/templates.py), so linked clones share their disks.

The provider starts the preparation and returns its task; the pass records it and holds this
pool's clones until a later pass sees it finished. Done once per provider and template (a new
template from POST /config/pooltemplate is prepared again). A preparation that fails is logged
and clones go on without it, as in vmpooler.
"""

from __future__ import annotations

from chalicelib.manager.context import PassContext
from chalicelib.observability import logger
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.store.templates import DONE, TemplateStore


def prepare_template(context: PassContext) -> None:
    """The step: hold this pass's clones (on-demand ones too) while the template is prepared."""
    context.clones_held = not ready_for_clones(context)


def ready_for_clones(context: PassContext) -> bool:
    """Whether the pool's template is ready to be cloned; starts or follows its preparation."""
    if not getattr(context.service, "create_template_delta_disks", False):
        return True
    pool = context.pool
    templates = TemplateStore(context.store)
    key = f"{pool.provider}:{pool.template}"
    state = templates.state(key)
    if state == DONE:
        return True
    fields = {"pool": pool.name, "template": pool.template}
    if not state:
        try:
            task = context.provider.prepare_template(pool)
        except ProviderError as error:
            logger.warning("template preparation failed to start; clones go on", extra={**fields, "error": str(error)})
            return True
        if task is None:
            templates.done(key)
            return True
        templates.started(key, task)
        logger.info("template delta disks being created", extra=fields)
        context.report.followups += 1
        return False
    status = context.provider.task_status(state)
    if status.state is TaskState.RUNNING:
        context.report.followups += 1
        return False
    if status.state is TaskState.ERROR:
        logger.warning("template delta disks could not be created; clones go on without them",
                       extra={**fields, "error": status.error})
    else:
        logger.info("template delta disks created", extra=fields)
    templates.done(key)
    return True
