"""New VM names: ``<prefix><adjective>-<noun>`` when it fits in 15 characters, else random.

Names only need to be unlikely to collide: the store reserves each one atomically and skips any
that a record already holds, so a collision costs a candidate, never a duplicate VM.
"""

from __future__ import annotations

import secrets
import string

from chalicelib.config_fields import HOSTNAME_LENGTH, longest_hostname

MAX_NAME_LENGTH = HOSTNAME_LENGTH

_ADJECTIVES = (
    "amber", "brave", "calm", "crisp", "dusty", "eager", "fancy", "gentle", "hasty", "icy",
    "jolly", "keen", "lucky", "mellow", "nimble", "odd", "plain", "quiet", "rapid", "shy",
    "tidy", "upbeat", "vivid", "warm", "young", "zesty", "bold", "cosmic", "daring", "fuzzy",
)
_NOUNS = (
    "otter", "falcon", "maple", "harbor", "comet", "badger", "cedar", "pebble", "lantern", "meadow",
    "walrus", "tundra", "quartz", "willow", "marten", "ridge", "heron", "canyon", "ember", "glacier",
    "puffin", "fjord", "lynx", "orchid", "raven", "summit", "tulip", "vole", "yak", "zephyr",
)
_ALPHABET = string.ascii_lowercase + string.digits


def random_name(prefix: str = "") -> str:
    """``prefix`` plus random characters up to 15 in all (at least 6 random characters)."""
    length = longest_hostname(prefix) - len(prefix)
    # One draw for the whole name, its base-36 digits the characters: each as uniform and
    # independent as one draw per character, at a fifteenth of the system calls (a pass makes
    # two candidates per clone).
    number, characters = secrets.randbelow(len(_ALPHABET) ** length), []
    for _ in range(length):
        number, digit = divmod(number, len(_ALPHABET))
        characters.append(_ALPHABET[digit])
    return prefix + "".join(characters)


def is_word_name(name: str, prefix: str = "") -> bool:
    """Whether ``name`` is one of the word names ``candidate_names`` draws under ``prefix``: the
    names a clone could take again after Redis forgot the VM that holds it."""
    adjective, _, noun = name.removeprefix(prefix).partition("-")
    return name.startswith(prefix) and adjective in _ADJECTIVES and noun in _NOUNS


def random_candidates(count: int, prefix: str = "") -> list[str]:
    """``2 * count`` random names: names no VM Redis forgot can be expected to hold (36^6 and
    more, against the 900 word names): manager/names.py, until the names of the provider's VMs
    are read after a loss."""
    return [random_name(prefix) for _ in range(2 * count)]


def candidate_names(count: int, prefix: str = "") -> list[str]:
    """``2 * count`` distinct candidates, friendly word names first and random names after.

    The word space is small (900 names), so in a large fleet many word names are taken; the
    random names behind them (36^9 and more) make sure a reservation always finds enough.
    """
    names: dict[str, None] = {}
    for _ in range(count):  # draws, not a quota: the word space may be smaller than count
        word_name = f"{prefix}{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}"
        names[word_name if len(word_name) <= MAX_NAME_LENGTH else random_name(prefix)] = None
    while len(names) < 2 * count:
        names[random_name(prefix)] = None
    return list(names)
