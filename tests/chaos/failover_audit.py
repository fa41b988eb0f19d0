"""An outsider's failover audit, run by hand (not part of the suite: a randomized load of a minute):

    .venv/bin/python -m tests.chaos.failover_audit [--seed 1] [--faults swap,stop,sched,worker,lagkill]
        [--callers 16] [--tokens]

A primary + replica pair of redis-server behind an endpoint (tests/redis_pair.py), two API
processes and a scheduler process on it (each built as a Lambda is, the dummy hypervisor on a
Redis of its own that no failover touches), and 16 distinct callers (``--callers``): every second
one has its own user's token (each one with ``--tokens``), the others are anonymous, each from
its own loopback address. Each checks out from a random pool, tags the VM as its own, reads it
back, returns it (or keeps it), and now and then opens an on-demand request and polls it.
Meanwhile the faults, in order:

- ``swap``: the replica promoted and the primary demoted by REPLICAOF (open connections still
  reach the demoted node); ``failover``: Redis FAILOVER;
- ``stop``: the primary SIGSTOPped for 2 to 5 s; ``stoppromote``: the primary SIGSTOPped past
  the clients' socket timeout, the replica promoted and the endpoint moved meanwhile, then the
  old primary SIGCONTed (a primary again, until it is made the new one's replica 1 s later);
- ``sched``: the scheduler SIGSTOPped for 2 to 5 s mid-pass, then SIGKILLed and started again;
- ``worker``: an API process SIGSTOPped for 3 s, then SIGKILLed and started again;
- ``lagkill``: the replica stops receiving for 1.5 s, the primary is SIGKILLed, the replica
  promoted (acknowledged writes of that 1.5 s are lost); ``cutkill``: the replication link
  reset (the primary counts its replica gone, the endpoint still names it) 3 s before the same;
  ``kill``: the same without the lag;
- ``empty``: the primary SIGKILLed and started again on its port with an empty dataset (no
  persistence; its replica syncs from it and is emptied too). Everything Redis held is gone, as
  docs/reliability.md says (a VM kept is lost to its caller: found as a stranger and destroyed;
  tokens are gone: 401, the caller logs in again). So the checks below excuse a VM checked out
  before such a restart from "kept" and from a return's 404, and count those instead
  (``lost by an empty restart``); a VM handed out again after it (the same VM in the hypervisor,
  not only its name) is still a problem.

A fault that cannot apply is skipped and listed (not a problem): after a kill no replica is left
for ``swap``, ``failover``, ``stoppromote``, ``kill``, ``lagkill`` or ``cutkill``; each of these
promotes the replica, so first waits up to 30 s for it to be online and caught up (right after a
swap it is still syncing: promoting it then loses every write since, as documented).

Then it checks, as an outsider (redis-py on the new primary, the hypervisor's folders): no VM
handed to two callers; no caller read another's tags; every VM a caller kept is running, its
user's, and in the hypervisor; the pools converge (full, nothing pending or completed) and Redis
matches the hypervisor; every error answer was a JSON 503 (never a 500, never past the client's
10 s timeout), with ``Retry-After`` when it says why (not vmpooler's bare ``{"ok": false}`` for
a pool with no VM ready); a fresh request after the faults answers at once. Exit status 1 on any problem.
A pool that does not converge has its pending VMs' records printed (what holds each: its clone
mark, task, request). Knobs for investigations: ``AUDIT_SETTLE`` (seconds the pools may take to
converge, 40), ``AUDIT_DEMOTE_AFTER`` (seconds ``stoppromote`` leaves the old primary a primary, 1),
``AUDIT_GAP`` (seconds between faults, 5), ``AUDIT_LOG_LEVEL`` (the service's processes' log
level, WARNING), ``AUDIT_WATCH=1`` (log both nodes' role, replication id,
offset, link and ``replicas:seen`` mark whenever one changes).
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import redis

POOLS = {"fa": 12, "fb": 10}
CONFIG = (
    ":config: {domain: example.com, task_limit: 100, check_loop_delay_min: 0.2, max_running_vms_per_user: 1000}\n"
    ":auth: {provider: dummy}\n"
    ":redis: {socket_timeout: 1.0, replica_ack_timeout: 300}\n"
    ":providers:\n  :dummy: {createvm_max_time: 0.2, boot_time: 0.2, destroyvm_max_time: 0}\n"
    ":pools:\n" + "".join(f"  - {{name: {pool}, size: {size}, provider: dummy}}\n" for pool, size in POOLS.items())
)
CALLERS = 16
FAULTS = ("swap", "failover", "stop", "stoppromote", "sched", "worker", "lagkill", "cutkill", "kill", "empty")
REPLICA_FAULTS = {"swap", "failover", "stoppromote", "lagkill", "cutkill", "kill"}
"""The faults that need the replica (``Audit.cannot_apply``)."""
CLIENT_TIMEOUT = 10.0


def serve(mode: str) -> None:
    """One process of the service (``http``: an API process, prints its port; ``scheduler``)."""
    import app
    from chalicelib.providers.dummy import DummyProvider
    from chalicelib.services import Services

    services = Services.from_environment()
    hypervisor = redis.Redis(port=int(os.environ["AUDIT_HYPERVISOR_PORT"]), decode_responses=True)
    services._providers["dummy"] = DummyProvider(services.config.providers["dummy"], hypervisor, services.clock,
                                                 prefix="hypervisor:")
    app._services = services
    if mode == "http":
        from tests.in_process_http import make_server

        server = make_server(app.app, "127.0.0.1", 0)
        print(server.server_address[1], flush=True)
        server.serve_forever(poll_interval=0.1)
    from local.scheduler import LocalScheduler

    scheduler = LocalScheduler(services, interval_seconds=0.5, budget_seconds=2.0)
    scheduler.start()
    print("started", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: (scheduler.stop(5), os._exit(0)))
    while True:
        time.sleep(1)


class Audit:
    def __init__(self, seed: int, out_dir: Path, callers: int = CALLERS, anonymous: bool = True) -> None:
        """``callers`` callers; with ``anonymous`` every second one has no token, else each has
        its own user's."""
        from local.redis_server import RedisServer
        from tests.redis_pair import RedisPair

        self.random = random.Random(seed)
        self.seed = seed
        self.callers = callers
        self.anonymous = anonymous
        self.out_dir = out_dir
        self.started = time.monotonic()
        self.pair = RedisPair()
        self.hypervisor = RedisServer().start()
        self.environ = dict(os.environ, VMPOOL_CONFIG=CONFIG, VMPOOL_REDIS_URL=self.pair.endpoint.url,
                            VMPOOL_REDIS_MIN_REPLICA_ACKS="1", POWERTOOLS_METRICS_DISABLED="true",
                            POWERTOOLS_LOG_LEVEL=os.environ.get("AUDIT_LOG_LEVEL", "WARNING"),
                            AUDIT_HYPERVISOR_PORT=str(self.hypervisor.port))
        self.processes: list[subprocess.Popen[bytes]] = []
        self.problems: list[str] = []
        self.skipped: list[str] = []
        self.answers: collections.Counter[tuple[str, Any]] = collections.Counter()
        self.handed: dict[tuple[str, Any], list[str]] = collections.defaultdict(list)
        """Callers by the VM handed to them: its hostname and its hypervisor record's
        ``available_at`` (a name may be used again by a new clone after a restart lost it)."""
        self.kept: dict[str, str] = {}
        self.empty_restarts = 0
        """Counts each ``empty`` fault twice, as it begins and once Redis is back: a VM checked
        out (an on-demand request made) before the count moved is lost by design."""
        self.checked_out_in: dict[str, int] = {}
        """The ``empty_restarts`` count when each kept VM was checked out."""
        self.lost: list[str] = []
        self.lock = threading.Lock()
        self.log_lock = threading.Lock()
        self.stop = threading.Event()
        from chalicelib.clock import SystemClock
        from chalicelib.config import parse
        from chalicelib.providers.dummy import DummyProvider

        config = parse(CONFIG)
        self.hypervisor_client = redis.Redis(port=self.hypervisor.port, decode_responses=True)
        folders = DummyProvider(config.providers["dummy"], self.hypervisor_client, SystemClock(), prefix="hypervisor:")
        self.folder_keys = {pool: folders._folder_key(config.pool(pool)) for pool in POOLS}  # type: ignore[arg-type]
        self.scheduler = self.spawn("scheduler")[0]
        self.workers = [self.spawn("http") for _ in range(2)]
        self.nodes = [self.pair.primary, self.pair.replica]
        """Both redis-servers, in a fixed order whatever their roles (``watch_nodes``)."""
        threading.Thread(target=self.watch_nodes, daemon=True).start()

    def log(self, *words: object) -> None:
        line = " ".join(map(str, (f"{time.monotonic() - self.started:7.2f}", *words)))
        with self.log_lock:  # the node watcher logs from its own thread
            print(line, flush=True)

    def spawn(self, mode: str) -> tuple[subprocess.Popen[bytes], int]:
        """A process of the service, its output in a file (a pipe nobody reads would block it)."""
        out = self.out_dir / f"{mode}-{len(self.processes)}.log"
        with out.open("w") as sink:
            process = subprocess.Popen([sys.executable, "-m", "tests.chaos.failover_audit", "--serve", mode],
                                       env=self.environ, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
        self.processes.append(process)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            first = out.read_text().split("\n", 1)
            if len(first) > 1:
                return process, int(first[0]) if first[0].isdigit() else 0
            time.sleep(0.05)
        raise RuntimeError(f"{mode} did not start: {out}")

    def store(self) -> Any:
        from chalicelib.store import Store

        return Store(redis.Redis(port=self.pair.endpoint.port, decode_responses=True, socket_timeout=3))

    def wait_full(self, timeout: float) -> dict[str, dict[str, int]]:
        """Until the pools are full with nothing pending or completed and the hypervisor holds
        exactly their ready and running VMs (after an ``empty`` fault the strangers go in two
        passes: the pools may be full before), or ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                store = self.store()
                counts: dict[str, dict[str, int]] = store.counts(list(POOLS))
                matching = all(
                    set(self.hypervisor_client.hkeys(self.folder_keys[pool]))
                    == set(store.hostnames(pool, "ready")) | set(store.hostnames(pool, "running"))
                    for pool in POOLS)
            except Exception:  # noqa: BLE001 - Redis still failing over
                counts, matching = {}, False
            full = counts and all(counts[pool]["ready"] == size and not counts[pool]["pending"]
                                  and not counts[pool]["completed"] for pool, size in POOLS.items())
            if (full and matching) or time.monotonic() > deadline:
                return counts
            time.sleep(0.3)

    def node_states(self) -> list[str]:
        """Each node's replication as seen from outside: role, replication id, offset, link,
        and the service's ``replicas:seen`` mark (``Store._replica_wait``); "down" if it does
        not answer within 0.2 s (stopped or killed)."""
        from chalicelib.store.keys import Keys

        mark_key = Keys().replicas_seen
        states = []
        for node in self.nodes:
            client = redis.Redis(port=node.port, decode_responses=True, socket_timeout=0.2,
                                 socket_connect_timeout=0.2)
            try:
                pipe = client.pipeline(transaction=False)
                pipe.info("replication")
                pipe.get(mark_key)
                info, mark = pipe.execute()
            except redis.RedisError:
                states.append(f"{node.port}:down")
                continue
            finally:
                client.close()
            online = sum(1 for name, value in info.items()
                         if name.startswith("slave") and isinstance(value, dict) and value.get("state") == "online")
            link = (f" link={info.get('master_link_status')} sync={info.get('master_sync_in_progress')}"
                    if info.get("role") == "slave" else f" online={online}")
            states.append(f"{node.port}:{info.get('role')} id={str(info.get('master_replid'))[:6]}"
                          f" id2={str(info.get('master_replid2'))[:6]} off={info.get('master_repl_offset')}"
                          f"{link} mark={str(mark)[:6]}")
        return states

    def watch_nodes(self) -> None:
        """Log the nodes' states (``node_states``) whenever one changes other than by its offset
        (``AUDIT_WATCH=1``): when a node was promoted, synced, demoted, relative to the faults."""
        if os.environ.get("AUDIT_WATCH") != "1":
            return
        last: list[str] = []
        while not self.stop.is_set():
            states = self.node_states()
            shape = [" ".join(word for word in state.split() if not word.startswith("off=")) for state in states]
            if shape != last:
                self.log("nodes", " | ".join(states))
                last = shape
            time.sleep(0.1)

    # --- faults -------------------------------------------------------------------------------

    def replica_alive(self) -> bool:
        """Whether the pair still has a replica: the kills leave none (the killed
        primary is not started again)."""
        process = self.pair.replica.process
        return process is not None and process.poll() is None

    def cannot_apply(self, name: str) -> str:
        """Why fault ``name`` cannot apply now ("" when it can): the tool's limits, not the
        service's, so a seeded run skips the fault rather than crash. A fault that promotes the
        replica waits for it to be online and caught up first (right after a swap it is still
        syncing: Redis refuses FAILOVER to it, and the others would promote a node without the
        writes since)."""
        if name not in REPLICA_FAULTS:
            return ""
        if not self.replica_alive():
            return "no replica left (a kill before)"
        # Every one of these promotes the replica, which must have what the primary had first:
        # one still syncing (a full sync after a swap waits Redis's repl-diskless-sync-delay, 5 s,
        # as long as the pause after a fault) has nothing a checkout waited for (none is, while
        # it is not online), and promoted it loses every write since the swap: the two faults
        # docs/reliability.md does not guarantee. ``swap`` and ``stoppromote`` once waited for
        # nothing: a ``swap`` 5 s after a ``stoppromote`` promoted the node it had demoted, mid
        # full sync, and lost the 13 s of writes answered in between.
        try:
            self.pair.wait_synced(30)
        except AssertionError:
            return "the replica did not come online in 30 s"
        return ""

    def fault(self, name: str) -> None:
        pair, pause = self.pair, self.random.uniform(2, 5)
        if name not in FAULTS:
            raise SystemExit(f"unknown fault {name}")
        reason = self.cannot_apply(name)
        if reason:
            self.log("fault", name, "skipped:", reason)
            self.skipped.append(f"{name}: {reason}")
            return
        self.log("fault", name)
        if name == "swap":
            pair.swap_with_replicaof()
        elif name == "failover":
            pair.fail_over()
        elif name == "stop":
            primary = pair.primary.process
            assert primary is not None
            primary.send_signal(signal.SIGSTOP)
            time.sleep(pause)
            primary.send_signal(signal.SIGCONT)
        elif name == "stoppromote":
            pair.stop_primary_and_promote(pause, demote_after=float(os.environ.get("AUDIT_DEMOTE_AFTER", "1")))
        elif name == "sched":
            os.killpg(self.scheduler.pid, signal.SIGSTOP)
            time.sleep(pause)
            os.killpg(self.scheduler.pid, signal.SIGCONT)
            time.sleep(1)
            os.killpg(self.scheduler.pid, signal.SIGKILL)
            self.scheduler.wait()
            self.scheduler = self.spawn("scheduler")[0]
        elif name == "worker":
            worker = self.workers[1][0]
            os.killpg(worker.pid, signal.SIGSTOP)
            time.sleep(3)
            os.killpg(worker.pid, signal.SIGCONT)
            time.sleep(1)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
            self.workers[1] = self.spawn("http")
        elif name == "empty":
            with self.lock:
                self.empty_restarts += 1  # and once more once it is back: what began between is lost too
            pair.primary.kill()
            pair.primary.replica_of = None  # a primary again (the first replica was started as one)
            # Empty: a node that was a replica once keeps the snapshot of its last full sync in
            # its directory and would load it (an old state, not an empty one).
            (pair.primary.data_dir / "dump.rdb").unlink(missing_ok=True)
            pair.primary.start()
            with self.lock:
                self.empty_restarts += 1
        elif name in ("lagkill", "cutkill", "kill"):
            if name == "lagkill":
                pair.link.hold()
                time.sleep(1.5)
            elif name == "cutkill":
                pair.link.close()  # the primary drops its replica at once, the endpoint still on it
                time.sleep(3)
            pair.kill_primary_and_promote()
        else:
            raise SystemExit(f"unknown fault {name}")
        time.sleep(float(os.environ.get("AUDIT_GAP", "5")))

    # --- callers ------------------------------------------------------------------------------

    def caller(self, number: int) -> None:
        name = f"c{number}"
        user = self.user(name)
        source = "127.0.0.1" if user else f"127.0.0.{10 + number}"
        rand = random.Random(self.seed * 100 + number)
        connection: http.client.HTTPConnection | None = None
        token = ""

        def call(method: str, path: str, body: Any = None, auth: dict[str, str] | None = None) -> tuple[int, Any]:
            nonlocal connection
            for _ in range(3):
                if connection is None:
                    live = [port for process, port in self.workers if process.poll() is None]
                    if not live:  # the run ended (a fault failed): the API processes are stopped
                        return 0, None
                    connection = http.client.HTTPConnection("127.0.0.1", live[number % len(live)],
                                                            timeout=CLIENT_TIMEOUT, source_address=(source, 0))
                headers = {"Content-Type": "application/json", **(auth or {})}
                if token:
                    headers["X-AUTH-TOKEN"] = token
                route = f"{method} /{path.split('/')[1]}"
                try:
                    data = json.dumps(body).encode() if body is not None else b"" if method in ("POST", "PUT") else None
                    connection.request(method, "/api/v3" + path, body=data, headers=headers)
                    response = connection.getresponse()
                    raw = response.read()
                except TimeoutError:
                    self.problems.append(f"{name} {method} {path}: no answer within {CLIENT_TIMEOUT} s")
                    connection.close()
                    connection = None
                    return 0, None
                except (OSError, http.client.HTTPException):  # its API process was killed: another one
                    connection.close()
                    connection = None
                    time.sleep(0.1)
                    continue
                try:
                    answer = json.loads(raw)
                except ValueError:
                    answer = None
                with self.lock:
                    self.answers[(route, response.status)] += 1
                if response.status >= 500 and not (response.status == 503 and isinstance(answer, dict)
                                                   and answer.get("ok") is False):
                    self.problems.append(f"{name} {method} {path}: {response.status} {raw[:200]!r}")
                elif (response.status == 503 and answer.get("error")  # not vmpooler's bare "no VM ready"
                      and not (response.getheader("Retry-After") or "").isdigit()):
                    self.problems.append(f"{name} {method} {path}: 503 without Retry-After {raw[:200]!r}")
                return response.status, answer
            return 0, None

        def log_in() -> None:
            nonlocal token
            token = ""
            secret = base64.b64encode(f"{user}:{user}-pw".encode()).decode()
            status, answer = call("POST", "/token", auth={"Authorization": f"Basic {secret}"})
            token = answer["token"] if status == 200 else ""

        if user:
            log_in()
        cycle = 0
        while not self.stop.is_set():
            cycle += 1
            pool = rand.choice(list(POOLS))
            if user and not token:
                log_in()  # a 503 before, or the token lost with Redis's data (401)
                if not token:
                    time.sleep(0.05)
                continue
            if token and rand.random() < 0.15:
                self.ondemand(call, pool)
                continue
            with self.lock:
                epoch = self.empty_restarts
            status, answer = call("POST", f"/vm/{pool}")
            if status == 401 and user:
                if not isinstance(answer, dict) or "token" not in str(answer.get("error", "")):
                    self.problems.append(f"{name} POST /vm/{pool}: 401 without a clear reason: {answer}")
                token = ""
            if status != 200:
                time.sleep(0.05)
                continue
            host = answer[pool]["hostname"].split(".")[0]
            vm = self.hypervisor_client.hget(self.folder_keys[pool], host)
            if vm is None:
                self.problems.append(f"{name} was handed {host}, which the hypervisor does not have")
            with self.lock:
                self.handed[(host, json.loads(vm).get("available_at") if vm else None)].append(
                    f"{name} at {time.monotonic() - self.started:.2f} after {epoch} empty restarts")
                self.kept[host] = name
                self.checked_out_in[host] = epoch
            marker = f"{name}-{cycle}"
            if token:
                call("PUT", f"/vm/{host}", {"tags": {"owner": name, "marker": marker}, "lifetime": 3})
            status, answer = call("GET", f"/vm/{host}")
            if status == 200:
                owner = (answer.get(host) or {}).get("tags", {}).get("owner")
                if owner not in (None, name):
                    self.problems.append(f"{name} read its {host} tagged as {owner}'s")
            time.sleep(rand.uniform(0, 0.3))
            if rand.random() < 0.8:
                for _ in range(20):  # a 503 says: the return may be made, send the DELETE again
                    status, answer = call("DELETE", f"/vm/{host}")
                    if status != 503:
                        break
                    time.sleep(0.5)
                if status == 401 and user:
                    token = ""  # lost with Redis's data: the VM too (below)
                with self.lock:
                    lost = self.checked_out_in.get(host, 0) < self.empty_restarts
                    if status in (200, 0, 503) or (lost and status in (401, 404)):
                        # returned, or may be (no answer, or 503 ten seconds on), or lost by design
                        self.kept.pop(host, None)
                    if lost and status in (401, 404):
                        self.lost.append(f"{name}'s {host} (return answered {status})")
                if status == 404 and not lost:
                    self.problems.append(f"{name} returned its {host}: 404 {answer}")

    def user(self, caller: str) -> str:
        """The user caller ``caller`` (``c<number>``) logs in as; "" when it is anonymous."""
        return f"user{caller[1:]}" if not self.anonymous or int(caller[1:]) % 2 == 0 else ""

    def ondemand(self, call: Any, pool: str) -> None:
        with self.lock:
            epoch = self.empty_restarts
        status, answer = call("POST", "/ondemandvm", {pool: 1})
        if status != 201:
            return
        request_id = answer["request_id"]
        for _ in range(20):
            status, answer = call("GET", f"/ondemandvm/{request_id}")
            if status in (401, 404) and epoch < self.empty_restarts:
                self.lost.append(f"on-demand request {request_id} (answered {status})")
                break
            if status == 404:
                self.problems.append(f"on-demand request {request_id}, answered 201, is unknown: {answer}")
            if status != 202 or self.stop.is_set():
                break
            time.sleep(0.2)
        call("DELETE", f"/ondemandvm/{request_id}")

    # --- the run and its checks ---------------------------------------------------------------

    def run(self, faults: list[str]) -> None:
        self.log("filled", self.wait_full(30))
        callers = [threading.Thread(target=self.caller, args=(n,), daemon=True) for n in range(self.callers)]
        for thread in callers:
            thread.start()
        time.sleep(4)
        for name in faults:
            self.fault(name)
        self.stop.set()
        for thread in callers:
            thread.join(2 * CLIENT_TIMEOUT)
        if any(thread.is_alive() for thread in callers):
            self.problems.append("a caller hung")
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.workers[0][1], timeout=CLIENT_TIMEOUT)
        connection.request("GET", "/api/v3/status")
        status = connection.getresponse().status
        if status != 200 or time.monotonic() - started > 2:
            self.problems.append(f"after the faults /status answered {status} in {time.monotonic() - started:.1f} s")
        self.check(self.wait_full(float(os.environ.get("AUDIT_SETTLE", "40"))))

    def check(self, counts: dict[str, dict[str, int]]) -> None:
        from chalicelib.clock import SystemClock
        from chalicelib.config import parse
        from chalicelib.providers.dummy import DummyProvider

        self.log("counts", counts)
        self.log("answers", dict(self.answers))
        store, config = self.store(), parse(CONFIG)
        hypervisor = redis.Redis(port=self.hypervisor.port, decode_responses=True)
        provider = DummyProvider(config.providers["dummy"], hypervisor, SystemClock(), prefix="hypervisor:")
        self.problems += [f"{host} (available_at {since}) handed to {callers}"
                          for (host, since), callers in self.handed.items() if len(callers) > 1]
        for pool, size in POOLS.items():
            if counts.get(pool, {}).get("ready") != size or counts[pool]["pending"] or counts[pool]["completed"]:
                self.problems.append(f"{pool} did not converge: {counts.get(pool)}")
                for host, record in store.records(store.hostnames(pool, "pending")).items():
                    self.log("pending", host, record.raw)  # what holds it: clone_asked, clone_task, request
            pool_config = config.pool(pool)
            assert pool_config is not None
            in_hypervisor = {vm.name for vm in provider.list_vms(pool_config)}
            tracked = set(store.hostnames(pool, "ready")) | set(store.hostnames(pool, "running"))
            if in_hypervisor != tracked:
                self.problems.append(f"{pool}: only in the hypervisor {sorted(in_hypervisor - tracked)}, "
                                     f"only in Redis {sorted(tracked - in_hypervisor)}")
        for host, caller in self.kept.items():
            if self.checked_out_in.get(host, 0) < self.empty_restarts:
                self.lost.append(f"{caller}'s {host} (kept)")
                continue
            record = store.get_vm(host)
            user = self.user(caller)
            if record is None or record.state != "running":
                self.problems.append(f"{caller}'s {host} is {record.state if record else 'unknown'}")
            elif user and record.raw.get("token_user") != user:
                self.problems.append(f"{caller}'s {host} belongs to {record.raw.get('token_user')!r}")

    def close(self) -> None:
        self.stop.set()
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGCONT)
                os.killpg(process.pid, signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        self.pair.stop()
        self.hypervisor.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--serve", choices=("http", "scheduler"), help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--faults", default="swap,stop,sched,worker,lagkill")
    parser.add_argument("--logs", default="/tmp/vmpool-failover-audit", help="the service's processes' logs")
    parser.add_argument("--callers", type=int, default=CALLERS)
    parser.add_argument("--tokens", action="store_true", help="every caller its own user's token (else every second)")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return 0
    out_dir = Path(args.logs)
    out_dir.mkdir(parents=True, exist_ok=True)
    audit = Audit(args.seed, out_dir, callers=args.callers, anonymous=not args.tokens)
    try:
        audit.run([fault for fault in args.faults.split(",") if fault])
    finally:
        audit.close()
    if audit.lost:
        print(f"{len(audit.lost)} VMs lost by an empty restart (documented):", "; ".join(audit.lost[:20]))
    if audit.skipped:
        print(f"{len(audit.skipped)} faults skipped (they could not apply):", "; ".join(audit.skipped))
    print(f"{len(audit.problems)} problems")
    for problem in audit.problems[:50]:
        print("  ", problem)
    return 1 if audit.problems else 0


if __name__ == "__main__":
    sys.exit(main())
