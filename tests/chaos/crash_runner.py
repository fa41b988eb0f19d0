"""One reconcile run of one pool in a process of its own, through the entry point the reconcile
Lambda and the local scheduler use (``dispatch.look_at``), that kills or stops itself at the
worst moments: for tests/chaos/test_vcsim_crash.py.

    python -m tests.chaos.crash_runner     # everything from the environment:

- ``CRASH_CONFIG`` the config file, ``CRASH_REDIS_PORT``, ``CRASH_PREFIX`` (the keys' prefix),
  ``CRASH_POOL``: what to run;
- ``CRASH_CLOCK`` a file holding ``<now> <wall>``: the service's clock reads ``now`` plus the
  wall time since ``wall`` (the test's fake clock, moving on in real time while the run does);
  read at every look, so a test can move it while the process is stopped;
- ``CRASH_AT`` ``<checkpoint>[#<n>]``: at the n-th (default first) time the run reaches that
  checkpoint, SIGKILL itself there, or ``CRASH_AFTER`` seconds later (a timer thread), e.g.
  inside the provider call that follows; ``CRASH_STOP`` the same, but SIGSTOP (the test sends
  SIGCONT or SIGKILL); ``CRASH_SAY`` a file the reached checkpoints are appended to (one a
  line, flushed), so the test knows where a stopped process stands;
- ``CRASH_RESTART`` set: first release what a dead process of this machine left (the leases,
  unstarted tasks, clones and migrations), as the local scheduler does when the stack starts again.

The run's report is printed as one JSON line on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from chalicelib.config import load
from chalicelib.manager.dispatch import look_at
from chalicelib.manager.pool_queue import TICK, Delayed, PoolMessage
from chalicelib.services import Services
from local.scheduler import LocalScheduler
from tests.support import production_client


class FileClock:
    """The test's clock: a time and the wall time it was written at, in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def now(self) -> float:
        now, wall = (float(part) for part in self.path.read_text().split())
        return now + (time.time() - wall)

    def monotonic(self) -> float:
        return self.now()


def write_clock(path: Path, now: float) -> None:
    """Set the runners' clock to ``now`` (from the test, at any time)."""
    partial = path.with_suffix(".tmp")
    partial.write_text(f"{now!r} {time.time()!r}")
    partial.replace(path)


class NoQueue:
    """The reconcile queue: the test runs the next passes itself."""

    def send(self, messages: list[Delayed], budget_seconds: float | None = None) -> None:
        pass


def checkpoint_action() -> tuple[str | None, int, signal.Signals, float, Path | None]:
    """What to do where: the checkpoint, its occurrence, the signal, the delay, the file to say where."""
    spec = os.environ.get("CRASH_AT") or os.environ.get("CRASH_STOP")
    sent = signal.SIGKILL if os.environ.get("CRASH_AT") else signal.SIGSTOP
    say = Path(os.environ["CRASH_SAY"]) if os.environ.get("CRASH_SAY") else None
    if not spec:
        return None, 0, sent, 0.0, say
    name, _, count = spec.partition("#")
    return name, int(count or 1), sent, float(os.environ.get("CRASH_AFTER") or 0), say


def main() -> None:
    config = load({"VMPOOL_CONFIG_FILE": os.environ["CRASH_CONFIG"]})
    # Production's client (``connect``: a command whose reply was lost is never sent again), not
    # redis-py's plain one; a long socket timeout: a loaded machine is no outage.
    client = production_client(config.redis, int(os.environ["CRASH_REDIS_PORT"]))
    services = Services(config, client, clock=FileClock(Path(os.environ["CRASH_CLOCK"])),
                        prefix=os.environ["CRASH_PREFIX"])
    if os.environ.get("CRASH_RESTART"):
        LocalScheduler(services).release_what_the_dead_left()
    target, occurrence, sent, delay, say = checkpoint_action()
    seen: dict[str, int] = {}

    def checkpoint(name: str) -> None:
        seen[name] = seen.get(name, 0) + 1
        if say is not None:
            with say.open("a") as out:
                out.write(f"{name}#{seen[name]}\n")
        if name != target or seen[name] != occurrence:
            return
        if delay:
            threading.Timer(delay, os.kill, (os.getpid(), sent)).start()
        else:
            os.kill(os.getpid(), sent)

    report = look_at(services, PoolMessage(os.environ["CRASH_POOL"], TICK), NoQueue(), 0.0, checkpoint)
    print(json.dumps({"leased": report.leased if report else None,
                      "failures": report.failures if report else [],
                      "checkpoints": seen}), flush=True)


if __name__ == "__main__":
    main()
