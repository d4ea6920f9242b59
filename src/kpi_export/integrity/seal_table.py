"""The chain of seals `kpi_auditoria_seal` (migration 0003): one row per seal or recorded pseudonymisation.

`seq` is the chain's position and its primary key, given by the sealer (previous + 1), not by the database:
two sealers that race for the same place cannot both write it.
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, String, Table, Text
from sqlalchemy.dialects import mysql, postgresql

from kpi_export.store.table import metadata

SEAL_TABLE_NAME = "kpi_auditoria_seal"


LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
TIMESTAMP = (
    DateTime()
    .with_variant(postgresql.TIMESTAMP(precision=3), "postgresql")
    .with_variant(mysql.DATETIME(fsp=3), "mysql", "mariadb")
)


seal_table = Table(
    SEAL_TABLE_NAME,
    metadata,
    Column("seq", Integer, primary_key=True, autoincrement=False),
    Column("version", Integer, nullable=False),  # the format of the seal (digests.FORMAT_VERSION)
    Column("kind", String(16), nullable=False),  # seal | pseudonymisation
    Column("fromId", Integer, nullable=False),  # the idExport range it covers, both ends included
    Column("toId", Integer, nullable=False),
    Column("rowCount", Integer, nullable=False),
    Column("rowIds", LONG_TEXT, nullable=False),  # the ids present, as ranges: 1-500,502-1000
    Column("rowMacs", LONG_TEXT, nullable=False),  # each row's truncated HMAC, in id order, in base64
    Column("sealedAt", TIMESTAMP, nullable=False),
    Column("actor", String(191), nullable=False),  # who sealed: a worker's name, or an operator
    Column("detail", LONG_TEXT, nullable=False),  # JSON: what a pseudonymisation changed
    Column("keyId", String(16), nullable=False),  # the key's fingerprint, not the key
    Column("prevDigest", String(64), nullable=True),
    Column("digest", String(64), nullable=False),
)
