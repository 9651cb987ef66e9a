"""Read a pickled list of strings (fastai's vocabulary, `itos_wt103.pkl`) without unpickling it: the opcodes are
walked one by one (`pickletools.genops`), only those a list of strings is made of are accepted, and the list is
built here. A pickle is a program that can import and call anything (`GLOBAL` + `REDUCE` is `os.system(...)`), so
anything else — another type, a global, a call — is refused by name before it could run."""

from __future__ import annotations

import io
import pickletools

from core.engine.errors import FitcycleError

# What pickle.dumps(list_of_str, protocol=0..5) writes, and nothing more. LIST: protocol 0 makes its list with
# MARK + LIST (empty), where later protocols write EMPTY_LIST.
STRINGS = frozenset({"UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"})
PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
OTHERS = frozenset({"PROTO", "FRAME", "EMPTY_LIST", "LIST", "MARK", "MEMOIZE", "APPEND", "APPENDS", "STOP"})
ALLOWED = STRINGS | PUTS | GETS | OTHERS


class UnsafePickle(FitcycleError, ValueError):
    """A pickle that is not a plain list of strings (or not a whole pickle)."""


class _Mark:
    """Where a MARK opcode left its place on the stack."""


MARK = _Mark()


def read_string_list(data: bytes, max_items: int = 1_000_000) -> list[str]:
    """The list of strings `data` (a pickle, protocol 0 to 5) holds, built without running it; UnsafePickle names
    the first opcode that is not part of a list of strings, or says what else is wrong."""
    stack: list[object] = []
    memo: dict[int, object] = {}
    source = io.BytesIO(data)
    ops = pickletools.genops(source)
    while True:
        try:
            op, arg, at = next(ops)
        except Exception as exc:  # the data ends early, bad UTF-8, an unknown opcode byte (its text is not echoed)
            if isinstance(exc, StopIteration) or source.tell() >= len(data):
                raise UnsafePickle("the pickle ends before its STOP opcode: the file is truncated") from None
            raise UnsafePickle(
                f"not a readable pickle: malformed near byte {source.tell()} ({type(exc).__name__}); upload the "
                "file as it was written"
            ) from None
        name, pos = op.name, at or 0  # genops gives the offset of each opcode in a BytesIO
        if name not in ALLOWED:
            raise UnsafePickle(
                f"opcode {name} at byte {pos} is not part of a list of strings: only a pickled list of str is "
                "accepted (this one holds another type, or code to run), and it is never unpickled"
            )
        if name in STRINGS:
            stack.append(arg)
        elif name == "EMPTY_LIST":
            stack.append([])
        elif name == "MARK":
            stack.append(MARK)
        elif name == "LIST":
            items = _pop_to_mark(stack, pos)
            stack.append(_append([], items, max_items, pos))
        elif name in ("MEMOIZE", *PUTS):
            if not stack or stack[-1] is MARK:
                raise UnsafePickle(f"{name} at byte {pos} has nothing to remember")
            index = len(memo) if name == "MEMOIZE" else arg
            if not isinstance(index, int):
                raise UnsafePickle(f"{name} at byte {pos} names no memo index")
            memo[index] = stack[-1]
        elif name in GETS:
            if arg not in memo:
                raise UnsafePickle(f"{name} at byte {pos} refers to memo {arg}, which was never stored")
            stack.append(memo[arg])
        elif name == "APPEND":
            if len(stack) < 2:
                raise UnsafePickle(f"APPEND at byte {pos} has no list to append to")
            item = stack.pop()
            _append(_top_list(stack, pos), [item], max_items, pos)
        elif name == "APPENDS":
            items = _pop_to_mark(stack, pos)
            _append(_top_list(stack, pos), items, max_items, pos)
        elif name == "STOP":
            break
        # PROTO and FRAME only describe the encoding.
    if source.read(1):
        raise UnsafePickle("there are bytes after the pickle's STOP opcode: not a single pickled list")
    if len(stack) != 1 or not isinstance(stack[0], list):
        raise UnsafePickle("the pickle does not hold a single list of strings")
    return stack[0]


def _pop_to_mark(stack: list[object], pos: int) -> list[object]:
    """The items pushed since the last MARK (the mark removed)."""
    for i in range(len(stack) - 1, -1, -1):
        if stack[i] is MARK:
            items = stack[i + 1 :]
            del stack[i:]
            return items
    raise UnsafePickle(f"the opcode at byte {pos} needs a MARK before it, and there is none")


def _top_list(stack: list[object], pos: int) -> list[str]:
    if not stack or not isinstance(stack[-1], list):
        raise UnsafePickle(f"the opcode at byte {pos} appends to something that is not a list")
    return stack[-1]


def _append(target: list[str], items: list[object], max_items: int, pos: int) -> list[str]:
    """Add strings only (a list inside the list, or the list itself from the memo, is refused), up to max_items."""
    for item in items:
        if not isinstance(item, str):
            raise UnsafePickle(f"the list holds a {type(item).__name__} (byte {pos}): only strings are accepted")
    if len(target) + len(items) > max_items:
        raise UnsafePickle(f"the list holds more than {max_items:,} strings, the most accepted")
    target.extend(items)  # type: ignore[arg-type]
    return target
