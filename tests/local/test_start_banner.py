"""The line `make run` prints once it serves names the pools it serves, in a bounded line."""

from __future__ import annotations

from local.run import BANNER_POOLS, pool_list


def test_the_banner_lists_a_few_pools_and_counts_the_rest() -> None:
    """At 1,000 pools every name was printed: one 12 KB line (GET /api/v3/config lists them)."""
    names = [f"debian-12-x86_64-pool-{n:04d}" for n in range(1000)]
    shown = pool_list(names)
    assert len(shown) < 500, len(shown)
    assert shown.startswith("debian-12-x86_64-pool-0000, debian-12-x86_64-pool-0001")
    assert shown.endswith(f"and {1000 - BANNER_POOLS:,} more (1,000 in all)")
    assert "pool-0999" not in shown


def test_a_few_pools_are_all_named() -> None:
    names = ["debian", "ubuntu", "windows"]
    assert pool_list(names) == "debian, ubuntu, windows"
    assert pool_list([f"p{n}" for n in range(BANNER_POOLS)]).count(",") == BANNER_POOLS - 1
