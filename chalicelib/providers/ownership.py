"""Which vmpool deployment made a VM, from the annotation vmpool writes on every clone.

Two deployments (stages dev and prod, two teams) may keep pools in one vCenter folder. Each used
to see the other's VMs as unknown ones ("discovered") and take them out of service, and its
purge of unconfigured resources removed them. Every VM vmpool makes now carries its
deployment's name in its annotation (``{"creator": "vmpool", "deployment": ...}``); a VM whose
annotation names another deployment is never taken out of service or purged.

A VM without a vmpool annotation (made by hand, by vmpooler) is handled as vmpooler handles what
it finds in its folders. One made by a vmpool that wrote no deployment yet (before this field)
cannot be told apart: it is treated as this deployment's, as it always was.
"""

from __future__ import annotations

import json
from typing import Any

from chalicelib.observability import NAMESPACE

CREATOR = "vmpool"
"""The annotation's ``creator``: the VM was made by vmpool (some deployment of it)."""

MAX_ANNOTATION_READ = 65536
"""Longer annotations are not parsed (vmpool's are ~200 characters; an admin's may be anything)."""


def deployment_of(service: Any) -> str:
    """This deployment's name: the ``:config:`` key ``deployment``, else the stage's metric
    namespace (``vmpool/<stage>`` in AWS, one per stage; ``vmpool`` elsewhere)."""
    return str(getattr(service, "deployment", None) or NAMESPACE)


def annotation_fields(deployment: str) -> dict[str, str]:
    """What every clone's annotation says about who made it."""
    return {"creator": CREATOR, "deployment": deployment}


def maker(annotation: str | None) -> str | None:
    """The deployment a VM's annotation names: None when vmpool did not make it (no annotation,
    an admin's text) or when the vmpool that made it wrote no deployment."""
    if not annotation or len(annotation) > MAX_ANNOTATION_READ or not annotation.lstrip().startswith("{"):
        return None
    try:
        fields = json.loads(annotation)
    except ValueError:
        return None
    if not isinstance(fields, dict) or fields.get("creator") != CREATOR:
        return None
    deployment = fields.get("deployment")
    return deployment if isinstance(deployment, str) and deployment else None


def other_deployment(annotation: str | None, deployment: str) -> str | None:
    """The other deployment that made the VM, or None when it may be this one's (or nobody's)."""
    found = maker(annotation)
    return found if found is not None and found != deployment else None
