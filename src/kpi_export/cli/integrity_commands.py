"""The audit trail's integrity: `audit seal`, `audit verify`, `audit pseudonymise-ips` and `audit reconcile`."""

from __future__ import annotations

import getpass
import json
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import click

from kpi_export.cli.app import EXIT_CONFIG, EXIT_FAILED, JSON_OPTION, run, settings_or_exit
from kpi_export.cli.db_commands import ID_EXPORT, audit, when_option, with_engine
from kpi_export.cli.render import counted, echo_result, progress_bar
from kpi_export.tables import shown

if TYPE_CHECKING:
    from kpi_export.config import Settings
    from kpi_export.contract.ip_privacy import IpMode
    from kpi_export.integrity import ChainEntry, SealKey
    from kpi_export.integrity.pseudonymise import PseudonymiseReport
    from kpi_export.integrity.reconcile import ReconcileReport, Tally
    from kpi_export.integrity.verifier import VerifyReport

_AGE = re.compile(r"([0-9]{1,6})([dh])", re.IGNORECASE)
_DATE_LIKE = re.compile(r"[0-9]{4}-")


def key_or_exit(settings: Settings) -> SealKey:
    key = settings.audit.key
    if key is None:
        click.echo(
            "kpi-export: AUDIT_SEAL_KEY is not set: the seals are made and checked with it (the key they were "
            "sealed with)",
            err=True,
        )
        sys.exit(EXIT_CONFIG)
    return key


def entry_json(entry: ChainEntry) -> dict[str, Any]:
    return {
        "seq": entry.seq,
        "kind": entry.kind,
        "fromId": entry.from_id,
        "toId": entry.to_id,
        "rows": entry.row_count,
        "sealedAt": entry.sealed_at.isoformat(timespec="milliseconds") + "Z",
        "actor": entry.actor,
        "detail": _detail(entry),
        "digest": entry.digest,
    }


def _detail(entry: ChainEntry) -> dict[str, Any]:
    """An entry's detail as stored, or nothing when it was edited into something else (its digest tells)."""
    try:
        detail = json.loads(entry.detail or "{}")
    except (ValueError, RecursionError):
        return {}
    return detail if isinstance(detail, dict) else {}


@audit.command("seal")
@JSON_OPTION
def audit_seal(as_json: bool) -> None:
    """Seal now what the worker would: the rows older than AUDIT_SEAL_MIN_AGE that no seal covers yet.
    Prints each new seal and the head digest, to be kept outside the database."""
    from kpi_export.integrity.sealer import read_head, seal_pending

    settings = settings_or_exit()
    key = key_or_exit(settings)

    async def go(engine: Any) -> tuple[list[ChainEntry], ChainEntry | None]:
        sealed = await seal_pending(engine, key, min_age=settings.audit.seal_min_age, actor=_operator())
        head, _ = await read_head(engine)
        return sealed, head

    sealed, head = run(with_engine(settings, go, create=False))
    echo_result(
        as_json,
        {"sealed": [entry_json(e) for e in sealed], "head": entry_json(head) if head else None},
        lambda: _show_sealed(sealed, head),
    )


def _show_sealed(sealed: list[ChainEntry], head: ChainEntry | None) -> None:
    for entry in sealed:
        click.echo(
            f"seal {entry.seq}: idExport {entry.from_id}-{entry.to_id}, {counted(entry.row_count, 'row')}"
        )
    if not sealed:
        click.echo("nothing to seal")
    if head is not None:
        click.echo(f"head: seal {head.seq}, digest {head.digest}")


@audit.command("verify")
@click.option(
    "--since", help="Only the seals made since this date or ISO date-time (the chain is always checked)."
)
@click.option("--from-id", type=ID_EXPORT, help="Only the seals that reach this idExport or beyond.")
@click.option("--expect-head", metavar="DIGEST", help="A head digest kept elsewhere: the chain must hold it.")
@JSON_OPTION
def audit_verify(since: str | None, from_id: int | None, expect_head: str | None, as_json: bool) -> None:
    """Check the seals and re-read the sealed rows: each row changed, deleted or inserted inside a sealed
    range, and each break in the chain, is reported. Exit status 1 on any finding."""
    from kpi_export.integrity.verifier import verify

    since_time = when_option(since, "--since")
    settings = settings_or_exit()
    key = key_or_exit(settings)

    async def go(engine: Any) -> VerifyReport:
        with progress_bar() as bar:
            task = bar.add_task("Verifying", total=None)
            return await verify(
                engine,
                key,
                from_id=from_id,
                since=since_time,
                expect_head=expect_head,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )

    try:
        report = run(with_engine(settings, go, create=False))
    except KeyboardInterrupt:
        click.echo("kpi-export: verify interrupted: it changes nothing; run it again to the end", err=True)
        sys.exit(130)
    echo_result(as_json, _report_json(report), lambda: _show_report(report))
    if not report.clean:
        sys.exit(EXIT_FAILED)


