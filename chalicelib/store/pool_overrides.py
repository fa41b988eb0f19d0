"""Pool settings changed at runtime (POST /config/poolsize, /config/pooltemplate,
/config/clonetarget, /poolreset).

They live in Redis, so every Lambda sees them and they survive restarts; ``apply`` lays them
over the configured pool, which is how ``Services.pool`` hands the reconcile pass and the API
the pool as it should be now. A reset is a time: the pass drains VMs cloned before it. A clone
target lands in the pool's ``clone_target`` setting, which the vSphere provider's clone reads.

The rules of a value are here, for the API that sets it and for the reads that use it: a stored
value they refuse (stored before a rule, or by another writer) is ignored, so the pool keeps its
configured one instead of failing every pass. So is a template or clone target longer than the
config now in effect has room for in /config (``apply``'s ``room``): set under a config with more
room (fewer pools, shorter names), shown under one with less it would take /config past Lambda's
6 MB. The tick names such pools (manager/dispatch.py ``report_ignored_overrides``).
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from chalicelib.answer_sizes import fits_room
from chalicelib.config import PoolConfig
from chalicelib.config_fields import Invalid, inventory_path
from chalicelib.sizing.settings import MAX_SIZE
from chalicelib.store.keys import SIZE_OVERRIDES
from chalicelib.store.records import finite_number
from chalicelib.store.settle import VOID, answered_or_found, settled_mark, settled_ttl
from chalicelib.store.store import SettingRead, StoreUnavailable, TokenGone, _translate_errors, token_index
from chalicelib.store.substore import SubStore

SIZE = SIZE_OVERRIDES
TEMPLATE = "pooltemplate"
RESET = "poolreset"
CLONE_TARGET = "clonetarget"
SETTINGS = (SIZE, TEMPLATE, RESET, CLONE_TARGET)
FENCING = (TEMPLATE, RESET)
"""The settings whose change makes a pool's ready VMs stale: each fences them (lua/pool_overrides.lua)."""


MAX_TEMPLATE = 1024
"""A vSphere inventory path of a dozen folders of the 80 characters a name may have."""
MAX_CLONE_TARGET = 255


def valid_size(value: str | None) -> int | None:
    """A stored size: digits, at most MAX_SIZE; None otherwise (the API checks its own input)."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > len(str(MAX_SIZE)):
        return None
    size = int(value)
    return size if size <= MAX_SIZE else None


def _inventory_path(value: str) -> bool:
    try:
        inventory_path(value)
    except Invalid:
        return False
    return True


def valid_template(value: Any) -> str | None:
    """A template a pool may be given at runtime, or None: printable text of at most
    MAX_TEMPLATE characters (every VM the pool clones records it) that the config would load as
    an inventory path (no empty, '.' or '..' name, names of at most 80 characters:
    config_fields.inventory_path). The API adds vmpooler's own rule (api/pool_config.py)."""
    if not (isinstance(value, str) and len(value) <= MAX_TEMPLATE and value.isprintable()):
        return None
    return value if _inventory_path(value) else None


def valid_clone_target(value: Any) -> str | None:
    """A clone target a pool may be given at runtime (a cluster or host under the datacenter's
    host folder), or None: printable text of 1 to MAX_CLONE_TARGET characters that the config
    would load as an inventory path."""
    if not (isinstance(value, str) and 0 < len(value) <= MAX_CLONE_TARGET and value.isprintable()):
        return None
    return value if _inventory_path(value) else None


@dataclass(frozen=True)
class PoolOverride:
    size: int | None = None
    template: str | None = None
    reset_at: float | None = None
    clone_target: str | None = None
    ready_fence: str | None = None
    """The id of the template change or reset no pass has drained the pool for yet: until then no
    checkout takes the pool's ready VMs (lua/checkout.lua); ``PoolOverrides.lift_fence``."""
    read: tuple[SettingRead, ...] = field(default=(), compare=False)
    """The pool's stored template and reset as read (``PoolOverrides.all``; none for an override
    not read): a pass moves no VM to ready once either changed since it read them
    (``Store.note_pending``). A pass that read them before a template change or reset would
    otherwise make VMs of the old template ready after a newer pass had drained the pool and lifted
    the change's fence: handed out from then on, and never drained (no pass looks at ready VMs'
    templates again until the next change)."""


