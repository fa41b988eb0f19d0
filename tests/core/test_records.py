"""A VM's record read from its Redis hash (``VMRecord.from_hash``) is the record the dataclass's
own constructor makes: every field set (a field added to the class and not to ``from_hash``
would be missing, not defaulted, since ``from_hash`` sets them all at once: docs/performance.md,
"Twelfth round"), equal to it, and still frozen."""

from __future__ import annotations

import dataclasses
import json
import random

import pytest

from chalicelib.store.records import VMRecord


def _random_hash(draw: random.Random) -> dict[str, str]:
    data = {"name": f"vm-{draw.randrange(1000)}", "pool": "alpha", "state": draw.choice(["ready", "completed", ""])}
    optional = {
        "template": lambda: "templates/base",
        "domain": lambda: "example.com",
        "clone_start": lambda: draw.choice(["1800000000.5", "nan", "inf", "x", ""]),
        "ready_at": lambda: repr(draw.random() * 1e9),
        "completed_at": lambda: "1800000001.0",
        "lifetime": lambda: draw.choice(["2", "0.5", "inf", "nan", "text", "100000000"]),
        "tags": lambda: draw.choice([json.dumps({"a": "1", "b": "2"}), "not json", ""]),
        "tag:a": lambda: "from the field",
        "tag:c": lambda: "3",
        "disks": lambda: draw.choice([json.dumps(["+10gb"]), "broken"]),
        "snapshots": lambda: json.dumps(["s1"]),
        "ip": lambda: "10.0.0.1",
        "reason": lambda: "returned",
        "extra": lambda: "kept in raw",
    }
    for field, value in optional.items():
        if draw.random() < 0.5:
            data[field] = value()
    return data


def test_a_record_from_its_hash_has_every_field_the_constructor_sets() -> None:
    names = {field.name for field in dataclasses.fields(VMRecord)}
    draw = random.Random(18)
    for _ in range(500):
        data = _random_hash(draw)
        record = VMRecord.from_hash(data)
        assert set(vars(record)) == names
        rebuilt = VMRecord(**{name: getattr(record, name) for name in names})
        assert rebuilt == record and repr(rebuilt) == repr(record)
        assert record.raw == data and record.raw is not data


def test_a_record_reads_its_fields_as_before() -> None:
    record = VMRecord.from_hash({"name": "vm-1", "pool": "alpha", "state": "completed", "completed_at": "12.5",
                                 "clone_start": "nan", "lifetime": "0.5", "tags": json.dumps({"a": "1", "b": "2"}),
                                 "tag:a": "field", "disks": "broken", "snapshots": json.dumps(["s1"])})
    assert record.state_since == 12.5
    assert record.clone_start is None
    assert record.lifetime_hours is None
    assert record.tags == {"a": "field", "b": "2"}
    assert record.disks == () and record.snapshots == ("s1",)
    assert record.fqdn() == "vm-1"


def test_a_record_from_its_hash_stays_frozen() -> None:
    record = VMRecord.from_hash({"name": "vm-1", "pool": "alpha", "state": "ready"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.state = "running"  # type: ignore[misc]
