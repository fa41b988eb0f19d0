"""What a cold start runs (issue 14: the API function's cold import): each check starts a fresh
interpreter, as Lambda does, and looks at what ``import app`` executed. The code no request of
the API uses waits for its first use: redis-py's asyncio client and ``importlib.metadata``
(chalicelib/deferred_imports.py), the reconcile code (the tick and the consumer import it), the
providers, the dashboard's HTML escaping. The time itself is `make bench`'s (bench/coldstart.py).

The packaged zip on the Lambda Python is checked the same way in tests/infra/test_package.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from chalicelib import deferred_imports
from chalicelib.config import canonical_json, parse
from local.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]

REPORT = """
import json, sys
deferred = {name: "__getattr__" in sys.modules[name].__dict__ for name in ("redis.asyncio", "importlib.metadata")
            if name in sys.modules}
print(json.dumps({"modules": sorted(sys.modules), "deferred": deferred}))
"""


def fresh(code: str, extra_env: dict[str, str] | None = None) -> Any:
    """Run ``code`` in a new interpreter in the repository; the JSON its last line prints."""
    env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": "true", **(extra_env or {})}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_api_cold_import_runs_none_of_the_code_its_requests_never_use() -> None:
    found = fresh("import app\n" + REPORT)
    modules = set(found["modules"])
    assert found["deferred"] == {"redis.asyncio": True, "importlib.metadata": True}  # registered, not run
    # redis-py's commands import one submodule of it, redis.asyncio.observability.recorder: that is all.
    assert not [m for m in modules if m.startswith("redis.asyncio.") and ".observability" not in m]
    assert "importlib.metadata._meta" not in modules
    # The API's own code only: the tick and the consumer import the reconcile code, a pass the providers.
    assert sorted(m for m in modules if m.startswith("chalicelib.manager.")) == [
        "chalicelib.manager.pool_queue", "chalicelib.manager.refill"]  # the checkout's nudge
    # Of the providers, only the settings models the config validates (the packaged config names the
    # dummy provider): no provider code, and not the models of providers the config does not use.
    config_models = {"chalicelib.providers.failures", "chalicelib.providers.settings",
                     "chalicelib.providers.dummy_config"}
    assert not [m for m in modules if m.startswith("chalicelib.providers.") and m not in config_models]
    assert "html" not in modules


CONFIG_LIBRARIES = ("pydantic", "pydantic_core", "annotated_types", "yaml", "_yaml")


def test_the_api_cold_import_of_the_packaged_config_loads_neither_pydantic_nor_yaml(tmp_path: Path) -> None:
    """What a Lambda loads is canonical JSON (packaging validated the YAML): ``import app``, and a
    refresh from the config bucket after it, build the config with neither library."""
    packaged = tmp_path / "vmpool.yaml"
    packaged.write_text(canonical_json(parse((ROOT / "chalicelib" / "vmpool.yaml").read_text())))
    pushed = canonical_json(parse((ROOT / "vmpool.yaml.example").read_text()))
    found = fresh(f"""
import app
from chalicelib.clock import FakeClock
from chalicelib.config_source import ConfigSource
source = ConfigSource(app.CONFIG, lambda etag: ({pushed!r}, "etag-1"), FakeClock())
assert source.current().pool_names != app.CONFIG.pool_names, "the pushed config was not loaded"
""" + REPORT, {"VMPOOL_CONFIG_FILE": str(packaged)})

    assert not [m for m in found["modules"] if m.split(".")[0] in CONFIG_LIBRARIES]
    # The YAML of the repository, as make run loads it, is validated: pydantic and yaml are loaded.
    found = fresh("import app\n" + REPORT, {"VMPOOL_CONFIG_FILE": str(ROOT / "chalicelib" / "vmpool.yaml")})
    assert {"pydantic", "yaml"} <= set(found["modules"])


def test_the_first_requests_need_nothing_the_cold_import_left_out(redis_server: RedisServer) -> None:
    """Deferring is not moving: a status request and a checkout load none of it."""
    found = fresh(
        "import app\nfrom local.gateway import Gateway\n"
        "status = Gateway(app.app)('GET', '/api/v3/status', {}, b'', '127.0.0.1')[0]\n"
        "checkout = Gateway(app.app)('POST', '/api/v3/vm/debian-12-x86_64', {}, b'', '127.0.0.1')[0]\n"
        "assert (status, checkout) == (200, 503), (status, checkout)  # 503: the pool is empty\n" + REPORT,
        {"VMPOOL_REDIS_URL": f"redis://127.0.0.1:{redis_server.port}/9", "VMPOOL_KEY_PREFIX": "coldimport:"})
    assert found["deferred"] == {"redis.asyncio": True, "importlib.metadata": True}
    late = ("chalicelib.manager.dispatch", "chalicelib.providers.base", "importlib.metadata._meta")
    assert not [m for m in found["modules"] if m.startswith(late)]


def test_redis_works_and_its_deferred_parts_run_on_first_use(redis_server: RedisServer) -> None:
    found = fresh(f"""
import asyncio, json, sys
import chalicelib.store
import redis
from chalicelib.config import parse
from chalicelib.store import connect

client = connect(parse("pools: []").redis, url="redis://127.0.0.1:{redis_server.port}/9")
client.set("coldimport:key", "value")
driver = client.connection_pool.connection_kwargs["driver_info"]
result = {{"get": client.get("coldimport:key"), "driver_info": driver is not None, "version": redis.__version__,
           "metadata_ran": "importlib.metadata._meta" in sys.modules}}
import redis.asyncio
result["async_ping"] = asyncio.run(redis.asyncio.Redis(port={redis_server.port}).ping())
import importlib.metadata
result["dist_version"] = importlib.metadata.version("redis")
print(json.dumps(result))
""")
    # connect() sends no CLIENT SETINFO (tests/core/test_connection_handshake.py), so a connection
    # never reads redis-py's dist-info for the version it would have sent.
    assert found["get"] == "value" and found["driver_info"] is False and found["metadata_ran"] is False
    assert found["async_ping"] is True and found["dist_version"] == found["version"]


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package ``deferme`` whose ``__init__`` does ``from deferme import heavy`` (as redis-py's
    does with its asyncio client); ``heavy`` counts its runs in ``deferme.RUNS``."""
    root = tmp_path / "deferme"
    (root / "heavy" / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("RUNS = []\nfrom deferme import heavy\n")
    (root / "heavy" / "__init__.py").write_text(
        "import time, deferme\ndeferme.RUNS.append(1)\ntime.sleep(0.05)\nVALUE = 42\n")
    (root / "heavy" / "sub" / "__init__.py").write_text("SUB = 'sub'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "deferme"
    for name in [m for m in sys.modules if m == "deferme" or m.startswith("deferme.")]:
        del sys.modules[name]


def test_a_deferred_module_runs_once_on_its_first_use_whichever_thread_asks(package: str) -> None:
    assert deferred_imports.defer("deferme.heavy") is True
    import deferme
    import deferme.heavy.sub  # a submodule needs only the package's path

    assert deferme.RUNS == [] and deferme.heavy.sub.SUB == "sub"
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(deferme.heavy.VALUE)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == [42] * 4 and deferme.RUNS == [1]
    with pytest.raises(AttributeError):
        deferme.heavy.MISSING  # noqa: B018
    assert deferred_imports.defer("deferme.heavy") is False  # already imported: left alone
