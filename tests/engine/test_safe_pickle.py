"""A pickled list of strings is read without unpickling: every protocol's encoding is understood, and anything
that is not a list of strings — another type, a global, a call, a cut-off file, too many items — is refused by
name before it could run."""

from __future__ import annotations

import os
import pickle

import pytest

from core.engine.safe_pickle import UnsafePickle, read_string_list

WORDS = ["xxunk", "the", "", "é ü 中文", "a" * 300, "the", *(f"w{i}" for i in range(2500))]  # > 1000: APPENDS twice


@pytest.mark.parametrize("protocol", range(6))
def test_every_protocol_reads_back_the_same_list(protocol: int) -> None:
    assert read_string_list(pickle.dumps(WORDS, protocol=protocol)) == WORDS
    assert read_string_list(pickle.dumps([], protocol=protocol)) == []


class Shell:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("echo pwned > /dev/null",))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (pickle.dumps({"the": 0}), "opcode EMPTY_DICT"),
        (pickle.dumps(["the", 1]), "opcode BININT1"),
        (pickle.dumps(["the", ["nested"]]), "holds a list"),
        (pickle.dumps(("a", "b")), "opcode TUPLE2"),
        (pickle.dumps("just a string"), "a single list"),
        (pickle.dumps(os.system), "opcode STACK_GLOBAL"),
        (pickle.dumps(["ok", Shell()], protocol=0), "opcode GLOBAL"),
        (pickle.dumps(["ok", Shell()]), "opcode STACK_GLOBAL"),
        (pickle.dumps(WORDS)[:-40], "truncated"),
        (b"", "truncated"),
        (pickle.dumps(["a"]) + b"trailing", "after the pickle's STOP"),
    ],
)
def test_anything_but_a_list_of_strings_is_refused_by_name(data: bytes, expected: str) -> None:
    with pytest.raises(UnsafePickle, match=expected):
        read_string_list(data)


def test_a_list_that_holds_itself_is_refused() -> None:
    loop: list[object] = ["a"]
    loop.append(loop)
    with pytest.raises(UnsafePickle, match="holds a list"):
        read_string_list(pickle.dumps(loop))


def test_too_many_items_are_refused() -> None:
    with pytest.raises(UnsafePickle, match="more than 100 strings"):
        read_string_list(pickle.dumps(WORDS), max_items=100)
    assert read_string_list(pickle.dumps(WORDS[:100]), max_items=100) == WORDS[:100]


def test_the_message_never_echoes_the_file() -> None:
    secret = "s3cr3t-token-in-the-file"
    with pytest.raises(UnsafePickle) as info:
        read_string_list(pickle.dumps([secret, 7]))
    assert secret not in str(info.value)
