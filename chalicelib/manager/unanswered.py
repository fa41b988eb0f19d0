"""How long a pass keeps asking the provider what became of a call an interrupted pass made.

A pass that took a VM task or a migration slot and died before noting the provider's task
leaves the next passes to ask the provider whether the call was done (``Provider.applied``,
``Provider.recent_migrations``). When that asking fails, the steps (``vm_tasks``, ``migrations``)
decide alike with ``ask_again``: wait, or end the work saying it may or may not have been done.
"""

from __future__ import annotations

from chalicelib.providers.base import UNREACHABLE, ProviderError


def ask_again(error: ProviderError, waited: float, patience: float) -> bool:
    """Whether work the provider could not be asked about (asking raised ``error``) waits for a
    later pass to ask again, rather than ending undecided now. It waits while the provider cannot
    be reached (it may answer later, and the VM's next operation started against one still
    running there would fail), and, when it answers but cannot say (a refusal, the VM gone from
    its folder), until ``waited`` is past ``patience`` seconds: then waiting cannot help, and
    holding the work would hold what waits behind it (the VM's next task, a migration slot)."""
    return error.kind in UNREACHABLE or waited <= patience
