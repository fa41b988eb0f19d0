"""The Redis key schema, in one place.

Every key starts with a prefix (``vmpool:`` by default) so one Redis can be shared with other
services and tests can use their own namespace. No other module builds a key name: Python code
calls ``Keys``, and a Lua script is given its keys by its caller in ``KEYS[]`` (a script that
touches only the keys it was given can run on a clustered Redis). The few scripts that must
derive a key from data they read inside Redis are listed in ``DERIVED_KEYS`` with the reason;
they build those keys from a template made here (``KEY_PART``), never from the prefix.
tests/core/test_key_schema.py holds both sides to this.

No name a caller or a config chooses may spell another key. A name goes into a key as it is only
where its validator leaves out ``:`` (pool and provider names: config.POOL_NAME_PATTERN; API
hostnames: api.http.HOSTNAME_PATTERN; a hostname a provider's inventory lists names only its own
``vm:`` record), or where fixed text around it keeps it apart (``user:<canonical user>:tokens`` and
``user:<canonical user>:token_times``, the families under ``user:``, apart by their ends;
``dummy:<provider>:folder:<folder>``, a folder with ``:`` hashed: ``Keys.dummy_folder``). A
request id may hold ``:``, so it is escaped (``request_part``); user names in failed-login,
holdings, rate-limit and directory check keys, and tokens, are hashed; a client address is an
IPv4 address, an IPv6 /64 or a hash (auth.ratelimit.address_key).
A prefix with a hash tag (``{vmpool}:``) keeps every key in one cluster slot whatever the names
hold, since Redis hashes the first ``{...}`` only. test_key_schema.py feeds hostile names to every
family through these validators.

    vm:<hostname>            hash    one VM's record (see records.VMRecord)
    pool:<pool>:<state>      zset    hostnames in a state, scored by when they entered it
    cloning                  zset    hostnames whose clone task is in flight, across all pools
    cloning:pools            zset    those of them cloned for a pool's own use (not for an on-demand
                                     request), scored alike: what task_limit counts, one ZCARD however
                                     many pools clone (lua/reserve_clones.lua); kept by the scripts that
                                     add to or take from ``cloning``
    cloning:pools:counted    string  when ``cloning:pools`` was last rebuilt from ``cloning`` whole;
                                     missing: it cannot be trusted (reserve_clones.lua rebuilds it)
    running                  zset    every running VM of every pool (the union of the pools' running
                                     sets, scored alike), kept by the scripts that move VMs, so the
                                     service-wide quota costs one ZCARD however many pools there are
    running:counted          string  when ``running`` was last rebuilt from the pools' sets
                                     (lua/running_recount.lua); missing: it cannot be trusted
    running:rebuild          zset    scratch of that rebuild, inside its one script (never left)
    destroyed                zset    the destroyed VMs whose records live ``data_ttl``, by when each
                                     was destroyed (~317 years earlier for one no one held): past
                                     store.DESTROYED_RECORDS_KEPT the lowest expire within the hour
                                     (lua/move.lua)
    changes                  string  counter: every state change stamps its VM (change_seq) with
                                     its value; a reconcile pass increments it before reading the
                                     provider's inventory, to order that read against the changes
    replicas:seen            string  the replication id (master_replid) of the primary on which a
                                     process last found the replicas a write waits for online,
                                     kept redis.replica_loss_grace seconds: while it names the
                                     primary, a primary short of them still waits (503s), as a
                                     promotion may yet take the replica it lost
    clone_demand:wanted      zset    the pools short of VMs, scored by the clone slots each wants: the
                                     smallest first is the order lua/reserve_clones.lua shares
                                     task_limit in, so a pass finds its share without reading them all
    clone_demand:renewed     zset    the same pools, scored by when each last renewed its demand: those
                                     not renewed within store.CLONE_DEMAND_TTL_SECONDS lapse
    clone_demand             hash    the previous release's demands (pool -> "<wanted> <when>"):
                                     deleted when a tick first records the config (store/fleet.py)
    clone_backoff            hash    pool -> "<failed passes in a row> <no burst before>" of the pools
                                     whose clones keep failing (manager/clones.py)
    clone_failure            hash    pool -> the kind of the last clone failure of the same pools
                                     (GET /status shows it), cleared with their backoff
    dns_waiting              hash    pool -> "<pending VMs>\n<first reason>" of the pools whose last
                                     pass left VMs waiting on their DNS records (GET /status)
    feed_cache:<feed>:<...>  string  "<when computed>\n<JSON>": a dashboard feed's last answer, given to
                                     callers accepting one that old (api/feed_cache.py); the names
                                     are a fixed few, each expiring after MAX_AGE_SECONDS
    pool:<pool>:ready_checked string the template and reset time every ready VM was last checked against
    pool:<pool>:running_due  zset    running VMs, scored by when a pass must next look at one (its
                                     checkout's confirmation deadline, its lifetime's end): every
                                     script that takes a VM out of running (lua/move.lua: dropped
                                     as gone, reaped, returned; lua/release.lua: an unconfirmed
                                     checkout given back; lua/ondemand_end.lua: its request ended)
                                     takes it out of this set in that step, and a pass writes a
                                     VM's look only while it is running for the checkout the pass
                                     read (lua/schedule_running.lua); entries written before they
                                     did are dropped when due, or once a pass sees the VM
                                     completed (manager/running.py)
    pool:<pool>:inventory_checked string "<provider's inventory token> <time>": the inventory the pool's
                                     VMs were last compared with, and when it was last compared whole
    lease:<pool>             string  who runs the pool's reconcile right now (<host>:<pid>@<start>:<random>,
                                     store/leases.py)
    wake:<pool>              list    nudges for the pool's reconcile (checkout, delete, request)
    followup:<pool>          string  a delayed follow-up pass of the pool is queued (store/fleet.py)
    nudged:<pool>:<window>   string  the API's changes of the pool in that window of the clock (its number):
                                     the first two put the pool on the reconcile queue (manager/refill.py)
    pools:known              hash    pool -> its last configured settings, to drain it once removed
    pools:forgotten          zset    pool -> when its drain forgot it (kept FORGOTTEN_SECONDS): a request an
                                     API a config behind opened for it since is failed (manager/dispatch.py)
    pools:providerless       hash    pool -> when a drain first found the removed pool's provider gone from the
                                     config too: past PROVIDERLESS_GRACE_SECONDS its VMs' records are
                                     dropped (manager/providerless.py)
    pools:known:config       string  the fingerprint of the config whose pools pools:known was last given
                                     whole (written with them): a tick records them again when Redis
                                     holds another's (a failover lost the write, a restore)
    pools:ready_fence        hash    pool -> the id of the runtime template change or reset whose
                                     drain has not run yet: no checkout takes its ready VMs (cloned
                                     for what it had before) until a pass has drained them
    config_generation        string  "<generation> <time>": the newest pushed config (by its push's
                                     generation) a reconcile function ran with, and when it last did: a
                                     function a push behind leaves the pools alone
    lastboot                 hash    pool -> time of its last VM becoming ready
    started                  string  when the service started serving (epoch s): /status's uptime, the
                                     same from every process (lua/service_started.lua)
    daily:<YYYY-MM-DD>       hash    that day's clone/boot durations (a day the previous release recorded
                                     holds its tag counts too, until lua/tag_stats.lua moves them
                                     or the day expires)
    daily:<YYYY-MM-DD>:tags  hash    that day's tag counts (lua/tag_stats.lua), apart from the
                                     durations so /status and /summary/boot|clone never read them
    ondemand:<id>            hash    an on-demand request (store/ondemand.py)
    ondemand:<id>:vms        zset    every VM ever reserved for the request, by reservation time
    ondemand:open:<pool>     zset    open requests with VMs to build in the pool, by creation time
    ondemand:requests:open   zset    every open request, scored by the VMs it still waits for (lua/quota.lua)
    ondemand:requests:waiting string the sum of those scores, kept by the scripts that change them
                                     (lua/open_waiting.lua): what a checkout's quota check reads;
                                     lives a minute at most from its last whole count
    ondemand:requests:kept   zset    "<owner hash> <id>" of every request Redis keeps, by creation time (or
                                     when last found still holding VMs): the service's bound on them
                                     (config max_ondemand_requests_kept, lua/ondemand_create.lua); lives
                                     at least as long as each request it names (lua/request_sets.lua)
    config:poolsize          hash    pool -> size set at runtime (store/pool_overrides.py)
    config:pooltemplate      hash    pool -> template set at runtime
    config:poolreset         hash    pool -> when it was last reset (VMs cloned before are drained)
    config:clonetarget       hash    pool -> clone_target set at runtime
    vmtasks:<hostname>       list    disk/snapshot tasks queued for a VM (store/vm_tasks.py)
    vmtasks:pool:<pool>      zset    VMs of the pool with queued or running tasks
    settled:<change id>      string  how a change whose answer the API may lose ended (a token, a disk,
                                     snapshot or revert task; the id random, chosen by the API):
                                     "done" (a task's script queued it; a token's shows by its record)
                                     or "void" (its answer lost, the API found it not made: the script,
                                     reaching Redis later, makes nothing); expires after a minute
                                     (store/settle.py)
    holdings:<owner hash>    zset    what one owner holds: checked-out VMs and on-demand requests
    holders                  zset    the owners' hashes with a holdings set, by when each last took
                                     something: past store.HOLDERS_KEPT, the tick drops those holding nothing
    requests:<owner hash>    zset    the on-demand requests one owner opened and Redis still keeps, by
                                     creation time (store/ondemand.REQUESTS_KEPT_PER_OWNER); lives at
                                     least as long as each request it names
    ratelimit:<class>:<who>  string  requests of a client (a token's user, hashed; a Basic login name,
                                     hashed, at an address; or an address) in the window
    ratelimit:<class>:clients zset   the clients counted on their own (<who>), by when their window ends
                                     (ms, Redis's clock, which expires their counters): past config
                                     max_rate_limited_clients, new ones share a counter
    ratelimit:<class>:shared:<n> string requests of the clients sharing counter n (lua/rate_count.lua)
    token:<sha256>           hash    an API token's user and times (auth/tokens.py)
    tokens:ttl               string  the token_ttl the tokens' expiries were last set for ("none":
                                     no expiry); another config's sets them again (auth/tokens.py)
    user:<user>:tokens       set     a user's token hashes, pending ones (not yet counted) excluded
    user:<user>:token_times  zset    the same hashes, scored by when each token was made (epoch s):
                                     POST /token counts the user's live tokens in it (those made
                                     within token_ttl) and forgets expired ones, without reading them
                                     (lua/token_create.lua); kept by the scripts that change the set
    user:<user>:pending_tokens zset  the hashes of a user's pending tokens (made, not yet counted), scored
                                     by when each was made, for an administrator's GET /token?user=
                                     (auth/tokens.py); expiring with the newest
    dircheck:<user hash>     hash    the directory's last answer on whether a token's user is still
                                     there, and who is asking again (auth/directory_check.py),
                                     expiring when no longer useful
    login:user:<hash>        string  failed logins (and attempts in flight) of a user name (login_key, hashed)
    login:addr:<address>     string  the same from a client address (IPv6: its /64)
    login:pair:<hash>        string  the same of one user name from one address (both hashed together)
    login:<user|addr|pair>:<..>:in_flight string  of those, the attempts still waiting for the directory
    login:<user|addr|pair>:counted zset the names (addresses, pairs) counted on their own, by when their window
                                     ends (ms, Redis's clock, which expires their counters): past config
                                     auth.max_login_counters, new ones share counters
    login:<user|addr|pair>:shared:<n> string failed logins (and attempts in flight) of those sharing counter n
    login:attempt:<id>       string  an attempt counted and not yet answered: which counter of each limit
                                     counts it ("o" its own, "s" a shared one), so that its answer, or
                                     the undo written behind a reserve whose reply was lost, changes
                                     exactly those (auth/ratelimit.py); expires with its in-flight count
    migrating                zset    VMs being migrated to another host, across all pools, by start time
    templates:prepared       hash    <provider>:<template> -> "done", or the task preparing it (<template>
                                     as <datacenter>/vm/<template> for a pool with a datacenter of its own)
    templates:preparing      hash    <provider>:<template> -> since when the task preparing it is under way,
                                     and whether the pool's clones stopped waiting for it (store/templates.py)
    history:<pool>           zset    per-minute samples of the pool's counts (store/history.py)
    demand:<pool>:<YYYY-MM-DD> hash  per-minute checkouts/misses of a demand-sized pool (sizing/demand.py)
    sizing:state             hash    pool -> its demand size and when it last changed (sizing/controller.py)
    lease:purge:<provider>   string  who purges the provider's unconfigured resources (manager/purge.py)
    names:known:<provider>   string  when the names of every VM where the provider's pools live were last
                                     read and held (manager/names.py); missing: Redis lost its data (or
                                     never had it), and those pools' clones get random names until a
                                     pass has read them (lua/reserve_clones.lua, lua/ondemand_reserve.lua
                                     refuse word names)
    names:reading:<provider> string  "<time> <token>": the pass reading them now (lua/names_claim.lua)
    names:held               zset    names of VMs found by those reads, by when found: no clone takes one
                                     (a VM Redis forgot still has it); the key expires
                                     names.HELD_NAMES_SECONDS after its last write
    lease:template:<provider>:<template hash> string  which pass advances a template's preparation
    dummy:<provider>:folder:<folder> hash  the dummy provider's VMs in a folder (providers/dummy.py);
                                     a folder holding ``:`` or starting ``~`` is ``~<hash>``
    dummy:<provider>:folder:<folder>:version string  that folder's version: one more per VM written
    dummy:<provider>:folder:<folder>:changes zset    the VMs written, by version: its newest
                                     dummy.CHANGE_LOG_KEPT versions (what inventory_changes reads)
    dummy:<provider>:task:<ref>      string one of the dummy provider's tasks
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Mapping

DEFAULT_PREFIX = "vmpool:"
"""The service's key prefix unless VMPOOL_KEY_PREFIX names another."""

