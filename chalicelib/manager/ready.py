"""The reconcile pass's ready step: ready VMs that vanished, powered off, or waited longer than
``ready_ttl`` leave service. It reads no record (the snapshot's scores say how long each VM has
been ready), so a steady pass over thousands of ready VMs stays cheap."""

from __future__ import annotations

from chalicelib.manager.context import PassContext


def check_ready(context: PassContext) -> None:
    """Ready VMs that vanished, powered off, or waited longer than ready_ttl leave service."""
    ttl_minutes = context.pool.ready_ttl_minutes
    for hostname, since in context.snapshot.members.get("ready", {}).items():
        vm = context.inventory.get(hostname)
        if vm is None:
            context.drop(hostname, "ready", "gone from the provider while ready", gone=True)
        elif not vm.powered_on:
            context.take_out_of_service(hostname, "ready", "powered off while ready")
        elif context.now - since > ttl_minutes * 60:
            context.take_out_of_service(
                hostname, "ready", f"ready for longer than ready_ttl ({ttl_minutes} minutes)"
            )
