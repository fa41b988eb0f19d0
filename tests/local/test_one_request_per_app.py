"""The local HTTP front never lets a plain Chalice app serve two requests at once: Chalice keeps
the request being served on the app object, so two requests inside one app answer with one
request's data. (The service's own app keeps it per thread and is served on several threads:
tests/api/test_chalice_app.py.)

A probe app's view holds each request at a two-party barrier before it reads
``app.current_request``: if a second request ever runs inside the same app meanwhile, both pass
the barrier and the first answers with the second's marker. With one request at a time per app
the barrier never fills (it times out) and each request reads its own.
"""

from __future__ import annotations

import threading

from chalice import Chalice

from local.gateway import AsgiApp
from tests.in_process_http import make_server
from tests.local.echo_probe import add_echo_probe, ask_at_once
from tests.local.stack import http_front

probe = Chalice(app_name="probe")
add_echo_probe(probe, hold_seconds=1.0)


def test_two_concurrent_requests_never_share_an_app() -> None:
    with http_front(lambda: AsgiApp(probe)) as port:
        answers = ask_at_once(port, ["first", "second"], timeout=30)
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}


def test_the_in_process_server_never_lets_a_plain_app_serve_two_requests_at_once() -> None:
    """tests/in_process_http.make_server runs a thread per connection, each calling its Gateway:
    handed a plain Chalice app, both requests ran inside it at once (``overlapped``), and each
    could answer with the other's request. The Gateway now lets one request at a time into an
    app that keeps its request on the app object."""
    server = make_server(probe, "127.0.0.1", 0)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    try:
        answers = ask_at_once(server.server_address[1], ["first", "second"], timeout=30)
    finally:
        server.shutdown()
        server.server_close()
        serving.join(10)
    assert answers == {"first": {"marker": "first", "overlapped": False},
                       "second": {"marker": "second", "overlapped": False}}
