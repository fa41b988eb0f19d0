"""Pool sizes by schedule and by measured demand (issue 15; docs/sizing.md).

- ``settings``: the pool's ``sizing`` block, validated at config load.
- ``schedule``: which time window covers now, in the pool's time zone.
- ``demand``: per-minute demand history and the forecast made from it.
- ``controller``: the effective size and its reason; the reconcile pass's and /status's entry points.

Kept free of imports at package level so the store and the config loader can use the small
modules without a cycle.
"""
