"""vmpooler's spec/integration/dashboard_spec.rb (/, /dashboard/, unknown routes, the dashboard's
JSON feeds), ported.

'/'
- 302: tests/api/test_dashboard.py::test_root_redirects_to_the_dashboard_and_healthcheck_answers
- Location 'http://example.org/dashboard/': deliberately different, ``/dashboard/`` (under the
  API Gateway stage the client used: tests/api/test_dashboard.py::test_root_redirect_keeps_the_api_gateway_stage).
  vmpooler builds an absolute URL from the request's Host header, which a client can forge;
  every HTTP client resolves the relative reference against the URL it asked for.

'/dashboard/'
- be_ok, the configured site name shown, vmpooler's default '<b>vmpooler</b>' not:
  tests/api/test_dashboard.py::test_dashboard_page_is_one_self_contained_document (``site_name``
  is shown as text: its HTML tags are dropped).

'unknown route'
- ``application/json``, 404, ``{"ok": false}``: tests/api/test_errors.py::test_unknown_route_and_wrong_method_bodies
  (in AWS, API Gateway's own "missing authentication token" answer is mapped to the same 404 by
  infra/stage_settings.py).

'/dashboard/stats/vmpooler/pool'
- 'returns basic JSON' (``{pool: {size, ready}}``) and 'returns JSON with history when redis has
  values': tests/api/test_dashboard.py::test_vmpooler_pool_feed_in_its_shape_with_history
- 'returns JSON with zeroed history when redis does not have values' (``history: [<ready>]``):
  tests/api/test_dashboard.py::test_vmpooler_pool_feed_without_samples_has_the_ready_count_as_history

'/dashboard/stats/vmpooler/running'
- 'returns basic JSON' and 'adds major correctly' (pools grouped by the name's first word):
  tests/api/test_dashboard.py::test_vmpooler_running_feed_groups_pools_by_platform

vmpooler reads history from Graphite when one is configured; ours comes from the per-minute
samples the reconcile records (the running feed has a ``history`` too when asked for).
Skipped: none.
"""

from __future__ import annotations

from tests.compat.api_spec_support import missing_tests


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []
