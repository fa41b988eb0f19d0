"""vmpool: instantly available virtual machines, served from pools kept full in the background."""

from chalicelib import deferred_imports

# Here, because every function imports this package before anything imports redis.
deferred_imports.install()
