"""Modules that our libraries import but no request or pass of ours uses: they execute on their
first use instead of at every cold start (issue 14: the API function's cold import).

- ``redis.asyncio``: redis-py's ``redis/__init__.py`` imports its whole asyncio client (client,
  cluster, connection, sentinel, keyspace notifications). We use the synchronous client only.
- ``importlib.metadata``: ``redis.utils`` imports it to read redis-py's own version from its
  ``dist-info`` when a connection opens; ``store.connection.connect`` hands redis-py that version
  itself, so it is never needed.

How: before anything imports redis (``chalicelib/__init__.py`` calls ``install``), each is put in
``sys.modules`` as a module object whose spec, file and package path are set but whose code has
not run. Its module-level ``__getattr__`` (PEP 562) runs the code on the first lookup of a name
the module does not have yet, that is on first real use, and then goes away; another thread's
lookup meanwhile waits for the code to finish. Importing a submodule (redis-py's
``redis.commands.core`` imports ``redis.asyncio.observability.recorder``) needs only the package
path, so it does not run the package's code.

Not ``importlib.util.LazyLoader``: its module runs its code on *any* attribute access, and the
import system itself reads ``__spec__`` on every import statement naming the module (``from redis
import asyncio`` in redis-py's ``__init__``), so it would run at once.

Standard ``asyncio`` still comes in: ``redis._parsers.base`` does ``from asyncio import
StreamReader``, which reads the module. That one cannot be deferred without changing redis-py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
import threading
import types
from typing import Any

DEFERRED = ("redis.asyncio", "importlib.metadata")
"""Module names, each under a parent package that is either not imported yet or already is."""


def install() -> None:
    """Defer every module of ``DEFERRED`` that nothing has imported yet (idempotent)."""
    for name in DEFERRED:
        defer(name)


def defer(name: str) -> bool:
    """Register ``name`` (a submodule) to execute on first use; False when it is already
    imported, its parent package already ran without it, or it cannot be found."""
    parent_name, _, child = name.rpartition(".")
    if name in sys.modules:
        return False
    parent = sys.modules.get(parent_name)
    if parent is not None:
        search_path = getattr(parent, "__path__", None)
    else:
        # Found without importing the parent: running redis/__init__.py would import the module.
        parent_spec = importlib.machinery.PathFinder.find_spec(parent_name)
        search_path = parent_spec.submodule_search_locations if parent_spec else None
    if search_path is None:
        return False
    spec = importlib.machinery.PathFinder.find_spec(name, list(search_path))
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    module.__dict__["__getattr__"] = _loader_on_first_use(module, spec)
    sys.modules[name] = module
    if parent is not None:
        # As the import system does; when the parent is not imported yet, its own
        # ``from parent import child`` finds the module in sys.modules.
        setattr(parent, child, module)
    return True


def _loader_on_first_use(module: types.ModuleType, spec: importlib.machinery.ModuleSpec) -> Any:
    lock = threading.RLock()
    running = False

    def __getattr__(attribute: str) -> Any:
        nonlocal running
        with lock:  # a second thread waits here until the first has run the module's code
            if module.__dict__.get("__getattr__") is __getattr__ and not running:
                running = True
                try:
                    spec.loader.exec_module(module)  # type: ignore[union-attr]
                    module.__dict__.pop("__getattr__", None)
                finally:
                    running = False
        try:
            return module.__dict__[attribute]
        except KeyError:
            raise AttributeError(f"module {module.__name__!r} has no attribute {attribute!r}") from None

    return __getattr__
