"""The log bytes refused checkouts write (docs/observability.md, "Refusals"): what a caller who
can reach the API costs in CloudWatch Logs ingestion, billed per byte.

    python bench/refusal_logs.py [--count 10000]

A child process serves ``count`` checkouts of an empty pool (each 503, each from another
address, half by a pool's name and half by an alias) through the API in process (the local
gateway, the app as Lambda runs it, a private redis-server), its logs at INFO and its EMF
metrics on, as in AWS; then one more request a window later, which writes the window's counts.
The parent counts the child's stdout: log lines and EMF documents, bytes and lines.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/refusal_logs.py`: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CONFIG = """\
providers:
  dummy: {provider_class: dummy}
pools:
  - {name: alpha, size: 0, provider: dummy, alias: [any]}
"""


def _child(count: int) -> None:
    """Serve the refusals, the app's output on stdout."""
    import app
    from chalicelib.clock import FakeClock
    from chalicelib.config import parse
    from chalicelib.services import Services
    from local.gateway import Gateway
    from local.redis_server import RedisServer

    with RedisServer() as server:
        import redis

        clock = FakeClock()
        client = redis.Redis(port=server.port, decode_responses=True)
        app._services = Services(parse(CONFIG), client, clock=clock, prefix="vmpool:")
        app._config = None
        gateway = Gateway(app.app)
        for caller in range(count):
            address = f"10.{caller // 65536 % 256}.{caller // 256 % 256}.{caller % 256}"
            status, _, _ = gateway("POST", "/api/v3/vm/alpha" if caller % 2 else "/api/v3/vm/any", {}, b"", address)
            assert status == 503, status
        clock.advance(3600)
        gateway("GET", "/api/v3/status", {}, b"", "10.255.255.255")
        sys.stdout.flush()
        client.close()


def run(count: int) -> dict[str, Any]:
    """Bytes and lines of logs and EMF documents for ``count`` refused checkouts."""
    env = {**os.environ, "POWERTOOLS_LOG_LEVEL": "INFO"}
    env.pop("POWERTOOLS_METRICS_DISABLED", None)
    env.pop("POWERTOOLS_DEV", None)
    out = subprocess.run([sys.executable, __file__, "--child", str(count)], env=env, check=True,
                         stdout=subprocess.PIPE).stdout
    found = {"log_bytes": 0, "log_lines": 0, "emf_bytes": 0, "emf_documents": 0}
    for line in out.splitlines(keepends=True):
        kind = "emf" if b'"_aws"' in line else "log"
        found[f"{kind}_bytes"] += len(line)
        found["emf_documents" if kind == "emf" else "log_lines"] += 1
    return {"refused_checkouts": count, **found, "total_bytes": found["log_bytes"] + found["emf_bytes"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child)
        return
    print(json.dumps(run(args.count)))


if __name__ == "__main__":
    main()
