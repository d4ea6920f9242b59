"""What the operator commands print for a person: escaped cells, dashes for what is missing, UTC times, a
filters column that stays readable at 80 columns, and the --csv file written whole or not at all."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import signal
import sqlite3
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio
from rich.cells import cell_len

from kpi_export.bullmq import opened_queue
from kpi_export.cli.queue_commands import JOB_VALUE_LIMIT
from kpi_export.config import Settings
from kpi_export.contract import parse_job_data
from kpi_export.store import AuditStore, create_engine
from tests.services import worker_env
from tests.support import invoke, job_events, running_worker, wait_until

sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

# ESC (clears the screen), a newline that would forge a row, a right-to-left override, the 8-bit CSI.
HOSTILE = ["scr\x1b[2Jeen", "row\nJob 999 completed", "bidi\u202eflip", "csi\x9b31m"]
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def assert_safe(text: str) -> None:
    """Nothing in `text` that a terminal would act on; no line forged."""
    assert not RAW_CONTROL.search(text), repr(text)
    assert not any(line.lstrip("│ ").startswith("Job 999 completed") for line in text.splitlines()), text


async def add_rows(settings: Settings, *entries: dict[str, Any]) -> list[int]:
    engine = create_engine(settings.database.target)
    try:
        store = AuditStore(engine)
        return [
            await store.record(parse_job_data(data), f"key-{n}-{time.time()}", datetime(2026, 1, 1))
            for n, data in enumerate(entries)
        ]
    finally:
        await engine.dispose()


@sqlite_only
async def test_hostile_ids_and_filters_are_printed_escaped(migrated: Settings) -> None:
    async with (
        job_events(migrated) as events,
        opened_queue(migrated.redis, migrated.queue) as queue,
        running_worker(migrated),
    ):
        for job_id in HOSTILE:
            await queue.add("kpi-export", {"usuarioId": "not a number"}, {"jobId": job_id})
        for job_id in HOSTILE:
            assert (await events.finished(job_id))[0] == "failed"
    (id_export,) = await add_rows(migrated, {"usuarioId": 1, "filters": {"area": " ".join(HOSTILE)}})

    outputs = [
        await invoke(migrated, "jobs", "--state", "failed"),
        await invoke(migrated, "jobs", "--state", "failed", "--json"),
        await invoke(migrated, "retry", *HOSTILE),
        await invoke(migrated, "audit", "list"),
        await invoke(migrated, "audit", "list", "--json"),
        await invoke(migrated, "audit", "show", str(id_export)),
        await invoke(migrated, "audit", "show", str(id_export), "--json"),
        *[await invoke(migrated, "job", job_id) for job_id in HOSTILE],
        await invoke(migrated, "job", "\x1b[2Jmissing"),
    ]
    for result in outputs:
        assert_safe(result.output)
    assert "scr\\x1b[2Jeen" in outputs[0].stdout and "row\\x0aJob 999 completed" in outputs[0].stdout
    assert "bidi\\u202eflip" in outputs[5].stdout
    listed = json.loads(outputs[1].stdout)  # the JSON still holds the ids as they are
    assert sorted(job["id"] for job in listed) == sorted(HOSTILE)
    assert json.loads(outputs[6].stdout)["filters"] == {"area": " ".join(HOSTILE)}


@sqlite_only
async def test_missing_values_are_dashes_and_times_are_utc(migrated: Settings) -> None:
    (id_export,) = await add_rows(migrated, {"usuarioId": 5})  # no ip
    shown = await invoke(migrated, "audit", "show", str(id_export))
    assert shown.exit_code == 0, shown.output
    assert "None" not in shown.stdout
    assert re.search(r"│ ip +│ — +│", shown.stdout), shown.stdout

    async with opened_queue(migrated.redis, migrated.queue) as queue:
        job = await queue.add("kpi-export", {"usuarioId": 5}, {"timestamp": 1767225600000})  # 2026-01-01
    table = await invoke(migrated, "job", job.id)
    assert table.exit_code == 0, table.output
    assert re.search(r"│ timestamp \(UTC\) +│ 2026-01-01 00:00:00 +│", table.stdout), table.stdout
    assert re.search(r"│ processedOn \(UTC\) +│ — +│", table.stdout), table.stdout
    assert "1767225600000" not in table.stdout and "None" not in table.stdout
    as_json = json.loads((await invoke(migrated, "job", job.id, "--json")).stdout)
    assert (as_json["timestamp"], as_json["processedOn"]) == (1767225600000, None)


@sqlite_only
async def test_filters_stay_readable_on_an_80_column_terminal(migrated: Settings) -> None:
    filters = {"area": "ventas", "kpis": ["margen", "ticket"]}
    await add_rows(
        migrated, {"usuarioId": 1234567, "ip": "2001:db8:ffff:ffff:ffff:ffff:ffff:1", "filters": filters}
    )
    narrow = await invoke(migrated, "audit", "list", env={"COLUMNS": "80"})
    assert narrow.exit_code == 0, narrow.output
    assert "┃" not in narrow.stdout  # a block per row: each value whole, the terminal folding long lines
    assert '    filters: {"area": "ventas", "kpis": ["margen", "ticket"]}' in narrow.stdout.splitlines()
    assert "usuarioId 1234567" in narrow.stdout and "2001:db8:ffff:ffff:ffff:ffff:ffff:1" in narrow.stdout
    wide = await invoke(migrated, "audit", "list", env={"COLUMNS": "160"})
    assert re.search(r'│ \{"area": "ventas", "kpis": \["margen", "ticket"\]\} +│', wide.stdout), wide.stdout


@sqlite_only
async def test_audit_list_fits_the_terminal_and_gives_the_filters_the_room_left(migrated: Settings) -> None:
    long_filters = {"area": "ventas", "kpis": [f"kpi-{n}" for n in range(40)]}
    wide_filters = {"área": "販売" * 60}  # two cells a character
    await add_rows(
        migrated,
        {"usuarioId": 1234567, "ip": "2001:db8:ffff:ffff:ffff:ffff:ffff:1", "filters": long_filters},
        {"usuarioId": 8, "ip": "::ffff:203.0.113.200", "filters": wide_filters},
        {"usuarioId": 9, "filters": {"area": "compras"}},
    )
    for columns in (60, 80, 100, 160, 300):
        result = await invoke(migrated, "audit", "list", env={"COLUMNS": str(columns)})
        assert result.exit_code == 0, result.output
        widths = [cell_len(line) for line in result.stdout.splitlines()]
        assert columns - 10 <= max(widths) <= columns, (columns, result.stdout)  # the room, not 48 characters
        assert sum(line.rstrip(" │").endswith("…") for line in result.stdout.splitlines()) == 2, result.stdout
        assert '{"area": "compras"}' in result.stdout
        assert "filters cut to fit (…): `kpi-export audit show ID` shows them whole" in " ".join(
            result.stdout.split()
        )
    as_json = json.loads((await invoke(migrated, "audit", "list", "--json", env={"COLUMNS": "60"})).stdout)
    assert [row["filters"] for row in as_json] == [{"area": "compras"}, wide_filters, long_filters]


@sqlite_only
async def test_job_shortens_long_values_and_says_how_much_is_left_out(migrated: Settings) -> None:
    huge = {"usuarioId": 1, "filters": {"blob": "x" * (2 * 1024 * 1024)}}
    long = {"usuarioId": 2, "filters": {"kpis": [f"kpi-{n}" for n in range(400)]}}
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        huge_job = await queue.add("kpi-export", huge)
        long_job = await queue.add("kpi-export", long)

    shown = await invoke(migrated, "job", huge_job.id, env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert len(shown.stdout.splitlines()) < 40, len(shown.stdout.splitlines())
    left_out = len(json.dumps(huge, ensure_ascii=False)) - JOB_VALUE_LIMIT
    assert f"… ({left_out:,} more characters; --full shows all)" in " ".join(
        line.strip("│ ") for line in shown.stdout.splitlines()
    )
    as_json = json.loads((await invoke(migrated, "job", huge_job.id, "--json")).stdout)
    assert as_json["data"] == huge  # --json is whole

    full = await invoke(migrated, "job", long_job.id, "--full", env={"COLUMNS": "80"})
    assert full.exit_code == 0, full.output
    folded = "".join(line.split("│")[2].strip() for line in full.stdout.splitlines() if line.startswith("│"))
    assert json.dumps(long, ensure_ascii=False).replace(" ", "") in folded.replace(" ", "")
    assert "more characters" not in full.stdout


@sqlite_only
async def test_jobs_show_a_column_that_means_something_in_each_state(migrated: Settings) -> None:
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        await queue.add("export-ventas", {"usuarioId": 1})
        await queue.add("kpi-export", {"usuarioId": 2}, {"delay": 3_600_000, "timestamp": 1767225600000})
    waiting = await invoke(migrated, "jobs", "--state", "waiting")
    assert re.search(r"┃ id +┃ added \(UTC\) +┃ attempts +┃ name +┃", waiting.stdout), waiting.stdout
    assert "export-ventas" in waiting.stdout and "reason" not in waiting.stdout
    delayed = await invoke(migrated, "jobs", "--state", "delayed")
    assert "runs at (UTC)" in delayed.stdout and "2026-01-01 01:00:00" in delayed.stdout, delayed.stdout


@sqlite_only
async def test_an_unreadable_job_is_listed_with_its_reason(migrated: Settings, redis_url: str) -> None:
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        readable = await queue.add("kpi-export", {"usuarioId": 1})
    raw = redis.asyncio.Redis.from_url(redis_url)
    try:
        key = f"bull:{migrated.queue.name}"
        await raw.hset(
            f"{key}:huge",
            mapping={"name": "kpi-export", "data": '{"usuarioId": ' + "9" * 5000 + "}", "opts": "{}",
                     "timestamp": "1767225600000", "atm": "1", "failedReason": "usuarioId inválido en job.data"},
        )  # fmt: skip
        await raw.zadd(f"{key}:failed", {"huge": 1, readable.id: 2})
    finally:
        await raw.aclose()
    table = await invoke(migrated, "jobs", "--state", "failed")
    assert table.exit_code == 0, table.output
    assert "huge" in table.stdout and "unreadable: job.data inválido" in table.stdout.replace("\n│", "")
    listed = json.loads((await invoke(migrated, "jobs", "--state", "failed", "--json")).stdout)
    assert [job["id"] for job in listed] == [readable.id, "huge"]
    assert listed[1]["unreadable"].startswith("job.data inválido")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_db_commands_name_the_schema_they_migrated(settings: Settings) -> None:
    schema = str(settings.database.target.schema)
    upgraded = await invoke(settings, "db", "upgrade")
    assert f"?schema={schema}: migrated from nothing to " in upgraded.stdout, upgraded.output
    current = await invoke(settings, "db", "current")
    assert f"?schema={schema}: at " in current.stdout


@sqlite_only
async def test_enqueue_sends_numbers_as_numbers(migrated: Settings) -> None:
    given = ["42.0", "1e3", "0x1A", "1e400", "9" * 5000]
    added = [await invoke(migrated, "enqueue", "--usuario-id", text) for text in given]
    assert [result.exit_code for result in added] == [0] * len(given), [r.output for r in added]
    async with opened_queue(migrated.redis, migrated.queue) as queue:
        data = [(await queue.getJob(result.stdout.strip())).data["usuarioId"] for result in added]
    assert data == [42, 1000, "0x1A", "1e400", "9" * 5000] and type(data[0]) is int  # the rest as text


# --- audit list --csv ---------------------------------------------------------------------------------------


@sqlite_only
async def test_csv_never_overwrites_without_force_and_replaces_a_symlink_not_its_target(
    migrated: Settings, tmp_path: Path
) -> None:
    await add_rows(migrated, {"usuarioId": 1}, {"usuarioId": 2})
    target, elsewhere = tmp_path / "audit.csv", tmp_path / "precious.txt"
    target.write_text("yesterday's export\n")
    refused = await invoke(migrated, "audit", "list", "--csv", str(target))
    assert refused.exit_code == 2 and "exists; add --force to replace it" in refused.stderr
    assert target.read_text() == "yesterday's export\n"

    forced = await invoke(migrated, "audit", "list", "--csv", str(target), "--force")
    assert forced.exit_code == 0 and forced.stdout == f"2 rows written to {target}\n"
    assert len(target.read_text().splitlines()) == 3

    target.chmod(0o600)  # an export kept private (it holds IP addresses) stays private when replaced
    assert (await invoke(migrated, "audit", "list", "--csv", str(target), "--force")).exit_code == 0
    assert target.stat().st_mode & 0o777 == 0o600

    elsewhere.write_text("not an export\n")
    link = tmp_path / "link.csv"
    link.symlink_to(elsewhere)
    assert (await invoke(migrated, "audit", "list", "--csv", str(link))).exit_code == 2
    assert (await invoke(migrated, "audit", "list", "--csv", str(link), "--force")).exit_code == 0
    assert elsewhere.read_text() == "not an export\n" and not link.is_symlink()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


@sqlite_only
async def test_csv_dash_is_standard_output(migrated: Settings, tmp_path: Path) -> None:
    await add_rows(migrated, {"usuarioId": 7, "ip": "198.51.100.4"})
    result = await invoke(migrated, "audit", "list", "--csv", "-")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [(row["usuarioId"], row["ip"]) for row in rows] == [("7", "198.51.100.4")]
    assert result.stderr == "1 row written to standard output\n"
    assert not (Path.cwd() / "-").exists()


@sqlite_only
async def test_an_export_stopped_midway_leaves_the_old_file_and_no_partial_one(
    migrated: Settings, tmp_path: Path
) -> None:
    _fill(migrated)
    folder = tmp_path / "exports"
    folder.mkdir()
    target = folder / "audit.csv"
    target.write_text("yesterday's export\n")
    export = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kpi_export", "audit", "list", "--csv", str(target), "--force",
        env=worker_env(migrated), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:

        async def writing() -> bool:
            return any(p.name.endswith(".part") and _size(p) > 0 for p in folder.iterdir())

        await wait_until(writing, timeout=60, what="the export to start writing")
        export.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(export.communicate(), timeout=60)
    finally:
        if export.returncode is None:
            export.kill()
            await export.wait()
    assert export.returncode == 130, stderr
    assert (
        stderr.decode().strip().splitlines()[-1] == f"kpi-export: export interrupted: {target} left as it was"
    )
    assert target.read_text() == "yesterday's export\n"
    assert [p.name for p in folder.iterdir()] == ["audit.csv"]


@sqlite_only
async def test_an_export_to_standard_output_stopped_midway_says_so(migrated: Settings) -> None:
    _fill(migrated)
    export = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "kpi_export", "audit", "list", "--csv", "-",
        env=worker_env(migrated), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert export.stdout is not None
        header = await asyncio.wait_for(export.stdout.readline(), timeout=60)
        assert header.startswith(b"idExport,"), header
        export.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(export.communicate(), timeout=60)
    finally:
        if export.returncode is None:
            export.kill()
            await export.wait()
    assert export.returncode == 130, stderr
    assert stderr.decode().strip().splitlines()[-1] == (
        "kpi-export: export interrupted: the CSV on standard output is incomplete"
    )


def _fill(settings: Settings) -> None:
    """Enough rows that an export is stopped while it writes."""
    with sqlite3.connect(str(settings.database.target.url.database)) as connection:
        connection.executemany(
            'INSERT INTO kpi_auditoria_export ("usuarioId", ip, filters, format, "codigoEstado", "createdAt", '
            '"idempotencyKey") VALUES (?, ?, ?, ?, 0, ?, ?)',
            (
                (n, "10.0.0.1", '{"area":"ventas"}', "csv", "2026-01-01 00:00:00.000", f"k{n}")
                for n in range(300_000)
            ),
        )


def _size(path: Path) -> int:
    """0 for a file gone meanwhile (the partial file is renamed at the end)."""
    try:
        return path.lstat().st_size
    except FileNotFoundError:
        return 0


@sqlite_only
async def test_a_reader_that_stops_early_is_no_failure(migrated: Settings) -> None:
    """`kpi-export audit list --csv - | head -2`: the pipe closes early; no error line, no traceback."""
    await add_rows(migrated, *[{"usuarioId": n} for n in range(1, 3001)])
    pipeline = await asyncio.create_subprocess_shell(
        f"{sys.executable} -m kpi_export audit list --csv - | head -2",
        env=worker_env(migrated), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await asyncio.wait_for(pipeline.communicate(), timeout=120)
    assert stdout.decode().splitlines()[0].startswith("idExport,usuarioId,ip,")
    assert b"kpi-export:" not in stderr and b"Traceback" not in stderr, stderr
