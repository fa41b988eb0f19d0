"""A moto server on a free loopback port, as the AWS SDK sees AWS: ``with moto_endpoint() as url``,
an AWS with nothing in it.

moto's ``ThreadedMotoServer`` binds its port on a thread of its own and ``start()`` waits for that
thread to say it is serving: when the port chosen free was taken before the bind, werkzeug ended
that thread (``sys.exit(1)``: silent on a thread) and ``start()`` waited for ever. Here the bind's
failure ends the wait, and a taken port is chosen again (``local.processes.on_a_free_port``)."""

from __future__ import annotations

import urllib.request
from contextlib import contextmanager
from typing import Iterator

from moto.server import ThreadedMotoServer

from local.processes import on_a_free_port
from local.redis_server import free_port
from tests.support import port_in_use


class _MotoServer(ThreadedMotoServer):
    """moto's threaded server whose ``start()`` raises when its bind failed instead of hanging."""

    failed = False

    def _server_entry(self) -> None:
        try:
            super()._server_entry()
        except (OSError, SystemExit):  # werkzeug exits on a failed bind
            self.failed = True
            self._server_ready_event.set()

    def start(self) -> None:
        super().start()
        if self.failed:
            raise OSError(f"moto could not serve on port {self._port}")


@contextmanager
def moto_endpoint() -> Iterator[str]:
    """A moto server's URL (``http://127.0.0.1:<port>``) until the block ends."""
    servers: dict[int, _MotoServer] = {}

    def start(port: int) -> _MotoServer:
        servers[port] = _MotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        servers[port].start()
        return servers[port]

    port, server = on_a_free_port(free_port, start, port_in_use)
    url = f"http://127.0.0.1:{port}"
    # moto keeps its AWS in the process, shared by every server it starts: each endpoint starts
    # empty, whatever a test before it left (a stack of the same name, say).
    urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST"), timeout=30).close()
    try:
        yield url
    finally:
        server.stop()
