"""The local stack's processes paused (SIGSTOP, later SIGCONT), as an outsider pauses them: no
request waits long for a process that does not run, a pause of the whole stack (Ctrl-Z, then
``fg``) costs nothing once it resumes, a paused process does not outlive its parent's kill, and
a redis-server that cannot come back stops the stack with the reason."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from local.http_front import ARBITER_PAUSE_SECONDS, PROCESS_TIMEOUT_SECONDS
from tests.local.stack import RunningStack, alive, call, descendants, local_stack, read_answer, wait_for
from tests.local.test_stack_processes import CONFIG, http_arbiter, our_listeners, running_arbiter, worker_serving
from tests.support import stop_process

REQUEST = b"GET /api/v3/status HTTP/1.1\r\nHost: x\r\n\r\n"
SLACK_SECONDS = 10.0
"""Above the arbiter's PROCESS_TIMEOUT_SECONDS, for a loaded machine; well below the 31 s a
request on a stopped worker waited before (gunicorn's 30 s timeout, then a check a second)."""
CLIENT_SECONDS = 25.0
"""How long a client of these tests waits for an answer before it calls the request hung."""


def outcome(connection: socket.socket) -> tuple[str, float]:
    """Send REQUEST on ``connection``: "200", "ended" (reset or closed without an answer: the
    client can retry) or "hung" (nothing within CLIENT_SECONDS), and the seconds it took."""
    started = time.monotonic()
    try:
        connection.sendall(REQUEST)
        answer = read_answer(connection)
    except (ConnectionResetError, BrokenPipeError, AssertionError):  # AssertionError: closed
        return "ended", time.monotonic() - started
    except TimeoutError:
        return "hung", time.monotonic() - started
    return answer.split(b" ", 2)[1].decode(), time.monotonic() - started


def fresh_client(port: int) -> tuple[str, float]:
    """One request on a connection of its own, as a new client sends it."""
    started = time.monotonic()
    try:
        connection = socket.create_connection(("127.0.0.1", port), timeout=CLIENT_SECONDS)
    except OSError:
        return "ended", time.monotonic() - started
    with connection:
        status, _ = outcome(connection)
    return status, time.monotonic() - started


@pytest.mark.slow
def test_requests_that_land_on_a_stopped_http_worker_end_within_seconds_and_a_new_worker_serves(
        tmp_path: Path) -> None:
    """SIGSTOP of one HTTP worker: the kept-alive connections it holds, and the new connections
    the kernel gives its listening socket (about one in two here), cannot be answered by it. The
    arbiter kills it within seconds (its process stopped saying it runs), so each of those ends
    (a reset: the client can retry) instead of hanging; every other request is served at once.
    Before, all of them waited 31 s (gunicorn's 30 s worker timeout)."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        workers = wait_for(lambda: whole_front(stack, workers=2), 20, "both workers", stack.log) - {arbiter}
        kept = [socket.create_connection(("127.0.0.1", stack.port), timeout=CLIENT_SECONDS) for _ in range(8)]
        try:
            for connection in kept:
                assert outcome(connection)[0] == "200"
            owners = [worker_serving(connection, stack.port, workers) for connection in kept]
            stopped = owners[0]
            # Every thread stopped before the requests: the worker's other event loops run on
            # until the stop reaches them, and answered a kept connection of it on a loaded machine.
            stop_process(stopped)
            try:
                with ThreadPoolExecutor(max_workers=20) as pool:
                    on_kept = list(pool.map(outcome, kept))
                    fresh = list(pool.map(fresh_client, [stack.port] * 12))
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(stopped, signal.SIGCONT)
        finally:
            for connection in kept:
                connection.close()
        for (status, seconds), owner in zip(on_kept, owners, strict=True):
            assert status == ("ended" if owner == stopped else "200"), (on_kept, owners, stopped)
            assert seconds <= PROCESS_TIMEOUT_SECONDS + SLACK_SECONDS, on_kept
        assert all(status in ("200", "ended") for status, _ in fresh), fresh
        assert max(seconds for _, seconds in fresh) <= PROCESS_TIMEOUT_SECONDS + SLACK_SECONDS, fresh
        assert not alive(stopped)
        wait_for(lambda: len(descendants(arbiter) - {stopped}) == 2, 30, "a new worker", stack.log)
        assert [call("GET", f"{stack.api}/status")[0] for _ in range(20)] == [200] * 20
        assert "WORKER NOT RUNNING" in stack.log()


@pytest.mark.slow
def test_the_whole_stack_stopped_and_resumed_keeps_its_workers_and_serves(tmp_path: Path) -> None:
    """Ctrl-Z of `make run` (every process of it stopped), then ``fg`` after longer than the
    arbiter waits for a worker that does not run: the arbiter resumes with its workers and does
    not count the pause against them (it did not run either), so none is killed and no
    connection is reset in the moment the stack comes back."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        workers = wait_for(lambda: whole_front(stack, workers=2), 20, "both workers", stack.log) - {arbiter}
        # Right after the start (before the arbiter's first check, once failed), then once it runs.
        for _ in range(2):
            os.killpg(stack.process.pid, signal.SIGSTOP)  # SIGTSTP, Ctrl-Z's, is dropped here: no terminal
            time.sleep(PROCESS_TIMEOUT_SECONDS + ARBITER_PAUSE_SECONDS)  # the pause under test
            os.killpg(stack.process.pid, signal.SIGCONT)
            answers = [fresh_client(stack.port) for _ in range(10)]
            assert [status for status, _ in answers] == ["200"] * 10, (answers, stack.log())
            # The arbiter's checks after the resume, where a kill would come: waited for, not
            # slept for (a loaded machine may run them after any fixed time).
            blocked = arbiter_blocks(arbiter) + 3
            wait_for(lambda blocked=blocked: arbiter_blocks(arbiter) >= blocked, 30,
                     "the arbiter's checks after the resume", stack.log)
            assert descendants(arbiter) == workers and all(alive(pid) for pid in workers), stack.log()
        assert "WORKER NOT RUNNING" not in stack.log() and "WORKER TIMEOUT" not in stack.log()



@pytest.mark.slow
def test_a_redis_server_whose_port_was_taken_while_it_was_down_stops_the_stack_with_the_reason(
        tmp_path: Path) -> None:
    """`kill -9` of the stack's redis-server, and another program takes its port before the stack
    starts it again (this one accepts nothing and answers nothing). The stack tries for
    VMPOOL_REDIS_RESTART_SECONDS, then stops, saying why, and leaves nothing running; started
    again on its state directory it serves with the data the killed server had. Before, it
    stopped with a traceback (the check of who answers on the port timed out), and with a Redis
    on the port it tried the same port forever."""
    with local_stack(tmp_path, CONFIG, workers=1, interval=0.5, env={"VMPOOL_REDIS_RESTART_SECONDS": "3"}) as stack:
        wait_for(lambda: call("POST", f"{stack.api}/vm/proc-debian")[0] == 200, 30, "a checkout", stack.log)
        children = descendants(stack.process.pid)
        redis_pid = next(pid for pid in children if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes())
        with socket.socket() as squatter:
            os.kill(stack.process.pid, signal.SIGSTOP)  # the stack does not start it again meanwhile
            try:
                os.kill(redis_pid, signal.SIGKILL)
                wait_for(lambda: not alive(redis_pid), 10, "redis-server to die")
                squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                # Bound once the dead server's sockets are gone (a child of its own, forked to
                # rewrite its file, may hold them a moment longer).
                wait_for(lambda: squatter.bind(("127.0.0.1", stack.redis_port)) is None, 10, "the port to be free")
                squatter.listen(1)
            finally:
                os.kill(stack.process.pid, signal.SIGCONT)
            assert stack.process.wait(60) == 1, stack.log()
        wait_for(lambda: not any(alive(pid) for pid in children), 20, "the stack's children to stop",
                 lambda: f"still alive: {[pid for pid in children if alive(pid)]}\n{stack.log()}")
        assert f"port {stack.redis_port}: something else listens on it" in stack.log(), stack.log()
        assert "stopping" in stack.log() and "Traceback" not in stack.log(), stack.log()

    with local_stack(tmp_path, CONFIG, workers=1, name="next", state_dir=stack.state_dir) as after:
        assert call("GET", f"{after.api}/status")[1]["pools"]["proc-debian"]["running"] == 1


def front_processes(stack: RunningStack) -> set[int]:
    """The stack's HTTP front: its arbiter and the arbiter's workers."""
    arbiter = running_arbiter(stack)
    return {arbiter, *descendants(arbiter)}


def whole_front(stack: RunningStack, workers: int) -> set[int] | None:
    """The stack's HTTP front once the arbiter has forked all its workers, else None."""
    processes = front_processes(stack)
    return processes if len(processes) > workers else None


@pytest.mark.slow
def test_a_worker_stopped_when_its_arbiter_is_killed_does_not_outlive_it(tmp_path: Path) -> None:
    """SIGSTOP of an HTTP worker, then `kill -9` of its arbiter before the arbiter kills it: the
    worker dies too, and the new front the stack starts serves every new connection. Before,
    the worker could not act on the SIGTERM its arbiter's death sent it: it stayed stopped for
    good, re-parented, with its listening socket on the port, and the new front's new
    connections the kernel gave that socket (2 of 10 in one run) hung; it outlived the stack."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        arbiter = running_arbiter(stack)
        stopped = min(descendants(arbiter))
        try:
            os.kill(stopped, signal.SIGSTOP)
            os.kill(arbiter, signal.SIGKILL)
            wait_for(lambda: not alive(stopped), 20, "the stopped worker to die", stack.log)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stopped, signal.SIGKILL)  # on a failure: no process of the test left behind
        wait_for(lambda: http_arbiter(stack) not in (None, arbiter) and call("GET", f"{stack.api}/status")[0] == 200,
                 60, "a new HTTP front to serve", stack.log)
        answers = [fresh_client(stack.port) for _ in range(20)]
        assert [status for status, _ in answers] == ["200"] * 20, answers


@pytest.mark.slow
def test_a_stack_killed_while_its_arbiter_is_stopped_leaves_nothing_serving(tmp_path: Path) -> None:
    """SIGSTOP of the arbiter, then `kill -9` of the stack (an IDE's stop button): the arbiter
    and its workers die with it. Before, the arbiter could not act on the SIGTERM the stack's
    death sent it, and its workers, whose parent lived on, went on serving the port, with no
    stack and no Redis, until someone found and killed them."""
    with local_stack(tmp_path, CONFIG, workers=2) as stack:
        # Both workers forked before the snapshot: the stack answers once the first one serves.
        front = wait_for(lambda: whole_front(stack, workers=2), 20, "the arbiter and its two workers", stack.log)
        arbiter = running_arbiter(stack)
        try:
            os.kill(arbiter, signal.SIGSTOP)
            stack.process.kill()
            stack.process.wait()
            wait_for(lambda: not any(alive(pid) for pid in front), 20, "the HTTP front to stop",
                     lambda: f"still alive: {[pid for pid in front if alive(pid)]}\n{stack.log()}")
        finally:
            for pid in front:  # on a failure: no process of the test left behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # Every process that held the port dies by the same SIGKILL chain, each when it next runs.
        wait_for(lambda: not our_listeners(tmp_path, stack.port), 20, "nothing of the stack's to serve the port")


def arbiter_blocks(arbiter: int) -> int:
    """How many times the arbiter's main thread has blocked (its voluntary context switches).
    Each turn of its loop blocks once, waiting up to a second for a signal, then checks its
    workers (``murder_workers``, where a kill comes): three blocks after a moment mean at least
    one whole check after it, even if the first is the wait the moment interrupted."""
    for line in Path(f"/proc/{arbiter}/status").read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError(f"no voluntary_ctxt_switches in /proc/{arbiter}/status")
