"""A/B of checkout throughput between checkouts of the repository, in one sitting.

    python -m bench.ab [--rounds 4] [--burst 4] [--steady 15] main=. old=../old-checkout ...

Every checkout's local stack runs at once (each its own redis-server, ports and state
directory), holding a pool of 6,000 (``big``) and one of 1,000 (``steady``). Windows rotate
between the stacks: each round, a burst window on every stack (8 clients for ``--burst``
seconds from a full pool, then the wait until its refill has caught up), then a sustained
window on every stack (8 clients for ``--steady`` seconds on the pool of 1,000: longer than the
pool lasts unless its refill keeps up), in reverse order every other round. On a shared
machine the load changes from one minute to the next; rotating measures every stack in the
same minutes. Per window it prints cycles/s, cycles/s counting the refill's catch-up, what
the refill owed, checkout p50/p99 and refused checkouts; then per stack the medians, and per
round the ratio of each stack's figures to the first stack's.

Each stack runs its own checkout's code (``local``, ``chalicelib``) under this checkout's
``bench`` package, copied to a temporary directory placed first on its PYTHONPATH, so an older
tree is measured by the same benchmark code.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

BIG, STEADY = ("big", 6000), ("steady", 1000)
CLIENTS = 8


def _drive() -> None:
    """One stack, held up until stdin closes; each stdin line ``<pool> <seconds>`` runs a window
    and answers one JSON line."""
    from bench.checkout import _one_run
    from local.stack import dummy_config, local_stack

    sizes = dict([BIG, STEADY])
    with local_stack(dummy_config(list(sizes.items())), interval=5.0) as stack:
        for pool, size in sizes.items():
            stack.wait_ready(pool, size, timeout=600)
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            pool, seconds = line.split()
            stack.wait_ready(pool, sizes[pool], timeout=600)
            run = _one_run(stack, CLIENTS, float(seconds), pool=pool)
            run.pop("commands")
            print(json.dumps(run), flush=True)


class _Stack:
    """A driver process running one checkout's stack."""

    def __init__(self, name: str, checkout: Path, bench_copy: Path) -> None:
        self.name = name
        environment = {**os.environ, "PYTHONPATH": f"{bench_copy}{os.pathsep}{checkout}"}
        # cwd is the copy: "-m" puts the working directory first on sys.path, before PYTHONPATH.
        self.process = subprocess.Popen([sys.executable, "-m", "bench.ab", "--drive"], cwd=bench_copy,
                                        env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def _pipes(self) -> tuple[IO[str], IO[str]]:
        assert self.process.stdin is not None and self.process.stdout is not None
        return self.process.stdin, self.process.stdout

    def wait_ready(self) -> None:
        _, answers = self._pipes()
        line = answers.readline()
        if not line or not json.loads(line).get("ready"):
            raise RuntimeError(f"{self.name}: the stack did not start")

    def window(self, pool: str, seconds: float) -> dict[str, Any]:
        requests, answers = self._pipes()
        requests.write(f"{pool} {seconds}\n")
        requests.flush()
        line = answers.readline()
        if not line:
            raise RuntimeError(f"{self.name}: the stack stopped")
        return dict(json.loads(line))

    def stop(self) -> None:
        requests, _ = self._pipes()
        requests.close()
        self.process.wait(timeout=120)


def _refused(run: dict[str, Any]) -> int:
    return sum(count for name, count in run["failures"].items() if name.startswith("checkout"))


def _line(run: dict[str, Any]) -> str:
    return (f"{run['cycles_per_second']:5.0f}/s, with its refill {run['sustained_cycles_per_second']:5.0f}/s, "
            f"owed {run['refill_owed']:5d}, caught up in {run['catch_up_seconds']:5.2f} s, "
            f"p50 {run['checkout_p50_ms']:6.2f} p99 {run['checkout_p99_ms']:6.2f} ms, refused {_refused(run)}")


def compare(checkouts: dict[str, Path], rounds: int, burst: float, steady: float) -> dict[str, Any]:
    """Rotate windows over the checkouts' stacks; print each window and the summary."""
    bench_copy = Path(tempfile.mkdtemp(prefix="vmpool-ab-"))
    shutil.copytree(Path(__file__).resolve().parent, bench_copy / "bench",
                    ignore=shutil.ignore_patterns("__pycache__", "results.json"))
    stacks = [_Stack(name, path, bench_copy) for name, path in checkouts.items()]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s.name: {BIG[0]: [], STEADY[0]: []} for s in stacks}
    try:
        for stack in stacks:
            stack.wait_ready()
        for round_number in range(rounds):
            order = stacks if round_number % 2 == 0 else stacks[::-1]
            for pool, seconds in ((BIG[0], burst), (STEADY[0], steady)):
                for stack in order:
                    run = stack.window(pool, seconds)
                    runs[stack.name][pool].append(run)
                    print(f"{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:4.1f} round {round_number} "
                          f"{pool:6} {stack.name:8} {_line(run)}", flush=True)
    finally:
        for stack in stacks:
            stack.stop()
        shutil.rmtree(bench_copy, ignore_errors=True)
    summary: dict[str, Any] = {}
    first = stacks[0].name
    for name, by_pool in runs.items():
        for pool, pool_runs in by_pool.items():
            medians = {figure: statistics.median(run[figure] for run in pool_runs)
                       for figure in ("cycles_per_second", "sustained_cycles_per_second", "refill_owed",
                                      "checkout_p50_ms", "checkout_p99_ms")}
            medians["refused"] = sum(_refused(run) for run in pool_runs)
            if name != first:
                medians["ratio_to_" + first] = [
                    round(mine["sustained_cycles_per_second"] / theirs["sustained_cycles_per_second"], 2)
                    for mine, theirs in zip(pool_runs, runs[first][pool], strict=True)]
            summary[f"{name} {pool}"] = medians
            print(f"{name:8} {pool:6} " + ", ".join(f"{key} {value if isinstance(value, list) else round(value, 2)}"
                                                  for key, value in medians.items()), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="*", metavar="name=path")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--burst", type=float, default=4.0, help="seconds of each burst window")
    parser.add_argument("--steady", type=float, default=15.0, help="seconds of each sustained window")
    parser.add_argument("--drive", action="store_true", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.drive:
        _drive()
        return 0
    if not options.checkouts:
        parser.error("name at least one checkout: name=path")
    checkouts = {name: Path(path).resolve() for name, _, path in (item.partition("=") for item in options.checkouts)}
    compare(checkouts, options.rounds, options.burst, options.steady)
    return 0


if __name__ == "__main__":
    sys.exit(main())
