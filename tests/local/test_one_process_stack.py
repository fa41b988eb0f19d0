"""`make run WORKERS=0`: the whole service in one Python process (the HTTP front's event loops on
threads beside the scheduler's, no gunicorn arbiter, no worker process) plus its redis-server,
serving the same API behind the same front, and stopping cleanly on SIGTERM and Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path
from typing import Any

from tests.local.stack import (
    RunningStack,
    alive,
    call,
    descendants,
    local_stack,
    read_answer,
    wait_for,
)
from tests.support import free_port, listeners_carrying

POOL = "one-debian"
CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    f"pools:\n  - {{name: {POOL}, size: 2, provider: dummy}}\n"
)


def command_line(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def ready_count(stack: RunningStack) -> int:
    status, body = call("GET", f"{stack.api}/status?view=pools")
    assert status == 200, body
    return int(body["pools"][POOL]["ready"])


def raw(port: int, request: bytes) -> bytes:
    """One request written as it is, its whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request)
        return read_answer(connection)


def test_one_process_serves_checkout_delete_and_status_and_is_the_stacks_only_python(tmp_path: Path) -> None:
    with local_stack(tmp_path, CONFIG, workers=0, interval=1) as stack:
        assert "in this process" in stack.log(), stack.log()
        wait_for(lambda: ready_count(stack) == 2, 30, "the pool to fill", stack.log)
        # One Python process: its only child is its redis-server (no arbiter, no worker).
        children = descendants(stack.process.pid)
        assert len(children) == 1, [command_line(pid) for pid in children]
        assert b"redis-server" in command_line(next(iter(children)))
        # That process is the one listening on the HTTP port.
        assert set(listeners_carrying(stack.port, str(tmp_path))) == {stack.process.pid}

        status, body = call("POST", f"{stack.api}/vm/{POOL}")
        assert status == 200, body
        host = body[POOL]["hostname"].split(".")[0]
        status, body = call("GET", f"{stack.api}/vm/{host}")
        assert status == 200 and body[host]["state"] == "running", body
        status, body = call("DELETE", f"{stack.api}/vm/{host}")
        assert status == 200, body
        wait_for(lambda: ready_count(stack) == 2, 30, "the scheduler (same process) to refill", stack.log)

        # The same front as a worker's: `//` merged, its bounds and JSON refusals.
        merged = raw(stack.port, b"GET //api/v3//status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert merged.startswith(b"HTTP/1.1 200"), merged[:200]
        too_long = raw(stack.port, b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n")
        assert too_long.startswith(b"HTTP/1.1 431") and b'"ok":false' in too_long, too_long[:300]
        too_big = raw(stack.port, b"POST /api/v3/vm HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n")
        assert too_big.startswith(b"HTTP/1.1 413") and b'"ok":false' in too_big, too_big[:300]
    assert stack.process.returncode == 0  # Ctrl-C (the fixture's way out) stopped it cleanly
    assert "Traceback" not in stack.log(), stack.log()[-3000:]


def test_the_one_process_stack_never_imports_gunicorn(tmp_path: Path) -> None:
    """WORKERS=0 has no arbiter and no worker process: gunicorn (about 1.9 MB, 32 modules) is
    not loaded into it, from its start through serving requests (``-X importtime`` lists every
    module the process imports, on its log)."""
    with local_stack(tmp_path, CONFIG, workers=0, interval=1, env={"PYTHONPROFILEIMPORTTIME": "1"}) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        assert call("POST", f"{stack.api}/vm/{POOL}")[0] in (200, 503)
        imported = [line for line in stack.log().splitlines() if line.startswith("import time:")]
        assert any(line.endswith("| local.http_front") for line in imported), stack.log()[-2000:]
    gunicorn = [line for line in imported if "gunicorn" in line]
    assert not gunicorn, gunicorn[:5]


def test_sigterm_stops_the_one_process_stack_cleanly(tmp_path: Path) -> None:
    with local_stack(tmp_path, CONFIG, workers=0, interval=1) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        redis_pid = next(iter(descendants(stack.process.pid)))
        os.kill(stack.process.pid, signal.SIGTERM)
        assert stack.process.wait(20) == 0, stack.log()
        wait_for(lambda: not alive(redis_pid), 20, "its redis-server to stop", stack.log)
        assert not listeners_carrying(stack.port, str(tmp_path))
        assert not listeners_carrying(stack.redis_port, str(tmp_path))
        assert stack.log().rstrip().endswith("vmpool: stopped"), stack.log()[-2000:]
        assert "Traceback" not in stack.log(), stack.log()[-3000:]


class TwoLoopApp:
    """A plain ASGI app served on two loops (``threads``), answering every request with 200."""

    threads = 2

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


def test_an_in_process_front_whose_loop_ends_says_it_is_no_longer_alive() -> None:
    """One loop of the front ending (a bug escaping it) ends the others, and ``is_alive`` says
    so, for `local.run --workers 0` to start the front again: served on with a loop gone, some
    connections would be handed to a loop that no longer turns."""
    from local.http_front import InProcessFront

    port = free_port()
    front = InProcessFront(TwoLoopApp, "127.0.0.1", port)
    try:
        assert front.start(timeout=30)
        assert raw(port, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").startswith(b"HTTP/1.1 200")
        assert front.is_alive()
        front._loops[0].server.should_exit = True  # the second loop ends on its own
        wait_for(lambda: not front.is_alive(), 20, "the front to end with its loop")
        assert not front.asked_to_stop
    finally:
        front.stop(timeout=10)
    assert not front.is_alive()


def test_sigkill_of_the_one_process_leaves_nothing_serving(tmp_path: Path) -> None:
    """That process is the whole service: killed (kill -9, the OOM killer), its redis-server
    stops with it and neither port stays served."""
    with local_stack(tmp_path, CONFIG, workers=0, interval=1) as stack:
        assert call("GET", f"{stack.api}/status")[0] == 200
        redis_pid = next(iter(descendants(stack.process.pid)))
        stack.process.kill()
        stack.process.wait()
        wait_for(lambda: not alive(redis_pid), 20, "its redis-server to stop", stack.log)
        assert not listeners_carrying(stack.port, str(tmp_path))
        assert not listeners_carrying(stack.redis_port, str(tmp_path))
