"""The service's state in Redis: key schema, Lua scripts and typed operations."""

from chalicelib.store.keys import STATES, Keys
from chalicelib.store.records import VMRecord
from chalicelib.store.store import (
    CheckedOut,
    CheckoutRequest,
    CheckoutResult,
    DayStats,
    DurationSample,
    ModifyResult,
    PoolSnapshot,
    Quota,
    QuotaExceeded,
    Store,
    StoreUnavailable,
    connect,
)

__all__ = [
    "STATES", "Keys", "VMRecord", "CheckedOut", "CheckoutRequest", "CheckoutResult", "DayStats",
    "DurationSample", "ModifyResult", "PoolSnapshot", "Quota", "QuotaExceeded", "Store", "StoreUnavailable", "connect",
]
