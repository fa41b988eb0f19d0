"""What the fuzz tests aim at: a running local stack and the headers every request carries
(conftest.py starts one per VMPOOL_FUZZ_AUTH mode)."""

from __future__ import annotations

import base64
import json
import urllib.request
from dataclasses import dataclass, field

from local.stack import Stack

POOLS = [("fuzz-one", 4), ("fuzz-two", 2)]
ADMIN = ("fuzzadmin", "fuzz-password")
AUTH = (":auth:\n  :provider: dummy\n  admins: [fuzzadmin]\n"
        # One caller sends every request: its failed logins must not lock the admin out.
        "  login_attempts_per_user: 1000000\n  login_attempts_per_user_all_addresses: 1000000\n"
        "  login_attempts_per_address: 1000000\n")


@dataclass
class FuzzTarget:
    """A running stack and the headers every request to it carries."""

    stack: Stack
    headers: dict[str, str] = field(default_factory=dict)


def admin_headers(stack: Stack) -> dict[str, str]:
    """An administrator's token (from POST /token) and Basic credentials, as request headers."""
    basic = "Basic " + base64.b64encode(":".join(ADMIN).encode()).decode()
    request = urllib.request.Request(f"http://127.0.0.1:{stack.port}/api/v3/token", method="POST",
                                     headers={"Authorization": basic})
    with urllib.request.urlopen(request, timeout=10) as answer:
        token = json.load(answer)["token"]
    return {"X-AUTH-TOKEN": token, "Authorization": basic}
