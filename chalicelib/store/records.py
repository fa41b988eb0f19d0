"""A VM's record as the store keeps it: a Redis hash of strings, read into a typed object."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from chalicelib.config import MAX_HOURS


def finite_number(value: Any) -> float | None:
    """A Redis value as a finite number; None when absent, empty, not a number, NaN or infinite
    (a figure or a record's time broken in Redis, by hand or by a bug, reads as none instead of
    failing its readers: one VM's broken field must not fail its pool's passes)."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _lifetime(value: str | None) -> int | None:
    """A VM's lifetime in hours as recorded; None (the configured one) when absent, not a number
    or under an hour. Past ``MAX_HOURS`` (only a record written before that cap, or by hand:
    ``inf``) it reads as ``MAX_HOURS``: its end time stays a date, and the VM still outlives
    anyone looking (move.lua, which keeps the VM, agrees). Before, ``nan`` or text failed every
    pass of the VM's pool and its GET /vm; a lifetime past the year 9999 failed its GET /vm."""
    try:
        hours = float(value) if value else math.nan
    except ValueError:
        return None
    if hours > MAX_HOURS:
        return MAX_HOURS
    return int(hours) if hours >= 1 else None


def _json(value: str | None, empty: Any) -> Any:
    if not value:
        return empty
    try:
        return json.loads(value)
    except ValueError:
        return empty


MARKS_ASKED = "marks_asked"
"""A pending VM's record field ('1'), written by the script that reserved it
(lua/reserve_clones.lua, lua/ondemand_reserve.lua): the pass that reserved it, which starts its
clone, marks it ``clone_asked`` just before asking the provider (lua/clone_asked.lua), and the
mark is refused once the VM left pending. So such a VM that left pending unmarked was never
cloned and never will be: its slot is freed at once (manager/pending.unnoted_clones_running).
A record without it was reserved by an older version, which cloned without the mark: during a
deploy it may still be cloned, so it keeps the start grace."""
RESERVER_LEASE = "reserver_lease"
"""A pending VM's record field: the lease token of the run whose pass reserved it (written by
the reserving script, lua/reserve_clones.lua, lua/ondemand_reserve.lua; none outside a leased
run). That run marks it ``clone_asked`` only while it still holds the pool's lease
(lua/clone_asked.lua), so once another run holds the lease, an unasked one can never be cloned:
that run's pass gives its place back at once (manager/pending.py), not after the start grace."""
TAG_FIELD_PREFIX = "tag:"
"""Each tag is its own field of the record, ``tag:<key>``: changed one by one, never lost to a
concurrent change of another tag."""


TAG_ORDER_FIELD = "tag_order"
"""The record's tag names in the order each was first set (a JSON list, lua/vm_modify.lua):
Redis keeps a hash's fields in that order only while the hash is small."""


def _tags(data: Mapping[str, str]) -> dict[str, str]:
    """The tags of a record: its ``tag:<key>`` fields, over the JSON ``tags`` field older
    versions wrote; in the order first set (``tag_order``). A tag it does not name was set by a
    version before it, so before those it names: first, in Redis's order."""
    text = data.get("tags")
    tags = dict(_json(text, {})) if text else {}
    prefix, length = TAG_FIELD_PREFIX, len(TAG_FIELD_PREFIX)
    found = {name[length:]: data[name] for name in data if name[:length] == prefix}
    listed = _json(data.get(TAG_ORDER_FIELD), [])
    if not found or not isinstance(listed, list):
        tags.update(found)
        return tags
    later = {name: found.pop(name) for name in listed if isinstance(name, str) and name in found}
    tags.update(found)
    tags.update(later)
    return tags


@dataclass(frozen=True)
class VMRecord:
    """One VM as the service knows it. Times are epoch seconds."""

    name: str
    pool: str
    state: str
    template: str = ""
    domain: str = ""
    clone_start: float | None = None
    clone_end: float | None = None
    ready_at: float | None = None
    checkout: float | None = None
    lifetime_hours: int | None = None
    token_user: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)
    disks: tuple[str, ...] = ()
    snapshots: tuple[str, ...] = ()
    host: str = ""
    ip: str = ""
    clone_task: str = ""
    destroy_task: str = ""
    reason: str = ""
    """Why the VM left service early (clone error, boot timeout, ready_ttl, reaped...)."""
    not_ready_reason: str = ""
    failure: str = ""
    """The kind of provider failure that took it out of service (``FailureKind`` value), if any."""
    state_since: float | None = None
    raw: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> "VMRecord":
        get = data.get
        state = get("state", "")
        record = object.__new__(cls)
        # Every field set at once, as the generated __init__ of a frozen dataclass sets them one
        # by one through object.__setattr__: a pass builds a record for every VM it reads (each
        # returned VM twice), and that __init__ was half of building one (docs/performance.md,
        # "Twelfth round"). tests/core/test_records.py checks every field is set, as __init__ would.
        record.__dict__.update(
            name=get("name", ""),
            pool=get("pool", ""),
            state=state,
            template=get("template", ""),
            domain=get("domain", ""),
            clone_start=finite_number(get("clone_start")),
            clone_end=finite_number(get("clone_end")),
            ready_at=finite_number(get("ready_at")),
            checkout=finite_number(get("checkout")),
            lifetime_hours=_lifetime(get("lifetime")),
            token_user=get("token_user", ""),
            tags=_tags(data),
            disks=tuple(_json(get("disks"), [])),
            snapshots=tuple(_json(get("snapshots"), [])),
            host=get("host", ""),
            ip=get("ip", ""),
            clone_task=get("clone_task", ""),
            destroy_task=get("destroy_task", ""),
            reason=get("reason", ""),
            not_ready_reason=get("not_ready_reason", ""),
            failure=get("failure", ""),
            state_since=finite_number(get(f"{state}_at")),
            raw=dict(data),
        )
        return record

    def fqdn(self) -> str:
        return f"{self.name}.{self.domain}" if self.domain else self.name


@dataclass(frozen=True)
class CloneBackoff:
    """A pool whose clones keep failing (manager/clones.py): the clones failed since the last one
    that ended well, how many times the pool backed off since, until when it waits, and the
    fingerprint of the pool's clone settings then (an operator's change ends the backoff)."""

    failed: int = 0
    backoffs: int = 0
    until: float = 0.0
    settings: str = ""

    @classmethod
    def parse(cls, value: str | None) -> "CloneBackoff":
        """From its stored form; an empty backoff for None or anything unreadable."""
        try:
            failed, backoffs, until, settings = str(value).split(" ", 3)
            return cls(int(failed), int(backoffs), float(until), settings)
        except ValueError:
            return cls()

    def dump(self) -> str:
        return f"{self.failed} {self.backoffs} {self.until!r} {self.settings}"
