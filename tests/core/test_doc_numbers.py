"""The numbers and names the docs give users are the code's: every limit README.md and docs/api.md
state is the constant (or config default) the code enforces, and every environment variable the
code reads is documented, as every one the docs name is read. A constant changed without its doc
(or a doc edited alone) fails here, naming the sentence."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pytest

from chalicelib import answer_sizes
from chalicelib.api import checkout, conditional, dashboard, http, pool_config, summary, vm_tasks, vms
from chalicelib.config import AuthConfig, ServiceConfig
from chalicelib.manager.vm_tasks import TASK_SETTLE_SECONDS
from chalicelib.providers.vsphere.connection import LOGIN_RETRY_SECONDS
from chalicelib.sizing.settings import MAX_SIZE
from chalicelib.store.names import NAMES_PER_CALL
from chalicelib.store.pool_overrides import MAX_CLONE_TARGET, MAX_TEMPLATE
from infra import template
from infra.sync_config import RECONCILE_TIMEOUT, STAGES
from local import http_front, redis_server, run
from tests.support import doc_prose

ROOT = Path(__file__).resolve().parents[2]


def _default(name: str) -> object:
    """A ``:config:`` key's default (the dataclass field's)."""
    return getattr(ServiceConfig, name)


_prose = doc_prose


CLIENT_TIMEOUT = f"{http_front.CLIENT_TIMEOUT_SECONDS:g}"
SHOWN_CHARACTERS = inspect.signature(http.shown).parameters["limit"].default

_DASHBOARD_BODY = template.dashboard(STAGES["dev"])["Properties"]["DashboardBody"]["Fn::Sub"]
ALARMS = len(template.alarms(STAGES["dev"]))
WIDGETS = len(json.loads(_DASHBOARD_BODY)["widgets"])
DASHBOARD_KB = f"{len(_DASHBOARD_BODY.encode()) / 1000:.1f}"
"""The stack's alarms and dashboard as infra/template.py makes them (the same whatever the pools:
tests/infra/test_scale.py); an alarm or a graph added moves these, and the docs must follow."""

MAX_TOKENS = (answer_sizes.ANSWER_LIMIT_BYTES - answer_sizes.lambda_bytes({"ok": True})) // answer_sizes.TOKEN_BYTES
"""The largest ``max_tokens_per_user`` whose GET /token fits one answer (answer_sizes.tokens_answer_bytes):
it moved when the token times took vmpooler's layout (46,025 -> 41,296), and three docs give it."""

