"""`make run` stopped (SIGTERM) or killed (SIGKILL) while it starts, before it serves: while the
config is checked, once its redis-server answers, while gunicorn forks the HTTP workers. Nothing
of it may run on (the config's check, redis-server, the HTTP front), and the next `make run` on
the same state directory and ports starts cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest

from local.processes import process_alive
from tests.local.stack import REPO_ROOT, call, local_stack, stack_command, stack_env, wait_for
from tests.support import free_ports

CONFIG = (
    "config: {domain: example.com, check_loop_delay_min: 0.1}\n"
    "providers:\n  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0, destroyvm_max_time: 0}\n"
    "pools:\n  - {name: start-debian, size: 1, provider: dummy}\n"
)

SIGNAL_AT_IMPORT = """
import os, sys, time

os.environ.setdefault("STACK_PID", str(os.getpid()))  # the first Python: local.run itself


class SignalAtImport:
    \"\"\"SIGNAL_AT_IMPORT_SIGNAL to local.run at the first import of the module SIGNAL_AT_IMPORT
    names, in whichever of its processes imports it: a point of the start-up, reached without
    timing. SIGNAL_AT_IMPORT_LINGER: the importing process then takes that many seconds more
    (a slow config check: 10,000 pools under load take 15 s).\"\"\"
    fired = False

    def find_spec(self, name, path=None, target=None):
        if name == os.environ["SIGNAL_AT_IMPORT"] and not SignalAtImport.fired:
            SignalAtImport.fired = True
            with open(os.environ["SIGNAL_AT_IMPORT_NOTE"], "a") as note:  # its stderr may be a pipe
                note.write(f"signal at import of {name}\\n")
            os.kill(int(os.environ["STACK_PID"]), int(os.environ["SIGNAL_AT_IMPORT_SIGNAL"]))
            time.sleep(float(os.environ.get("SIGNAL_AT_IMPORT_LINGER", "0")))
        return None


if os.environ.get("SIGNAL_AT_IMPORT"):
    sys.meta_path.insert(0, SignalAtImport())
"""


def processes_carrying(mark: str) -> dict[int, str]:
    """Live processes (not zombies) whose environment contains ``mark`` (the test's tmp_path, in
    VMPOOL_STATE_DIR of every process of its stack, redis-server's too), with their command lines."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environment, command = (entry / "environ").read_bytes(), (entry / "cmdline").read_bytes()
        except OSError:  # exited meanwhile, or not ours to read
            continue
        if mark.encode() in environment and process_alive(int(entry.name)):
            found[int(entry.name)] = command.replace(b"\0", b" ").decode(errors="replace")
    return found


@pytest.mark.slow
@pytest.mark.parametrize(("module", "signum", "linger", "workers"), [
    ("yaml", signal.SIGKILL, 60, 1),  # the config's files listed (for the watch), in a fresh interpreter
    ("pydantic", signal.SIGTERM, 60, 1),  # the config's check, in its child, while the stack waits for it
    ("pydantic", signal.SIGKILL, 60, 1),
    ("chalicelib.store", signal.SIGTERM, 0, 1),  # its redis-server answers
    ("gunicorn", signal.SIGTERM, 0, 1),  # the HTTP front forked, its workers not serving yet
    ("gunicorn", signal.SIGKILL, 0, 1),
    # WORKERS=0: the in-process front's loops starting on their threads (each imports its event
    # loop's factory), the main thread waiting for them to serve.
    ("uvicorn.loops.asyncio", signal.SIGTERM, 0, 0),
    ("uvicorn.loops.asyncio", signal.SIGKILL, 0, 0),
], ids=["listing-kill", "check-term", "check-kill", "redis-term", "front-term", "front-kill",
        "one-process-front-term", "one-process-front-kill"])
def test_a_stack_stopped_while_it_starts_leaves_nothing_and_the_next_starts(
        tmp_path: Path, module: str, signum: int, linger: float, workers: int) -> None:
    """Before: a SIGTERM while the config was checked ended `make run` at once (no line, status
    -15), and a SIGTERM or SIGKILL left the check running orphaned (ppid 1) until it ended, writing
    into the state directory; a SIGTERM while the workers forked was heeded only once they served,
    after the stack had printed its "serving" banner. Now a SIGTERM stops it as Ctrl-C does."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SIGNAL_AT_IMPORT)
    config_file = tmp_path / "vmpool.yaml"
    config_file.write_text(CONFIG)
    state_dir = tmp_path / "state"
    port, redis_port = free_ports(2)
    note = tmp_path / "signalled"
    env = {**stack_env(config_file, state_dir), "PYTHONPATH": str(hook), "SIGNAL_AT_IMPORT": module,
           "SIGNAL_AT_IMPORT_SIGNAL": str(signum), "SIGNAL_AT_IMPORT_LINGER": str(linger),
           "SIGNAL_AT_IMPORT_NOTE": str(note)}
    env.pop("MAKELEVEL")  # the signal goes to local.run alone, not to make's group
    log_path = tmp_path / "stack.log"
    with log_path.open("wb") as log:
        stack = subprocess.Popen(stack_command(port, workers, 30) + ["--redis-port", str(redis_port)], cwd=REPO_ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        status = stack.wait(timeout=60)
        log_text = log_path.read_text()
        assert note.read_text() == f"signal at import of {module}\n", log_text  # the point was reached
        if signum == signal.SIGTERM:
            assert status == 0, log_text
            assert log_text.endswith("vmpool: stopped\n"), log_text  # as on Ctrl-C, no traceback
            assert "serving http" not in log_text and "Traceback" not in log_text, log_text
        else:
            assert status == -signal.SIGKILL, log_text
        # Everything it started stops with it at once (the parent-death signals), the check too,
        # however long that would have taken.
        wait_for(lambda: not processes_carrying(str(tmp_path)), 10, "the stack's processes to stop",
                 lambda: f"still running: {processes_carrying(str(tmp_path))}\n{log_path.read_text()}")
    finally:
        for pid in processes_carrying(str(tmp_path)):
            os.kill(pid, signal.SIGKILL)

    # The next `make run` on the same state directory and ports starts and serves.
    with local_stack(tmp_path, CONFIG, workers=workers, name="next", state_dir=state_dir,
                     extra_args=["--redis-port", str(redis_port)]) as after:
        assert call("GET", f"{after.api}/status")[0] == 200
