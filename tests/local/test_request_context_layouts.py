"""Nothing a request sets for its log lines (its ``correlation_id``) is on lines about anything
else, over a real pipelined connection on each layout of the local stack.

uvicorn starts a pipelined request's task inside the answer of the request before, and resumes
reading the connection there: the task, and every later read of that connection, inherited that
request's context variables. The front's line about a malformed request sent next on the
connection carried the id of the token request answered before it, and the dummy authenticator's
warning (about the process: built on first use) the id of the first request that needed it."""

from __future__ import annotations

import base64
import json
import socket
from pathlib import Path

import pytest

from tests.local.stack import local_stack, wait_for
from tests.local.test_crowd_layouts import LAYOUTS, http_request, read_answers

CONFIG = (
    "config: {domain: example.com}\n"
    "auth: {provider: dummy}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: ctx, size: 1, provider: dummy}\n"
)
DUMMY_WARNING = "auth provider 'dummy' is for development only"


def json_lines(log: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


@pytest.mark.slow
@pytest.mark.parametrize("workers", LAYOUTS)
def test_lines_after_a_pipelined_request_carry_no_request_id_of_its(tmp_path: Path, workers: int) -> None:
    with local_stack(tmp_path, CONFIG, workers=workers, interval=5, env={"POWERTOOLS_LOG_LEVEL": "INFO"}) as stack:
        login = "Basic " + base64.b64encode(b"alice:alice-secret").decode()
        with socket.create_connection(("127.0.0.1", stack.port), timeout=60) as connection:
            # Two requests in one write: the second waits its turn, reading paused meanwhile.
            connection.sendall(http_request("POST", "/api/v3/token", {"Authorization": login})
                               + http_request("GET", "/api/v3/status?view=pools", {}))
            (token_status, token_body), (status_status, _) = read_answers(connection, 2)
            assert (token_status, status_status) == (200, 200), token_body
            # Then, in a later read of the same connection, a request the front refuses.
            connection.sendall(b"NOT HTTP\x01\r\n\r\n")
            assert connection.recv(4096).startswith(b"HTTP/1.1 400"), "the front's refusal"

        def invalid_logged() -> bool:
            return any(line.get("message") == "invalid HTTP request received" for line in json_lines(stack.log()))

        wait_for(invalid_logged, 30, "the front's line about the malformed request", stack.log)
        lines = json_lines(stack.log())
    created = [line for line in lines if line.get("message") == "token created"]
    assert len(created) == 1 and created[0].get("correlation_id"), created
    token_request = created[0]["correlation_id"]
    invalid = [line for line in lines if line.get("message") == "invalid HTTP request received"]
    assert [line.get("correlation_id") for line in invalid] == [None], \
        f"the front's line about the next bytes read carries the token request's id {token_request}: {invalid}"
    warned = [line for line in lines if str(line.get("message")).startswith(DUMMY_WARNING)]
    assert warned and all(line.get("correlation_id") is None for line in warned), \
        f"the dummy authenticator's warning is about the process, not request {token_request}: {warned}"