def _report_json(report: VerifyReport) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "head": entry_json(report.head) if report.head else None,
        "seals": report.entries,
        "segmentsChecked": report.segments_checked,
        "rowsChecked": report.rows_checked,
        "rowsNotSealed": report.rows_not_sealed,
        "keyId": report.key_id,
        "chainKeyIds": report.chain_key_ids,
        "expectedHeadSeq": report.expected_head_seq,
        "pseudonymisations": [entry_json(e) for e in report.pseudonymisations],
        "repairs": [entry_json(e) for e in report.repairs],
        "findings": [
            {"kind": f.kind, "seq": f.seq, "idExport": f.id_export, "message": f.message}
            for f in report.findings
        ],
        "findingCounts": dict(report.counts),
    }


def _show_report(report: VerifyReport) -> None:
    for entry in report.pseudonymisations:
        detail = _detail(entry)
        click.echo(
            f"pseudonymisation recorded in seal {entry.seq}: idExport {entry.from_id}-{entry.to_id}, "
            f"{counted(detail.get('rowsChanged', '?'), 'row')} ip {detail.get('ip', '?')}, older than "
            f"{detail.get('olderThan', '?')}, by {shown(entry.actor)} at "
            f"{entry.sealed_at.isoformat(timespec='seconds')}Z"
        )
    for entry in report.repairs:
        detail = _detail(entry)
        click.echo(
            f"repair recorded in seal {entry.seq}: {counted(detail.get('rowsReinserted', '?'), 'row')} re-inserted "
            f"(idExport {shown(detail.get('reinserted', '?'))}) from {shown(detail.get('from', '?'))}, by "
            f"{shown(entry.actor)} at {entry.sealed_at.isoformat(timespec='seconds')}Z"
        )
    for finding in report.findings:
        click.echo(f"FOUND: {shown(finding.message)}")
    listed = len(report.findings)
    total = sum(report.counts.values())
    if total > listed:
        click.echo(f"… and {counted(total - listed, 'more finding')} not listed")
    head = f"head: seal {report.head.seq}, digest {report.head.digest}" if report.head else "no seal yet"
    if report.other_key:
        click.echo(
            f"{counted(report.entries, 'seal')} sealed with another key: the chain's key fingerprint is "
            f"{' and '.join(report.chain_key_ids)}, AUDIT_SEAL_KEY's is {report.key_id}; no sealed row could be "
            f"re-read, {counted(report.rows_not_sealed, 'row')} after the last seal; {head}"
        )
    else:
        click.echo(
            f"{counted(report.entries, 'seal')}, {counted(report.rows_checked, 'sealed row')} re-read, "
            f"{counted(report.rows_not_sealed, 'row')} not sealed yet; {head}"
        )
    if report.expected_head_seq is not None and report.head is not None:
        click.echo(
            f"the expected head is seal {report.expected_head_seq} of the chain "
            f"({counted(report.head.seq - report.expected_head_seq, 'seal')} made since)"
        )
    if report.clean:
        click.echo("verified: no finding")
    else:
        counts = ", ".join(f"{count} {kind}" for kind, count in sorted(report.counts.items()))
        click.echo(f"NOT VERIFIED: {counted(total, 'finding')} ({counts})")


