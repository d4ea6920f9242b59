"""`--baseline REV`: this worker as it was at another commit, built and run by the harness in the same run, so
that a change is measured against the code before it, side by side, on the same minute of the machine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def build_baseline(rev: str, workdir: Path) -> Path:
    """A clone of this repository at `rev` with a virtualenv of its own, from its own lock file; returns that
    virtualenv's Python."""
    commit = _git("rev-parse", "--verify", f"{rev}^{{commit}}", cwd=ROOT).strip()
    clone = workdir / f"baseline-{commit[:10]}"
    if not clone.exists():
        _git("clone", "--quiet", "--no-checkout", str(ROOT), str(clone), cwd=workdir)
        _git("checkout", "--quiet", commit, cwd=clone)
    python = clone / ".venv" / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(clone / ".venv")], check=True)
        pip = [str(python), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--require-hashes", "-r", str(clone / "requirements" / "dev.txt")], check=True)
        subprocess.run([*pip, "--no-deps", "-e", str(clone)], check=True)
    return python


def _git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout
