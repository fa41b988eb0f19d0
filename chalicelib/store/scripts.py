"""The Lua scripts that make multi-key state changes atomic, registered once per client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from chalicelib.store.keys import DERIVED_KEYS

_LUA_DIR = Path(__file__).with_name("lua")

SHARED: dict[str, tuple[str, ...]] = {"checkout": ("open_waiting", "quota", "token_live"),
                                      "ondemand_create": ("open_waiting", "quota", "token_live"),
                                      "ondemand_deliver": ("open_waiting", "finite", "request_sets"),
                                      "move": ("record_fields", "finite", "token_live", "vm_owner"),
                                      "update": ("record_fields",), "release": ("finite",),
                                      "vm_task_enqueue": ("past_deadline", "vm_task_queue", "token_live", "vm_owner"),
                                      "vm_modify": ("past_deadline", "vm_task_queue", "token_live", "vm_owner",
                                                    "tag_stats"),
                                      "record_tags": ("tag_stats",),
                                      "ondemand_end": ("finite", "token_live", "open_waiting", "request_sets"),
                                      "ondemand_reserve": ("finite", "open_waiting", "past_deadline"),
                                      "pool_overrides": ("token_live", "past_deadline"),
                                      "token_create": ("past_deadline",), "token_confirm": ("past_deadline",),
                                      "reserve_clones": ("past_deadline",),
                                      "clone_asked": ("past_deadline",), "names_claim": ("past_deadline",),
                                      "names_hold": ("past_deadline",),
                                      "vm_task_take": ("past_deadline",), "migration_slot": ("past_deadline",),
                                      "service_started": ("finite",),
                                      "dns_claim": ("finite",), "vm_ip": ("finite",), "holders_sweep": ("quota",)}
"""Scripts run with the functions of other files (lua/quota.lua, lua/record_fields.lua,
lua/finite.lua, lua/vm_task_queue.lua, lua/token_live.lua, lua/vm_owner.lua, lua/open_waiting.lua,
lua/tag_stats.lua, lua/past_deadline.lua, lua/request_sets.lua: the last only in scripts that
derive keys, it uses key_of)
before their own text."""


def script_source(name: str) -> str:
    """The text Redis runs for lua/<name>.lua: its own, after the shared functions it uses (see
    SHARED) and, for the scripts that derive keys (keys.DERIVED_KEYS), lua/key_of.lua."""
    parts = (*(("key_of",) if name in DERIVED_KEYS else ()), *SHARED.get(name, ()), name)
    return "\n".join((_LUA_DIR / f"{part}.lua").read_text() for part in parts)


class _Script:
    """A script run by SHA, its text sent when Redis lacks it. Loaded scripts are not replicated:
    after a failover the new primary lacks them, and a command refused by the demoted node may be
    retried there after redis-py loaded the script on the old one. So on ``NOSCRIPT`` (the
    script did not run) the client of store/connection.py sends ``EVAL`` with the text, once:
    one round trip where ``SCRIPT LOAD`` then ``EVALSHA`` cost two (inside a checkout's confirm
    window, the first checkout after a failover); Redis caches the text it ran for the next
    ``EVALSHA``. Retried only as any command (``READONLY``, never after a lost reply)."""

    def __init__(self, script: Script, text: str) -> None:
        self._script = script
        self.script = text

    @property
    def sha(self) -> str:
        return str(self._script.sha)

    def load_into(self, client: redis.Redis) -> None:
        """Load the script into the Redis ``client`` talks to (for EVALSHA in a pipeline)."""
        client.script_load(self.script)

    def __call__(self, keys: Sequence[Any] = (), args: Sequence[Any] = (), client: Any = None) -> Any:
        run_script = getattr(self._script.registered_client, "run_script", None) if client is None else None
        if run_script is None:  # a pipeline, or a client not of store/connection.py
            try:
                return self._script(keys=keys, args=args, client=client)
            except NoScriptError:
                return self._script(keys=keys, args=args, client=client)
        # The lean EVALSHA of store/connection.py's client (redis-py's Script, in fewer layers).
        try:
            return run_script(self.sha, keys, args)
        except NoScriptError:
            return run_script(self.sha, keys, args, text=self.script)


def registered(client: redis.Redis, text: str) -> _Script:
    """``text`` as a script of ``client`` run by SHA, loaded when Redis lacks it, once more
    after a failover (``_Script``). Every script the service runs is registered so: redis-py's
    own (``register_script``) failed the first call after a failover of a script the demoted
    node lacked (NOSCRIPT there, loaded there, then READONLY, retried on the new primary:
    NOSCRIPT again, raised), a 503 for the first login, token or dummy clone of each process."""
    return _Script(client.register_script(text), text)


class Scripts:
    """Each script of ``lua/`` as a callable; redis-py runs it by SHA and loads it when missing."""

    def __init__(self, client: redis.Redis) -> None:
        def load(name: str) -> _Script:
            return registered(client, script_source(name))

        self.checkout = load("checkout")
        self.confirm = load("confirm")
        self.release = load("release")
        self.move = load("move")
        self.reserve_clones = load("reserve_clones")
        self.release_lease = load("release_lease")
        self.record_durations = load("record_durations")
        self.history_points = load("history_points")
        self.state_counts = load("state_counts")
        self.cloning_pending = load("cloning_pending")
        self.union_members = load("union_members")
        self.update = load("update")
        self.vm_modify = load("vm_modify")
        self.rate_count = load("rate_count")
        self.window_count = load("window_count")
        self.record_tags = load("record_tags")
        self.day_figures = load("day_figures")
        self.set_once = load("set_once")
        self.replace_field = load("replace_field")
        self.migration_slot = load("migration_slot")
        self.discover = load("discover")
        self.ondemand_create = load("ondemand_create")
        self.ondemand_confirm = load("ondemand_confirm")
        self.ondemand_reserve = load("ondemand_reserve")
        self.ondemand_claim = load("ondemand_claim")
        self.ondemand_deliver = load("ondemand_deliver")
        self.ondemand_end = load("ondemand_end")
        self.vm_task_enqueue = load("vm_task_enqueue")
        self.vm_task_take = load("vm_task_take")
        self.vm_task_note = load("vm_task_note")
        self.vm_task_finish = load("vm_task_finish")
        self.vm_task_requeue = load("vm_task_requeue")
        self.pool_snapshot = load("pool_snapshot")
        self.finish_clones = load("finish_clones")
        self.clone_asked = load("clone_asked")
        self.pool_overrides = load("pool_overrides")
        self.running_recount = load("running_recount")
        self.schedule_running = load("schedule_running")
        self.config_generation = load("config_generation")
        self.service_started = load("service_started")
        self.dns_claim = load("dns_claim")
        self.holders_sweep = load("holders_sweep")
        self.dns_confirm = load("dns_confirm")
        self.dns_forget = load("dns_forget")
        self.vm_ip = load("vm_ip")
        self.names_claim = load("names_claim")
        self.names_hold = load("names_hold")
        self.settle = load("settle")


ScriptCall = tuple[_Script, Sequence[str], Sequence[Any]]
"""One run of a script: the script, its KEYS and its ARGV."""


def run_many(client: redis.Redis, calls: Sequence[ScriptCall],
             commands: Sequence[Sequence[Any]] = ()) -> list[Any]:
    """Run many script calls in one round trip (a pipeline of EVALSHA) and return their replies
    in order. Each call is atomic and checks its own conditions, exactly as when run alone; the
    pipeline only saves the round trips. Calls of a script Redis lacks (a new primary after a
    failover) are run once more in a second pipeline, the first of each script by ``EVAL`` with
    its text (Redis caches it for the ``EVALSHA`` of the others); they did not run the first
    time. ``commands``
    (plain commands, each its name and arguments) go first in the same pipeline, run once;
    their replies come first too. Raises the first other error (the calls before it ran).

    After a failover the pipeline may reach the demoted node, which refuses every write with
    ``READONLY`` before it runs (a script's first write fails, none is made): the client's
    pipeline sends those refused calls and commands, only those, once more, on the new primary
    (store/connection.py ``_Pipeline``; refused again, the error is raised). Those that ran are not
    sent again: reads, and the writes made before a node demoted while it ran the pipeline."""
    plain, replies = _pipelined(client, calls, commands)
    for reply in (*plain, *replies):
        if isinstance(reply, Exception):
            raise reply
    return [*plain, *replies]


def _pipelined(client: redis.Redis, calls: Sequence[ScriptCall], commands: Sequence[Sequence[Any]],
               by_text: bool = False) -> tuple[list[Any], list[Any]]:
    """One pipeline of ``commands`` then ``calls``: their replies, errors among them (not
    raised); unless ``by_text`` (that second try itself), the calls of a script Redis lacked
    run again, the first of each script by ``EVAL`` with its text (one round trip)."""
    if not (calls or commands):
        return [], []
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    sent_text: set[str] = set()
    for script, keys, args in calls:
        if by_text and script.sha not in sent_text:
            sent_text.add(script.sha)
            pipe.execute_command("EVAL", script.script, len(keys), *keys, *args)
        else:
            # EVALSHA by hand: a pipeline given a Script object first asks SCRIPT EXISTS (a round trip).
            pipe.execute_command("EVALSHA", script.sha, len(keys), *keys, *args)
    answers = pipe.execute(raise_on_error=False)
    plain, replies = answers[:len(commands)], answers[len(commands):]
    missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
    if missing and not by_text:
        _, again = _pipelined(client, [calls[index] for index in missing], (), by_text=True)
        for index, reply in zip(missing, again, strict=True):
            replies[index] = reply
    return plain, replies


class KeyList:
    """The ``KEYS[]`` of one script call, for scripts given a variable number of keys: each key
    once, ``add`` telling the script where it sits (a 1-based index, passed in its arguments)."""

    def __init__(self, *keys: str) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        for key in keys:
            self.add(key)

    def add(self, key: str) -> int:
        if key not in self._index:
            self.keys.append(key)
            self._index[key] = len(self.keys)
        return self._index[key]
