"""Which of an alias's pools a VM should come from: ``backend_weight``, as vmpooler chooses.

vmpooler's ``backend_weight`` maps clone targets to weights. When every pool an alias names has
a weight (looked up by the pool's ``clone_target``, a runtime override included, else the
service's), each VM is drawn from a pool with probability proportional to its weight (weight 0:
never first); otherwise the pools are equally likely. The draw gives each VM an order of
preference; the checkout script follows it unless another order is what serves the whole request.
"""

from __future__ import annotations

import math
import random
from typing import Iterable, Mapping, Sequence

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


def live_pools(services: Services, requested: Iterable[str]) -> Mapping[str, PoolConfig] | None:
    """The pools a weighted draw for the ``requested`` names reads (those behind a name of two
    or more pools) with their runtime overrides, when weights are configured (one Redis round
    trip, none when no name has two pools), else None: without weights the clone targets do not
    matter. Only those: reading every pool's made each checkout O(pools) (at 1,000 pools, 5
    fields of each read and a PoolConfig built for each, ~55 ms of a 69 ms checkout)."""
    config = services.config
    if not config.service.backend_weight:
        return None
    behind = dict.fromkeys(pool for name in requested if len(pools := config.resolve(name)) > 1 for pool in pools)
    return {pool.name: pool for pool in services.pools(behind)} if behind else {}


def preference(config: Config, requested: str, live: Mapping[str, PoolConfig] | None = None) -> list[str]:
    """The pools ``requested`` (a pool or an alias) resolves to, in the order one VM should try
    them: a weighted draw without replacement, or a shuffle when weights do not apply."""
    return preferences(config, requested, 1, live)[0]


def preferences(config: Config, requested: str, count: int,
                live: Mapping[str, PoolConfig] | None = None) -> list[list[str]]:
    """``preference`` for each of ``count`` VMs, each drawn on its own (the pools' weights are
    looked up once)."""
    pools = list(config.resolve(requested))
    if len(pools) == 1:  # a pool's name: one order, no draw (a shuffle of one draws nothing)
        return [list(pools) for _ in range(count)]
    weights = pool_weights(config, pools, live)
    orders = []
    for _ in range(count):
        if weights is None:
            order = list(pools)
            random.shuffle(order)  # spread an alias's load over its pools
        else:
            order = weighted_order(pools, weights)
        orders.append(order)
    return orders


def weighted_order(pools: Sequence[str], weights: Sequence[float]) -> list[str]:
    """``pools`` in the order of a weighted draw without replacement: each next pool drawn from
    those left with probability proportional to its weight; pools of weight 0 last, in random
    order. Each pool gets one key, an exponential draw of rate ``weight``, and the pools are
    sorted by it (Efraimidis and Spirakis): the same distribution as drawing one pool at a time,
    in O(n log n). Drawing one at a time summed the weights left for every draw, O(n^2): with an
    alias of 1,000 weighted pools a VM's draw took 0.6 s, and one ``POST /vm {"alias": 100}``
    a minute of the API's CPU."""
    keyed = [(-math.log(1.0 - random.random()) / weight, pool)
             for pool, weight in zip(pools, weights, strict=True) if weight > 0]
    keyed.sort()
    rest = [pool for pool, weight in zip(pools, weights, strict=True) if not weight > 0]
    random.shuffle(rest)
    return [pool for _, pool in keyed] + rest
