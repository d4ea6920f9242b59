"""The `kpi-export` command: the click group (app.py), its commands by what they act on, and how they show
what they found (render.py)."""

from kpi_export.cli import db_commands, queue_commands, worker_commands  # noqa: F401 - they add the commands
from kpi_export.cli.app import EXIT_CONFIG, cli

__all__ = ["EXIT_CONFIG", "cli", "main"]


def main() -> None:
    cli()
