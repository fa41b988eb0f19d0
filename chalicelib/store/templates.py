"""Which templates are prepared for cloning (``create_template_delta_disks``), service-wide."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

from chalicelib.store.scripts import run_many
from chalicelib.store.store import _translate_errors
from chalicelib.store.substore import SubStore

DONE = "done"


def template_key(provider: str, template: str) -> str:
    """A template's field in ``templates:prepared``: ``<provider>:<template>``."""
    return f"{provider}:{template}"


@dataclass(frozen=True)
class Underway:
    """Since when one preparation (its task's ref) is under way, and whether the clones of the
    template stopped waiting for it (it outlasted its timeout); ``raw`` as stored."""

    ref: str
    since: float
    given_up: bool
    raw: str

    @classmethod
    def parse(cls, raw: str | None) -> Underway | None:
        try:
            fields = json.loads(raw) if raw else {}
            return cls(str(fields["ref"]), float(fields["since"]), bool(fields["given_up"]), str(raw))
        except (ValueError, TypeError, KeyError):
            return None  # none recorded, or not one this code wrote: recorded afresh

    @staticmethod
    def encode(ref: str, since: float, given_up: bool) -> str:
        return json.dumps({"ref": ref, "since": since, "given_up": given_up}, sort_keys=True)


class TemplateStore(SubStore):
    """``templates:prepared``: per ``<provider>:<template>``, "done" or the preparing task's ref."""

    def state(self, template_key: str) -> str | None:
        with _translate_errors():
            value = self.client.hget(self.keys.templates_prepared, template_key)
        return None if value is None else str(value)

    def all(self) -> dict[str, str]:
        """Every template's state, by ``<provider>:<template>``."""
        with _translate_errors():
            found = self.client.hgetall(self.keys.templates_prepared)
        return {str(key): str(value) for key, value in found.items()}

    def clones_waiting(self) -> set[str]:
        """The templates (``<provider>:<template>``) whose pools' clones wait for a preparation
        under way (manager/templates.ready_for_clones): recorded, not done, not given up (it
        outlasted its timeout). One round trip."""
        with _translate_errors():
            pipe = self.client.pipeline(transaction=False)
            pipe.hgetall(self.keys.templates_prepared)
            pipe.hgetall(self.keys.templates_preparing)
            prepared, preparing = pipe.execute()
        waiting = set()
        for key, state in prepared.items():
            underway = Underway.parse(preparing.get(key))
            if state != DONE and not (underway is not None and underway.ref == state and underway.given_up):
                waiting.add(str(key))
        return waiting

    def started(self, template_key: str, task_ref: str) -> bool:
        """Record the preparing task unless another pass recorded one first."""
        with _translate_errors():
            return bool(self.client.hsetnx(self.keys.templates_prepared, template_key, task_ref))

    def done(self, template_key: str) -> None:
        with _translate_errors():
            self.client.hset(self.keys.templates_prepared, template_key, DONE)

    def finish(self, template_key: str, task_ref: str) -> bool:
        """Record the template prepared, if ``task_ref`` is still the preparation recorded."""
        return self._replace(template_key, task_ref, DONE)

    def forget(self, template_key: str, task_ref: str) -> bool:
        """Drop the preparation ``task_ref`` (if still recorded) so the next pass plans afresh."""
        return self._replace(template_key, task_ref, "")

    def underway(self, template_key: str, task_ref: str, now: float) -> Underway:
        """Since when the preparation ``task_ref`` is under way: recorded ``now`` on its first
        read (a record of another preparation, or none, is replaced: a preparation recorded by a
        version without this record, a pass killed before it recorded it)."""
        with _translate_errors():
            raw = self.client.hget(self.keys.templates_preparing, template_key)
        found = Underway.parse(None if raw is None else str(raw))
        if found is not None and found.ref == task_ref:
            return found
        fresh = Underway.encode(task_ref, now, False)
        self._replace_underway(template_key, "" if raw is None else str(raw), fresh)
        return Underway(task_ref, now, False, fresh)

    def given_up(self, template_key: str, task_ref: str) -> bool:
        """Whether the clones stopped waiting for the preparation ``task_ref`` (read only)."""
        with _translate_errors():
            raw = self.client.hget(self.keys.templates_preparing, template_key)
        found = Underway.parse(None if raw is None else str(raw))
        return found is not None and found.ref == task_ref and found.given_up

    def give_up(self, template_key: str, underway: Underway) -> bool:
        """Let the clones stop waiting for ``underway`` (still read on until it ends); whether
        this call did it (once, whoever reads it)."""
        if underway.given_up:
            return False
        return self._replace_underway(template_key, underway.raw,
                                      Underway.encode(underway.ref, underway.since, True))

    def ended(self, template_key: str, underway: Underway) -> bool:
        """Drop the record of ``underway`` (the preparation ended, or was forgotten)."""
        return self._replace_underway(template_key, underway.raw, "")

    def forget_done(self, template_keys: Iterable[str]) -> list[str]:
        """Drop these templates' records that still say done (a preparation recorded meanwhile
        stays); the ones dropped. One round trip."""
        keys = list(template_keys)
        calls = [(self.scripts.replace_field, [self.keys.templates_prepared], [key, DONE, ""])
                 for key in keys]
        with _translate_errors():
            replies = run_many(self.client, calls)
        return [key for key, dropped in zip(keys, replies, strict=True) if dropped]

    def forget_stale_underway(self) -> int:
        """Drop the records of preparations no longer recorded in ``templates:prepared`` (a pass
        killed between the two writes); how many. One read each, one round trip to drop."""
        with _translate_errors():
            found = self.client.hgetall(self.keys.templates_preparing)
        recorded = self.all()
        stale = [(str(key), str(raw)) for key, raw in found.items()
                 if getattr(Underway.parse(str(raw)), "ref", None) != recorded.get(str(key))]
        calls = [(self.scripts.replace_field, [self.keys.templates_preparing], [key, raw, ""])
                 for key, raw in stale]
        with _translate_errors():
            replies = run_many(self.client, calls) if calls else []
        return sum(1 for dropped in replies if dropped)

    def _replace_underway(self, template_key: str, expected: str, value: str) -> bool:
        with _translate_errors():
            return bool(self.scripts.replace_field(
                keys=[self.keys.templates_preparing], args=[template_key, expected, value]))

    def _replace(self, template_key: str, expected: str, value: str) -> bool:
        with _translate_errors():
            return bool(self.scripts.replace_field(
                keys=[self.keys.templates_prepared], args=[template_key, expected, value]))
