"""Which of some clones, asked for by a pass that never noted their tasks, vCenter still makes.

A clone whose ``CloneVM_Task`` answer was lost (or whose pass died before noting its task) has no
task reference; vCenter still knows it, from two documented facts:

* the template's ``recentTask`` lists every task on it that is queued or running (a subset of
  ``TaskManager.recentTask``: "completed recently, currently running, or queued to run"; only
  the *completed* ones are limited, to the last 10 minutes and 200 tasks), each with the
  ``eventChainId`` its events carry;
* the ``VmBeingClonedEvent`` a clone task posts names the clone (``destName``) and carries the
  task's chain id.

Every clone mode is one ``CloneVM_Task`` on the template itself (chalicelib.providers.vsphere.clone):
full, linked, linked from the template's current snapshot (``spec.snapshot``: the snapshot is
no managed entity, the task's entity stays the template) and linked from a template given delta
disks (the same object, made a VM and a template again in place). So the template's tasks and
events are where each mode's clones are found (checked on vcsim in every mode).

So: the template's queued and running clone tasks (one retrieval), then, only when there are
some, the template's ``VmBeingClonedEvent`` since the oldest of them was queued (one
``QueryEvents``: no collector to leave behind). A clone is under way when a running task's event
names it; the answer gives that task's reference (the caller notes it on the VM and follows it
as any clone task from then on: done when it ends, cancelled past the pool's timeout). Whether
the clone's VM is in its folder yet says nothing: vCenter lists it during the clone. vCenter
cannot tell, and the answer is None (the caller then keeps the slot up to the
pool's timeout), when a queued or running clone task has no such event among those read (not
posted yet, events not kept, more than ``EVENTS_READ``), or vCenter refuses a read (privileges):
a wrong "not under way" would free a slot while a clone runs.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Collection

from pyVmomi import vim, vmodl

from chalicelib.providers.vsphere import inventory, tasks
from chalicelib.providers.vsphere.connection import Connection

EVENTS_READ = 1000
"""How many clone events of the template one call reads at most (one page of QueryEvents)."""
QUEUE_MARGIN_SECONDS = 60.0
"""Events are read from this long before the oldest running clone task was queued (both times
vCenter's clock: a margin for rounding, not for skew)."""
TASK_INFO = ("info.descriptionId", "info.state", "info.eventChainId", "info.queueTime")
UNFINISHED = (vim.TaskInfo.State.queued, vim.TaskInfo.State.running)
CLONE_TASKS = frozenset({"VirtualMachine.clone", "VirtualMachine.cloneVm"})
"""The ``descriptionId`` of a ``CloneVM_Task``'s task: vCenter's (the method's id, whether its
source is a VM or a template: deploying from a template is the same method), and vcsim's (named
after its own method)."""


def template_tasks(connection: Connection, template: Any) -> list[dict[str, Any]]:
    """The template's recent tasks with their ``TASK_INFO``, in one retrieval."""
    return inventory.referenced(connection, template, "recentTask", vim.Task, TASK_INFO)


def is_clone(task: dict[str, Any]) -> bool:
    """A clone task (``CLONE_TASKS``). Not any task whose id mentions a clone: the clone
    wizard's ``vm.check.ProvisioningChecker.checkClone`` posts no VmBeingClonedEvent, and one
    running would make every answer a doubt, each unnoted clone held to the pool's timeout."""
    return task.get("info.descriptionId") in CLONE_TASKS


def clones_under_way(connection: Connection, template: Any, names: Collection[str]) -> dict[str, str] | None:
    """Of ``names``, the clones of ``template`` vCenter has queued or running, each with its
    task's reference (``tasks.known_clone_ref``); None when it cannot tell (see the module's
    docstring). At most two calls, whatever the number of names."""
    wanted = set(names)
    try:
        running = [task for task in template_tasks(connection, template)
                   if task.get("info.state") in UNFINISHED and is_clone(task)]
        if not running or not wanted:
            return {}
        chains = {task.get("info.eventChainId") for task in running}
        if None in chains or 0 in chains:
            return None  # a task whose events cannot be told apart
        queued = [task["info.queueTime"] for task in running if task.get("info.queueTime") is not None]
        oldest = min(queued) if len(queued) == len(running) else None  # None: every event kept is read
        events = _being_cloned(connection, template, oldest)
    except vmodl.fault.ManagedObjectNotFound:
        return None  # the template or a task went away meanwhile: asked again next pass
    except vim.fault.NotAuthenticated:
        raise  # the session is gone: the connection logs in and asks again
    except vmodl.MethodFault:
        return None  # refused (NoPermission: events or tasks not readable as this user)
    named = {event.chainId: event for event in events}
    if any(chain not in named for chain in chains):
        return None  # a clone under way whose name is not known: any of ``names`` may be it
    found: dict[str, str] = {}
    for task in running:
        event = named[task["info.eventChainId"]]
        if event.destName not in wanted:
            continue
        folder = event.destFolder.folder if event.destFolder is not None else None
        # Without the folder it lands in (an event that does not say), under way with no task to
        # follow: the caller then keeps its slot while it runs, up to the pool's timeout.
        found[event.destName] = "" if folder is None else tasks.known_clone_ref(
            task["_obj"], folder, event.destName, task.get("info.queueTime"))
    return found


def _being_cloned(connection: Connection, template: Any, since: Any) -> list[Any]:
    """The template's ``VmBeingClonedEvent`` since ``since`` (vCenter's time; all kept when
    None), up to ``EVENTS_READ``, in one call."""
    spec = vim.event.EventFilterSpec(
        entity=vim.event.EventFilterSpec.ByEntity(entity=template, recursion="self"),
        eventTypeId=["VmBeingClonedEvent"],
        maxCount=EVENTS_READ,
    )
    if since is not None:
        spec.time = vim.event.EventFilterSpec.ByTime(beginTime=since - timedelta(seconds=QUEUE_MARGIN_SECONDS))
    found = connection.content.eventManager.QueryEvents(spec) or []
    return [event for event in found if isinstance(event, vim.event.VmBeingClonedEvent)]