@audit.command("pseudonymise-ips")
@click.option(
    "--older-than",
    required=True,
    metavar="AGE|DATE",
    help="Rows created before this: an age (90d, 36h) or a date / ISO date-time.",
)
@click.option(
    "--to",
    "mode",
    type=click.Choice(["truncated", "none"]),
    default="truncated",
    show_default=True,
    help="Truncate the address (IPv4 /24, IPv6 /48), or remove it.",
)
@click.option("--actor", help="Who does it, as the chain records it. [default: user@host]")
@JSON_OPTION
def audit_pseudonymise_ips(older_than: str, mode: str, actor: str | None, as_json: bool) -> None:
    """Truncate (or remove) the IPs of old rows. On a sealed table each change is recorded in the chain, so
    that verify tells it from tampering; a sealed range that fails its check is left alone and reported."""
    from kpi_export.integrity.pseudonymise import pseudonymise_ips

    cutoff = _cutoff(older_than)
    settings = settings_or_exit()
    key = settings.audit.key
    report = run(
        with_engine(
            settings,
            lambda engine: pseudonymise_ips(
                engine,
                key,
                older_than=cutoff,
                mode=cast("IpMode", mode),
                actor=actor or _operator(),
            ),
            create=False,
        )
    )
    echo_result(
        as_json,
        {
            "rowsChanged": report.rows_changed,
            "recorded": [entry_json(e) for e in report.recorded],
            "refused": [{"fromId": s.from_id, "toId": s.to_id, "findings": n} for s, n in report.refused],
        },
        lambda: _show_pseudonymised(report, mode, cutoff),
    )
    if report.refused:
        sys.exit(EXIT_FAILED)


def _show_pseudonymised(report: PseudonymiseReport, mode: str, cutoff: datetime) -> None:
    for entry in report.recorded:
        click.echo(f"seal {entry.seq}: pseudonymisation of idExport {entry.from_id}-{entry.to_id} recorded")
    for segment, findings in report.refused:
        click.echo(
            f"REFUSED: idExport {segment.from_id}-{segment.to_id} fails its seal ({counted(findings, 'finding')}): "
            "left as it is; `kpi-export audit verify` names them"
        )
    click.echo(
        f"{counted(report.rows_changed, 'row')} changed (ip {mode}, older than "
        f"{cutoff.isoformat(timespec='seconds')}Z)"
    )


def _cutoff(text: str) -> datetime:
    from kpi_export.store.reader import parse_when
    from kpi_export.store.writer import utc_now

    age = _AGE.fullmatch(text.strip())
    if age is not None:
        number, unit = int(age.group(1)), age.group(2).lower()
        try:
            return utc_now() - (timedelta(days=number) if unit == "d" else timedelta(hours=number))
        except OverflowError:
            raise click.BadParameter(f"{text!r} reaches before year 1", param_hint="--older-than") from None
    try:
        return parse_when(text)
    except ValueError as exc:
        if _DATE_LIKE.match(text.strip()):  # meant as a date: its own message says what is wrong
            raise click.BadParameter(str(exc), param_hint="--older-than") from None
    raise click.BadParameter(
        f"{text!r} is neither an age nor a date: an age is a whole number of days (d) or hours (h), such as "
        "90d or 36h; a date is 2026-03-31 or an ISO date-time such as 2026-03-31T10:00Z",
        param_hint="--older-than",
    )


def _operator() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@audit.command("reconcile")
@click.option("--since", help="Only the jobs that finished since this date or ISO date-time.")
@click.option(
    "--repair",
    is_flag=True,
    help="Re-insert each missing row with its idExport and time, in id order, never over a row; then move the "
    "table's next id past the highest idExport a kept result names.",
)
@click.option("--actor", help="Who repairs, as the seal chain records it. [default: user@host]")
@JSON_OPTION
def audit_reconcile(since: str | None, repair: bool, actor: str | None, as_json: bool) -> None:
    """Hold every completed job Redis keeps against its audit row: rows missing (a database restore, a
    failover), rows that differ from their job, results whose idExport is another job's row, and rows whose
    job Redis no longer keeps. Read-only unless --repair. Exit status 1 when a row is missing or differs."""
    since_time = when_option(since, "--since")
    settings = settings_or_exit()
    since_ms = int(since_time.replace(tzinfo=UTC).timestamp() * 1000) if since_time is not None else None
    try:
        report = run(
            with_engine(
                settings,
                lambda engine: _reconcile(settings, engine, since_ms, repair, actor or _operator()),
                create=False,
            )
        )
    except KeyboardInterrupt:
        click.echo("kpi-export: reconcile interrupted: run it again to the end", err=True)
        sys.exit(130)
    echo_result(as_json, _reconcile_json(report), lambda: _show_reconciled(report, repair))
    if not report.clean:
        sys.exit(EXIT_FAILED)