KEY_PART = "\x00"
"""Stands for the part of a key a script learns only from data it reads (a hostname popped from a
ready set): ``keys.vm(KEY_PART)`` is the template the script fills with ``key_of`` (lua/key_of.lua)."""

DERIVED_KEYS: Mapping[str, str] = {
    "checkout": "the records of the VMs it pops from the ready sets: which VM is next is known only "
                "inside the step that takes it (naming them first would cost the read a round trip and "
                "let two requests plan on the same VM); and, through quota.lua, what the owner holds",
    "ondemand_create": "through quota.lua, the records of what the owner holds: the holdings set names "
                       "them, and reading it first would let two requests pass the owner's limit together; "
                       "and the records and VM sets of the owner's oldest requests, which it forgets once "
                       "they have ended (the owner's requests set names them); and those of the service's "
                       "oldest requests past its bound, with their owners' requests and holdings sets (the "
                       "service's kept set names them): any owner's, so they cannot be named first",
    "move": "only when given no pool (DELETE /vm/<hostname>: one round trip, no read first): the state "
            "sets, wake list and running_due set of the pool the VM's record names; and, past "
            "DESTROYED_RECORDS_KEPT, the records of the VMs destroyed longest ago (the destroyed set names "
            "them), whose expiry it brings forward in the step that adds to the set",
    "holders_sweep": "the holdings sets of the owners that took something longest ago (the holders set names "
                     "them), and, through quota.lua, the records their entries name",
    "reserve_clones": "the records of the VMs in the pool's pending set (and, only when the pool_clones "
                      "set is rebuilt, of the cloning set): they are counted in the step that reserves, so "
                      "two passes at once cannot over-clone",
    "ondemand_reserve": "the records of the request's VMs (and, only before the pool_clones set is first "
                        "built, of the VMs in the cloning set): they are counted in the step that reserves, "
                        "so two passes cannot build a request twice",
    "ondemand_deliver": "the request the VM's record names, the records of its VMs and the open sets of "
                        "its pools: the request becomes ready in the same step as its last VM arrives; "
                        "and its owner's requests set (its record names the owner), kept as long as it",
    "ondemand_end": "the open sets and wake lists of the request's pools, the records of its VMs and "
                    "their pools' state and running_due sets: every VM leaves in the same step as the "
                    "request ends, so none reserved meanwhile is left behind; and its owner's requests "
                    "set (its record names the owner), kept as long as it",
    "token_create": "the records of the user's expired tokens it forgets (the user's token_times set names "
                    "them, by when they were made): naming them first meant reading the user's tokens, "
                    "a cost that grew with max_tokens_per_user",
    "running_recount": "the records of the VMs counted running that no running set it was given holds, "
                       "and the running sets of the pools those records name: a pool the caller's config "
                       "does not list yet (a push it has not read) keeps its VMs counted",
}
"""The scripts (lua/<name>.lua) that derive keys from data they read in Redis: which keys, and
why the caller cannot name them first without weakening the script's atomicity or adding a
round trip to checkout or DELETE. They alone get ``key_of`` (lua/key_of.lua) and fill templates
of this module with it. On a clustered Redis they need every key in one hash slot (a prefix with
a hash tag, ``{vmpool}:``). Every other script touches only its ``KEYS[]``."""

