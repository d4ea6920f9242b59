"""Commands packed by hiredis, in C: redis-py's asyncio connections pack each command in Python, a cost on
every job (most of it for moveToFinished's fifteen arguments; docs/performance.md), where its synchronous
client uses hiredis's packer when hiredis is installed."""

from __future__ import annotations

from typing import Any

import hiredis


class HiredisPacking:
    """A redis-py asyncio connection's `pack_command`, made by `hiredis.pack_command` when that gives the
    same bytes: arguments that are exactly str (valid UTF-8), bytes, float or an int of at most 1,024 bits, and
    a command name redis-py would not split. Anything else (a bool or None, which redis-py refuses with its
    DataError; a subclass; a huge int; a str that is not valid UTF-8, which redis-py encodes with the
    connection's error handler; "CONFIG GET", which it splits) is packed by redis-py."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if args and _one_word(args[0]) and _plain(args) and self.encoder.encoding == "utf-8":  # type: ignore[attr-defined]
            try:
                return [hiredis.pack_command(args)]
            except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
                pass
        return super().pack_command(*args)  # type: ignore[misc,no-any-return]


def _one_word(command: object) -> bool:
    """A command name redis-py sends as it is (a str is split on ASCII whitespace, bytes when they hold a space)."""
    if isinstance(command, str):
        return bool(command) and command.isprintable() and " " not in command
    return isinstance(command, bytes) and b" " not in command


# hiredis turns an int into text without checking for failure: an int past Python's digit limit (4,300) crashes
# the process instead of raising. Only arguments of these exact types, ints of a bounded size, go to hiredis.
_MAX_INT_BITS = 1024


def _plain(args: tuple[Any, ...]) -> bool:
    for arg in args:
        kind = type(arg)
        if kind is str or kind is bytes or kind is float:
            continue
        if kind is int and arg.bit_length() <= _MAX_INT_BITS:
            continue
        return False
    return True
