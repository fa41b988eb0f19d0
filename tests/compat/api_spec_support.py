"""Support for the checks ported from vmpooler's own API specs (``tests/compat/test_vmpooler_*_spec.py``
for config, poolreset, status, ondemandvm, token, healthcheck and dashboard).

vmpooler's specs plant state in its Redis layout (``vmpooler__ready__<pool>``...) and call its
Sinatra app; ours are HTTP requests through local/gateway.py into the real Chalice app (the
harness of tests/harness.py), with state reached the way the running service reaches it
(reconcile passes of the dummy provider, checkouts over HTTP).

Each module's docstring maps every ``it`` of its spec to the test that checks it: one in the
module, or one that already existed elsewhere (named ``tests/<path>.py::<test>``; its
``test_every_test_named_in_the_docstring_exists`` fails when a named test is renamed or removed).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping, Sequence

from chalicelib.config import build
from tests.harness import Harness, HarnessFactory

REPO = Path(__file__).resolve().parents[2]
DUMMY_PROVIDER = {"provider_class": "dummy", "createvm_max_time": 0, "boot_time": 0, "destroyvm_max_time": 0}
"""Clones start and boot at once, so one pass after another fills a pool."""
JSON_HEADERS = {"Content-Type": "application/json"}
TEST_REFERENCE = re.compile(r"(tests/[\w/]+\.py)::(test_\w+)")

POOL_CHANGE_POOLS = [
    {"name": "pool1", "size": 5, "template": "templates/pool1", "clone_target": "default_cluster"},
    {"name": "pool2", "size": 10},
]
"""The pools of config_spec.rb and poolreset.rb (one config, with POOL_CHANGE_CONFIG)."""
POOL_CHANGE_CONFIG = {"site_name": "test pooler", "vm_lifetime_auth": 2, "experimental_features": True}


def vmpooler_stack(make_harness: HarnessFactory, pools: Sequence[Mapping[str, Any]],
                   config: Mapping[str, Any] | None = None, **sections: Any) -> Harness:
    """The service for a spec's ``let(:config)``: its ``:config:`` keys and pools (on the dummy
    provider unless a pool names one), and any other section given (``auth``, ``dns_configs``)."""
    document = {
        "config": dict(config or {}),
        "providers": {"dummy": DUMMY_PROVIDER},
        "pools": [{"provider": "dummy", **pool} for pool in pools],
        **sections,
    }
    return make_harness(build(document), headers=JSON_HEADERS)


def missing_tests(docstring: str | None) -> list[str]:
    """The ``tests/<path>.py::<test>`` references in a docstring whose test is not defined there
    (and an empty docstring, which names none, as one missing)."""
    references = TEST_REFERENCE.findall(docstring or "")
    if not references:
        return ["the docstring names no test"]
    missing = []
    for path, name in references:
        file = REPO / path
        if not file.is_file() or not re.search(rf"^def {name}\(", file.read_text(), re.MULTILINE):
            missing.append(f"{path}::{name}")
    return missing