STATED: dict[str, list[str]] = {
    "docs/deploy.md": [
        f"tokens of {answer_sizes.TOKEN_BYTES} bytes each, expiry included (at most {MAX_TOKENS:,}:",
        f"a `max_tokens_per_user` above {MAX_TOKENS:,}",
        (f"| alarms, dashboard | **{ALARMS}** alarms (none per pool); dashboard body **{DASHBOARD_KB} KB**, "
         f"**{WIDGETS}** widgets"),
        # The alarms table's thresholds, which an operator reads in an incident.
        f"a reconcile batch took {int(template.DURATION_ALARM_FRACTION * 100)}% of its {RECONCILE_TIMEOUT} s timeout",
        f"a pool's pass started {template.LATE_PASS_SECONDS} s or more after its message was due",
        f"a failed pass's {template.RECONCILE_VISIBILITY_TIMEOUT} s visibility timeout does not count",
        f"The oldest reconcile message is over {template.reconcile_backlog_threshold():,} s old",
        f"the queue's {template.RECONCILE_VISIBILITY_TIMEOUT} s visibility timeout, a {RECONCILE_TIMEOUT} s consumer",
    ],
    "docs/api.md": [
        f"**Bodies** over {http.MAX_BODY_BYTES // 1024} KiB",
        f"Request body too large (at most {http.MAX_BODY_BYTES} bytes)",
        f"whole numbers of at most {http.MAX_NUMBER_DIGITS} digits",
        f"Error messages quote at most the first {SHOWN_CHARACTERS} characters",
        f"above {vms.MAX_LIFETIME_HOURS} hours",
        f"at most {checkout.MAX_COUNT} VMs may be checked out in one request",
        f"`max_tags_per_vm` ({_default('max_tags_per_vm')})",
        f"A key is at most {vms.MAX_TAG_KEY} characters",
        f"A value is at most {vms.MAX_TAG_VALUE} characters",
        f"cover at most {summary.MAX_DAYS} days",
        f"`POST /vm/<host>/disk/<gb>` (1..{vm_tasks.MAX_DISK_GB})",
        f"a whole number of GB from 1 to {vm_tasks.MAX_DISK_GB}",
        (f"`414` for a request target over {http_front.MAX_TARGET_BYTES:,} bytes, `431` for a header field over "
        f"{http_front.MAX_HEADER_FIELD_BYTES:,} bytes, more than {http_front.MAX_HEADER_FIELDS} fields or a head "
        f"over {http_front.MAX_HEAD_BYTES // 1024} KiB"),
        f"more than {http_front.MAX_CHUNKS:,} chunks",
        f"in more than {http_front.MAX_CHUNKED_BODY_WIRE_BYTES // 1024} KiB on the wire",
        f"for at most {CLIENT_TIMEOUT} s and {http_front.LINGER_MAX_BYTES // 2**20} MiB",
        f"A worker holds {http_front.MAX_CONNECTIONS:,} connections",
        f"names at most the first {http.MAX_FAILURES_LISTED} pools, each cut to {http.MAX_LISTED_NAME} characters",
        f"`GET /dashboard/stats/history?hours=1..{dashboard.MAX_HISTORY_HOURS}`",
        f"{conditional.COMPRESS_FROM_BYTES:,} bytes or more (`COMPRESS_FROM_BYTES`",
        f"sizes that are not whole numbers 0..{MAX_SIZE}",
        f"over {MAX_TEMPLATE:,} characters",
        f"not 1 to {MAX_CLONE_TARGET} printable characters",
        f"`max_ondemand_instances_per_request` VMs in all (default {_default('max_ondemand_instances_per_request')})",
        f"At most `ondemand_clone_limit` (default {_default('ondemand_clone_limit')})",
        f"`ondemand_request_ttl` minutes (default {_default('ondemand_request_ttl')})",
        # The 503s of a runtime pool change no replica acknowledged: the client is told to send it again.
        f'"{pool_config.CHANGE_NOT_REPLICATED}"',
        f'"{pool_config.RESET_NOT_REPLICATED}"',
        # How long a disk, snapshot or revert whose start's answer was lost may stay in flight.
        f"fails only if it has not {TASK_SETTLE_SECONDS:g} s after it was started",
        f"(`disk +8gb failed: not done {TASK_SETTLE_SECONDS:g} s after its start",
        f"for up to the same {TASK_SETTLE_SECONDS:g} s",
    ],
    "docs/auth.md": [
        (f"at most {MAX_TOKENS:,}, the most one `GET /token` (the user's own, or an administrator's `?user=`) "
         f"can list within Lambda's 6 MB at {answer_sizes.TOKEN_BYTES} bytes a token"),
    ],
    "docs/vsphere.md": [
        (f"**A refused password is sent once per process every {LOGIN_RETRY_SECONDS / 60:g} minutes** "
         "(`LOGIN_RETRY_SECONDS`)"),
        f"the same password is not tried again for {LOGIN_RETRY_SECONDS:g} s",
        f"Over {NAMES_PER_CALL:,} names are held by several script calls",
        f"not done {TASK_SETTLE_SECONDS:g} s after its take",
    ],
    "docs/performance.md": [f"(`max_tokens_per_user`, at most {MAX_TOKENS:,})"],
    "README.md": [
        (f"a request target over {http_front.MAX_TARGET_BYTES:,} bytes a 414, more than {http_front.MAX_HEADER_FIELDS} "
        f"headers, one over {http_front.MAX_HEADER_FIELD_BYTES:,} bytes or all of them over "
        f"{http_front.MAX_HEAD_BYTES // 1024} KiB a 431, a body over {http.MAX_BODY_BYTES // 1024} KiB a 413"),
        f"past the {http_front.MAX_CONNECTIONS:,}th open one per worker",
        f"gets a 408 after {CLIENT_TIMEOUT} s (`VMPOOL_HTTP_CLIENT_TIMEOUT`)",
        f"a log over {redis_server.LOG_BYTES // 1_000_000} MB",
        f"VM count must be at most {checkout.MAX_COUNT}",
        f"default one per core, at most {run.WORKERS_PER_CORE} a core",
        f"default 4, at most {run.MAX_THREADS}",
    ],
}


@pytest.mark.parametrize(("doc", "sentence"), [(doc, sentence) for doc, sentences in STATED.items()
                                               for sentence in sentences])
def test_a_limit_the_docs_state_is_the_codes(doc: str, sentence: str) -> None:
    if sentence not in _prose(doc):
        pytest.fail(f"{doc} no longer says {sentence!r}: the code's limit and the doc differ")


# --- environment variables -----------------------------------------------------------------------

SERVICE_CODE = [ROOT / "app.py", *sorted((ROOT / "chalicelib").rglob("*.py")),
                *sorted((ROOT / "local").rglob("*.py")), *sorted((ROOT / "infra").rglob("*.py"))]
TEST_CODE = [*sorted((ROOT / "tests").rglob("*.py")), *sorted((ROOT / "bench").rglob("*.py"))]
USER_DOCS = [ROOT / "README.md", ROOT / "vmpool.yaml.example", ROOT / "Makefile",
             *sorted((ROOT / "docs").glob("*.md"))]
NAME = re.compile(r"\bVMPOOL_[A-Z0-9_]*[A-Z0-9]\b")

