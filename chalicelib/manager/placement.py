"""Where a VM was made, so that a pool moved elsewhere still reaches the VMs it left behind.

An operator may change where a pool makes its VMs while they exist: its ``provider``, its
``folder``, its ``datacenter``. A pass looks at the pool's new place only, so before, the VMs of
the old place were missing from its inventory: the ones in use were dropped as "gone from the
provider" (their users could no longer return or extend them, and they ran on, unmanaged), and
the ready and pending ones were forgotten without being destroyed.

Each clone's record now keeps its ``placement`` (the three settings, as text). A VM whose
placement differs from its pool's is *elsewhere*: it is never dropped for missing from the
pool's inventory; a ready one leaves service at once, a pending one once its clone is done
(the pool clones their replacements in the new place); a running one stays its user's until returned or its lifetime
ends; and each is destroyed (and its tasks followed) through the provider and folder it was made
in. A record without a placement (written before this existed) counts as the pool's.
"""

from __future__ import annotations

import dataclasses
import functools
import json

from chalicelib.config import PoolConfig

PLACEMENT_FIELD = "placement"
"""The record's field holding where the VM was made."""


def placement_of(pool: PoolConfig) -> str:
    """Where the pool makes its VMs now, as a record keeps it."""
    return _placement_text(pool.provider, pool.folder, pool.datacenter or "")


@functools.lru_cache(maxsize=1024)
def _placement_text(provider: str, folder: str, datacenter: str) -> str:
    # Asked for every VM a pass destroys or clones, twice for some (``PassContext.elsewhere``,
    # ``reach``): encoded once per place, not once per VM (docs/performance.md, "Twelfth round").
    return json.dumps([provider, folder, datacenter])


def placed_pool(pool: PoolConfig, placement: str) -> PoolConfig | None:
    """``pool`` as it was when it made VMs at ``placement`` (its provider, folder and datacenter
    then; everything else as now), or None when the placement cannot be read."""
    try:
        provider, folder, datacenter = json.loads(placement)
    except (ValueError, TypeError):
        return None
    if not all(isinstance(part, str) for part in (provider, folder, datacenter)):
        return None
    settings = {key: value for key, value in pool.settings.items() if key != "datacenter"}
    if datacenter:
        settings["datacenter"] = datacenter
    return dataclasses.replace(pool, provider=provider, folder=folder, settings=settings)


def describe(placement: str) -> str:
    """A placement as an operator reads it in a VM's reason."""
    try:
        provider, folder, datacenter = json.loads(placement)
    except (ValueError, TypeError):
        return placement
    where = f"provider {provider}, folder {folder or '(the pool name)'}"
    return where + (f", datacenter {datacenter}" if datacenter else "")
