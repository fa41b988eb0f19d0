"""Headless Chromium driven over the DevTools protocol (a WebSocket), with no package besides the
standard library: for tests that must act on a live page (type into it, keep a reference to an
element across polls) rather than read one ``--dump-dom``. The page's Content-Security-Policy
does not apply to what DevTools evaluates."""

from __future__ import annotations

import base64
import itertools
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Callable

CHROMIUM = shutil.which("chromium")


class BrowserPage:
    """One tab of a headless Chromium started with ``profile`` as its user data folder; each event
    that arrives while a command waits for its result is given to ``on_event`` (else dropped)."""

    def __init__(self, profile: Path, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.on_event = on_event
        assert CHROMIUM, "chromium is not installed (Makefile TEST_APT)"
        self.process = subprocess.Popen(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        try:
            self._connect()
        except BaseException:
            self.close()
            raise
        self._ids = itertools.count(1)

    def _connect(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            found = re.search(rb"ws://127\.0\.0\.1:(\d+)/", line)
            if found:
                port = int(found.group(1))
                break
        else:
            raise RuntimeError("chromium exited before listening for DevTools")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=30) as answer:
            page = next(target for target in json.load(answer) if target["type"] == "page")
        path = page["webSocketDebuggerUrl"].split(f":{port}", 1)[1]
        self._socket = socket.create_connection(("127.0.0.1", port), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self._socket.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                              f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                             .encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += self._exactly(1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            chunk = self._socket.recv(size - len(data))
            if not chunk:
                raise EOFError("DevTools closed the connection")
            data += chunk
        return data

    def _send(self, text: str) -> None:
        data, mask = text.encode(), os.urandom(4)
        if len(data) < 126:
            length = bytes([0x80 | len(data)])
        elif len(data) < 65536:
            length = bytes([0x80 | 126]) + struct.pack(">H", len(data))
        else:
            length = bytes([0x80 | 127]) + struct.pack(">Q", len(data))
        self._socket.sendall(b"\x81" + length + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def _receive(self) -> dict[str, Any]:
        message = b""
        while True:
            first, second = self._exactly(2)
            size = second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._exactly(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._exactly(8))[0]
            message += self._exactly(size)
            if first & 0x80:
                return dict(json.loads(message))

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Run a DevTools command; its result (events arriving meanwhile go to ``on_event``)."""
        number = next(self._ids)
        self._send(json.dumps({"id": number, "method": method, "params": params}))
        while True:
            message = self._receive()
            if "method" in message and self.on_event is not None:
                self.on_event(message)
            if message.get("id") == number:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return dict(message.get("result") or {})

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        if getattr(self, "_socket", None) is not None:
            self._socket.close()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
