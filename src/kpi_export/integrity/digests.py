"""The digests of the seal chain, pure: a row's canonical encoding and its HMAC, an entry's digest chained to
the previous one, the key's fingerprint, and the compact forms an entry stores.

Keyed with AUDIT_SEAL_KEY (HMAC-SHA256), which is never stored: whoever can write the database but does not
hold the key cannot make a seal that verifies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from kpi_export.store.names import KEY_COLUMN

FORMAT_VERSION = 1
ROW_MAC_BYTES = 8  # 64 bits per row: enough to name the row that changed; the entry's digest is full-length
KEY_MIN_LENGTH = 32
Kind = Literal["seal", "pseudonymisation", "repair"]

# What a row says: who exported what, from where, when, for which job. Not `codigoEstado`: the exporting
# application moves it on (pending, done) after the row is written.
SEALED_COLUMNS = ("idExport", "usuarioId", "ip", "filters", "format", "createdAt", KEY_COLUMN)


def canonical_json(value: object) -> bytes:
    return json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8", "surrogatepass")


def canonical_row(row: Mapping[Any, Any]) -> bytes:
    """The sealed columns of a row, as the same bytes whatever the database and driver that read it."""
    created: datetime = row["createdAt"]
    values = [row[name] for name in SEALED_COLUMNS]
    values[SEALED_COLUMNS.index("createdAt")] = created.isoformat(timespec="microseconds")
    return canonical_json(values)


class SealKey:
    """AUDIT_SEAL_KEY, and what it signs. Its repr holds only the fingerprint."""

    def __init__(self, secret: str) -> None:
        self._key = secret.encode("utf-8")
        self.key_id = hmac.digest(self._key, b"kpi-export key id v1", "sha256")[:8].hex()

    def __repr__(self) -> str:
        return f"SealKey(key_id={self.key_id})"

    def row_mac(self, row: Mapping[Any, Any]) -> bytes:
        return hmac.digest(self._key, b"row v1\0" + canonical_row(row), "sha256")[:ROW_MAC_BYTES]

    def entry_digest(self, entry: ChainEntry) -> str:
        header = [
            entry.version,
            entry.seq,
            entry.kind,
            entry.from_id,
            entry.to_id,
            entry.row_count,
            entry.row_ids,
            hashlib.sha256(entry.row_macs).hexdigest(),
            entry.sealed_at.isoformat(timespec="milliseconds"),
            entry.actor,
            entry.detail,
            entry.key_id,
            entry.prev_digest,
        ]
        return hmac.new(self._key, b"entry v1\0" + canonical_json(header), "sha256").hexdigest()


@dataclass(frozen=True)
class ChainEntry:
    """One row of kpi_auditoria_seal: a seal of the rows `from_id`…`to_id`, or a recorded pseudonymisation
    or repair of a sealed range (its rows as they are after the change), or a repair's record of rows
    re-inserted past the last seal (which a later seal covers)."""

    seq: int
    kind: Kind
    from_id: int
    to_id: int
    row_count: int
    row_ids: str
    row_macs: bytes = field(repr=False)
    sealed_at: datetime
    actor: str
    detail: str
    key_id: str
    prev_digest: str | None
    digest: str
    version: int = FORMAT_VERSION

    def ids(self) -> list[int]:
        """Raises ValueError when the ids are not as many as the MACs (an entry edited out of shape)."""
        return decode_ids(self.row_ids, limit=len(self.row_macs) // ROW_MAC_BYTES)

    def macs(self) -> list[bytes]:
        m = self.row_macs
        return [m[i : i + ROW_MAC_BYTES] for i in range(0, len(m), ROW_MAC_BYTES)]


def new_entry(
    key: SealKey,
    *,
    seq: int,
    kind: Kind,
    from_id: int,
    to_id: int,
    rows: list[tuple[int, bytes]],
    sealed_at: datetime,
    actor: str,
    detail: Mapping[str, Any],
    prev_digest: str | None,
) -> ChainEntry:
    """The entry over `rows` ((idExport, row MAC) in id order), its digest computed."""
    unsigned = ChainEntry(
        seq=seq,
        kind=kind,
        from_id=from_id,
        to_id=to_id,
        row_count=len(rows),
        row_ids=encode_ids(row_id for row_id, _ in rows),
        row_macs=b"".join(mac for _, mac in rows),
        sealed_at=sealed_at.replace(microsecond=sealed_at.microsecond // 1000 * 1000),
        actor=actor[:191],
        detail=canonical_json(dict(detail)).decode(),
        key_id=key.key_id,
        prev_digest=prev_digest,
        digest="",
    )
    return ChainEntry(**{**unsigned.__dict__, "digest": key.entry_digest(unsigned)})


def encode_ids(ids: Iterable[int]) -> str:
    """Ascending ids as ranges: 1,2,3,5,7,8 -> "1-3,5,7-8"."""
    parts: list[str] = []
    start = end = None
    for row_id in ids:
        if end is not None and row_id == end + 1:
            end = row_id
            continue
        if start is not None:
            parts.append(str(start) if start == end else f"{start}-{end}")
        start = end = row_id
    if start is not None:
        parts.append(str(start) if start == end else f"{start}-{end}")
    return ",".join(parts)


def decode_ids(text: str, limit: int | None = None) -> list[int]:
    """The ids of `encode_ids`' text; ValueError past `limit` ids: an edited "1-2000000000" must not fill the
    memory of the verify that reads it."""
    ids: list[int] = []
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        span = range(int(first), int(last or first) + 1)
        if limit is not None and len(ids) + len(span) > limit:
            raise ValueError(f"more than {limit} ids")
        ids.extend(span)
    return ids
