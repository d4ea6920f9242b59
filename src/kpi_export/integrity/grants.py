"""`db grants`: the SQL that gives each part of the system only the rights it needs (pure: no connection).

- owner: `db upgrade` (creates and alters the tables, and owns them);
- worker: appends audit rows (INSERT, and the SELECT of RETURNING and of the idempotency lookup) and seals
  them (appends to the seal chain); never UPDATE, DELETE or TRUNCATE of the audit table, never its owner;
- auditor: reads (`audit list|show|verify`);
- privacy: `audit pseudonymise-ips` (UPDATE of the `ip` column alone, and the chain entry that records it).

Every role reads `alembic_version`: each command checks the table's migration before it uses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kpi_export.integrity.seal_table import SEAL_TABLE_NAME
from kpi_export.store.table import TABLE_NAME

VERSION_TABLE = "alembic_version"
# PostgreSQL's serial column gets this sequence (Prisma's and SQLAlchemy's alike).
SEQUENCE_NAME = f"{TABLE_NAME}_idExport_seq"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9_.:%-]{1,255}")


@dataclass(frozen=True)
class Roles:
    """The four roles' names; on MariaDB/MySQL the accounts are `'name'@'host'`."""

    owner: str = "kpi_owner"
    worker: str = "kpi_worker"
    auditor: str = "kpi_auditor"
    privacy: str = "kpi_privacy"
    host: str = "%"

    def __post_init__(self) -> None:
        for field in ("owner", "worker", "auditor", "privacy"):
            if not _NAME.fullmatch(getattr(self, field)):
                raise ValueError(
                    f"the {field} role's name must be letters, digits and underscores, 63 at most, not a digit first"
                )
        if not _HOST.fullmatch(self.host):
            raise ValueError(
                "the host must be a host name, an address or a pattern with % (letters, digits, .:%-_)"
            )


def grants_sql(dialect: str, roles: Roles, *, schema: str | None = None, database: str | None = None) -> str:
    """The statements, with a comment before each role's. Raises ValueError on SQLite, which has no roles."""
    if dialect == "postgresql":
        return _postgresql(roles, schema or "public")
    if dialect in ("mysql", "mariadb"):
        if not database:
            raise ValueError("DATABASE_URL names no database: the grants are given on one")
        return _mysql(roles, database)
    raise ValueError(
        "SQLite has no roles: its file's permissions are its only rights (the worker's user alone may write it)"
    )


def _postgresql(roles: Roles, schema: str) -> str:
    s = '"' + schema.replace('"', '""') + '"'
    audit, seal, version = (f'{s}."{name}"' for name in (TABLE_NAME, SEAL_TABLE_NAME, VERSION_TABLE))
    tables = f"{audit}, {seal}, {version}"
    owner, worker, auditor, privacy = (
        f'"{name}"' for name in (roles.owner, roles.worker, roles.auditor, roles.privacy)
    )
    return "\n".join(
        [
            f"-- kpi-export db grants, PostgreSQL, schema {schema}: run after `kpi-export db upgrade` (and again after",
            "-- each upgrade), as an administrator; the four roles exist (CREATE ROLE name LOGIN PASSWORD '…').",
            "",
            "-- owner: kpi-export db upgrade",
            f"GRANT USAGE, CREATE ON SCHEMA {s} TO {owner};",
            *(f"ALTER TABLE {table} OWNER TO {owner};" for table in (audit, seal, version)),
            "",
            "-- worker: appends the audit rows and seals them; never UPDATE, DELETE or TRUNCATE",
            f"GRANT USAGE ON SCHEMA {s} TO {worker};",
            f"REVOKE ALL ON {tables} FROM {worker};",
            f"GRANT SELECT, INSERT ON {audit} TO {worker};",
            "-- (its sequence read, and moved past the ids a restore lost: setval, never a row)",
            f'GRANT USAGE, SELECT, UPDATE ON SEQUENCE {s}."{SEQUENCE_NAME}" TO {worker};',
            f"GRANT SELECT, INSERT ON {seal} TO {worker};",
            f"GRANT SELECT ON {version} TO {worker};",
            "",
            "-- auditor: kpi-export audit list|show|verify",
            f"GRANT USAGE ON SCHEMA {s} TO {auditor};",
            f"REVOKE ALL ON {tables} FROM {auditor};",
            f"GRANT SELECT ON {tables} TO {auditor};",
            "",
            "-- privacy: kpi-export audit pseudonymise-ips (the ip column alone, and the seal entry that records it)",
            f"GRANT USAGE ON SCHEMA {s} TO {privacy};",
            f"REVOKE ALL ON {tables} FROM {privacy};",
            f'GRANT SELECT, UPDATE ("ip") ON {audit} TO {privacy};',
            f"GRANT SELECT, INSERT ON {seal} TO {privacy};",
            f"GRANT SELECT ON {version} TO {privacy};",
            "",
        ]
    )


def _mysql(roles: Roles, database: str) -> str:
    d = "`" + database.replace("`", "``") + "`"
    audit, seal, version = (f"{d}.`{name}`" for name in (TABLE_NAME, SEAL_TABLE_NAME, VERSION_TABLE))
    owner, worker, auditor, privacy = (
        f"'{name}'@'{roles.host}'" for name in (roles.owner, roles.worker, roles.auditor, roles.privacy)
    )
    return "\n".join(
        [
            f"-- kpi-export db grants, MariaDB/MySQL, database {database}: run as an administrator, after",
            "-- `kpi-export db upgrade` and again after each upgrade; the four accounts exist",
            "-- (CREATE USER name IDENTIFIED BY '…') and hold no other grant on this database.",
            "",
            "-- owner: kpi-export db upgrade",
            f"GRANT ALL PRIVILEGES ON {d}.* TO {owner};",
            "",
            "-- worker: appends the audit rows and seals them (LOCK TABLES … READ: until the inserts in flight end);",
            "-- never UPDATE, DELETE or DROP",
            f"GRANT SELECT, INSERT ON {audit} TO {worker};",
            f"GRANT SELECT, INSERT ON {seal} TO {worker};",
            f"GRANT SELECT ON {version} TO {worker};",
            f"GRANT LOCK TABLES ON {d}.* TO {worker};",
            "",
            "-- auditor: kpi-export audit list|show|verify",
            *(f"GRANT SELECT ON {table} TO {auditor};" for table in (audit, seal, version)),
            "",
            "-- privacy: kpi-export audit pseudonymise-ips (the ip column alone, and the seal entry that records it)",
            f"GRANT SELECT, UPDATE (`ip`) ON {audit} TO {privacy};",
            f"GRANT SELECT, INSERT ON {seal} TO {privacy};",
            f"GRANT SELECT ON {version} TO {privacy};",
            "",
        ]
    )
