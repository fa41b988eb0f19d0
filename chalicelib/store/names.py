"""The names of VMs Redis forgot, held after it lost its data (manager/names.py): per provider a
mark that they were read (``Keys.names_known``), the claim of the one pass reading them
(``Keys.names_reading``) and the names found (``Keys.names_held``)."""

from __future__ import annotations

from typing import Collection

from chalicelib.store.scripts import ScriptCall, run_many
from chalicelib.store.store import _translate_errors
from chalicelib.store.substore import SubStore

NAMES_PER_CALL = 5000
"""Names written by one script call (a read of a large vCenter holds many): each call short for
Redis's one thread, the last one setting the mark (``NamesStore.hold`` says why it goes alone)."""


class NamesStore(SubStore):
    """The marks, claims and held names of manager/names.py; every method raises StoreUnavailable."""

    def claim(self, provider: str, now: float, hold_seconds: float, token: str) -> bool:
        """Whether the caller is now the one pass reading the provider's names (the mark missing,
        no other claim younger than ``hold_seconds``; not once Redis runs it after the caller's
        socket timeout, ``Store.answer_deadline``): lua/names_claim.lua."""
        with _translate_errors():
            return bool(self.scripts.names_claim(
                keys=[self.keys.names_reading(provider), self.keys.names_known(provider)],
                args=[repr(now), repr(hold_seconds), token, self.store.answer_deadline()]))

    def hold(self, provider: str, names: Collection[str], now: float, keep_seconds: float) -> None:
        """Hold ``names`` (no clone is reserved under one for ``keep_seconds``), set the
        provider's mark and drop its claim (lua/names_hold.lua): in one call, one round trip, up
        to ``NAMES_PER_CALL`` names.

        More are held by several calls, and those are not one step: the mark is set by the last
        call alone, sent once every other call has held its names. A caller that dies between
        them leaves the mark unset: the provider's pools keep to random names, and a pass reads
        the names again once the claim lapses, so a name read but not yet held is never taken
        by a word-name clone. The calls went in one pipeline: a call Redis refused (out of
        memory, for one) did not stop the calls after it, the last set the mark, and the names of
        the refused call were free for clones under word names (a duplicate VM name)."""
        ordered = sorted(names)
        batches = [ordered[start:start + NAMES_PER_CALL] for start in range(0, len(ordered), NAMES_PER_CALL)] or [[]]
        keys = [self.keys.names_held, self.keys.names_known(provider), self.keys.names_reading(provider)]
        calls: list[ScriptCall] = [(self.scripts.names_hold, keys, [repr(now), int(keep_seconds), "", *batch])
                                   for batch in batches[:-1]]
        last: ScriptCall = (self.scripts.names_hold, keys, [repr(now), int(keep_seconds), "1", *batches[-1]])
        with _translate_errors():
            if calls:
                run_many(self.client, calls)  # raises if any was refused: the mark stays unset
            run_many(self.client, [last])

    def held(self) -> set[str]:
        """Every name held now (for tests and operators)."""
        with _translate_errors():
            return {str(name) for name in self.client.zrange(self.keys.names_held, 0, -1)}
