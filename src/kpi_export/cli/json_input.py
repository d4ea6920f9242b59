"""JSON given to an option (`enqueue --data`, `--filters`, a `--from-file` line): read as a Node producer would
send it, or refused as a usage error. Python's json module reads NaN, Infinity and 1e400 (as inf), which it
then cannot write back, and refuses an integer of more than 4,300 digits with a plain ValueError."""

from __future__ import annotations

import json
import math
import sys
from typing import Any

import click

# Beyond a double's range (about 1.8e308) a Node reader takes a number as Infinity; an integer of more digits
# than this is beyond it, and is not even converted.
_MAX_DIGITS = len(str(int(sys.float_info.max)))


class _NotPortable(ValueError):
    pass


def json_arg(text: str, option: str) -> Any:
    """The value of `text`; click.BadParameter (exit status 2) when it is not JSON, or holds NaN, Infinity or
    a number too large for a double, which no JSON reader but Python's takes."""
    try:
        return json.loads(text, parse_constant=_constant, parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc.msg})", param_hint=option) from None
    except _NotPortable as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None
    except RecursionError:
        raise click.BadParameter("JSON nested too deeply to read", param_hint=option) from None


def _constant(name: str) -> Any:
    raise _NotPortable(f"{name} is not JSON (JSON has no NaN or Infinity)")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _too_large(text)
    return value


def _int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_DIGITS or abs(value := int(text)) > sys.float_info.max:
        raise _too_large(text)
    return value


def _too_large(text: str) -> _NotPortable:
    shown = text if len(text) <= 24 else f"{text[:12]}… ({len(text.lstrip('-')):,} digits)"
    return _NotPortable(f"the number {shown} is beyond a double's range: Node reads it as Infinity")
