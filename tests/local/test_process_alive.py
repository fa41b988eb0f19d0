"""``process_alive``: what the stack's lock (``local.scheduler``) and the tests' "nothing serves
the port any more" go by. A process whose first thread has exited shows as a zombie while its
other threads still run, holding its descriptors: a SIGKILLed HTTP worker's event loops exit a
moment after its first thread, and its listening socket still took connections then."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys

import pytest

from local.processes import process_alive
from tests.support import eventually

FIRST_THREAD_EXITS = """
import ctypes, socket, sys, threading, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen()
threading.Thread(target=time.sleep, args=(60,)).start()
print(listener.getsockname()[1], flush=True)
sys.stdin.readline()
ctypes.CDLL(None).syscall(int(sys.argv[1]), 0)  # exit(2): this thread only, not exit_group(2)
"""

SYS_EXIT = {"x86_64": 60, "aarch64": 93}


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.machine() not in SYS_EXIT,
                    reason="Linux's exit(2) of one thread, by its number on this machine")
def test_a_process_whose_first_thread_exited_is_alive_while_another_runs() -> None:
    process = subprocess.Popen([sys.executable, "-c", FIRST_THREAD_EXITS, str(SYS_EXIT[platform.machine()])],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        port = int(process.stdout.readline())  # type: ignore[union-attr]
        process.stdin.write("\n")  # type: ignore[union-attr]
        process.stdin.flush()  # type: ignore[union-attr]
        eventually(lambda: open(f"/proc/{process.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z",
                   10, "its first thread to exit")
        socket.create_connection(("127.0.0.1", port), timeout=5).close()  # its socket still listens
        assert process_alive(process.pid)
    finally:
        process.kill()
        process.wait()
    assert not process_alive(process.pid)
