"""The kinds of failure a provider reports (providers/base.py), in a module of their own: the
configuration names them too (``createvm_fail_kind``) and must not import the provider interface.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class FailureKind(enum.Enum):
    """What kind of failure an operation met, as the provider that met it knows it.

    The value is the ``reason`` dimension of the CloneFailures metric and the ``failure`` field
    of a VM whose clone failed, and ``permanent`` decides whether an on-demand request spends
    another attempt on it. A provider names the kind where it detects the failure (a missing
    template, a vCenter fault's type), never by reading its own message back.
    """

    TEMPLATE = "template"
    """The template is missing or cannot be cloned as the pool configures it."""
    NETWORK = "network"
    """The network the pool connects its VMs to is missing."""
    PLACEMENT = "placement"
    """The folder, datastore, resource pool or cluster the clone goes to is missing."""
    PERMISSION = "permission"
    """The backend refuses this user (login or privilege)."""
    CAPACITY = "capacity"
    """No host or datastore has room for the VM now."""
    TIMEOUT = "timeout"
    """The backend or the call timed out."""
    CONNECTION = "connection"
    """The backend could not be reached."""
    HOST = "host"
    """The backend answers, but a host it manages does not (vCenter's HostNotConnected,
    HostNotReachable): retried, on another host when the provider picks them (it avoids that one
    for a while); the backend's other hosts and calls still work, so unlike ``connection`` it
    stops no other call of the pass."""
    OTHER = "other"
    """Anything else: retried like a passing fault."""

    @property
    def permanent(self) -> bool:
        """Whether another attempt would fail the same way until an operator changes the
        configuration or the backend (retrying cannot help)."""
        return self in _PERMANENT

    @classmethod
    def parse(cls, value: str | None) -> "FailureKind":
        """The kind a stored value names; OTHER for anything unknown (or written by an older
        version)."""
        try:
            return cls(value)
        except ValueError:
            return cls.OTHER


_PERMANENT = frozenset({FailureKind.TEMPLATE, FailureKind.NETWORK, FailureKind.PLACEMENT, FailureKind.PERMISSION})


@dataclass(frozen=True)
class Failure:
    """A failed operation: its kind and the backend's message."""

    kind: FailureKind
    message: str
