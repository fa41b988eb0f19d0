"""The base of the typed stores over one part of the state (names, on-demand requests, VM tasks,
templates, overrides, history, the fleet, migrations): each works through the one ``Store``'s
client, key schema and scripts, so it takes the Store and nothing else."""

from __future__ import annotations

from chalicelib.store.store import Store


class SubStore:
    """A store over one part of the state; ``store`` for what the Store itself does (deadlines,
    TTLs, replication), ``client``, ``keys`` and ``scripts`` for Redis."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.client = store.client
        self.keys = store.keys
        self.scripts = store.scripts
