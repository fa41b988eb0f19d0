"""The reconcile pass's part in preparing a pool's template before it is cloned, as vmpooler's
``prepare_template`` does: with ``create_template_delta_disks``, vSphere templates get a delta
disk layer once (chalicelib/providers/vsphere/templates.py), so linked clones share their disks.

The provider starts the preparation and returns its task; the pass records it and holds this
pool's clones until a later pass sees it finished. Done once per provider and template (a new
template from POST /config/pooltemplate is prepared again). A preparation that fails is logged
and clones go on without it, as in vmpooler.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from chalicelib.observability import logger
from chalicelib.providers.base import ProviderError, TaskState
from chalicelib.store.templates import DONE, TemplateStore

if TYPE_CHECKING:
    from chalicelib.manager.reconcile import _Pass


def ready_for_clones(pass_: "_Pass") -> bool:
    """Whether the pool's template is ready to be cloned; starts or follows its preparation."""
    if not getattr(pass_.service, "create_template_delta_disks", False):
        return True
    pool = pass_.pool
    templates = TemplateStore(pass_.store)
    key = f"{pool.provider}:{pool.template}"
    state = templates.state(key)
    if state == DONE:
        return True
    context = {"pool": pool.name, "template": pool.template}
    if not state:
        try:
            task = pass_.provider.prepare_template(pool)
        except ProviderError as error:
            logger.warning("template preparation failed to start; clones go on", extra={**context, "error": str(error)})
            return True
        if task is None:
            templates.done(key)
            return True
        templates.started(key, task)
        logger.info("template delta disks being created", extra=context)
        pass_.report.followups += 1
        return False
    status = pass_.provider.task_status(state)
    if status.state is TaskState.RUNNING:
        pass_.report.followups += 1
        return False
    if status.state is TaskState.ERROR:
        logger.warning("template delta disks could not be created; clones go on without them",
                       extra={**context, "error": status.error})
    else:
        logger.info("template delta disks created", extra=context)
    templates.done(key)
    return True
