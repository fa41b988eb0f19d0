"""vmpooler's spec/integration/api/v3/token_spec.rb (/token, /token/:token), ported.

Every ``it`` of this spec was already checked by tests/auth_api/ (over HTTP, with the dummy
provider's admin/s3cr3t-style logins or a real slapd); this module maps them, and its one test
keeps the map true.

GET /token
- '(auth not configured) returns a 404' (every token route, every API version):
  tests/auth_api/test_token_routes.py::test_token_routes_are_404_without_auth
- 'returns a 401 if not authed':
  tests/auth_api/test_token_routes.py::test_basic_auth_failures_are_401_with_the_challenge
- 'returns a list of tokens if authed' (``<token>: {created}``): deliberately different, each
  token is listed under its id (the first 16 hex of its SHA-256), because Redis keeps only token
  hashes (docs/auth.md, "Tokens"): tests/auth_api/test_token_routes.py::test_token_life_cycle_under_every_api_version
  and tests/auth_api/test_token_routes.py::test_get_token_lists_only_the_callers_tokens

POST /token
- '(auth not configured) returns a 404': tests/auth_api/test_token_routes.py::test_token_routes_are_404_without_auth
- 'returns a 401 if not authed':
  tests/auth_api/test_token_routes.py::test_basic_auth_failures_are_401_with_the_challenge
- 'returns a newly created token if authed' (32 characters, the caller's user):
  tests/auth_api/test_token_routes.py::test_token_life_cycle_under_every_api_version and, with
  the dummy provider, tests/auth_api/test_token_routes.py::test_dummy_auth_works_over_http

GET /token/:token
- '(auth not configured) returns a 404': tests/auth_api/test_token_routes.py::test_token_routes_are_404_without_auth
- 'returns a token' (``user``, ``vms.running`` with the VM checked out with it), asked with nothing
  but the token in the path, as vmfloaty does:
  tests/auth_api/test_token_routes.py::test_get_token_is_answered_to_its_holder_or_its_owner and
  tests/auth_api/test_token_routes.py::test_get_token_lists_only_vms_of_that_token

DELETE /token/:token
- '(auth not configured) returns a 404': tests/auth_api/test_token_routes.py::test_token_routes_are_404_without_auth
- 'returns a 401 if not authed', 'deletes a token if authed':
  tests/auth_api/test_token_routes.py::test_delete_token_only_by_its_owner
- 'fails if token does not exist' (401, with the spec's own "TODO: should this be 404?"):
  deliberately different, 404 ``{"ok": false, "error": "unknown or expired token"}``: the caller's
  credentials were good, and a 401 with ``WWW-Authenticate`` tells a client to ask for new ones
  (tests/auth_api/test_token_routes.py::test_token_life_cycle_under_every_api_version deletes a
  token twice).

Also deliberately different (docs/auth.md): only a token's owner may delete it
(tests/auth_api/test_token_routes.py::test_delete_token_only_by_its_owner). ``created`` and
``last`` are written as vmpooler writes them, Ruby's ``Time#to_s`` (``2027-01-15 08:00:00 +0000``;
ISO-8601 until the eighth round, docs/compatibility.md).
Skipped: none; the spec plants tokens in vmpooler's Redis layout, our checks make them with POST /token.
"""

from __future__ import annotations

from tests.compat.api_spec_support import missing_tests


def test_every_test_named_in_the_docstring_exists() -> None:
    assert missing_tests(__doc__) == []
