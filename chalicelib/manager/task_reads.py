"""Task states a pass's step reads ahead: every task it will follow, one ``task_statuses`` call a
provider, instead of one ``task_status`` call a VM (vSphere: one PropertyCollector retrieval for
all of a pool's disk, snapshot and migration tasks in flight, not one SOAP round trip each).

A step reads ahead, then asks ``status`` of each task as it comes to it: the answer is what
``task_status`` of that one task would have given, so every per-task rule of the step holds (a
task the provider could not read raises its ProviderError, with its kind, for that VM alone; a
provider the read ahead could not reach is ``unreached``: the step asks it nothing more this pass,
as when its first read of its own failed before).

The pass reads once, before its steps (``reconcile.read_tasks``): the pending clones', the disk
and snapshot tasks' and the migrations' tasks together, in one call a provider, carried by the
pass's context (``PassContext.task_reads``); before, each of those three steps made a call of its
own (vSphere: three PropertyCollector retrievals a pass with all three in flight)."""

from __future__ import annotations

from typing import Iterable, Mapping

from chalicelib.providers.base import UNREACHABLE, Provider, ProviderError, TaskState, TaskStatus


class TaskReads:
    """Task states read ahead (task ref -> status), each given once: a task asked again in the
    same pass (a task started after the read) is read on its own."""

    def __init__(self) -> None:
        self._read: dict[str, TaskStatus] = {}
        self._unreached: dict[str, ProviderError] = {}
        self._providers_unreached: dict[str, ProviderError] = {}

    def read_ahead(self, provider: Provider, task_refs: Iterable[str]) -> None:
        """Read ``task_refs`` of ``provider`` in one ``task_statuses`` call. A provider that cannot
        be reached has its error kept for those tasks; any other failure of the whole call
        leaves them to be read one at a time (``status``)."""
        refs = list(dict.fromkeys(ref for ref in task_refs if ref))
        if not refs:
            return
        try:
            self._read.update(provider.task_statuses(refs))
        except ProviderError as error:
            if error.kind in UNREACHABLE:
                self._unreached.update(dict.fromkeys(refs, error))
                self._providers_unreached[provider.name] = error

    def read_all(self, wanted: Iterable[tuple[Provider, str]]) -> None:
        """Read every task of ``wanted`` (its provider, its ref): one ``read_ahead`` a provider."""
        groups: dict[str, tuple[Provider, list[str]]] = {}
        for provider, ref in wanted:
            groups.setdefault(provider.name, (provider, []))[1].append(ref)
        for provider, refs in groups.values():
            self.read_ahead(provider, refs)

    def statuses(self, provider: Provider, task_refs: Iterable[str]) -> Mapping[str, TaskStatus]:
        """``provider.task_statuses(task_refs)``, from the read ahead for the tasks it holds (an
        UNKNOWN status given as is, as that call gives it) and in one call for the others; a
        read ahead that could not reach ``provider`` raises its error, as that call would have."""
        found: dict[str, TaskStatus] = {}
        rest: list[str] = []
        for ref in dict.fromkeys(task_refs):
            unreached = self._unreached.pop(ref, None)
            if unreached is not None:
                raise unreached
            status = self._read.pop(ref, None)
            if status is None:
                rest.append(ref)
            else:
                found[ref] = status
        if rest:
            found.update(provider.task_statuses(rest))
        return found

    def unreached(self, provider: Provider) -> ProviderError | None:
        """The error of a read ahead that could not reach ``provider`` (then each further call
        there would wait as long: the step asks it nothing more this pass), None when it was."""
        return self._providers_unreached.get(provider.name)

    def status(self, provider: Provider, task_ref: str) -> TaskStatus:
        """``provider.task_status(task_ref)``, from the read ahead when it holds the task: an
        UNKNOWN status raises its read's ProviderError (message and kind), as the read of that
        task alone would have."""
        unreached = self._unreached.pop(task_ref, None)
        if unreached is not None:
            raise unreached
        status = self._read.pop(task_ref, None)
        if status is None:
            return provider.task_status(task_ref)
        if status.state is TaskState.UNKNOWN:
            raise ProviderError(status.error or f"read task {task_ref}: not read", status.kind)
        return status
