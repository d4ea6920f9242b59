"""Where `audit list --csv FILE` writes: whole or not at all, never over a file it was not told to replace."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import click

STDOUT = "-"


def export_target(text: str, *, force: bool) -> Path | None:
    """The file `text` names, checked before any row is read; None for standard output."""
    if text == STDOUT:
        return None
    if not text.strip() or text.endswith(("/", os.sep)):
        raise click.BadParameter(f"{text!r} names no file", param_hint="--csv")
    path = Path(text)
    if not path.parent.is_dir():
        raise click.BadParameter(f"no folder {path.parent} to write {path.name} in", param_hint="--csv")
    if os.path.lexists(path) and not force:
        raise click.BadParameter(f"{path} exists; add --force to replace it", param_hint="--csv")
    return path


@contextmanager
def written_whole(path: Path | None, *, force: bool) -> Iterator[IO[str]]:
    """A file beside `path`, put in its place once everything is written and on disk; removed on any failure.

    With `force` it replaces what is at `path` (a symlink itself, not its target) and keeps that file's mode;
    without, it is linked in place only if `path` still does not exist."""
    if path is None:
        yield sys.stdout
        return
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(descriptor, "w", newline="", encoding="utf-8") as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        if force:
            if path.exists() and not path.is_symlink():
                os.chmod(partial, path.stat().st_mode & 0o7777)  # an export kept private stays private
            os.replace(partial, path)
        else:
            try:
                os.link(partial, path)  # fails if a file appeared at `path` meanwhile
            except FileExistsError:
                raise click.ClickException(
                    f"{path} appeared while the rows were written; nothing replaced"
                ) from None
            partial.unlink()
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