WIRING = {
    "VMPOOL_CONFIG_BUCKET": "the stack's config bucket (infra/template.py sets it)",
    "VMPOOL_CONFIG_WATCH": "set by local/run.py for the processes it starts",
    "VMPOOL_LOCAL_RESTARTS": "set by local/run.py when it starts the stack again after a stuck loop",
    "VMPOOL_RECONCILE_QUEUE_NAME": "the stage's queue (infra/sync_config.py sets it)",
    "VMPOOL_RECONCILE_QUEUE_URL": "the stack's queue (infra/template.py sets it)",
    "VMPOOL_RECONCILE_CONCURRENCY": "the stage's reserved concurrency (infra/sync_config.py sets it)",
    "VMPOOL_SCHEDULE_MINUTES": "the tick's schedule (infra/sync_config.py sets it)",
}
"""Variables the code reads that our own deployment or local stack sets, never a user."""


def _names(files: list[Path]) -> set[str]:
    return {name for path in files for name in NAME.findall(path.read_text(encoding="utf-8"))}


def _read_by_the_service() -> set[str]:
    quoted = re.compile(r"[\"'](VMPOOL_[A-Z0-9_]+)[\"']")
    return {name for path in SERVICE_CODE for name in quoted.findall(path.read_text(encoding="utf-8"))}


def test_every_environment_variable_the_service_reads_is_documented() -> None:
    read = _read_by_the_service()
    assert {"VMPOOL_CONFIG_FILE", "VMPOOL_REDIS_URL", "VMPOOL_KEY_PREFIX"} <= read  # the scan finds them
    undocumented = read - set(WIRING) - _names(USER_DOCS)
    assert not undocumented, f"read by the code, named in no doc: {sorted(undocumented)}"


def test_every_environment_variable_the_docs_name_is_read() -> None:
    unread = _names(USER_DOCS) - _read_by_the_service() - _names(TEST_CODE)
    assert not unread, f"named in the docs, read nowhere: {sorted(unread)}"


def test_the_wiring_variables_are_set_by_our_own_stack() -> None:
    setters = _names([*sorted((ROOT / "infra").rglob("*.py")), ROOT / "local" / "run.py"])
    assert set(WIRING) <= setters
    assert set(WIRING) <= _read_by_the_service()


@pytest.mark.parametrize("knob", ["PORT", "WORKERS", "THREADS", "PROVIDER", "VMPOOL_STATE_DIR", "VMPOOL_CONFIG_FILE"])
def test_the_make_run_options_the_readme_names_are_read_by_the_local_stack(knob: str) -> None:
    assert f"`{knob}=" in _prose("README.md")
    assert re.search(rf"environ\.get\(\"{knob}\"", (ROOT / "local" / "run.py").read_text(encoding="utf-8")) or \
        re.search(rf"\b{knob}\b", (ROOT / "chalicelib" / "config.py").read_text(encoding="utf-8"))


def test_every_make_target_the_docs_name_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    named = {name for path in USER_DOCS if path.suffix == ".md"
             for name in re.findall(r"`make ([a-z][a-z-]*)", path.read_text(encoding="utf-8"))}
    assert {"run", "test", "deploy", "config-push"} <= named  # the scan finds them
    assert named <= targets, f"docs name make targets the Makefile lacks: {sorted(named - targets)}"


# --- the Limits table of docs/auth.md ---------------------------------------------------------------

LIMITS_ROW = re.compile(r"^\| `([a-z_]+)` \| ([0-9]+) \|", re.MULTILINE)


def test_every_default_in_the_limits_table_is_the_configs() -> None:
    """docs/auth.md, "Limits": each ``:config:`` key's default as ServiceConfig has it (the table is
    what an operator sizes quotas by; 11 numeric rows, none pinned before)."""
    text = (ROOT / "docs/auth.md").read_text(encoding="utf-8")
    table = text[text.index("\n## Limits\n"):]
    rows = LIMITS_ROW.findall(table[:table.index("\n\n", table.index("| key | default |"))])
    assert len(rows) >= 10, rows
    wrong = {key: (stated, _default(key)) for key, stated in rows if int(stated) != _default(key)}
    assert not wrong, f"docs/auth.md's Limits table states defaults the config does not have: {wrong}"


LOGIN_LIMITS_ROW = re.compile(r"^\| `(login_attempts_[a-z_]+)` \| [^|]+ \| ([0-9]+) \|", re.MULTILINE)


def test_every_default_in_the_login_limits_table_is_the_configs() -> None:
    """docs/auth.md's failed-login limits table: each ``:auth:`` key's default as AuthConfig has it."""
    rows = LOGIN_LIMITS_ROW.findall((ROOT / "docs/auth.md").read_text(encoding="utf-8"))
    assert len(rows) == 3, rows
    wrong = {key: (stated, getattr(AuthConfig, key)) for key, stated in rows if int(stated) != getattr(AuthConfig, key)}
    assert not wrong, f"docs/auth.md's login limits state defaults the config does not have: {wrong}"
