"""What `audit verify` finds, pure: the chain's links and digests, and each row against the entry that
sealed it last. The I/O (reading the entries and streaming the rows) is in verifier.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from kpi_export.errors import SealFormatTooNew
from kpi_export.integrity.digests import FORMAT_VERSION, ChainEntry, SealKey


@dataclass(frozen=True)
class Finding:
    """Something in the table or the chain that the seals do not account for.

    kind: changed, deleted, inserted (a row); digest, chain, range, key, head (the chain)."""

    kind: str
    message: str
    seq: int | None = None
    id_export: int | None = None


@dataclass(frozen=True)
class Segment:
    """A sealed range, and the entry that sealed its rows as they should be now: the seal, or the latest
    pseudonymisation recorded over it."""

    seal: ChainEntry
    current: ChainEntry

    @property
    def from_id(self) -> int:
        return self.seal.from_id

    @property
    def to_id(self) -> int:
        return self.seal.to_id


def check_version(entry: ChainEntry | None) -> None:
    if entry is not None and entry.version > FORMAT_VERSION:
        raise SealFormatTooNew(
            f"the seal table holds seals of format {entry.version}, newer than this kpi-export's "
            f"({FORMAT_VERSION}): upgrade kpi-export to read or extend them"
        )


def check_chain(key: SealKey, entries: Sequence[ChainEntry]) -> tuple[list[Finding], list[Segment]]:
    """The findings of the chain itself (seq order, links, digests, ranges), and the sealed segments in id
    order. With another key than every entry's, one finding and no segment: nothing else can be told."""
    for entry in entries:
        check_version(entry)
    if entries and all(entry.key_id != key.key_id for entry in entries):
        return [
            Finding(
                "key",
                f"AUDIT_SEAL_KEY is not the key of these seals (they name key {entries[0].key_id}, this key is "
                f"{key.key_id}): verify with the key they were sealed with; if it is that key, every seal was "
                "rewritten",
            )
        ], []
    findings: list[Finding] = []
    segments: dict[tuple[int, int], Segment] = {}
    previous: ChainEntry | None = None
    next_from = 1
    for entry in entries:
        findings.extend(_link_findings(key, entry, previous))
        bounds = (entry.from_id, entry.to_id)
        if entry.kind == "seal":
            if entry.from_id != next_from or entry.to_id < entry.from_id:
                findings.append(
                    Finding(
                        "range",
                        f"seal {entry.seq} covers idExport {entry.from_id}–{entry.to_id}, but the seals before "
                        f"it end at {next_from - 1}: a gap or an overlap",
                        entry.seq,
                    )
                )
            next_from = max(next_from, entry.to_id + 1)
            segments[bounds] = Segment(entry, entry)
        elif bounds in segments:
            segments[bounds] = Segment(segments[bounds].seal, entry)
        elif entry.kind == "repair" and entry.from_id >= next_from:
            pass  # rows re-inserted past the last seal: a record; the seal that covers them later checks them
        else:
            findings.append(
                Finding(
                    "range",
                    f"seal {entry.seq} records a {entry.kind} of idExport {entry.from_id}–{entry.to_id}, "
                    "which no earlier seal covers",
                    entry.seq,
                )
            )
        previous = entry
    return findings, sorted(segments.values(), key=lambda segment: segment.from_id)


def _link_findings(key: SealKey, entry: ChainEntry, previous: ChainEntry | None) -> list[Finding]:
    found = []
    expected_seq = previous.seq + 1 if previous else 1
    if entry.seq != expected_seq:
        found.append(
            Finding(
                "chain",
                f"{_seals(expected_seq, entry.seq - 1)} missing: the chain is cut before seal {entry.seq}",
                entry.seq,
            )
        )
    if entry.prev_digest != (previous.digest if previous else None):
        found.append(
            Finding(
                "chain",
                f"seal {entry.seq} does not follow the seal before it (its prevDigest is not that seal's "
                "digest)",
                entry.seq,
            )
        )
    if entry.key_id != key.key_id:
        found.append(Finding("key", f"seal {entry.seq} names another key ({entry.key_id})", entry.seq))
    elif not _digest_holds(key, entry):
        found.append(
            Finding(
                "digest",
                f"seal {entry.seq}'s digest does not match its contents: edited, or made without the key",
                entry.seq,
            )
        )
    return found


def _seals(first: int, last: int) -> str:
    return f"seal {first}" if first == last else f"seals {first}–{last}"


def _digest_holds(key: SealKey, entry: ChainEntry) -> bool:
    try:
        ids = entry.ids()
    except ValueError:
        return False
    return len(ids) == entry.row_count == len(entry.macs()) and key.entry_digest(entry) == entry.digest


class RowCheck:
    """Rows fed in ascending idExport order, each held against the entry that sealed its segment last."""

    def __init__(self, key: SealKey, segments: Sequence[Segment]) -> None:
        self.key = key
        self.segments = segments
        self.rows_checked = 0
        self._segment: Segment | None = None
        self._open(0)

    def feed(self, row: Mapping[Any, Any]) -> list[Finding]:
        row_id: int = row["idExport"]
        found: list[Finding] = []
        while self._segment is not None and row_id > self._segment.to_id:
            found += self._close()
        segment = self._segment
        if segment is None or row_id < segment.from_id:
            return found  # not in a sealed range
        found += self._deleted_below(row_id)
        self.rows_checked += 1
        seq = segment.current.seq
        if self._next < len(self._expected) and self._expected[self._next][0] == row_id:
            mac = self._expected[self._next][1]
            self._next += 1
            if mac != self.key.row_mac(row):
                found.append(Finding("changed", f"row {row_id} changed (seal {seq})", seq, row_id))
        else:
            found.append(
                Finding(
                    "inserted",
                    f"row {row_id} inserted inside seal {seq} (idExport {segment.from_id}–{segment.to_id})",
                    seq,
                    row_id,
                )
            )
        return found

    def finish(self) -> list[Finding]:
        found: list[Finding] = []
        while self._segment is not None:
            found += self._close()
        return found

    def _open(self, index: int) -> None:
        self._index = index
        self._next = 0
        self._expected: list[tuple[int, bytes]] = []
        self._segment = self.segments[index] if index < len(self.segments) else None
        if self._segment is not None:
            try:
                self._expected = list(
                    zip(self._segment.current.ids(), self._segment.current.macs(), strict=True)
                )
            except ValueError:
                pass  # an entry edited out of shape: its digest finding says so, and its rows show as inserted

    def _close(self) -> list[Finding]:
        found = self._deleted_below(None)
        self._open(self._index + 1)
        return found

    def _deleted_below(self, row_id: int | None) -> list[Finding]:
        assert self._segment is not None
        found = []
        seq = self._segment.current.seq
        while self._next < len(self._expected) and (row_id is None or self._expected[self._next][0] < row_id):
            missing = self._expected[self._next][0]
            found.append(Finding("deleted", f"row {missing} deleted (seal {seq})", seq, missing))
            self._next += 1
        return found
