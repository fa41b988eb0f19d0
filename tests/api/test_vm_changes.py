"""PUT /vm/<host> under concurrency and abuse: concurrent changes of different tags all land, and
what a caller can make grow (tags per VM, tag statistics per day) is bounded."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import pytest

from chalicelib.api import vms
from chalicelib.api.http import ApiRequest
from chalicelib.api.routes import handle
from chalicelib.timestamps import day_of
from tests.api.configs import CONFIG_YAML
from tests.harness import Harness

ANY_TAGS_CONFIG = CONFIG_YAML.replace("  allowed_tags: [project, owner, created_by, url]\n", "")


def _put(stack: Harness, hostname: str, body: dict) -> int:
    """One PUT /api/v3/vm/<host> straight to the handler: the in-process gateway serves one
    request at a time, these run at once."""
    request = ApiRequest("PUT", 3, params={"name": hostname}, body=json.dumps(body).encode())
    return handle(stack.services, vms.modify, request).status


def test_concurrent_puts_of_different_tags_keep_every_tag(make_stack: Callable[[str], Harness],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """20 PUTs at once, each with its own tag, all read the VM before any writes (a barrier makes
    the worst interleaving certain): every tag is kept, and a lifetime change among them too."""
    stack = make_stack(ANY_TAGS_CONFIG)
    stack.fill("pool1")
    host = stack.checkout("pool1")
    callers = 20
    everyone_read = threading.Barrier(callers, timeout=10)
    read = stack.services.store.get_vm

    def get_vm_then_wait(hostname: str):  # type: ignore[no-untyped-def]
        record = read(hostname)
        everyone_read.wait()
        return record

    monkeypatch.setattr(stack.services.store, "get_vm", get_vm_then_wait)
    bodies = [{"tags": {f"key{i}": f"value{i}"}} for i in range(callers - 1)] + [{"lifetime": 5}]
    with ThreadPoolExecutor(callers) as pool:
        statuses = list(pool.map(lambda body: _put(stack, host, body), bodies))
    monkeypatch.undo()
    assert statuses == [200] * callers
    described = stack.get(f"/api/v3/vm/{host}").json[host]
    assert described["tags"] == {f"key{i}": f"value{i}" for i in range(callers - 1)}
    assert described["lifetime"] == 5


def test_a_vm_carries_a_bounded_number_of_tags(make_stack: Callable[[str], Harness]) -> None:
    stack = make_stack(ANY_TAGS_CONFIG.replace(":config:\n", ":config:\n  max_tags_per_vm: 3\n", 1))
    stack.fill("pool1")
    host = stack.checkout("pool1")
    assert stack.put(f"/api/v3/vm/{host}", {"tags": {"a": "1", "b": "2"}}).status == 200
    too_many = stack.put(f"/api/v3/vm/{host}", {"tags": {"c": "3", "d": "4"}})
    assert too_many.status == 400 and "at most 3 tags" in too_many.json["failure"][0]
    assert stack.put(f"/api/v3/vm/{host}", {"tags": {"a": "changed", "c": "3"}}).status == 200
    one_body = stack.put(f"/api/v3/vm/{host}", {"tags": {f"k{i}": "v" for i in range(4)}})
    assert one_body.status == 400 and "more than 3 tags" in one_body.json["failure"][0]
    assert stack.get(f"/api/v3/vm/{host}").json[host]["tags"] == {"a": "changed", "b": "2", "c": "3"}


def test_tag_statistics_of_a_day_are_bounded(make_stack: Callable[[str], Harness]) -> None:
    """Hundreds of distinct tag values (the flood that made /summary 44.7 MB) are counted on their
    own only up to the limit; the rest as '(other)'. Totals stay right."""
    limits = ":config:\n  max_tag_names_per_day: 3\n  max_tag_values_per_day: 5\n"
    stack = make_stack(ANY_TAGS_CONFIG.replace(":config:\n", limits, 1))
    stack.fill("pool1")
    host = stack.checkout("pool1")
    for i in range(40):
        assert stack.put(f"/api/v3/vm/{host}", {"tags": {"project": f"build-{i}"}}).status == 200
    for name in ("alpha", "beta", "gamma", "delta"):
        assert stack.put(f"/api/v3/vm/{host}", {"tags": {name: "x"}}).status == 200
    tags = stack.get("/api/v3/summary/tag").json["tag"]
    assert tags["project"]["total"] == 40
    assert tags["project"]["(other)"] == 35
    assert len(tags["project"]) == 1 + 5 + 1  # total, five values, (other)
    assert set(tags) == {"project", "alpha", "beta", "(other)"}
    assert tags["(other)"] == {"x": 2, "total": 2}
    day = stack.client.hgetall(f"vmpool:daily:{day_of(stack.clock.now())}")
    tag_fields = [name for name in day if name.startswith("tag")]
    assert len(tag_fields) <= (3 + 1) * (5 + 2) + 1  # names and (other), each values + (other) + counter


def test_tags_put_again_are_counted_once(make_stack: Callable[[str], Harness]) -> None:
    """The same tags put again on a VM (the retry of a PUT whose answer was lost, as the 503 asks
    for) are counted once in /summary's tag statistics, as vmpooler counts a VM's tag once a day;
    a tag given another value counts that value. Before, every PUT counted its tags again: a
    retried PUT counted them twice."""
    stack = make_stack(ANY_TAGS_CONFIG)
    stack.fill("pool1")
    host = stack.checkout("pool1")
    for _ in range(2):
        assert stack.put(f"/api/v3/vm/{host}", {"tags": {"project": "ci", "owner": "alice"}}).status == 200
    assert stack.put(f"/api/v3/vm/{host}", {"tags": {"project": "nightly", "owner": "alice"}}).status == 200
    tags = stack.get("/api/v3/summary/tag").json["tag"]
    assert tags["project"] == {"ci": 1, "nightly": 1, "total": 2}
    assert tags["owner"] == {"alice": 1, "total": 1}


def test_each_config_s_allowed_tags_are_the_ones_a_put_is_held_to(make_stack: Callable[[str], Harness]) -> None:
    """The set of ``allowed_tags`` a PUT looks keys up in is built once per config (api/vms.py),
    not per request: PUTs served under one config and another in turn are each held to their own."""
    listed = make_stack(CONFIG_YAML)
    listed.fill("pool1")
    host = listed.checkout("pool1")
    other = make_stack(CONFIG_YAML.replace("[project, owner, created_by, url]", "[colour]"))
    other.fill("pool1")
    other_host = other.checkout("pool1")
    for _ in range(2):
        assert _put(listed, host, {"tags": {"colour": "red"}}) == 400
        assert _put(other, other_host, {"tags": {"colour": "red"}}) == 200
        assert _put(other, other_host, {"tags": {"project": "x"}}) == 400
        assert _put(listed, host, {"tags": {"project": "x"}}) == 200
