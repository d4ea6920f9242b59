"""`make soak` at CI's size: three minutes of the production shape (Redis with Sentinel, PostgreSQL with a
synchronous standby, the worker as a restarted service of two processes, sealing on, the Node producer), every
kind of fault once, and the ledger whole at the end. A larger run by hand: `make soak` (SOAK_MINUTES, SOAK_RATE;
its report goes to docs/soak/)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from soak.faults import ROTATION, name

from tests.pgcluster import postgres_bin
from tests.services import unavailable

pytestmark = [pytest.mark.soak, pytest.mark.timeout(1500)]

ROOT = Path(__file__).resolve().parents[2]


def test_three_minutes_of_every_fault_leave_a_whole_ledger(tmp_path: Path) -> None:
    if postgres_bin() is None:
        unavailable("initdb/pg_ctl not found", in_ci="initdb/pg_ctl not found, and CI needs them")
    soak = subprocess.run(
        [
            sys.executable, "-m", "soak", "--minutes", "3", "--rate", "50", "--burst", "2000",
            "--burst-every", "90", "--fault-every", "15", "--out", str(tmp_path), "--no-picture",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1400, check=False,
    )  # fmt: skip
    assert soak.returncode == 0, soak.stdout[-3000:] + soak.stderr[-3000:]
    summary = json.loads((tmp_path / "soak.json").read_text())
    ledger = summary["ledger"]
    struck = {fault["name"] for fault in summary["faults"]}
    assert struck == {name(fault) for fault in ROTATION}, struck
    assert ledger["whole"], ledger
    assert ledger["completed"] > 0 and ledger["failed"] > 0  # the invalid jobs failed (and only they: whole)
    assert not summary["worker_errors"], summary["worker_errors"]
    assert "ledger whole" in soak.stdout
    print((tmp_path / "soak.md").read_text())
