"""Lease and task labels name which process holds them, not only its pid: the local stack started
again after a reboot releases what the dead stack held though the pids it named run other
processes now (store/leases.py, ``LocalScheduler.release_what_the_dead_left``)."""

from __future__ import annotations

import multiprocessing
import os
import socket
from multiprocessing.connection import Connection

import redis

from chalicelib.clock import FakeClock
from chalicelib.config import parse
from chalicelib.services import Services
from chalicelib.store.leases import holder_label, labelled_holder, lease_holder, lease_token, process_start
from local.scheduler import LocalScheduler

CONFIG = """\
providers:
  dummy: {provider_class: dummy, createvm_max_time: 0, boot_time: 0}
pools:
  - {name: before-reboot, size: 1, provider: dummy}
  - {name: pid-reused, size: 1, provider: dummy}
  - {name: held-by-me, size: 1, provider: dummy}
  - {name: older-label, size: 1, provider: dummy}
"""


def test_a_lease_of_a_process_whose_pid_another_process_reuses_is_released_at_the_start(
        redis_client: redis.Redis, clock: FakeClock) -> None:
    """Before, a lease named ``<host>:<pid>``: after a reboot the dead stack's pids run other
    processes (here, this test's), so the restarted stack took its leases for a live process's
    and its pools waited out the lease's 60 s before their first pass."""
    services = Services(parse(CONFIG), redis_client, clock=clock)
    host, pid = socket.gethostname(), os.getpid()
    mine = process_start(pid)
    assert mine is not None
    boot, started = mine.split("-")
    other_boot = ("0" if boot[0] != "0" else "1") + boot[1:]
    leases = {"before-reboot": f"{host}:{pid}@{other_boot}-{started}:0123456789abcdef",
              "pid-reused": f"{host}:{pid}@{boot}-{int(started) + 1}:0123456789abcdef",
              "held-by-me": lease_token(),
              "older-label": f"{host}:{pid}:0123456789abcdef"}  # names no process: judged by its pid
    for pool, token in leases.items():
        redis_client.set(services.store.keys.lease(pool), token, px=60_000)

    released = LocalScheduler(services).release_what_the_dead_left()

    assert sorted(released) == ["before-reboot", "pid-reused"]
    assert services.store.lease_tokens(["held-by-me", "older-label"]) == {
        "held-by-me": leases["held-by-me"], "older-label": leases["older-label"]}


def _send_label(connection: Connection) -> None:
    connection.send(holder_label())


def test_a_label_names_its_process_and_a_forked_child_names_its_own() -> None:
    label = holder_label()
    holder = labelled_holder(label)
    assert holder == lease_holder(lease_token())
    assert holder is not None and holder.pid == os.getpid() and holder.start == process_start(os.getpid())
    ours, theirs = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_send_label, args=(theirs,))
    child.start()
    child_label = ours.recv()
    child.join(30)
    child_holder = labelled_holder(child_label)
    assert child_holder is not None and child_holder.pid == child.pid
    assert child_holder.start is not None and child_holder.start != holder.start
    assert labelled_holder(f"{socket.gethostname()}:12@") is None
