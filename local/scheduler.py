"""The local stand-in for EventBridge schedules and the refill queue.

One thread per pool runs the same ``run_pool`` the scheduled Lambda runs, every ``interval``
seconds, and at once when the API nudges the pool through Redis after a checkout or delete.
"""

from __future__ import annotations

import threading

from chalicelib.manager.runner import run_pool
from chalicelib.observability import logger
from chalicelib.services import Services
from chalicelib.store import StoreUnavailable


class LocalScheduler:
    def __init__(self, services: Services, interval_seconds: float = 10.0, budget_seconds: float = 30.0) -> None:
        self.services = services
        self.interval_seconds = interval_seconds
        self.budget_seconds = budget_seconds
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for pool in self.services.config.pool_names:
            thread = threading.Thread(target=self._loop, args=(pool,), name=f"reconcile-{pool}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self, pool: str) -> None:
        while not self._stopping.is_set():
            try:
                run_pool(self.services, pool, self.budget_seconds, stopping=self._stopping.is_set)
                # Sleep until the next tick, or until the API nudges this pool.
                deadline_left = self.interval_seconds
                while deadline_left > 0 and not self._stopping.is_set():
                    if self.services.store.wait_for_wake(pool, min(1.0, deadline_left)):
                        break
                    deadline_left -= 1.0
            except StoreUnavailable as error:
                logger.warning("reconcile skipped: redis unavailable", extra={"pool": pool, "error": str(error)})
                self._stopping.wait(1.0)
            except Exception:  # noqa: BLE001 - keep the local stack alive and say what broke
                logger.exception("reconcile crashed", extra={"pool": pool})
                self._stopping.wait(1.0)