async def _reconcile(
    settings: Settings, engine: Any, since_ms: int | None, repair: bool, actor: str
) -> ReconcileReport:
    from kpi_export.bullmq import opened_queue
    from kpi_export.bullmq.kept_jobs import count_kept, kept_jobs, read_kept
    from kpi_export.integrity import reconciler
    from kpi_export.store.id_sequence import move_past

    async with opened_queue(settings.redis, settings.queue, max_connections=2) as queue:
        with progress_bar() as bar:
            task = bar.add_task("Reconciling", total=await count_kept(queue, since_ms))
            found = await reconciler.reconcile(
                engine,
                kept_jobs(queue, since_ms=since_ms),
                progress=lambda done: bar.update(task, completed=done),
            )
        report = found.report
        if not repair:
            return report
        # The sequence first: a worker writing meanwhile must not take an id the repair is about to restore.
        before, _ = await move_past(engine, report.highest_id)
        done = await reconciler.repair(
            engine,
            settings.audit.key,
            found.missing,
            lambda job_ids: read_kept(queue, job_ids),
            ip_mode=settings.audit.ip_mode,
            actor=actor,
            source=f"Redis: the completed jobs of {queue.qualifiedName}",
        )
        report.repaired, report.not_repaired, report.recorded = (
            done.repaired,
            done.not_repaired,
            done.recorded,
        )
        report.sequence = (before, (await move_past(engine, report.highest_id))[1])
    return report


def _tally_json(tally: Tally) -> dict[str, Any]:
    return {"count": tally.count, "first": tally.first}


def _reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    found: dict[str, Any] = {
        "clean": report.clean,
        "jobs": report.jobs,
        "equal": report.equal,
        "highestIdExport": report.highest_id or None,
        "missing": _tally_json(report.missing),
        "differs": _tally_json(report.differs),
        "taken": _tally_json(report.taken),
        "unreadable": _tally_json(report.unreadable),
        "orphans": _tally_json(report.orphans),
    }
    if report.sequence is not None:
        found["repaired"] = _tally_json(report.repaired)
        found["notRepaired"] = _tally_json(report.not_repaired)
        found["recorded"] = [entry_json(e) for e in report.recorded]
        found["nextIdExport"] = {"before": report.sequence[0], "after": report.sequence[1]}
    return found


def _first(tally: Tally) -> str:
    more = ", …" if tally.count > len(tally.first) else ""
    return ", ".join(shown(item) for item in tally.first) + more


def _show_reconciled(report: ReconcileReport, repair: bool) -> None:
    click.echo(
        f"{counted(report.jobs, 'completed job')} kept in Redis: {report.equal} with their row as the worker "
        "wrote it"
    )
    lines = (
        ("MISSING", report.missing, "row", "", "idExport"),
        ("DIFFERS", report.differs, "row", " from its job", "idExport"),
        ("TAKEN", report.taken, "result", " whose idExport is another job's row", "idExport"),
        ("not checked", report.unreadable, "job", " without an idExport, or with data refused", "job"),
        (
            "not in Redis",
            report.orphans,
            "row",
            " whose job Redis no longer keeps (informational)",
            "idExport",
        ),
        ("REPAIRED", report.repaired, "row", " re-inserted", "idExport"),
        ("NOT REPAIRED", report.not_repaired, "missing row", " whose id or key is a row now", "idExport"),
    )
    for label, tally, noun, what, ids in lines:
        if tally.count:
            click.echo(f"{label}: {counted(tally.count, noun)}{what} ({ids} {_first(tally)})")
    for entry in report.recorded:
        click.echo(f"seal {entry.seq}: repair of idExport {entry.from_id}-{entry.to_id} recorded")
    if report.sequence is not None:
        before, after = report.sequence
        moved = f"moved from {before} to {after}" if after != before else f"{after}, unchanged"
        click.echo(f"the table's next idExport: {moved}")
    if report.clean:
        click.echo("reconciled: every kept job has its row")
    elif report.missing.count and not repair:
        click.echo("NOT RECONCILED: `kpi-export audit reconcile --repair` re-inserts the missing rows")
    else:
        click.echo("NOT RECONCILED: a row that differs, or an id taken, is for a person to look at")
