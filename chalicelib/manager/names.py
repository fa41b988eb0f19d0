"""The reconcile pass's step for the names of VMs Redis forgot.

Redis that lost its data (restarted without persistence, a failover that lost writes) forgets
VMs that still exist. Each pool's pass finds those in its own folder (manager/discovered.py), but
another pool could clone a VM of the same name into its folder first: vCenter allows one name in
two folders, and the user handed that hostname would reach another machine (no DNS plugin need
be there to tell). The risk is in the friendly word names (900 of them: a fleet of a few hundred
VMs holds many); a random name (36^6 at the least) is as unlikely to be a forgotten VM's as to be
drawn twice. So each provider has a mark in Redis (``Keys.names_known``), missing after a loss;
while it is missing that provider's pools reserve random names only (manager/clones.py,
manager/ondemand.py; the reservation scripts refuse word names without the mark, so a loss in
the middle of a pass is caught too), and one pass (a claim: ``NamesStore.claim``) reads the names
of every VM where the provider's pools make VMs in one bounded call (``Provider.vm_names``:
vSphere reads each datacenter's VM names in one retrieval), holds them (no clone takes one for
``HELD_NAMES_SECONDS``) and sets the mark; word names come back from then on. A steady pass
reads the mark with its first round trip (``Store.begin_pass``) and does nothing here.

Pools stay apart: no pass waits for another's read, and no folder is listed for another pool, so a
pool whose folder cannot be listed holds nobody up; a read that fails or runs out of time
(``READ_SECONDS``) is logged, the pass goes on with random names, and a pass tries again once
its claim lapsed (``CLAIM_SECONDS``).
"""

from __future__ import annotations

from chalicelib import observability as metric
from chalicelib.manager.context import PassContext
from chalicelib.manager.hostnames import is_word_name
from chalicelib.observability import emit, logger
from chalicelib.providers.base import ProviderError
from chalicelib.store.leases import lease_token
from chalicelib.store.names import NamesStore

READ_SECONDS = 20.0
"""The longest a read of a provider's VM names may take (a third of the reconcile function's
time): past it the read is given up, and the next pass tries again."""
CLAIM_SECONDS = 2 * READ_SECONDS
"""How long a claim keeps the provider's other pools from reading too: longer than a read, so a
claimant killed mid-read is replaced after it; a read that failed is tried again after it."""
HELD_NAMES_SECONDS = 86_400.0
"""How long the names found stay held (from the provider's last read): far longer than it takes
the pools' passes to find the VMs Redis forgot in their folders (discovered), whose records then
hold their names until they are destroyed."""


def hold_forgotten_names(context: PassContext) -> None:
    """When the names where the pool's provider makes VMs are not known since Redis lost its
    data (``context.names_known`` false), read and hold them, unless another pass is doing it.
    ``context.names_known`` says afterwards whether this pass may reserve word names."""
    if context.names_known or context.draining:
        return
    names = NamesStore(context.store)
    provider, token = context.pool.provider, lease_token()
    if not names.claim(provider, context.now, CLAIM_SECONDS, token):
        logger.info("random clone names while another pass reads the names of the provider's VMs",
                    extra={"pool": context.pool.name, "provider": provider})
        return
    pools = [pool for pool in (context.fleet() if context.fleet is not None else ())
             if pool.provider == provider and pool.name != context.pool.name]
    pools.append(context.pool)
    deadline = context.clock.monotonic() + READ_SECONDS
    try:
        found = context.provider.vm_names(pools, lambda: context.clock.monotonic() > deadline)
    except ProviderError as error:
        # The claim stays until it lapses: a vCenter that fails or times out is asked again by a
        # pass CLAIM_SECONDS later, not by every pass of every pool, each paying its timeout.
        logger.warning("names of the VMs Redis forgot not read: random clone names until they are",
                       extra={"pool": context.pool.name, "provider": provider, "error": str(error)})
        context.report.errors.append(f"names of provider {provider}'s VMs not read: {error}")
        # Counted, not only logged: a pass goes on after it (no ReconcileErrors), and word names
        # stay off for the provider's pools until a read succeeds.
        emit(None, {metric.NAMES_READ_FAILURES: 1})
        emit(None, {metric.NAMES_READ_FAILURES: 1}, dimensions={"provider": provider, "reason": error.kind.value})
        return
    context.checkpoint("names_read")
    if not names.hold(provider, found, context.now, HELD_NAMES_SECONDS, token):
        # The claim lapsed during the read and another pass took it (or Redis lost its data
        # again): this read may be stale, the claimant's is not. Random names for this pass.
        logger.warning("names of the VMs Redis forgot read but not held: the claim was no longer this pass's",
                       extra={"pool": context.pool.name, "provider": provider, "names": len(found)})
        return
    context.names_known = True
    # A word name among them is a VM a clone could have been named after (the harm the read
    # prevents): Redis lost its data, or VMs of another deployment. None, as on every first start
    # on an empty Redis (make run, tests, a new deployment), and nothing of note was forgotten.
    word_names = sum(1 for name in found if is_word_name(name, context.service.prefix))
    log = logger.warning if word_names else logger.info
    log("Redis had no mark of the names of the provider's VMs: read and held before cloning",
        extra={"pool": context.pool.name, "provider": provider, "pools": len(pools), "names": len(found),
               "word_names": word_names})