_FIELDS: Mapping[str, tuple[str, Callable[[Any], Any]]] = MappingProxyType({
    "size": (SIZE, valid_size),
    "template": (TEMPLATE, valid_template),
    "clone_target": (CLONE_TARGET, valid_clone_target),
})
"""A PoolOverride field the API sets -> its setting (the hash it is stored in) and the rule of a
stored value."""


def fitting(pool: PoolConfig, override: PoolOverride, room: int) -> PoolOverride:
    """``override`` without the template or clone target that takes more than ``room`` bytes
    (``answer_sizes.override_room`` of the config in effect) beyond ``pool``'s configured one in
    /config: the pool keeps its configured value (the override stays stored, and applies again
    under a config with room for it, or goes with DELETE /config/pooltemplate/<pool>)."""
    template, clone_target = override.template, override.clone_target
    if template is not None and not fits_room(room, pool.template, template):
        template = None
    if clone_target is not None and not fits_room(room, pool.clone_target, clone_target):
        clone_target = None
    if (template, clone_target) == (override.template, override.clone_target):
        return override
    return dataclasses.replace(override, template=template, clone_target=clone_target)


def apply(pool: PoolConfig, override: PoolOverride, room: Callable[[], int] | None = None) -> PoolConfig:
    """The pool with its runtime size, template and clone target, when set; with ``room``, a
    template or clone target /config has no room for is left out (``fitting``). ``room`` is
    asked only of a pool that has one: at 10,000 pools working it out takes 0.4 s (once per
    config, answer_sizes.override_room), which a config without such overrides never pays."""
    if room is not None and (override.template is not None or override.clone_target is not None):
        override = fitting(pool, override, room())
    if override.size is not None:
        pool = dataclasses.replace(pool, size=override.size)
    if override.template is not None:
        pool = dataclasses.replace(pool, template=override.template)
    if override.clone_target is not None:
        settings = MappingProxyType({**pool.settings, "clone_target": override.clone_target})
        pool = dataclasses.replace(pool, settings=settings)
    return pool


def _answer_kept(mark: str) -> list[list[str]] | None:
    """lua/pool_overrides.lua's answer as it kept it in the settled mark (JSON; an empty list is
    encoded ``{}``), or None when the change was not made (the mark ``void``)."""
    if mark == VOID:
        return None
    return [part if isinstance(part, list) else [] for part in json.loads(mark)]


