"""The Lua scripts that make multi-key state changes atomic, registered once per client."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.commands.core import Script

_LUA_DIR = Path(__file__).with_name("lua")


class Scripts:
    """Each script of ``lua/`` as a callable; redis-py runs it by SHA and loads it when missing."""

    def __init__(self, client: redis.Redis) -> None:
        def load(name: str, *shared: str) -> Script:
            """lua/<name>.lua, after the shared functions of each lua/<shared>.lua."""
            parts = [(_LUA_DIR / f"{part}.lua").read_text() for part in (*shared, name)]
            return client.register_script("\n".join(parts))

        self.checkout = load("checkout", "quota")
        self.move = load("move")
        self.reserve_clones = load("reserve_clones")
        self.release_lease = load("release_lease")
        self.record_durations = load("record_durations")
        self.update = load("update")
        self.vm_modify = load("vm_modify")
        self.rate_count = load("rate_count")
        self.record_tags = load("record_tags")
        self.set_once = load("set_once")
        self.migration_slot = load("migration_slot")
        self.discover = load("discover")
        self.ondemand_create = load("ondemand_create", "quota")
        self.ondemand_reserve = load("ondemand_reserve")
        self.ondemand_deliver = load("ondemand_deliver")
        self.ondemand_end = load("ondemand_end")
        self.vm_task_take = load("vm_task_take")
        self.vm_task_note = load("vm_task_note")
        self.vm_task_finish = load("vm_task_finish")
