"""New VM names: word names first, random names behind them, every name at most 15 characters."""

from __future__ import annotations

import string

from chalicelib.manager.hostnames import MAX_NAME_LENGTH, candidate_names, random_name

ALPHABET = set(string.ascii_lowercase + string.digits)


def test_random_names_fill_every_position_with_any_letter_or_digit() -> None:
    names = [random_name("ci-") for _ in range(4000)]
    assert all(len(name) == MAX_NAME_LENGTH and name.startswith("ci-") for name in names)
    assert len(set(names)) == len(names)
    for position in range(3, MAX_NAME_LENGTH):  # 4,000 draws miss one of 36 characters with p < 1e-40
        assert {name[position] for name in names} == ALPHABET, position


def test_a_long_prefix_still_gets_six_random_characters() -> None:
    name = random_name("a-very-long-prefix-")
    assert name.startswith("a-very-long-prefix-") and len(name) == len("a-very-long-prefix-") + 6
    assert set(name[-6:]) <= ALPHABET


def test_candidates_are_twice_as_many_distinct_names_words_first() -> None:
    # With a one-character prefix every <adjective>-<noun> fits (at most 14 characters), so the
    # first candidate is always a word name; a longer prefix would let a long pair fall back to a
    # random name and make this check depend on the draw.
    names = candidate_names(50, "v")
    assert len(names) == len(set(names)) == 100
    assert all(len(name) <= MAX_NAME_LENGTH and name.startswith("v") for name in names)
    assert "-" in names[0][1:]  # a word name: <adjective>-<noun>


def test_a_word_name_too_long_for_the_prefix_becomes_a_random_name() -> None:
    prefix = "ci-pool9-"  # 6 characters left; the shortest pair, "odd-yak", needs 7
    names = candidate_names(400, prefix)
    assert len(names) == len(set(names)) == 800
    assert all(len(name) == MAX_NAME_LENGTH and "-" not in name[len(prefix) :] for name in names)
