"""The service's state in Redis: key schema, Lua scripts and typed operations."""

from chalicelib.store.connection import connect
from chalicelib.store.keys import STATES, Keys
from chalicelib.store.records import VMRecord
from chalicelib.store.store import (
    DNS_ELSEWHERE,
    CheckedOut,
    CheckoutNotDurable,
    CheckoutRequest,
    CheckoutResult,
    DayStats,
    DnsClaim,
    DurationSample,
    ModifyResult,
    NotYetReplicated,
    PoolSnapshot,
    Quota,
    QuotaExceeded,
    ReplicaAcks,
    RequestNotDurable,
    Store,
    StoreUnavailable,
    TokenGone,
    TokenNotDurable,
)

__all__ = [
    "STATES", "Keys", "VMRecord", "CheckedOut", "CheckoutNotDurable", "CheckoutRequest", "CheckoutResult", "DayStats",
    "DNS_ELSEWHERE",
    "DnsClaim",
    "DurationSample", "ModifyResult", "NotYetReplicated", "PoolSnapshot", "Quota", "QuotaExceeded", "ReplicaAcks",
    "RequestNotDurable", "Store", "StoreUnavailable", "TokenGone", "TokenNotDurable",
    "connect",
]
