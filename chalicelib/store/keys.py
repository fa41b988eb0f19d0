"""The Redis key schema, in one place.

Every key starts with a prefix (``vmpool:`` by default) so one Redis can be shared with other
services and tests can use their own namespace. Lua scripts build the same keys from the prefix;
this module and the scripts must agree.

    vm:<hostname>            hash    one VM's record (see records.VMRecord)
    pool:<pool>:<state>      zset    hostnames in a state, scored by when they entered it
    cloning                  zset    hostnames whose clone task is in flight, across all pools
    lease:<pool>             string  who runs the pool's reconcile right now
    wake:<pool>              list    nudges for the pool's reconcile (checkout, delete, request)
    lastboot                 hash    pool -> time of its last VM becoming ready
    daily:<YYYY-MM-DD>       hash    that day's clone/boot durations and tag counts
"""

from __future__ import annotations

from dataclasses import dataclass

STATES = ("pending", "ready", "running", "completed", "discovered")
"""States in which a VM sits in its pool's set. ``destroyed`` records only linger for data_ttl."""


@dataclass(frozen=True)
class Keys:
    prefix: str = "vmpool:"

    def vm(self, hostname: str) -> str:
        return f"{self.prefix}vm:{hostname}"

    def pool_state(self, pool: str, state: str) -> str:
        return f"{self.prefix}pool:{pool}:{state}"

    @property
    def cloning(self) -> str:
        return f"{self.prefix}cloning"

    def lease(self, pool: str) -> str:
        return f"{self.prefix}lease:{pool}"

    def wake(self, pool: str) -> str:
        return f"{self.prefix}wake:{pool}"

    @property
    def last_boot(self) -> str:
        return f"{self.prefix}lastboot"

    def daily(self, day: str) -> str:
        return f"{self.prefix}daily:{day}"