STATES = ("pending", "ready", "running", "completed", "discovered")
"""States in which a VM sits in its pool's set. ``destroyed`` records only linger for data_ttl."""
SIZE_OVERRIDES = "poolsize"
"""The ``pool_override`` setting of the pools' sizes (POST /config/poolsize), which
lua/reserve_clones.lua reads too."""


def request_part(request_id: str) -> str:
    """An on-demand request's id as its keys hold it. A caller chooses the id (``:`` allowed), so
    as it is it could name another key: ``open:<pool>`` a pool's open-request set, ``x:vms`` the
    VM set of request ``x``, ``open`` (its VM set) the open set of a pool named ``vms``. Those ids
    are escaped, ``~`` (never in an id) then the id with ``:`` as ``|``; every other id, UUIDs
    included, is its own key part, so keys written before stay where they were. lua/key_of.lua's
    ``request_part`` is the same rule, for the scripts that derive a request's keys."""
    if request_id == "open" or ":" in request_id:
        return "~" + request_id.replace(":", "|")
    return request_id


@dataclass(frozen=True)
class Keys:
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if KEY_PART in self.prefix:
            raise ValueError("a key prefix cannot hold NUL (it marks a template's variable part)")

    def vm(self, hostname: str) -> str:
        return f"{self.prefix}vm:{hostname}"

    def pool_state(self, pool: str, state: str) -> str:
        return f"{self.prefix}pool:{pool}:{state}"

    @property
    def cloning(self) -> str:
        return f"{self.prefix}cloning"

    @property
    def pool_clones(self) -> str:
        """The clones in flight (``cloning``) that are a pool's own, not an on-demand request's:
        what ``task_limit`` counts (lua/reserve_clones.lua)."""
        return f"{self.prefix}cloning:pools"

    @property
    def pool_clones_counted(self) -> str:
        """Set when ``pool_clones`` is rebuilt from the whole cloning set: without it the set
        may be missing or partial (a new deployment, a key lost), and reserve_clones.lua rebuilds it."""
        return f"{self.prefix}cloning:pools:counted"

    @property
    def destroyed(self) -> str:
        """The destroyed VMs whose records live data_ttl, by when each was destroyed (lua/move.lua)."""
        return f"{self.prefix}destroyed"

    @property
    def running(self) -> str:
        """Every running VM of every pool: what the service-wide quota counts (lua/quota.lua)."""
        return f"{self.prefix}running"

    @property
    def running_counted(self) -> str:
        """Set when ``running`` is rebuilt (lua/running_recount.lua): without it the set may be
        missing VMs (lost, or never built), so a quota check rebuilds it first."""
        return f"{self.prefix}running:counted"

    @property
    def running_rebuild(self) -> str:
        """Where lua/running_recount.lua builds the new ``running`` (gone when it returns)."""
        return f"{self.prefix}running:rebuild"

    @property
    def changes(self) -> str:
        return f"{self.prefix}changes"

    @property
    def replicas_seen(self) -> str:
        """The primary (its replication id) last seen with its replicas online (Store._replica_wait)."""
        return f"{self.prefix}replicas:seen"

    def ready_checked(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:ready_checked"

    def running_due(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:running_due"

    def dns_left(self, pool: str) -> str:
        """The pool's VMs whose A record could not be deleted as they left (manager/dns_records.py)."""
        return f"{self.prefix}pool:{pool}:dns_left"

    def inventory_checked(self, pool: str) -> str:
        return f"{self.prefix}pool:{pool}:inventory_checked"

    @property
    def clone_demand(self) -> str:
        """The pools short of VMs, scored by the clone slots each wants (lua/reserve_clones.lua)."""
        return f"{self.prefix}clone_demand:wanted"

    @property
    def clone_demand_renewed(self) -> str:
        """The same pools, scored by when each last renewed its demand (to let a dead pool's lapse)."""
        return f"{self.prefix}clone_demand:renewed"

    @property
    def clone_demand_before(self) -> str:
        """The previous release's hash of demands, which nothing reads any more (store/fleet.py
        deletes it)."""
        return f"{self.prefix}clone_demand"

    @property
    def clone_backoff(self) -> str:
        return f"{self.prefix}clone_backoff"

    @property
    def clone_failure(self) -> str:
        return f"{self.prefix}clone_failure"

    @property
    def dns_waiting(self) -> str:
        return f"{self.prefix}dns_waiting"

    def feed_cache(self, *name: str) -> str:
        """A dashboard feed's kept answer, named by a fixed few parts (api/feed_cache.entry_name)."""
        return f"{self.prefix}feed_cache:" + ":".join(name)

    def lease(self, pool: str) -> str:
        return f"{self.prefix}lease:{pool}"

    def wake(self, pool: str) -> str:
        return f"{self.prefix}wake:{pool}"

    def followup(self, pool: str) -> str:
        return f"{self.prefix}followup:{pool}"

    def nudged(self, pool: str, window: int) -> str:
        """Changes the API made to the pool in the clock's window number ``window`` (manager/refill.py)."""
        return f"{self.prefix}nudged:{pool}:{window}"

    @property
    def known_pools(self) -> str:
        return f"{self.prefix}pools:known"

    @property
    def forgotten_pools(self) -> str:
        return f"{self.prefix}pools:forgotten"

    @property
    def providerless_pools(self) -> str:
        return f"{self.prefix}pools:providerless"

    @property
    def known_pools_config(self) -> str:
        return f"{self.prefix}pools:known:config"

    @property
    def ready_fence(self) -> str:
        return f"{self.prefix}pools:ready_fence"

    @property
    def config_generation(self) -> str:
        return f"{self.prefix}config_generation"

    @property
    def last_boot(self) -> str:
        return f"{self.prefix}lastboot"

    @property
    def started(self) -> str:
        return f"{self.prefix}started"

    def names_known(self, provider: str) -> str:
        """Set once the names of every VM where the provider's pools live were read and held
        since Redis last lost its data (manager/names.py): missing, those pools reserve random
        names only (lua/reserve_clones.lua, lua/ondemand_reserve.lua refuse the others)."""
        return f"{self.prefix}names:known:{provider}"

    def names_reading(self, provider: str) -> str:
        """The claim of the pass reading those names (lua/names_claim.lua): one read per provider."""
        return f"{self.prefix}names:reading:{provider}"

    @property
    def names_held(self) -> str:
        """Names of VMs the provider reads found, by when found: no clone is reserved under one."""
        return f"{self.prefix}names:held"

    def daily(self, day: str) -> str:
        return f"{self.prefix}daily:{day}"

    def daily_tags(self, day: str) -> str:
        """The day's tag counts: anyone may fill them (tagging needs no token), so they are kept
        apart from the day's durations, which /status and /summary/boot|clone read."""
        return f"{self.prefix}daily:{day}:tags"

    def ondemand(self, request_id: str) -> str:
        return f"{self.prefix}ondemand:{request_part(request_id)}"

    def ondemand_vms(self, request_id: str) -> str:
        return f"{self.prefix}ondemand:{request_part(request_id)}:vms"

    def ondemand_open(self, pool: str) -> str:
        return f"{self.prefix}ondemand:open:{pool}"

    @property
    def ondemand_open_requests(self) -> str:
        """Every open request (score: the VMs it asks for), for the service's quotas (lua/quota.lua)."""
        return f"{self.prefix}ondemand:requests:open"

    @property
    def ondemand_open_waiting(self) -> str:
        """The sum of ondemand_open_requests' scores, kept with them (lua/open_waiting.lua)."""
        return f"{self.prefix}ondemand:requests:waiting"

    @property
    def ondemand_kept_requests(self) -> str:
        """Every request Redis keeps, whoever owns it: the oldest that hold nothing are forgotten
        past the service's bound (lua/ondemand_create.lua)."""
        return f"{self.prefix}ondemand:requests:kept"

    def pool_override(self, setting: str) -> str:
        """``setting`` is ``poolsize``, ``pooltemplate``, ``poolreset`` or ``clonetarget``."""
        return f"{self.prefix}config:{setting}"

    def vm_tasks(self, hostname: str) -> str:
        return f"{self.prefix}vmtasks:{hostname}"

    def pool_vm_tasks(self, pool: str) -> str:
        return f"{self.prefix}vmtasks:pool:{pool}"

    def settled(self, change_id: str) -> str:
        """The settled mark of a change (store/settle.py); ``change_id`` is random hex."""
        return f"{self.prefix}settled:{change_id}"

    def token(self, token_hash: str) -> str:
        return f"{self.prefix}token:{token_hash}"

    @property
    def tokens_ttl(self) -> str:
        return f"{self.prefix}tokens:ttl"

    def user_tokens(self, user: str) -> str:
        return f"{self.prefix}user:{user}:tokens"

    def user_token_times(self, user: str) -> str:
        """The user's token hashes scored by when each was made: what counts their live tokens."""
        return f"{self.prefix}user:{user}:token_times"

    def user_pending_tokens(self, user: str) -> str:
        """The hashes of the user's pending tokens (not yet counted), scored by when each was made."""
        return f"{self.prefix}user:{user}:pending_tokens"

    def directory_check(self, user_hash: str) -> str:
        """The directory's last answer about a user (``directory_check.user_hash`` of the name)."""
        return f"{self.prefix}dircheck:{user_hash}"

    def login_user(self, user_hash: str) -> str:
        return f"{self.prefix}login:user:{user_hash}"

    def service_password_refused(self, account_hash: str) -> str:
        """The password a service account (LDAP's, vCenter's) was refused lately, salted and
        hashed, expiring (``auth/service_refusals.py``)."""
        return f"{self.prefix}refused:{account_hash}"

    def login_address(self, address: str) -> str:
        return f"{self.prefix}login:addr:{address}"

    def login_pair(self, pair_hash: str) -> str:
        """Failed logins of one user name from one client address (``auth/ratelimit.py``)."""
        return f"{self.prefix}login:pair:{pair_hash}"

    def login_pair_shared(self, counter: int) -> str:
        """One of the counters (address, user) pairs share once ``login_pairs_counted`` is full
        (a pair's hash is hex: never ``shared``)."""
        return f"{self.prefix}login:pair:shared:{counter}"

    @property
    def login_pairs_counted(self) -> str:
        """The (address, user) pairs counted on their own (their hashes), by when their window ends."""
        return f"{self.prefix}login:pair:counted"

    def login_user_shared(self, counter: int) -> str:
        """One of the counters user names share once ``login_users_counted`` is full (a name's
        hash is hex: never ``shared``)."""
        return f"{self.prefix}login:user:shared:{counter}"

    def login_address_shared(self, counter: int) -> str:
        """One of the counters addresses share once ``login_addresses_counted`` is full (an
        address part is an IP address, a network or hex: never ``shared``)."""
        return f"{self.prefix}login:addr:shared:{counter}"

    @property
    def login_users_counted(self) -> str:
        """The user names counted on their own (their hashes), by when their window ends."""
        return f"{self.prefix}login:user:counted"

    @property
    def login_addresses_counted(self) -> str:
        """The addresses counted on their own, by when their window ends."""
        return f"{self.prefix}login:addr:counted"

    def login_attempt(self, attempt_id: str) -> str:
        """A login attempt counted and not yet answered (``LoginLimiter.reserve``; its id is hex)."""
        return f"{self.prefix}login:attempt:{attempt_id}"

    def login_in_flight(self, counter: str) -> str:
        """The count of a login counter's attempts still waiting for the directory."""
        return f"{counter}:in_flight"

    def holdings(self, owner_hash: str) -> str:
        return f"{self.prefix}holdings:{owner_hash}"

    @property
    def holders(self) -> str:
        """The owners with a holdings set (lua/quota.lua; swept by lua/holders_sweep.lua)."""
        return f"{self.prefix}holders"

    def owner_requests(self, owner_hash: str) -> str:
        return f"{self.prefix}requests:{owner_hash}"

    def rate_limit(self, request_class: str, client: str) -> str:
        return f"{self.prefix}ratelimit:{request_class}:{client}"

    def rate_limit_clients(self, request_class: str) -> str:
        """The clients of a rate-limit class counted on their own, by when their window ends
        (``<who>`` always starts ``ip:``, ``login:`` or ``user:``, so no client is named ``clients``)."""
        return f"{self.prefix}ratelimit:{request_class}:clients"

    def rate_limit_shared(self, request_class: str, counter: int) -> str:
        """One of the counters a rate-limit class's clients share once its table is full."""
        return f"{self.prefix}ratelimit:{request_class}:shared:{counter}"

    @property
    def migrating(self) -> str:
        return f"{self.prefix}migrating"

    @property
    def templates_prepared(self) -> str:
        return f"{self.prefix}templates:prepared"

    @property
    def templates_preparing(self) -> str:
        return f"{self.prefix}templates:preparing"

    def history(self, pool: str) -> str:
        return f"{self.prefix}history:{pool}"

    def demand(self, pool: str, day: str) -> str:
        """A demand-sized pool's per-minute checkouts and misses on a UTC day."""
        return f"{self.prefix}demand:{pool}:{day}"

    @property
    def sizing_state(self) -> str:
        return f"{self.prefix}sizing:state"

    def dummy_folder(self, provider: str, folder: str) -> str:
        """The dummy provider's VMs in a folder. The folder is an inventory path of the config,
        which may hold ``:``: as it is, folder ``x:version`` would be folder ``x``'s version key.
        Such a folder (and one starting ``~``) is ``~`` and a hash; every other folder is its own
        key part, so keys written before stay where they were, and none holds ``:``, which keeps
        the suffixes of ``dummy_folder_version`` and ``dummy_folder_changes`` apart from it."""
        if ":" in folder or folder.startswith("~"):
            folder = "~" + hashlib.sha256(folder.encode()).hexdigest()[:32]
        return f"{self.prefix}dummy:{provider}:folder:{folder}"

    def dummy_folder_version(self, folder_key: str) -> str:
        """The version of the dummy provider's folder keyed ``folder_key`` (``dummy_folder``):
        one more per VM written or deleted."""
        return f"{folder_key}:version"

    def dummy_folder_changes(self, folder_key: str) -> str:
        """The change log of the dummy provider's folder keyed ``folder_key`` (``dummy_folder``):
        the VMs written or deleted, scored by the folder's version after each."""
        return f"{folder_key}:changes"

    def dummy_task(self, provider: str, task_ref: str) -> str:
        return f"{self.prefix}dummy:{provider}:task:{task_ref}"


def purge_lease_name(provider: str) -> str:
    """What ``Store.acquire_lease`` takes for the provider's purge lease (``lease:purge:<provider>``)."""
    return f"purge:{provider}"


def template_lease_name(provider: str, template: str) -> str:
    """What ``Store.acquire_lease`` takes for the lease on preparing a provider's template
    (``lease:template:<provider>:<hash>``): a template path may hold ``:``, so it is hashed."""
    return f"template:{provider}:{hashlib.sha256(template.encode()).hexdigest()[:32]}"


def quota_owner(user: str | None, address: str, entry: str | None = None) -> str:
    """Who a quota counts, hashed into ``holdings:<owner hash>``: ``entry:<stable id>`` of the
    directory entry a token's login bound as, when known (a name given to a newcomer is another
    owner; a user renamed is the same one: by name and entry, what they held under the old name
    was counted apart), else ``user:<canonical user>`` for a token's user, else ``addr:<address>``."""
    if user is None:
        return f"addr:{address}"
    return f"entry:{entry}" if entry else f"user:{user}"


def rate_limit_client(user: str | None, address: str, login: str | None = None) -> str:
    """The ``<who>`` of ``ratelimit:<class>:<who>``: ``user:<hash of user>`` for a valid token's
    user (``api.limits.rate_client``: the directory entry when known, else the canonical name;
    every token of one user is one client), ``login:<hash of the login
    name>:<address>`` for Basic credentials a token route checks, else ``ip:<address>``."""
    if user is None:
        if login is not None:
            return f"login:{hashlib.sha256(login.encode('utf-8')).hexdigest()[:32]}:{address}"
        return f"ip:{address}"
    return f"user:{hashlib.sha256(user.encode('utf-8')).hexdigest()[:32]}"
