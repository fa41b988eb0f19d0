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

    def hold(self, provider: str, names: Collection[str], now: float, keep_seconds: float, token: str) -> bool:
        """Hold ``names`` (no clone is reserved under one for ``keep_seconds``), set the
        provider's mark and drop its claim (lua/names_hold.lua): in one call, one round trip, up
        to ``NAMES_PER_CALL`` names. Whether it was done: not when the claim taken by ``claim``
        with ``token`` is not the caller's any more (it lapsed and another pass claimed, or
        Redis lost its data again since the read), nor when Redis ran the last call after the
        caller's socket timeout (``Store.answer_deadline``: a freeze); then no call sets the mark,
        as a read that stale may miss a VM Redis forgot since (word names back, a second VM of
        its name), and the pass that holds the claim now reads again.

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

        def call(batch: list[str], last: str, deadline: str) -> ScriptCall:
            return (self.scripts.names_hold, keys, [repr(now), int(keep_seconds), last, token, deadline, *batch])

        with _translate_errors():
            # The earlier calls without a deadline: one deadline for the whole pipeline passed
            # while Redis still streamed its answers (the client waiting for each within its
            # socket timeout), refusing the later calls of every large read (200,000 names at a
            # 0.2 s timeout: never marked). Run late they only hold names, which keeps clones
            # off them: the mark is the last call's, sent alone with its deadline once they
            # answered. Raises if any was refused; one not done (claim gone): no mark.
            if len(batches) > 1 and not all(run_many(self.client, [call(batch, "", "") for batch in batches[:-1]])):
                return False
            return bool(run_many(self.client, [call(batches[-1], "1", self.store.answer_deadline())])[0])

    def held(self) -> set[str]:
        """Every name held now (for tests and operators)."""
        with _translate_errors():
            return {str(name) for name in self.client.zrange(self.keys.names_held, 0, -1)}