class PoolOverrides(SubStore):
    """Read and change the runtime overrides; every method raises StoreUnavailable."""

    def get(self, pool: str) -> PoolOverride:
        return self.all([pool])[pool]

    def all(self, pools: Iterable[str]) -> dict[str, PoolOverride]:
        """pool -> its overrides, in one round trip and one step; a stored value that breaks the
        rules above is ignored (none)."""
        pools = list(pools)
        if not pools:
            return {}
        with _translate_errors():
            # MULTI: read as of one moment. Redis may serve another client between the commands of a
            # plain pipeline: a template change landing between the template and the fence had a
            # pass drain by the old template and lift the new change's fence.
            pipe = self.client.pipeline(transaction=True)
            for setting in SETTINGS:
                pipe.hmget(self.keys.pool_override(setting), pools)
            pipe.hmget(self.keys.ready_fence, pools)
            sizes, templates, resets, clone_targets, fences = pipe.execute()
        return {
            pool: PoolOverride(
                size=valid_size(size),
                template=valid_template(template),
                reset_at=finite_number(reset),  # an infinite one drained every VM in every pass
                clone_target=valid_clone_target(clone_target),
                ready_fence=None if fence is None else str(fence),
                read=(SettingRead(self.keys.pool_override(TEMPLATE), pool, template or ""),
                      SettingRead(self.keys.pool_override(RESET), pool, reset or "")),
            )
            for pool, size, template, reset, clone_target, fence in zip(
                pools, sizes, templates, resets, clone_targets, fences, strict=True)
        }

    def set(self, field: str, pool: str, value: int | str | None, token_key: str = "") -> None:
        """Override the pool's ``size``, ``template`` or ``clone_target``; None goes back to the
        configured one."""
        self.set_many(field, {pool: value}, token_key)

    def set_many(self, field: str, values: Mapping[str, int | str | None], token_key: str = "") -> list[str]:
        """Override ``field`` (``size``, ``template`` or ``clone_target``) of many pools at once,
        all or none (lua/pool_overrides.lua); None takes a pool back to its configured value.
        Returns the pools whose override changed, each nudged (``Store.wake``) in the same step.
        TokenGone (nothing changed) when ``token_key``, the record of the token the change was
        asked with, is gone; StoreUnavailable (nothing changed) when Redis ran the script only
        after the client's socket timeout (``Store.answer_deadline``), or when the script's
        answer was lost and it did not run (it never will: store/settle.py). An answer lost after
        the script ran is the one it kept (the same)."""
        changed, _ = self._set(_FIELDS[field][0], {pool: "" if value is None else str(value)
                                                   for pool, value in values.items()}, token_key)
        return changed

    def clear(self, field: str, pool: str, token_key: str = "") -> tuple[bool, PoolOverride]:
        """Take the pool's ``field`` (``size``, ``template`` or ``clone_target``) back to its
        configured value. Whether this call removed an override, and the override it found, read
        in the same step (DELETE /config/... answers the value it removed, not one read before
        another change landed): ``field`` only, none when absent or breaking the rules (``all``).
        TokenGone and StoreUnavailable as ``set_many``."""
        setting, valid = _FIELDS[field]
        changed, (found,) = self._set(setting, {pool: ""}, token_key)
        return bool(changed), PoolOverride(**{field: valid(found or None)})

    def _set(self, setting: str, values: Mapping[str, str], token_key: str) -> tuple[list[str], list[str]]:
        """(the pools whose override changed, for each pool of ``values`` the override the step
        removed: "" for none, and for a pool given a value)."""
        args = [part for pool, value in values.items() for part in (pool, value)]
        if not args:
            return [], []
        settled = self.keys.settled(secrets.token_hex(16))
        keys = [self.keys.pool_override(setting), self.keys.ready_fence, settled,
                *(self.keys.wake(pool) for pool in values)]
        token = token_index(keys, token_key)
        fence = secrets.token_hex(8) if setting in FENCING else ""
        script_args = [fence, self.store.answer_deadline(), token, settled_ttl(self.client), *args]
        with _translate_errors():
            # Its answer lost, the change is settled (store/settle.py): answered 503 though made,
            # the retry the 503 asks for reset the pool again (its fresh VMs destroyed too).
            answer = answered_or_found(lambda: self.scripts.pool_overrides(keys=keys, args=script_args),
                                       lambda: _answer_kept(settled_mark(self.client, self.scripts.settle, settled)))
        if answer == -1:
            raise TokenGone()
        if answer == -2:
            raise StoreUnavailable("redis: the change reached Redis after its deadline: not made")
        changed, found = answer
        return [str(pool) for pool in changed], [str(value) for value in found]

    def lift_fence(self, pool: str, fence: str) -> bool:
        """Let checkouts take the pool's ready VMs again: a pass that read the fence ``fence`` with
        the overrides has drained what they made stale. A fence set since (another change) stays
        for the pass that reads it. Whether this call lifted it."""
        with _translate_errors():
            return bool(self.scripts.replace_field(keys=[self.keys.ready_fence], args=[pool, fence, ""]))

    def reset(self, pool: str, now: float) -> None:
        """Drain the pool's ready and pending VMs cloned before ``now`` (and so refill it)."""
        self.reset_many([pool], now)

    def reset_many(self, pools: Iterable[str], now: float, token_key: str = "") -> None:
        """Drain the pools' ready and pending VMs cloned before ``now`` (and so refill them), in
        one step: every pool or none (TokenGone, none, when ``token_key`` is gone: ``set_many``)."""
        self._set(RESET, {pool: repr(now) for pool in pools}, token_key)
