"""The processes a test starts can be interrupted, however the suite itself was started (tests/conftest.py)."""

from __future__ import annotations

import signal
import subprocess
import sys


def test_a_process_the_tests_start_takes_sigint() -> None:
    """Else `kpi-export audit list --csv FILE` sent SIGINT midway writes on and exits 0 (test_cli_output.py)."""
    child = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) == signal.default_int_handler)"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert child.stdout.strip() == "True", child.stdout
    assert signal.getsignal(signal.SIGINT) != signal.SIG_IGN
