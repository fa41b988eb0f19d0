"""Schemathesis's stateful testing against docs/openapi.yaml on the running local stack: sequences
of calls that follow the spec's links (a token from ``POST /token`` to ``GET|DELETE
/token/{token}``, a pool name from ``GET /vm`` to ``POST /vm/{name}`` and ``POST
/ondemandvm/{name}``, an on-demand request id to ``GET|DELETE /ondemandvm/{name}``) and the links
schemathesis infers from the response schemas. Every
answer is checked as in test_openapi_fuzz.py, and across the calls: what was created answers (no
404 right after its 201), and what was deleted stays gone (``use_after_free``).

Links schemathesis infers (``as_state_machine`` analyses the schemas) come on top of the spec's
own: some join unrelated values (``GET /vm``'s pool names to ``GET /vm/{name}``), harmless, as
each such call is checked like any other. Its other inference, from ``Location`` headers, finds
nothing here: no operation answers one but ``GET /``'s redirect to the dashboard.

A checkout's answer is no link (its keys are the names requested, docs/openapi.yaml "Following
answers"), so the VM routes are reached here only with names that fit their schema; the VM
sequences are tested by hand (tests/api). Under /api/v3 only: every version answers from the same
handlers, which test_openapi_fuzz.py fuzzes one by one. ``make fuzz`` runs more (VMPOOL_FUZZ_EXAMPLES).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import hypothesis
import schemathesis
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis.specs.openapi.checks import ensure_resource_availability, use_after_free

from tests.fuzz.test_openapi_fuzz import CHECKS, EXAMPLES, SPEC

if TYPE_CHECKING:
    from tests.fuzz.fuzz_target import FuzzTarget

STATEFUL_CHECKS = [*CHECKS, use_after_free, ensure_resource_availability]
STEPS = 10
"""Most calls in one sequence: a create, a few uses of what it made, its deletion, a use after."""


def test_linked_operations_answer_as_the_spec_says(fuzz_target: FuzzTarget) -> None:
    schema = schemathesis.openapi.from_path(SPEC)
    base_url = f"http://127.0.0.1:{fuzz_target.stack.port}"

    # What the checks found, in order: Hypothesis's replay of a failing sequence may not reproduce
    # it (see below), and the failure found is what the test reports, not the replay's error.
    failures: list[Exception] = []
    calls = [0]

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: schemathesis.Case) -> dict[str, Any]:
            prefix = "" if case.operation.definition.raw.get("x-unversioned-only") else "/api/v3"
            return {"base_url": base_url + prefix, "headers": fuzz_target.headers, "timeout": 10}

        def validate_response(self, response: Any, case: schemathesis.Case, additional_checks: Any = None,
                              **kwargs: Any) -> None:
            calls[0] += 1
            # A deleted on-demand request still answers 200 (``ready: false`` and its message), as
            # vmpooler's does (docs/openapi.yaml): no use after free.
            checks = (CHECKS if case.operation.definition.raw.get("operationId") == "ondemandStatus"
                      else STATEFUL_CHECKS)
            try:
                case.validate_response(response, checks=checks, transport_kwargs=kwargs or None,
                                       recorder=self.recorder)
            except Exception as failure:
                failures.append(failure)
                raise

    # The server keeps what each sequence did (tokens made up to the user's limit, VMs checked out,
    # pools emptied), so a sequence that starts as an earlier one did may get other answers and
    # draw otherwise: Hypothesis then stops with FlakyStrategyDefinition (its replay of a failure
    # too, hence no shrinking). Every call made until then was checked; the failure found, if
    # any, is what the test reports.
    phases = [hypothesis.Phase.explicit, hypothesis.Phase.generate]
    try:
        Workflow.run(settings=hypothesis.settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                                                  derandomize=True, database=None, phases=phases,
                                                  suppress_health_check=list(hypothesis.HealthCheck)))
    except Exception as stopped:
        if failures:
            raise failures[0] from None
        if not isinstance(stopped, FlakyStrategyDefinition):
            raise
    assert calls[0] >= 2 * EXAMPLES, f"only {calls[0]} calls were made and checked"
