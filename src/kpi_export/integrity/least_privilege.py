"""Is least privilege applied: may the worker's database role rewrite the audit trail? Said by `check` and at
the worker's start, never a reason to refuse to run."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from kpi_export.store.table import TABLE_NAME

FIX = "`kpi-export db grants` prints the SQL of a worker role that may only append"

_POSTGRESQL = f"""
    SELECT pg_has_role(c.relowner, 'USAGE') AS owns,
        has_any_column_privilege(c.oid, 'UPDATE') AS "UPDATE",
        has_table_privilege(c.oid, 'DELETE') AS "DELETE",
        has_table_privilege(c.oid, 'TRUNCATE') AS "TRUNCATE"
    FROM pg_class c WHERE c.oid = '"{TABLE_NAME}"'::regclass
"""
# information_schema shows the current account's grants (an administrator's: every account's, hence GRANTEE).
# TRUNCATE needs DROP there.
_MYSQL = """
    SELECT DISTINCT PRIVILEGE_TYPE FROM (
        SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES
        UNION ALL SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES
            WHERE TABLE_SCHEMA = DATABASE()
        UNION ALL SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table
        UNION ALL SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.COLUMN_PRIVILEGES
            WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :table
    ) AS granted
    WHERE PRIVILEGE_TYPE IN ('UPDATE', 'DELETE', 'DROP') AND GRANTEE IN (
        CONCAT('''', SUBSTRING_INDEX(CURRENT_USER(), '@', 1), '''@''', SUBSTRING_INDEX(CURRENT_USER(), '@', -1), ''''),
        CONCAT('''', CURRENT_ROLE(), ''''))
"""
_MYSQL_NAMES = {"UPDATE": "UPDATE", "DELETE": "DELETE", "DROP": "TRUNCATE (DROP)"}


async def excess_rights(engine: AsyncEngine) -> list[str]:
    """What this connection's role may do to the audit table beyond appending: "owner", "UPDATE", "DELETE",
    "TRUNCATE"; nothing on SQLite, which has no roles."""
    dialect = engine.dialect.name
    async with engine.connect() as conn:
        if dialect == "postgresql":
            found = (await conn.execute(text(_POSTGRESQL))).mappings().one()
            return [("owner" if name == "owns" else name) for name, held in found.items() if held]
        if dialect in ("mysql", "mariadb"):
            held = set((await conn.scalars(text(_MYSQL), {"table": TABLE_NAME})).all())
            return [shown for name, shown in _MYSQL_NAMES.items() if name in held]
    return []


def warning(excess: list[str]) -> str | None:
    """The one line that says so, naming the rights and the fix; None when there is none."""
    if not excess:
        return None
    rights = [right for right in excess if right != "owner"]
    said = []
    if "owner" in excess:
        said.append(f"owns {TABLE_NAME}")
    if rights:
        said.append(f"may {', '.join(rights)} it" if said else f"may {', '.join(rights)} {TABLE_NAME}")
    return (
        f"Least privilege not applied: DATABASE_URL's role {' and '.join(said)} (rights that could rewrite the "
        f"audit trail); {FIX}"
    )
