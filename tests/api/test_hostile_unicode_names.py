"""Hostnames in the path that only a Unicode-aware matcher takes for ASCII: Python's ``re`` with
IGNORECASE lets ``[a-z]`` match the Kelvin sign (U+212A), the long s (U+017F) and the dotless i
(U+0131), and ``str.lower`` makes the Kelvin sign a ``k``. Such a name is no hostname: a 400
before any lookup, on every /vm/<hostname> route, and Redis unchanged. Before, ``GET`` and
``DELETE /vm/\u212ak...`` found and returned the VM ``kk...`` under a name no DNS has."""

from __future__ import annotations

from typing import Callable
from urllib.parse import quote

import pytest

from chalicelib.api.routes import ROUTES, Route
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness, route_target

PREFIXED_CONFIG = CONFIG_YAML.replace(":config:\n", ":config:\n  prefix: kk\n", 1)
"""Every VM's name starts with ``kk``: its Kelvin-sign spelling is always there to send."""

LOOK_ALIKES = {"kelvin sign": ("k", "\u212a"), "long s": ("s", "\u017f"), "dotless i": ("i", "\u0131")}

VM_ROUTES = [route for route in ROUTES if route.path.startswith("/vm/{name}") and route.name != "checkout_path"]
"""Every route whose {name} is a hostname (POST /vm/{name} names pools: test_hostile_every_route.py)."""


@pytest.fixture
def stack(make_stack: Callable[[str], Harness]) -> Harness:
    stack = make_stack(PREFIXED_CONFIG)
    stack.fill("pool2")
    return stack


@pytest.mark.parametrize("route", VM_ROUTES, ids=lambda route: route.name)
def test_a_hostname_with_a_look_alike_of_an_ascii_letter_is_a_400_and_changes_nothing(
        stack: Harness, route: Route) -> None:
    running = stack.checkout("pool2")
    assert running.startswith("kk")
    for what, (letter, look_alike) in LOOK_ALIKES.items():
        spelled = look_alike + running[1:] if letter == "k" else running.replace(letter, look_alike, 1)
        if spelled == running:
            spelled = look_alike + running
        params = {"name": quote(spelled), "size": "8", "snapshot": "a" * 32}
        before = stack.redis_state()
        reply = stack.request(route.method, route_target(route, params), b"{}" if route.method == "PUT" else None)
        assert reply.status == 400, (what, route.name, reply.status, reply.raw[:200])
        assert reply.json == {"ok": False, "error": "Invalid hostname format"}, what
        assert stack.redis_state() == before, (what, route.name)
    assert stack.state_of(running) == "running"
