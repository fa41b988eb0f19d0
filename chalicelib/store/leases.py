"""Who holds a lease: every lease token names its holder, the host and process that took it,
before its random part (``<host>:<pid>:<random>``); a disk or snapshot task taken by a pass
names its taker the same way (``<host>:<pid>``). Redis compares tokens whole, so the name
changes nothing about who may renew or release a lease; it lets a restarted local stack tell a
lease its dead predecessor left (up to a minute of its pools not reconciled) from one a live
process holds (local/scheduler.py), and an operator reading ``lease:<pool>`` see who holds it."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int


def holder_label() -> str:
    """This process as a lease token or a taken task names it: ``<host>:<pid>``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_token() -> str:
    """A new lease token naming this process as its holder."""
    return f"{holder_label()}:{secrets.token_hex(8)}"


def lease_holder(token: str) -> LeaseHolder | None:
    """The holder a token names; None for a token that names none (one an earlier release took,
    a random hex string, or anything else found under a lease key)."""
    label, _, rest = token.rpartition(":")
    return labelled_holder(label) if rest else None


def labelled_holder(label: str) -> LeaseHolder | None:
    """The holder a ``holder_label`` names; None for anything else."""
    host, _, pid = label.rpartition(":")
    if not host or not (pid.isascii() and pid.isdigit()):
        return None
    return LeaseHolder(host, int(pid))
