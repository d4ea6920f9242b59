"""`audit verify`: the chain's links and digests, then every sealed row, streamed in id order, against the
entry that sealed it last. Read-only, in one snapshot: interrupted, it has changed nothing."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.integrity import chain_store
from kpi_export.integrity.checks import Finding, RowCheck, Segment, check_chain
from kpi_export.integrity.digests import ChainEntry, SealKey

MAX_LISTED = 1000  # findings kept to be shown; the counts cover all of them
STREAM_BATCH = 5000


@dataclass
class VerifyReport:
    head: ChainEntry | None = None
    entries: int = 0
    segments_checked: int = 0
    rows_checked: int = 0
    rows_not_sealed: int = 0
    pseudonymisations: list[ChainEntry] = field(default_factory=list)
    repairs: list[ChainEntry] = field(default_factory=list)  # rows re-inserted by `audit reconcile --repair`
    findings: list[Finding] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    expected_head_seq: int | None = None  # where --expect-head was found in the chain
    key_id: str = ""  # the fingerprint of the key verify was given
    chain_key_ids: list[str] = field(default_factory=list)  # those the chain's entries name, in chain order

    @property
    def clean(self) -> bool:
        return not self.counts

    @property
    def other_key(self) -> bool:
        """The chain was sealed with another key than the one given: no seal nor row can be checked."""
        return bool(self.chain_key_ids) and self.key_id not in self.chain_key_ids

    def add(self, findings: list[Finding]) -> None:
        for finding in findings:
            self.counts[finding.kind] += 1
            if len(self.findings) < MAX_LISTED:
                self.findings.append(finding)


async def verify(
    engine: AsyncEngine,
    key: SealKey,
    *,
    from_id: int | None = None,
    since: datetime | None = None,
    expect_head: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check the chain, and the rows of the seals from `from_id` or made `since` (all by default).
    `progress(rows_done, rows_total)` is called as the rows stream."""
    report = VerifyReport()
    async with chain_store.snapshot(engine) as conn:
        entries = await chain_store.read_entries(conn)
        report.entries = len(entries)
        report.head = entries[-1] if entries else None
        report.pseudonymisations = [e for e in entries if e.kind == "pseudonymisation"]
        report.repairs = [e for e in entries if e.kind == "repair"]
        report.key_id = key.key_id
        report.chain_key_ids = list(dict.fromkeys(entry.key_id for entry in entries))
        chain_findings, segments = check_chain(key, entries)
        report.add(chain_findings)
        if expect_head is not None:
            report.add(_expected_head(report, entries, expect_head.strip().lower()))
        if report.other_key:  # no segment could be checked: the rows no seal claims are the unsealed ones
            sealed_to = max((e.to_id for e in entries if e.kind == "seal"), default=0)
        else:
            sealed_to = segments[-1].to_id if segments else 0
        report.rows_not_sealed = await chain_store.count_rows_above(conn, sealed_to)
        chosen = _chosen(segments, from_id, since)
        if not chosen:
            return report
        report.segments_checked = len(chosen)
        total = sum(segment.current.row_count for segment in chosen)
        check = RowCheck(key, chosen)
        query = chain_store.sealed_rows(chosen[0].from_id, chosen[-1].to_id).execution_options(
            yield_per=STREAM_BATCH
        )
        result = await conn.stream(query)
        async for partition in result.mappings().partitions():
            for row in partition:
                report.add(check.feed(row))
            if progress is not None:
                progress(check.rows_checked, total)
        report.add(check.finish())
        report.rows_checked = check.rows_checked
    return report


def _chosen(segments: list[Segment], from_id: int | None, since: datetime | None) -> list[Segment]:
    """The segments to re-read, whole: those reaching `from_id`, and sealed (or pseudonymised) `since`."""
    return [
        segment
        for segment in segments
        if (from_id is None or segment.to_id >= from_id)
        and (since is None or segment.current.sealed_at >= since)
    ]


def _expected_head(report: VerifyReport, entries: list[ChainEntry], digest: str) -> list[Finding]:
    for entry in entries:
        if entry.digest == digest:
            report.expected_head_seq = entry.seq
            return []
    return [
        Finding(
            "head",
            f"no seal has the digest you kept ({digest[:16]}…): the seals after it were removed, or the chain "
            "was rewritten",
        )
    ]
