"""The README's "Try it by hand" works as written: its block runs in a copy of the clone, with nothing from
the test's environment but PATH."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def try_it_by_hand() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Try it by hand\n", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert found, "no sh block in the README's Try it by hand"
    return found.group(1)


def test_try_it_by_hand_runs_as_written(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    clone.mkdir()
    for name in ("Makefile", "pyproject.toml"):
        shutil.copy2(ROOT / name, clone / name)  # mtimes kept: `make install` finds .venv up to date
    shutil.copytree(ROOT / "requirements", clone / "requirements")
    (clone / ".venv").symlink_to(ROOT / ".venv")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"}
    # `make install` must find .venv up to date: it would otherwise reinstall the project into the shared
    # .venv from this copy, which has no src/ (make test, or make install, first).
    up_to_date = subprocess.run(["make", "-q", "install"], cwd=clone, env=env, check=False)
    assert up_to_date.returncode == 0, "run `make install` first: .venv is older than pyproject.toml"
    try:
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", try_it_by_hand()],
            check=False,
            cwd=clone,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        pid_file = clone / "try-redis.pid"
        if pid_file.exists() and (clone / "try.sock").exists():  # the block failed before it stopped Redis
            subprocess.run(["kill", pid_file.read_text().strip()], check=False)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    log = (clone / "worker.log").read_text()
    assert re.search(r'Job 1 completed: \{"idExport": \d+\}', log), log
    assert "Job 2 failed: usuarioId inválido en job.data (final, not retried)" in log
    with sqlite3.connect(clone / "try.db") as database:
        assert database.execute("SELECT COUNT(*) FROM kpi_auditoria_export").fetchone() == (21,)
    assert "usuarioId inválido en job.data" in ran.stdout  # `jobs --state failed` showed the reason
