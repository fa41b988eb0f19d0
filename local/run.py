"""`make run`: the whole service on this machine.

Starts a private redis-server (its own port and data dir), serves the Chalice app on
http://127.0.0.1:$PORT from several worker processes, and runs every pool's reconcile on a timer.
Ctrl-C stops all of it.

    python -m local.run [--port 8000] [--workers N] [--config FILE] [--provider dummy|vcsim]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATE_DIR = ROOT / ".run"


def _serve(port: int, ready: "multiprocessing.synchronize.Event") -> None:
    """One HTTP worker process: the app, its own Redis connections, a thread per connection."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    import app as chalice_app
    from local.gateway import make_server

    server = make_server(chalice_app.app, "127.0.0.1", port)
    ready.set()
    server.serve_forever(poll_interval=0.5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WORKERS", os.cpu_count() or 2)))
    parser.add_argument("--config", default=os.environ.get("VMPOOL_CONFIG_FILE"))
    parser.add_argument("--redis-port", type=int, default=int(os.environ.get("VMPOOL_LOCAL_REDIS_PORT", "0")))
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between scheduled passes")
    args = parser.parse_args(argv)

    from local.redis_server import RedisServer

    if args.config:
        os.environ["VMPOOL_CONFIG_FILE"] = str(Path(args.config).resolve())
    redis_server = RedisServer(port=args.redis_port or None, data_dir=STATE_DIR / "redis", persist=True).start()
    os.environ["VMPOOL_REDIS_URL"] = redis_server.url
    os.environ.setdefault("VMPOOL_REFILL", "wake")
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "INFO")

    workers: list[multiprocessing.Process] = []
    scheduler = None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        from chalicelib.config import ConfigError

        try:
            import app as chalice_app  # validates the config before anything is served
        except ConfigError as error:
            print(error, file=sys.stderr)
            return 2
        context = multiprocessing.get_context("fork")
        for _ in range(max(args.workers, 1)):
            ready = context.Event()
            worker = context.Process(target=_serve, args=(args.port, ready), daemon=True)
            worker.start()
            if not ready.wait(15):
                print(f"an HTTP worker did not start on port {args.port}", file=sys.stderr)
                return 1
            workers.append(worker)

        from local.scheduler import LocalScheduler

        scheduler = LocalScheduler(chalice_app.services(), interval_seconds=args.interval)
        scheduler.start()
        pools = ", ".join(chalice_app.CONFIG.pool_names)
        print(f"vmpool: serving http://127.0.0.1:{args.port}/api/v3 with {len(workers)} workers; "
              f"redis on port {redis_server.port}; pools: {pools}. Ctrl-C stops.", flush=True)
        while not stop.wait(0.5):
            if any(not worker.is_alive() for worker in workers):
                print("an HTTP worker died; stopping", file=sys.stderr)
                return 1
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if scheduler:
            scheduler.stop()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.join(timeout=5)
        redis_server.stop()
        print("vmpool: stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
