"""The Lua scripts that make multi-key state changes atomic, registered once per client."""

from __future__ import annotations

from pathlib import Path

import redis
from redis.commands.core import Script

_LUA_DIR = Path(__file__).with_name("lua")


class Scripts:
    """Each script of ``lua/`` as a callable; redis-py runs it by SHA and loads it when missing."""

    def __init__(self, client: redis.Redis) -> None:
        def load(name: str) -> Script:
            return client.register_script((_LUA_DIR / f"{name}.lua").read_text())

        self.checkout = load("checkout")
        self.move = load("move")
        self.reserve_clones = load("reserve_clones")
        self.release_lease = load("release_lease")
        self.record_durations = load("record_durations")
        self.update = load("update")
        self.set_once = load("set_once")
        self.migration_slot = load("migration_slot")
        self.discover = load("discover")
        self.ondemand_create = load("ondemand_create")
        self.ondemand_reserve = load("ondemand_reserve")
        self.ondemand_deliver = load("ondemand_deliver")
        self.ondemand_end = load("ondemand_end")
        self.vm_task_take = load("vm_task_take")
        self.vm_task_note = load("vm_task_note")
        self.vm_task_finish = load("vm_task_finish")
