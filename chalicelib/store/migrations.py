"""Migrations of checked-out VMs (``migration_limit``): the service-wide slots and the record.

A checkout with migrations enabled marks each VM ``migration=queued`` (in the same atomic step).
Its pool's pass takes a slot (``migrating``, at most ``migration_limit`` members, checked and
taken in one script), starts the move, notes the task as ``migration_task``, and on a later pass
finishes it: the record gets the new ``host`` and ``migrated=true`` (or ``migration_error``) and
the slot is freed. Slots older than ``STALE_SLOT_SECONDS`` are forgotten, so a slot whose VM left
every pool (its pass killed at the wrong moment) cannot block migrations for good.
"""

from __future__ import annotations

from typing import Any

from chalicelib.store.leases import holder_label
from chalicelib.store.store import _translate_errors, update_args
from chalicelib.store.substore import SubStore

QUEUED = "queued"
STARTED = "started"
TAKER_GONE = "migration_taker_gone"
"""A record field: the process that took the VM's slot (its ``migration_taker``) is known dead
(manager/migrations.abandon_unstarted), so it is judged after a settle time, not the start grace."""
ADOPTED = "migration_adopted"
"""A record field: the migration's task was not noted by the pass that sent it but found among
the VM's recent moves (manager/migrations.py ``_judge_unnoted``): maybe another user's."""

STALE_SLOT_SECONDS = 3600.0
"""Far longer than a vMotion of a CI VM takes."""


class MigrationStore(SubStore):
    """Take and free migration slots; every method raises StoreUnavailable."""

    def take_slot(self, hostname: str, limit: int, now: float) -> str:
        """'started', 'limit' or 'gone' (see lua/migration_slot.lua); 'limit' too when Redis ran
        it after the caller's socket timeout (``Store.answer_deadline``): no slot is taken then."""
        keys = self.store.keys
        with _translate_errors():
            return str(self.store.scripts.migration_slot(
                keys=[keys.migrating, keys.vm(hostname)],
                args=[hostname, limit, repr(now), repr(now - STALE_SLOT_SECONDS), holder_label(),
                      self.store.answer_deadline()],
            ))

    def finish(self, hostname: str, **fields: Any) -> None:
        """Free the VM's slot and end its migration on the record (with ``fields``: the new host,
        ``migrated``, or ``migration_error``), in one transaction. Every field of the move in
        flight goes (its noted target and origin too: the result is ``host`` and ``migrated``)."""
        changes: dict[str, Any] = {"migration": None, "migration_task": None, "migration_started": None,
                                   "migration_taker": None, "migration_to": None, "migration_from": None,
                                   TAKER_GONE: None, ADOPTED: None, **fields}
        keys = self.store.keys
        with _translate_errors():
            pipe = self.store.client.pipeline(transaction=True)
            pipe.zrem(keys.migrating, hostname)
            # EVAL with the script's text: it runs in the transaction whatever scripts Redis has
            # loaded (EVALSHA there would fail alone after the ZREM ran), and a pipeline given a
            # Script object first asks SCRIPT EXISTS (a round trip). A rare call: 1.3 KB more.
            update = self.store.scripts.update.script
            args = update_args(changes)
            pipe.execute_command("EVAL", update, 1, keys.vm(hostname), *args)
            pipe.execute()

    def in_flight(self) -> int:
        with _translate_errors():
            return int(self.store.client.zcard(self.store.keys.migrating))
