"""The auth API tests' config documents: two small dummy pools that fill at once, and an ``:auth:``."""

from __future__ import annotations

from typing import Any

CLIENT_IP = "192.0.2.10"
"""Where the tests' requests come from (login limits count per address)."""

POOL = "debian"
OTHER_POOL = "ubuntu"


def document(auth: dict[str, Any] | None, **sections: Any) -> dict[str, Any]:
    """A config document: two small dummy pools that fill at once, and the given ``:auth:``."""
    doc: dict[str, Any] = {
        "config": {"vm_lifetime": 2, "vm_lifetime_auth": 12, "max_lifetime_upper_limit": 48, "domain": "example.com"},
        "providers": {"dummy": {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0,
                                "destroyvm_max_time": 0}},
        "pools": [
            {"name": POOL, "size": 3, "provider": "dummy", "template": "t/debian", "domain": "example.com"},
            {"name": OTHER_POOL, "size": 1, "provider": "dummy", "template": "t/ubuntu"},
        ],
    }
    if auth is not None:
        doc["auth"] = auth
    for name, value in sections.items():
        doc[name] = {**doc.get(name, {}), **value} if isinstance(value, dict) else value
    return doc
