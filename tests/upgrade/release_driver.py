"""A release of the service in a process of its own, driven over stdin/stdout (JSON lines): run
with the release's checkout first on ``sys.path`` (``python release_driver.py <root> <redis port>
<config file>``), so the release's own ``chalicelib``, ``app`` and ``tests.harness`` are imported,
never this one's. Used by test_two_releases.py to run the previous release beside this one on
one redis-server. Imports only what both releases have (``tests.harness.Harness``, ``config.parse``).

Each command: ``{"now": <fake clock>, "op": "request" | "reconcile" | "ping", ...}``; each answer:
one JSON line (``{"status", "body"}``, ``{"errors"}``, or ``{"crash": <exception>}``)."""

from __future__ import annotations

import json
import os
import sys
import traceback


def main() -> None:
    root, port, config_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    # The answers' channel is a copy of stdout; whatever the service prints (its logs and metrics,
    # Powertools writes them to stdout from the first import on) goes to stderr.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.path.insert(0, root)
    import redis

    import app as chalice_app
    from chalicelib import config as config_module
    from chalicelib.clock import FakeClock
    from tests.harness import Harness

    clock = FakeClock()
    client = redis.Redis(port=port, decode_responses=True)
    with open(config_path) as file:
        harness = Harness(config_module.parse(file.read()), client, clock)
    chalice_app._services = harness.services
    for line in sys.stdin:
        command = json.loads(line)
        clock._now = float(command["now"])
        try:
            if command["op"] == "request":
                reply = harness.gateway(command["method"], command["target"], command.get("headers") or {},
                                        json.dumps(command["body"]).encode() if "body" in command else b"",
                                        "127.0.0.1")
                status, _, raw = reply
                try:
                    body = json.loads(raw)
                except ValueError:
                    body = raw.decode(errors="replace")
                answer: dict[str, object] = {"status": status, "body": body}
            elif command["op"] == "reconcile":
                answer = {"errors": list(harness.reconcile(command["pool"]).errors)}
            else:
                answer = {"pong": True}
        except Exception as error:  # noqa: BLE001 - the test reports it
            answer = {"crash": f"{type(error).__name__}: {error}", "trace": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
