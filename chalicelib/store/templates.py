"""Which templates are prepared for cloning (``create_template_delta_disks``), service-wide."""

from __future__ import annotations

from typing import Iterable

from chalicelib.store.scripts import run_many
from chalicelib.store.store import Store, _translate_errors

DONE = "done"


def template_key(provider: str, template: str) -> str:
    """A template's field in ``templates:prepared``: ``<provider>:<template>``."""
    return f"{provider}:{template}"


class TemplateStore:
    """``templates:prepared``: per ``<provider>:<template>``, "done" or the preparing task's ref."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def state(self, template_key: str) -> str | None:
        with _translate_errors():
            value = self.store.client.hget(self.store.keys.templates_prepared, template_key)
        return None if value is None else str(value)

    def all(self) -> dict[str, str]:
        """Every template's state, by ``<provider>:<template>``."""
        with _translate_errors():
            found = self.store.client.hgetall(self.store.keys.templates_prepared)
        return {str(key): str(value) for key, value in found.items()}

    def started(self, template_key: str, task_ref: str) -> bool:
        """Record the preparing task unless another pass recorded one first."""
        with _translate_errors():
            return bool(self.store.client.hsetnx(self.store.keys.templates_prepared, template_key, task_ref))

    def done(self, template_key: str) -> None:
        with _translate_errors():
            self.store.client.hset(self.store.keys.templates_prepared, template_key, DONE)

    def finish(self, template_key: str, task_ref: str) -> bool:
        """Record the template prepared, if ``task_ref`` is still the preparation recorded."""
        return self._replace(template_key, task_ref, DONE)

    def forget(self, template_key: str, task_ref: str) -> bool:
        """Drop the preparation ``task_ref`` (if still recorded) so the next pass plans afresh."""
        return self._replace(template_key, task_ref, "")

    def forget_done(self, template_keys: Iterable[str]) -> list[str]:
        """Drop these templates' records that still say done (a preparation recorded meanwhile
        stays); the ones dropped. One round trip."""
        keys = list(template_keys)
        calls = [(self.store.scripts.replace_field, [self.store.keys.templates_prepared], [key, DONE, ""])
                 for key in keys]
        with _translate_errors():
            replies = run_many(self.store.client, calls)
        return [key for key, dropped in zip(keys, replies, strict=True) if dropped]

    def _replace(self, template_key: str, expected: str, value: str) -> bool:
        with _translate_errors():
            return bool(self.store.scripts.replace_field(
                keys=[self.store.keys.templates_prepared], args=[template_key, expected, value]))
