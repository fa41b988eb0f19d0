"""Who holds a lease: every lease token names its holder, the host and process that took it,
before its random part (``<host>:<pid>@<start>:<random>``); a disk or snapshot task taken by a
pass names its taker the same way (``<host>:<pid>@<start>``). ``<start>`` is which process of
that pid it was: the machine's boot id (its first 8 characters) and the process's start time
since boot (``/proc``), so a pid reused after a reboot or a wrap is not taken for the holder;
where there is no ``/proc`` the label is ``<host>:<pid>``. Redis compares tokens whole, so the
name changes nothing about who may renew or release a lease; it lets a restarted local stack
tell a lease its dead predecessor left (up to a minute of its pools not reconciled) from one a
live process holds (local/scheduler.py), and an operator reading ``lease:<pool>`` see who holds it."""

from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass

BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


@dataclass(frozen=True)
class LeaseHolder:
    host: str
    pid: int
    start: str | None = None
    """Which process of that pid (``process_start``); None in a label without one (an older
    stack's, or a machine without ``/proc``)."""


def process_start(pid: int) -> str | None:
    """Which process ``pid`` is on this machine: ``<boot id>-<start time in clock ticks since
    boot>``, different for a process that reuses the pid, after a reboot too; None when it is not
    running or the machine has no ``/proc``."""
    try:
        with open(BOOT_ID_PATH, "rb") as boot, open(f"/proc/{pid}/stat", "rb") as stat:
            boot_id, fields = boot.read().strip()[:8], stat.read().rsplit(b")", 1)[-1].split()
    except OSError:
        return None
    # After the command's closing parenthesis: state is field 3, starttime field 22.
    if len(fields) < 20 or not boot_id:
        return None
    return f"{boot_id.decode('ascii', 'replace')}-{fields[19].decode('ascii', 'replace')}"


_own_label: tuple[int, str] | None = None
"""This process's label and the pid it was made for: a forked child makes its own."""


def holder_label() -> str:
    """This process as a lease token or a taken task names it: ``<host>:<pid>@<start>``."""
    global _own_label
    pid = os.getpid()
    if _own_label is None or _own_label[0] != pid:
        start = process_start(pid)
        _own_label = (pid, f"{socket.gethostname()}:{pid}" + (f"@{start}" if start else ""))
    return _own_label[1]


def lease_token() -> str:
    """A new lease token naming this process as its holder."""
    return f"{holder_label()}:{secrets.token_hex(8)}"


def lease_holder(token: str) -> LeaseHolder | None:
    """The holder a token names; None for a token that names none (one an earlier release took,
    a random hex string, or anything else found under a lease key)."""
    label, _, rest = token.rpartition(":")
    return labelled_holder(label) if rest else None


def labelled_holder(label: str) -> LeaseHolder | None:
    """The holder a ``holder_label`` names (with or without its ``@<start>``); None for anything else."""
    host, _, process = label.rpartition(":")
    pid, at, start = process.partition("@")
    if not host or not (pid.isascii() and pid.isdigit()) or (at and not start):
        return None
    return LeaseHolder(host, int(pid), start or None)
