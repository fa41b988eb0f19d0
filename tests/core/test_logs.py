"""Logs are JSON lines a person can search by pool, hostname and request (CloudWatch Logs
Insights): the API's checkout and return, and the manager's moves, each name their VM."""

from __future__ import annotations

import io

from chalicelib.config import parse
from tests.harness import HarnessFactory
from tests.support import json_lines

CONFIG = (
    ":config:\n  domain: example.com\n:providers:\n  :dummy: {}\n"
    ":pools:\n  - {name: debian, size: 1, provider: dummy}\n"
)




def test_api_and_manager_logs_carry_pool_hostname_and_correlation_id(
        make_harness: HarnessFactory, log_output: io.StringIO) -> None:
    harness = make_harness(parse(CONFIG), prefix="logtest:")
    harness.reconcile("debian")
    harness.reconcile("debian")
    hostname = harness.checkout("debian")
    assert harness.delete(f"/api/v3/vm/{hostname}").status == 200

    logs = json_lines(log_output.getvalue())
    by_message = {record["message"]: record for record in logs}
    ready = by_message["VM ready"]
    assert (ready["pool"], ready["hostname"]) == ("debian", hostname)
    checked_out, returned = by_message["VM checked out"], by_message["VM returned"]
    assert (checked_out["pool"], checked_out["hostname"]) == ("debian", hostname)
    assert (returned["pool"], returned["hostname"]) == ("debian", hostname)
    # Each API request's lines carry its own request id, as API Gateway would give it.
    assert checked_out["correlation_id"] and returned["correlation_id"]
    assert checked_out["correlation_id"] != returned["correlation_id"]

