"""Pages that are not AWS's answers, served to a boto3 client in place of AWS's: what a proxy in
front of an endpoint (a sign-in page, a 502), or an endpoint in an outage, sends. Each is given
to botocore's parser as the HTTP answer (a ``before-send`` event hook), so the client behaves as
it does against the wire.

    answer_with_page(client, status, page)   the later calls of ``client`` get that answer (until stopped)
    PAGES                                     (status, body) pairs met in the wild, by id
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from botocore.awsrequest import AWSResponse

PAGES: dict[str, tuple[int, bytes]] = {
    "200-html": (200, b"<html><head><title>Sign in</title></head><body>Proxy login</body></html>"),
    "200-text": (200, b"Welcome to the proxy"),
    "502-html": (502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"),
    "502-doctype": (502, b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"),
    "503-text": (503, b"Service Unavailable"),
}


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body

    def read(self, *_: Any, **__: Any) -> bytes:
        return self.body

    def close(self) -> None:
        pass


def answer_with_page(client: Any, status: int, page: bytes, times: int | None = None) -> Callable[[], None]:
    """Make the later calls of the boto3 ``client`` get ``page`` with HTTP ``status``: every one,
    or the first ``times`` (botocore's own retries count), the others going on as before.
    Returns a function that ends the pages (the endpoint is back)."""
    answered = [0]
    stopped = [False]

    def handler(request: Any, **_: Any) -> AWSResponse | None:
        if stopped[0] or (times is not None and answered[0] >= times):
            return None
        answered[0] += 1
        url = request.url
        # botocore asks every before-send hook and takes the first answer: moto's hook (while
        # moto mocks AWS) would still act on the request. Pointed elsewhere, it is no AWS
        # request moto knows: the page answers a request that went nowhere.
        request.url = "http://127.0.0.1:9/answered-with-a-page"
        return AWSResponse(url, status, {"Content-Type": "text/html", "Content-Length": str(len(page))},
                           _Raw(page))

    # First: moto answers every call from its own before-send hook while it mocks AWS.
    client.meta.events.register_first("before-send", handler)
    return lambda: stopped.__setitem__(0, True)
