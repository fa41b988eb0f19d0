"""Aliases as vmpooler treats them: a string alias is echoed as written, and a name that is a
pool and also another pool's alias is served from both."""

from __future__ import annotations

from typing import Callable

from tests.harness import Harness

CONFIG = """
:config: {domain: example.com}
:providers:
  :dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
:pools:
  - {name: debian, size: 1, provider: dummy, alias: [linux]}
  - {name: debian-12, size: 1, provider: dummy, alias: debian}
  - {name: centos, size: 1, provider: dummy, alias: [linux, any]}
"""


def test_a_string_alias_is_echoed_as_a_string(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG)
    pools = stack.get("/api/v3/status?view=pools").json["pools"]
    assert pools["debian-12"]["alias"] == "debian"
    assert pools["centos"]["alias"] == ["linux", "any"]
    assert stack.get("/api/v3/poolstat?pool=debian-12").json["pools"]["debian-12"]["alias"] == "debian"
    config = {p["name"]: p for p in stack.get("/api/v3/config").json["pool_configuration"]}
    assert config["debian-12"]["alias"] == "debian" and config["debian"]["alias"] == ["linux"]


def test_a_pool_name_that_is_also_an_alias_is_served_from_both(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(CONFIG)
    stack.fill()
    # Two VMs of "debian": one from the pool of that name, one from debian-12 (aliased "debian").
    reply = stack.post("/api/v3/vm", {"debian": 2})
    assert reply.status == 200
    served = {stack.get(f"/api/v3/vm/{name.split('.')[0]}").json[name.split(".")[0]]["template"]
              for name in reply.json["debian"]["hostname"]}
    assert served == {"debian", "debian-12"}
    # The alias-only name still reaches only its pools.
    assert stack.post("/api/v3/vm", {"any": 1}).json["any"]["hostname"]
    assert stack.post("/api/v3/vm", {"any": 1}).status == 503
