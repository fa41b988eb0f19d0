"""Finding values of one type in a loaded config (validated settings blocks are dataclasses,
mappings, tuples and lists), each with its key path: the inline secrets the packaging refuses
(infra/shipped_config.py) and the secret references the functions must be able to read
(infra/sync_config.py). No chalicelib import here: sync_config loads the service's modules lazily."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, TypeVar

Found = TypeVar("Found")


def _same(path: str) -> str:
    return path


def values_of_type(kind: type[Found], value: Any, path: str, seen: set[int],
                   field_path: Callable[[str], str] = _same) -> Iterator[tuple[str, Found]]:
    """Every ``kind`` in ``value`` (``path`` its key path), with its key path: a dataclass's
    fields as ``path.name`` passed through ``field_path`` (a ``settings`` field adds no name; ``_``
    fields are skipped), mapping keys as ``path.key``, sequence items as ``path[i]``. ``seen``
    holds the ids of the dataclasses walked already (each is walked once)."""
    if isinstance(value, kind):
        yield path, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type) and id(value) not in seen:
        seen.add(id(value))
        for item in dataclasses.fields(value):
            if not item.name.startswith("_"):
                key = path if item.name == "settings" else f"{path}.{item.name}".lstrip(".")
                yield from values_of_type(kind, getattr(value, item.name), field_path(key), seen, field_path)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from values_of_type(kind, item, f"{path}.{key}", seen, field_path)
    elif isinstance(value, (tuple, list)):
        for index, item in enumerate(value):
            yield from values_of_type(kind, item, f"{path}[{index}]", seen, field_path)
