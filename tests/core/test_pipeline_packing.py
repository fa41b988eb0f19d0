"""A pipeline of the service's client (store.connect) packs its commands itself with hiredis
(docs/performance.md, "Twelfth round"): what reaches Redis must be what redis-py's own packer
sends, byte for byte, for every kind of value the store writes, and what hiredis cannot pack
(a bytearray) or redis-py refuses (None) must go as before."""

from __future__ import annotations

import random
from typing import Any

import pytest
import redis
from redis.connection import Connection

from chalicelib.config import parse
from chalicelib.store import connect


def client_for(port: int) -> redis.Redis:
    return connect(parse(f":redis: {{server: 127.0.0.1, port: {port}, socket_timeout: 1}}").redis)


def _random_value(draw: random.Random) -> Any:
    return draw.choice([
        lambda: draw.randrange(-10**12, 10**12),
        lambda: draw.random() * 10**draw.randrange(-5, 12),
        lambda: "x" * draw.randrange(0, 9000),  # past redis-py's 6,000-byte chunks
        lambda: b"\x00\xff" * draw.randrange(0, 50),
        lambda: "h\u00e9llo w\u00f6rld \u2603",
        lambda: memoryview(b"m" * draw.randrange(0, 7000)),
    ])()


def test_pipelines_send_what_redis_pys_packer_sends() -> None:
    """The bytes and their chunks, for names with a space (``CONFIG GET``, as redis-py names
    some commands) and without, over 2,000 random pipelines."""
    ours = connect(parse(":redis: {server: 127.0.0.1, port: 1}").redis).connection_pool.make_connection()
    theirs = Connection()
    draw = random.Random(14)
    for _ in range(2000):
        commands = [(draw.choice(["HSET", "EVALSHA", "CONFIG GET", b"ZADD", b"SCRIPT LOAD"]),
                     *[_random_value(draw) for _ in range(draw.randrange(0, 6))])
                    for _ in range(draw.randrange(1, 8))]
        packed, expected = ours.pack_commands(commands), theirs.pack_commands(commands)
        assert [bytes(chunk) for chunk in packed] == [bytes(chunk) for chunk in expected]


def test_a_pipeline_writes_every_kind_of_value_intact(redis_server: Any) -> None:
    client = client_for(redis_server.port)
    client.flushall()
    values = {"int": 12, "float": 0.1 + 0.2, "text": "caf\u00e9 \u2603", "large": "y" * 20_000,
              "bytes": b"\xc3\xa9", "bytearray": bytearray(b"ba"), "memoryview": memoryview(b"mv")}
    pipe = client.pipeline(transaction=False)
    for field, value in values.items():
        pipe.hset("record", field, value)
    pipe.config_get("maxmemory")  # redis-py sends it as "CONFIG GET"
    *written, config = pipe.execute()

    assert written == [1] * len(values)
    assert "maxmemory" in config
    assert client.hgetall("record") == {"int": "12", "float": repr(0.1 + 0.2), "text": "caf\u00e9 \u2603",
                                        "large": "y" * 20_000, "bytes": "\u00e9", "bytearray": "ba",
                                        "memoryview": "mv"}


def test_a_value_redis_py_refuses_is_refused_before_anything_is_sent(redis_server: Any) -> None:
    client = client_for(redis_server.port)
    client.flushall()
    pipe = client.pipeline(transaction=False)
    pipe.set("first", "1")
    pipe.execute_command("SET", "second", None)
    with pytest.raises(redis.DataError):
        pipe.execute()
    assert client.exists("first") == 0
