"""The Redis key schema, in one place.

Every key starts with a prefix (``vmpool:`` by default) so one Redis can be shared with other
services and tests can use their own namespace. Lua scripts build the same keys from the prefix;
this module and the scripts must agree.

    vm:<hostname>            hash    one VM's record (see records.VMRecord)
    pool:<pool>:<state>      zset    hostnames in a state, scored by when they entered it
    cloning                  zset    hostnames whose clone task is in flight, across all pools
    changes                  string  counter: every state change stamps its VM (change_seq) with
                                     its value; a reconcile pass increments it before reading the
                                     provider's inventory, to order that read against the changes
    clone_demand             hash    pool -> "<clone slots wanted> <when>" of the pools short of VMs
    pool:<pool>:ready_checked string the template and reset time every ready VM was last checked against
    pool:<pool>:running_due  zset    running VMs, scored by when a pass must next look at one (its
                                     checkout's confirmation deadline, its lifetime's end); may
                                     hold VMs no longer running (dropped when due)
    pool:<pool>:inventory_checked string "<provider's inventory token> <time>": the inventory the pool's
                                     VMs were last compared with, and when it was last compared whole
    lease:<pool>             string  who runs the pool's reconcile right now
    wake:<pool>              list    nudges for the pool's reconcile (checkout, delete, request)
    followup:<pool>          string  a delayed follow-up pass of the pool is queued (store/fleet.py)
    pools:known              hash    pool -> its last configured settings, to drain it once removed
    lastboot                 hash    pool -> time of its last VM becoming ready
    daily:<YYYY-MM-DD>       hash    that day's clone/boot durations and tag counts
    ondemand:<id>            hash    an on-demand request (store/ondemand.py)
    ondemand:<id>:vms        zset    every VM ever reserved for the request, by reservation time
    ondemand:open:<pool>     zset    open requests with VMs to build in the pool, by creation time
    config:poolsize          hash    pool -> size set at runtime (store/pool_overrides.py)
    config:pooltemplate      hash    pool -> template set at runtime
    config:poolreset         hash    pool -> when it was last reset (VMs cloned before are drained)
    config:clonetarget       hash    pool -> clone_target set at runtime
    vmtasks:<hostname>       list    disk/snapshot tasks queued for a VM (store/vm_tasks.py)
    vmtasks:pool:<pool>      zset    VMs of the pool with queued or running tasks
    holdings:<owner hash>    zset    what one owner holds: checked-out VMs and on-demand requests
    ratelimit:<class>:<who>  string  requests of a client (token id or address) in the window
    token:<sha256>           hash    an API token's user and times (auth/tokens.py)
    user:<user>:tokens       set     a user's token hashes
    login:user:<hash>        string  failed logins of a user name (canonical, hashed) in the window
    login:addr:<address>     string  failed logins from a client address (IPv6: its /64)
    migrating                zset    VMs being migrated to another host, across all pools, by start time
    templates:prepared       hash    <provider>:<template> -> "done", or the task preparing it
    history:<pool>           zset    per-minute samples of the pool's counts (store/history.py)
    demand:<pool>:<YYYY-MM-DD> hash  per-minute checkouts/misses of a demand-sized pool (sizing/demand.py)
    sizing:state             hash    pool -> its demand size and when it last changed (sizing/controller.py)
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

    @property
    def changes(self) -> str:
        return f"{self.prefix}changes"

    def ready_checked(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:ready_checked"

    def running_due(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:running_due"

    def inventory_checked(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:inventory_checked"

    @property
    def clone_demand(self) -> str:
        return f"{self.prefix}clone_demand"

    def lease(self, pool: str) -> str:
        return f"{self.prefix}lease:{pool}"

    def wake(self, pool: str) -> str:
        return f"{self.prefix}wake:{pool}"

    def followup(self, pool: str) -> str:
        return f"{self.prefix}followup:{pool}"

    @property
    def known_pools(self) -> str:
        return f"{self.prefix}pools:known"

    @property
    def last_boot(self) -> str:
        return f"{self.prefix}lastboot"

    def daily(self, day: str) -> str:
        return f"{self.prefix}daily:{day}"

    def ondemand(self, request_id: str) -> str:
        return f"{self.prefix}ondemand:{request_id}"

    def ondemand_vms(self, request_id: str) -> str:
        return f"{self.prefix}ondemand:{request_id}:vms"

    def ondemand_open(self, pool: str) -> str:
        return f"{self.prefix}ondemand:open:{pool}"

    def pool_override(self, setting: str) -> str:
        """``setting`` is ``poolsize``, ``pooltemplate``, ``poolreset`` or ``clonetarget``."""
        return f"{self.prefix}config:{setting}"

    def vm_tasks(self, hostname: str) -> str:
        return f"{self.prefix}vmtasks:{hostname}"

    def pool_vm_tasks(self, pool: str) -> str:
        return f"{self.prefix}vmtasks:pool:{pool}"

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}token:{token_hash}"

    def user_tokens(self, user: str) -> str:
        return f"{self.prefix}user:{user}:tokens"

    def login_user(self, user_hash: str) -> str:
        return f"{self.prefix}login:user:{user_hash}"

    def login_address(self, address: str) -> str:
        return f"{self.prefix}login:addr:{address}"

    def holdings(self, owner_hash: str) -> str:
        return f"{self.prefix}holdings:{owner_hash}"

    def rate_limit(self, request_class: str, client: str) -> str:
        return f"{self.prefix}ratelimit:{request_class}:{client}"

    @property
    def migrating(self) -> str:
        return f"{self.prefix}migrating"

    @property
    def templates_prepared(self) -> str:
        return f"{self.prefix}templates:prepared"

    def history(self, pool: str) -> str:
        return f"{self.prefix}history:{pool}"

    def demand(self, pool: str, day: str) -> str:
        """A demand-sized pool's per-minute checkouts and misses on a UTC day. The checkout script
        builds the same name from ``demand_prefix``."""
        return f"{self.demand_prefix}{pool}:{day}"

    @property
    def demand_prefix(self) -> str:
        return f"{self.prefix}demand:"

    @property
    def sizing_state(self) -> str:
        return f"{self.prefix}sizing:state"
