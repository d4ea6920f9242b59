"""Where the audit table lives (DATABASE_URL, as a Prisma app writes it: its grammar is store/url.py's) and
how long a job waits for it."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings

from kpi_export.config.base import GROUP_CONFIG, HOUR
from kpi_export.config.redis import url_passwords

if TYPE_CHECKING:
    from kpi_export.store.url import DatabaseTarget

DEFAULT_DATABASE_URL = "file:./kpi_export.db"


class DatabaseSettings(BaseSettings):
    model_config = GROUP_CONFIG

    url: SecretStr = Field(SecretStr(DEFAULT_DATABASE_URL), validation_alias="DATABASE_URL")
    """Where the audit table lives, as a Prisma app writes it:
    `postgresql://u:p@host:5432/db?schema=public`, `mysql://…`, `file:./dev.db` (SQLite); or libpq's
    multi-host form, `postgresql://u:p@h1:5432,h2:5432/db?target_session_attrs=read-write`."""
    direct_url: SecretStr | None = Field(None, validation_alias="DATABASE_DIRECT_URL")
    """Prisma's `directUrl`: where the `db` commands (migrations) connect when DATABASE_URL goes through a
    pooler such as PgBouncer; the same grammar. Unset: they use DATABASE_URL."""
    retry_window: float = Field(30.0, ge=0, le=HOUR, validation_alias="DB_RETRY_WINDOW")
    """Seconds, from a job's first attempt at the audit write, during which a transient database fault
    (connection lost, failover, deadlock) is retried inside the job; then the job fails."""
    write_timeout: float = Field(15.0, gt=0, le=HOUR, validation_alias="DB_WRITE_TIMEOUT")
    """Seconds one attempt at the audit write (or a connection) may take before it counts as a
    transient fault: a database behind a network that drops packets would otherwise hold the job for
    minutes."""

    @property
    def target(self) -> DatabaseTarget:
        """DATABASE_URL parsed (once per URL) into what SQLAlchemy is given. Raises ValueError with a message
        free of secrets. Parsed on first use: a command that never opens the database never imports
        SQLAlchemy."""
        return _parsed(self.url.get_secret_value())

    @property
    def migration_target(self) -> DatabaseTarget:
        """Where the `db` commands connect: DATABASE_DIRECT_URL parsed when it is set, else `target`."""
        return self.target if self.direct_url is None else _parsed(self.direct_url.get_secret_value())

    def secrets(self) -> list[str]:
        return url_passwords(self.url) + url_passwords(self.direct_url)


@functools.lru_cache(maxsize=8)
def _parsed(url: str) -> DatabaseTarget:
    from kpi_export.store.url import parse_database_url

    return parse_database_url(url)
