"""vSphere provider (pyVmomi). Only ``provider.py`` and the modules it imports load pyVmomi: the
registry imports it lazily, so the API Lambdas never pay for it, and ``config.py`` (the
provider's settings) is validated without it."""
