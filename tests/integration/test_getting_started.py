"""The getting-started page's "Try it by hand" works as written: its block runs as a script in a copy of the
clone, with nothing from the test's environment but PATH, and leaves nothing behind."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from tests.docs import ROOT, Page, code_blocks


def try_it_by_hand() -> str:
    blocks = code_blocks(Page.of("getting-started.md").section("## Try it by hand"), "sh")
    assert len(blocks) == 1, "one sh block in the getting-started page's Try it by hand"
    return blocks[0]


def processes_started_in(folder: Path) -> list[int]:
    """The processes whose environment names `folder` (the walk's TMPDIR): what it started and left running."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"TMPDIR={folder}".encode() in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def copy_of_the_clone(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """What a new user's clone holds for make (its Makefile, pyproject.toml, lock files, and this .venv), and
    an environment with nothing from the test's but PATH."""
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
    return clone, env


def test_make_run_runs_the_demo_and_adds_it_up(tmp_path: Path) -> None:
    """The page's first command: an embedded Redis, SQLite, the real worker, 200 jobs, a summary, exit 0."""
    clone, env = copy_of_the_clone(tmp_path)
    ran = subprocess.run(
        ["make", "run"], cwd=clone, env=env, capture_output=True, text=True, timeout=240, check=False
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert 'Worker escuchando cola "kpi-export-queue" (concurrency=4)' in ran.stdout
    summary = {
        re.sub(r"[│ ]+", " ", line).strip().rsplit(" ", 1)[0]: line.strip("│ ").rsplit(" ", 1)[-1].strip("│ ")
        for line in ran.stdout.splitlines()
        if line.startswith("│")
    }
    assert summary["jobs enqueued"] == "200" and summary["worker exit status after SIGTERM"] == "0", (
        ran.stdout
    )
    completed, rows = int(summary["jobs completed"]), int(summary["audit rows written"])
    assert completed == rows and completed + int(summary["jobs failed (invalid data, not retried)"]) == 200


def test_try_it_by_hand_runs_as_written(tmp_path: Path) -> None:
    clone, env = copy_of_the_clone(tmp_path)
    (clone / "try.sh").write_text(try_it_by_hand())
    made = sorted(path.name for path in clone.iterdir())
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    try:
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "try.sh"],
            check=False,
            cwd=clone,
            env=env | {"TMPDIR": str(temporary)},
            capture_output=True,
            text=True,
            timeout=240,
        )
    finally:
        left = processes_started_in(temporary)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "Traceback" not in ran.stdout + ran.stderr
    # Cleaned up: no process of the walk still running, nothing left in the clone or the temporary folder.
    assert left == [], left
    assert sorted(path.name for path in clone.iterdir()) == made
    assert list(temporary.iterdir()) == []
    # The worker's log, printed at the end: its start line, every job once, the stop.
    log = ran.stdout
    assert 'Worker escuchando cola "try-it" (concurrency=1)\n' in log
    assert len(re.findall(r"^Job \d+ completed: \{ idExport: \d+ \}$", log, re.MULTILINE)) == 21, log
    assert "Job 2 failed: usuarioId inválido en job.data (final, not retried)" in log
    assert "Cerrando worker...\n" in log and "Worker stopped\n" in log
    assert "usuarioId inválido en job.data" in ran.stdout  # `jobs --state failed` showed the reason
