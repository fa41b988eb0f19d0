"""Which of an alias's pools a VM should come from: ``backend_weight``, as vmpooler chooses.

vmpooler's ``backend_weight`` maps clone targets to weights. When every pool an alias names has
a weight (looked up by the pool's ``clone_target``, a runtime override included, else the
service's), each VM is drawn from a pool with probability proportional to its weight (weight 0:
never first); otherwise the pools are equally likely. The draw gives each VM an order of
preference; the checkout script follows it unless another order is what serves the whole request.
"""

from __future__ import annotations

import random
from typing import Mapping, Sequence

from chalicelib.config import Config, PoolConfig
from chalicelib.services import Services


def pool_weights(
    config: Config, pools: Sequence[str], live: Mapping[str, PoolConfig] | None = None
) -> list[float] | None:
    """Each pool's weight, or None unless every one of two or more pools has one. ``live``: the
    pools as they are now (a clone target changed at runtime counts), else as configured."""
    weights: Mapping[str, float] | None = config.service.backend_weight
    if not weights or len(pools) < 2:
        return None
    found = []
    for name in pools:
        pool = (live or {}).get(name) or config.pool(name)
        target = (pool.clone_target if pool else None) or config.service.clone_target
        if target is None or target not in weights:
            return None
        found.append(float(weights[target]))
    return found


def live_pools(services: Services) -> Mapping[str, PoolConfig] | None:
    """The pools with their runtime overrides when weights are configured (one Redis round
    trip), else None: without weights the clone targets do not matter."""
    if not services.config.service.backend_weight:
        return None
    return {pool.name: pool for pool in services.pools()}


def preference(config: Config, requested: str, live: Mapping[str, PoolConfig] | None = None) -> list[str]:
    """The pools ``requested`` (a pool or an alias) resolves to, in the order one VM should try
    them: a weighted draw without replacement, or a shuffle when weights do not apply."""
    pools = list(config.resolve(requested))
    weights = pool_weights(config, pools, live)
    if weights is None:
        random.shuffle(pools)  # spread an alias's load over its pools
        return pools
    order: list[str] = []
    remaining = list(zip(pools, weights, strict=True))
    while remaining and sum(weight for _, weight in remaining) > 0:
        point = random.random() * sum(weight for _, weight in remaining)
        for index, (pool, weight) in enumerate(remaining):
            point -= weight
            if point < 0 or index == len(remaining) - 1:
                order.append(pool)
                del remaining[index]
                break
    rest = [pool for pool, _ in remaining]  # weight 0: last, in random order
    random.shuffle(rest)
    return order + rest
