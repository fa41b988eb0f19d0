"""HTTP-level checkout load from several processes, each built as one API Lambda is: it imports
``app`` with the environment a Lambda has and serves requests through the local gateway (the API
Gateway event, the Chalice app, our handlers) with its own Redis connection pool."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass
from typing import Any, Mapping


@dataclass(frozen=True)
class Reply:
    started: float
    """time.monotonic() when sent: one clock for every process of this machine."""
    seconds: float
    status: int
    body: Any
    worker: int


def _serve(worker: int, environ: Mapping[str, str], pool: str, stop: Any, out: Any, pause: float) -> None:
    os.environ.update(environ)
    import app
    from local.gateway import Gateway

    gateway = Gateway(app.app)
    while not stop.is_set():
        started = time.monotonic()
        try:
            status, _, raw = gateway("POST", f"/api/v3/vm/{pool}", {"Content-Type": "application/json"}, b"",
                                     "127.0.0.1")
            body = json.loads(raw)
        except Exception as error:  # noqa: BLE001 - reported as a failure of the test
            status, body = 0, {"exception": f"{type(error).__name__}: {error}"}
        out.put(Reply(started, time.monotonic() - started, status, body, worker))
        time.sleep(pause)


class CheckoutLoad:
    """``workers`` processes checking out VMs of ``pool`` in a loop until stopped."""

    def __init__(self, environ: Mapping[str, str], pool: str, workers: int = 3, pause: float = 0.005) -> None:
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._out = context.Queue()
        self._processes = [
            context.Process(target=_serve, args=(n, dict(environ), pool, self._stop, self._out, pause), daemon=True)
            for n in range(workers)
        ]
        self.replies: list[Reply] = []

    def __enter__(self) -> "CheckoutLoad":
        for process in self._processes:
            process.start()
        return self

    def wait_for(self, count: int, status: int = 200, timeout: float = 60.0) -> float:
        """Collect replies until ``count`` more with ``status`` arrived; returns when the last did."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            reply = self._take(timeout=0.5)
            if reply is not None and reply.status == status:
                seen += 1
                if seen >= count:
                    return reply.started
        raise AssertionError(f"{count} replies with status {status} did not arrive in {timeout} s: "
                             f"{self.replies[-5:]}")

    def run_for(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._take(timeout=0.1)

    def _take(self, timeout: float) -> Reply | None:
        try:
            reply = self._out.get(timeout=timeout)
        except Exception:  # noqa: BLE001 - queue.Empty
            return None
        self.replies.append(reply)
        return reply

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for process in self._processes:
            process.join(timeout=20)
        while self._take(timeout=0.2) is not None:
            pass
        for process in self._processes:
            if process.is_alive():
                process.kill()
        assert all(process.exitcode == 0 for process in self._processes), "a worker died"

    def hostnames_handed_out(self, pool: str) -> list[str]:
        return [reply.body[pool]["hostname"] for reply in self.replies if reply.status == 200]
