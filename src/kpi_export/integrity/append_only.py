"""`db upgrade --append-only`: the database itself refuses to rewrite the audit trail, whatever the role.

Triggers refuse UPDATE and DELETE of the audit rows, except an UPDATE that changes `ip` alone (what `audit
pseudonymise-ips` does), and any UPDATE or DELETE of a seal. TRUNCATE: PostgreSQL refuses it by trigger; on
MariaDB/MySQL, where TRUNCATE fires no trigger, an empty table whose foreign key references each of the two
tables makes InnoDB refuse it (and DROP TABLE). An owner can still drop the triggers or switch foreign key
checks off: what it then changes, the seals show (`audit verify`).
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.integrity.seal_table import SEAL_TABLE_NAME
from kpi_export.store.table import TABLE_NAME, audit_table

REFUSED = "the audit trail is append-only (kpi-export db upgrade --append-only)"
_GUARD_TABLE = "kpi_auditoria_no_truncate"
_FUNCTION = "kpi_auditoria_append_only"

_POSTGRESQL_FUNCTION = f"""
CREATE OR REPLACE FUNCTION {_FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND TG_TABLE_NAME = '{TABLE_NAME}' AND to_jsonb(NEW) - 'ip' = to_jsonb(OLD) - 'ip' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION '% of % refused: {REFUSED}', TG_OP, TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$
"""


def postgresql_statements() -> list[str]:
    statements = [_POSTGRESQL_FUNCTION]
    for table in (TABLE_NAME, SEAL_TABLE_NAME):
        for name, event in (("append_only", "UPDATE OR DELETE"), ("no_truncate", "TRUNCATE")):
            each = "ROW" if name == "append_only" else "STATEMENT"
            statements += [
                f'DROP TRIGGER IF EXISTS {table}_{name} ON "{table}"',
                f'CREATE TRIGGER {table}_{name} BEFORE {event} ON "{table}" FOR EACH {each} EXECUTE FUNCTION {_FUNCTION}()',
            ]
    return statements


def mysql_statements() -> list[str]:
    kept = " AND ".join(
        f"NEW.`{column.name}` <=> OLD.`{column.name}`" for column in audit_table.c if column.name != "ip"
    )
    refuse = "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = '{what} of {table} refused: " + REFUSED + "'"
    statements = []
    for table, update in (
        (TABLE_NAME, f"IF NOT ({kept}) THEN {{refuse}}; END IF"),
        (SEAL_TABLE_NAME, "{refuse}"),
    ):
        for event in ("UPDATE", "DELETE"):
            name = f"{table}_no_{event.lower()}"
            body = (update if event == "UPDATE" else "{refuse}").format(
                refuse=refuse.format(what=event, table=table)
            )
            statements += [
                f"DROP TRIGGER IF EXISTS `{name}`",
                f"CREATE TRIGGER `{name}` BEFORE {event} ON `{table}` FOR EACH ROW BEGIN {body}; END",
            ]
    statements.append(
        f"CREATE TABLE IF NOT EXISTS `{_GUARD_TABLE}` (`idExport` INT NOT NULL, `seq` INT NOT NULL, "
        f"FOREIGN KEY (`idExport`) REFERENCES `{TABLE_NAME}` (`idExport`), "
        f"FOREIGN KEY (`seq`) REFERENCES `{SEAL_TABLE_NAME}` (`seq`)) ENGINE=InnoDB"
    )
    return statements


async def install(engine: AsyncEngine) -> None:
    """Install (or replace) the triggers. Raises ValueError on SQLite, which this does not cover."""
    dialect = engine.dialect.name
    if dialect == "postgresql":
        statements = postgresql_statements()
    elif dialect in ("mysql", "mariadb"):
        statements = mysql_statements()
    else:
        raise ValueError("--append-only is for PostgreSQL and MariaDB/MySQL: SQLite's file is writable whole")
    async with engine.begin() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)
