"""vmpooler's spec/integration/api/healthcheck_spec.rb (GET /healthcheck), ported.

- 'returns OK' (200, ``application/json``, exactly ``{"ok": true}``; unversioned only):
  tests/api/test_dashboard.py::test_root_redirects_to_the_dashboard_and_healthcheck_answers
  (every answer the harness receives is checked to be ``application/json``).

vmpooler serves /healthcheck only when Prometheus metrics are configured; we always do.
"""

from __future__ import annotations

from tests.compat.api_spec_support import missing_tests


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []
