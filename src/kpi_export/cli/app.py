"""The `kpi-export` command group and what its commands share: settings, the event loop, the --json flag, and
the error boundary (a failure is one line and exit status 1)."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import click

from kpi_export.cli import collector

if TYPE_CHECKING:
    from kpi_export.config import Settings

T = TypeVar("T")
EXIT_CONFIG = 2
EXIT_FAILED = 1
_SETTINGS = "kpi_export.settings"
_DEBUG = "kpi_export.debug"

JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for a script instead of a table."
)


# The services, not operator commands: an unexpected error there keeps its traceback for the service's log.
SERVICES = ("worker", "demo")


class Commands(click.Group):
    """An operator command that fails prints one line (what failed, what to do) and exits 1; with --debug, or
    LOG_LEVEL=DEBUG, the traceback follows instead."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `kpi-export audit list --csv - | head`: the reader has had enough
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python would report the pipe again at exit
            ctx.exit(EXIT_FAILED)
        except Exception as exc:
            if ctx.invoked_subcommand in SERVICES or ctx.meta.get(_DEBUG) or _debug_level():
                raise
            from kpi_export.cli.failures import explain

            click.echo(f"kpi-export: {explain(exc, ctx.meta.get(_SETTINGS))}", err=True)
            ctx.exit(EXIT_FAILED)


def _debug_level() -> bool:
    return os.environ.get("LOG_LEVEL", "").upper() == "DEBUG"


class LazyCommands(Commands):
    """The commands are defined in modules by what they act on, each imported when one of its commands runs
    (all of them for --help): `kpi-export stats` does not wait for the audit commands' imports."""

    MODULES: ClassVar[dict[str, tuple[str, ...]]] = {
        "kpi_export.cli.queue_commands": ("enqueue", "job", "stats", "jobs", "retry"),
        "kpi_export.cli.db_commands": ("db", "audit"),
        "kpi_export.cli.integrity_commands": ("audit",),  # audit seal|verify|pseudonymise-ips|reconcile
        "kpi_export.cli.worker_commands": ("worker", "demo", "check"),
    }

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        for module, names in self.MODULES.items():
            if cmd_name in names:
                importlib.import_module(module)
        return super().get_command(ctx, cmd_name)

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, command, rest = super().resolve_command(ctx, args)
        if name in SERVICES:
            collector.resume(freeze=False)  # a service runs as it always has
        return name, command, rest

    def list_commands(self, ctx: click.Context) -> list[str]:
        for module in self.MODULES:
            importlib.import_module(module)
        return super().list_commands(ctx)


@click.group(cls=LazyCommands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="When a command fails, show the traceback.")
@click.version_option(package_name="kpi-export-worker")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Audit worker for KPI export jobs on a BullMQ queue. Configured by environment variables (docs/configuration.md)."""
    ctx.meta[_DEBUG] = debug


def settings_or_exit(*, console: bool = False, process: int | None = None, database: bool = True) -> Settings:
    """Settings from the environment, logging set up; bad configuration exits 2 with one line. An operator
    command logs on stderr (its stdout is its output); a service (`console`) on stdout and stderr as the Node
    original did, `process` naming the worker process under a supervisor. A command that never opens the
    database passes `database=False`: DATABASE_URL is not checked (nor SQLAlchemy imported)."""
    from kpi_export.config import load_settings
    from kpi_export.errors import ConfigError
    from kpi_export.logs import setup_logging

    try:
        settings = load_settings(database=database)
    except ConfigError as exc:
        click.echo(f"kpi-export: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(
        settings.logs.level,
        settings.logs.format,
        settings.secrets(),
        stream=None if console else sys.stderr,
        timestamps=settings.logs.timestamps,
        process=process,
    )
    logging.captureWarnings(True)
    context = click.get_current_context(silent=True)
    if context is not None:
        context.meta[_SETTINGS] = settings  # the error boundary names where Redis and the database are
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    collector.resume(freeze=True)
    return asyncio.run(coro)
