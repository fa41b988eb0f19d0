"""Start and stop our vcsim (tools/vcsim/main.go) from Python: for the tests' fixtures and for
the local stack (``make run PROVIDER=vcsim``). Standard library only.

    process, url = start_vcsim(port=0, boot_delay=1.0, cert_path="/tmp/vcsim.pem")
    ...  # url is https://127.0.0.1:<port>/sdk; trust cert_path as the CA bundle
    stop_vcsim(process)  # its output (why it exited, if it did): /tmp/vcsim.log, log_tail()
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping

from local import processes

HERE = Path(__file__).resolve().parent
BINARY = HERE / "vcsim"
USERNAME = "vmpool"
PASSWORD = "vmpool-password"
TEMPLATE = "templates/vmpool-template"
"""The template path every datacenter's vm folder gets (``<dc>/vm/templates/vmpool-template``)."""
FOLDERS = ("vmpool",)
NO_CLONE_FOLDER = "no-clone-permission"
"""Clones into any folder of this name are refused with NoPermission (the user lacks the clone
privilege there), so permission failures can be tested."""
NO_CANCEL_FOLDER = "no-cancel-permission"
"""Delayed clones (``clone_delay``) into any folder of this name refuse CancelTask with
NoPermission and run on (the user may clone there but not cancel), so refused cancels can be
tested."""
FAIL_CLONE_FOLDER = "failing-clones"
"""Clone tasks into any folder of this name end in error after making the VM (the debris a failed
clone can leave in vCenter), so clone failures from vCenter's tasks can be tested."""


def build() -> Path:
    """Build the binary if main.go changed (tools/vcsim/build.sh); return its path."""
    subprocess.run(["sh", str(HERE / "build.sh")], check=True)
    return BINARY


def start_vcsim(
    port: int = 0,
    boot_delay: float = 5.0,
    cert_path: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    datacenters: int = 1,
    clusters: int = 1,
    hosts: int = 3,
    guest_ip: str = "127.0.0.1",
    guest_addresses: tuple[str, ...] = (),
    username: str = USERNAME,
    password: str = PASSWORD,
    timeout: float = 30.0,
    host_load_per_vm: float = 0.0,
    clone_delay: float = 0.0,
    method_delays: Mapping[str, float] | None = None,
    session_idle: float = 0.0,
    template_snapshot: str = "",
    page_size: int = 0,
    die_with_parent: bool = False,
    log_path: str | os.PathLike[str] | None = None,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start vcsim on ``host:port`` (0 picks a free port) and wait until it serves.

    Returns the process and its SDK URL (``https://127.0.0.1:<port>/sdk``). The server's
    self-signed certificate is written to ``cert_path`` when given. Raises RuntimeError when it
    does not come up within ``timeout`` seconds. ``host_load_per_vm`` > 0 makes each powered-on
    VM add that percent of its host's CPU and memory to the host's quick stats.
    ``guest_addresses``: what a booted VM's first interface reports besides ``guest_ip``
    (``guest.net``; each ``address``, ``address/state`` or ``address/state/origin``, as VMware
Tools gives an IPv6 one).

    A bad day in vCenter: ``clone_delay`` seconds each clone task runs (its VM is in the folder
    meanwhile); ``method_delays`` slows SOAP methods by name (seconds, e.g.
    ``{"RetrievePropertiesEx": 2}``); ``session_idle`` > 0 expires sessions idle that long.
    ``template_snapshot``: each template has a current snapshot of that name (linked clones
    then link to it). ``page_size`` > 0: a RetrievePropertiesEx answer holds at most that many
    objects, the rest following by its token (ContinueRetrievePropertiesEx), as vCenter pages.
    ``die_with_parent``: SIGTERM it when the process that started it dies, even by SIGKILL
    (the local stack's simulator).

    Its output (stdout and stderr: why it exited, when it does) is appended to ``log_path``
    (default: ``cert_path`` with ``.log`` for a suffix, else a new temporary file): a file, not a
    pipe, so nothing it writes can block it and nothing is lost (``log_tail``).
    """
    binary = build()
    command = [
        str(binary),
        "-l", f"{host}:{port}",
        "-boot-delay", f"{boot_delay}s",
        "-dc", str(datacenters),
        "-cluster", str(clusters),
        "-host", str(hosts),
        "-guest-ip", guest_ip,
        "-guest-addresses", ",".join(guest_addresses),
        "-template", TEMPLATE,
        "-folders", ",".join(FOLDERS),
        "-no-clone-folder", NO_CLONE_FOLDER,
        "-username", username,
        "-password", password,
        "-host-load-per-vm", str(host_load_per_vm),
        "-fail-clone-folder", FAIL_CLONE_FOLDER,
        "-no-cancel-folder", NO_CANCEL_FOLDER,
        "-clone-delay", f"{clone_delay}s",
        "-session-idle", f"{session_idle}s",
        "-template-snapshot", template_snapshot,
        "-page-size", str(page_size),
        "-method-delay", ",".join(f"{name}={round(seconds * 1000)}" for name, seconds in (method_delays or {}).items()),
    ]
    if cert_path is not None:
        command += ["-cert", str(cert_path)]
    log_file = Path(log_path) if log_path is not None else _default_log(cert_path)
    parent = os.getpid()
    with log_file.open("ab") as log:
        start = log.tell()  # a simulator started again on the same log: its own lines only
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                   preexec_fn=(lambda: processes.die_with_parent(parent)) if die_with_parent else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with log_file.open("rb") as log:
            log.seek(start)
            written = log.read().decode(errors="replace")
            for line in written[:written.rfind("\n") + 1].splitlines():  # whole lines only
                if line.startswith("VCSIM_URL="):
                    return process, line.split("=", 1)[1].strip()
        time.sleep(0.05)
    stop_vcsim(process)
    raise RuntimeError(f"vcsim did not start on {host}:{port} within {timeout} s (exit status {process.returncode});"
                       f" its log {log_file} ends:\n{log_tail(log_file)}")


def _default_log(cert_path: str | os.PathLike[str] | None) -> Path:
    if cert_path is not None:
        return Path(cert_path).with_suffix(".log")
    descriptor, name = tempfile.mkstemp(prefix="vcsim-", suffix=".log")
    os.close(descriptor)
    return Path(name)


def log_tail(log_path: str | os.PathLike[str], size: int = 4000) -> str:
    """The last ``size`` characters of a simulator's log (``start_vcsim``'s ``log_path``)."""
    try:
        return Path(log_path).read_text(errors="replace")[-size:]
    except OSError as error:
        return f"(unreadable: {error})"


def stop_vcsim(process: subprocess.Popen[bytes]) -> None:
    """Stop a vcsim started by start_vcsim (SIGTERM, then SIGKILL after 5 s)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


if __name__ == "__main__":  # python tools/vcsim/launcher.py [port] [boot_delay]
    import sys

    chosen_port = int(sys.argv[1]) if len(sys.argv) > 1 else 8989
    delay = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    cert = HERE.parent.parent / ".run" / "vcsim.pem"  # .run/ is gitignored
    cert.parent.mkdir(exist_ok=True)
    proc, sdk_url = start_vcsim(chosen_port, delay, cert)  # its output in .run/vcsim.log
    print(f"vcsim at {sdk_url} (user {USERNAME}, password {PASSWORD}, CA bundle {cert}); Ctrl-C stops it")
    try:
        proc.wait()
    except KeyboardInterrupt:
        stop_vcsim(proc)
