"""The `kpi-export` command group and what its commands share: settings, the event loop, the --json flag."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Any, TypeVar

import click

from kpi_export.config import Settings, load_settings
from kpi_export.errors import ConfigError
from kpi_export.logs import setup_logging

T = TypeVar("T")
EXIT_CONFIG = 2

JSON_OPTION = click.option(
    "--json", "as_json", is_flag=True, help="Print JSON for a script instead of a table."
)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="kpi-export-worker")
def cli() -> None:
    """Audit worker for KPI export jobs on a BullMQ queue. Configured by environment variables (see README)."""


def settings_or_exit(*, stream: Any = None) -> Settings:
    """Settings from the environment, logging set up; bad configuration exits 2 with one line."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        click.echo(f"kpi-export: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    setup_logging(settings.log_level, settings.log_format, settings.secrets(), stream=stream or sys.stderr)
    logging.captureWarnings(True)
    return settings


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def json_arg(text: str, option: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc.msg})", param_hint=option) from None
