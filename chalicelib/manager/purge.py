"""vmpooler's purge of unconfigured resources, in a serverless shape.

vmpooler purged once when its manager started. Here there is no long-lived manager, so a pool's
reconcile invocation purges its provider's folders when ``purge_unconfigured_resources`` is on (in
``:config:`` or the provider's block) and no invocation of any pool has done so within
``PURGE_INTERVAL_SECONDS``: a key in Redis with that expiry is the rate limit, taken atomically,
so many Lambdas never purge at once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from chalicelib.observability import logger
from chalicelib.providers.base import ProviderError, never
from chalicelib.store.keys import purge_lease_name

if TYPE_CHECKING:
    from chalicelib.services import Services

PURGE_INTERVAL_SECONDS = 15 * 60


def purge_if_due(services: "Services", provider_name: str, out_of_time: Callable[[], bool] = never) -> list[str]:
    """Purge the provider's pools' parent folders if purging is on and due. Returns what went.
    A purge ``out_of_time`` stopped (its invocation's time nearly out) hands its turn back: the
    next pass of any of the provider's pools goes on with it, not the next interval."""
    service = services.config.service
    block = services.config.providers.get(provider_name)
    if block is None:  # a draining pool's provider, since removed from the config: nothing to purge with
        return []
    purges, allowlist = block.settings.purge_settings(service.purge_unconfigured_resources,
                                                      service.resources_allowlist)
    if not purges:
        return []
    # Held until it expires, never released (but by a purge stopped short): that is the interval
    # between purges.
    lease = purge_lease_name(provider_name)
    token = services.store.acquire_lease(lease, PURGE_INTERVAL_SECONDS)
    if token is None:
        return []
    # Every pool, not only this provider's: another provider block may name the same vCenter, and
    # its pools' folders must be kept too (the provider looks only under its own pools' parents).
    pools = [pool for name in services.config.pool_names if (pool := services.pool(name)) is not None]
    try:
        removed = services.provider(provider_name).purge_unconfigured(pools, allowlist,
                                                                      services.store.tracked, out_of_time)
    except ProviderError as error:
        logger.warning("purge failed", extra={"provider": provider_name, "error": str(error)})
        return []
    if removed:
        logger.info("purged unconfigured resources", extra={"provider": provider_name, "removed": removed})
    if out_of_time():  # maybe stopped short: a purge that had finished only runs again soon
        logger.info("purge may have stopped short: the next pass goes on with it", extra={"provider": provider_name})
        services.store.release_lease(lease, token)
    return removed
