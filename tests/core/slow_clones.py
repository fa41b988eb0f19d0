"""The pool of the tests of clones a pass or a run left behind (tests/core/test_unnoted_clones.py,
tests/core/test_reservation_lease.py): clones of 200 s, slower than the start grace
(``pending.CLONE_START_GRACE_SECONDS``, 2 minutes) and within the pool's 5 minute timeout, so a
run's clones are still under way when the next run looks."""

LIMIT = 2
"""The config's ``task_limit``: as many clones at the provider at once."""
CONFIG = """\
config: {task_limit: 2, timeout: 5, ready_ttl: 10, vm_lifetime: 2, prefix: "ci-", domain: example.com}
redis: {data_ttl: 1}
providers:
  dummy: {provider_class: dummy, seed: 7, createvm_min_time: 200, createvm_max_time: 200, boot_time: 30,
          destroyvm_max_time: 20}
pools:
  - {name: alpha, size: 2, provider: dummy}
"""
