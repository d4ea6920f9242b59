"""The seal chain's pure rules: digests, the chain's links and ranges, and each row against its seal."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import pytest

from kpi_export.errors import SealFormatTooNew
from kpi_export.integrity.checks import RowCheck, check_chain
from kpi_export.integrity.digests import ChainEntry, SealKey, canonical_row, decode_ids, encode_ids, new_entry

KEY = SealKey("k" * 40)
WHEN = datetime(2026, 3, 31, 10, 0, 0, 123000)


def row(row_id: int, **changes: Any) -> dict[str, Any]:
    values = {
        "idExport": row_id,
        "usuarioId": 7,
        "ip": "203.0.113.7",
        "filters": {"kpis": ["ventas", "año"], "rango": {"desde": "2026-01-01"}, "ratio": 0.5},
        "format": "xlsx",
        "createdAt": WHEN,
        "idempotencyKey": None if row_id % 2 else f"k{row_id}",
    }
    return values | changes


def chain(*ranges: tuple[int, int], key: SealKey = KEY) -> list[ChainEntry]:
    entries: list[ChainEntry] = []
    for first, last in ranges:
        entries.append(
            new_entry(
                key,
                seq=len(entries) + 1,
                kind="seal",
                from_id=first,
                to_id=last,
                rows=[(i, key.row_mac(row(i))) for i in range(first, last + 1)],
                sealed_at=WHEN,
                actor="test",
                detail={},
                prev_digest=entries[-1].digest if entries else None,
            )
        )
    return entries


def kinds(findings: list[Any]) -> list[tuple[str, int | None]]:
    return [(f.kind, f.seq) for f in findings]


@pytest.mark.parametrize(
    ("ids", "text"),
    [([], ""), ([5], "5"), ([1, 2, 3, 5, 7, 8], "1-3,5,7-8"), ([10, 11, 12], "10-12")],
)
def test_ids_are_stored_as_ranges(ids: list[int], text: str) -> None:
    assert encode_ids(ids) == text
    assert decode_ids(text) == ids


def test_the_canonical_row_ignores_key_order_and_the_status() -> None:
    reordered = row(1, filters={"ratio": 0.5, "rango": {"desde": "2026-01-01"}, "kpis": ["ventas", "año"]})
    assert canonical_row(reordered) == canonical_row(row(1))
    assert canonical_row(row(1) | {"codigoEstado": 3}) == canonical_row(row(1))  # the app moves it on
    assert canonical_row(row(1, ip="203.0.113.0")) != canonical_row(row(1))
    assert canonical_row(row(1, createdAt=WHEN.replace(microsecond=124000))) != canonical_row(row(1))


def test_a_sound_chain_has_no_finding() -> None:
    findings, segments = check_chain(KEY, chain((1, 10), (11, 20)))
    assert findings == []
    assert [(s.from_id, s.to_id) for s in segments] == [(1, 10), (11, 20)]


def test_the_key_is_never_in_the_repr() -> None:
    assert "k" * 10 not in repr(KEY)
    assert KEY.key_id in repr(KEY)


@pytest.mark.parametrize(
    ("tamper", "expected"),
    [
        # The next seal's digest covers its link: relinked, it gives itself away too.
        ("edited digest", [("digest", 2), ("digest", 3)]),
        ("edited range", [("digest", 2), ("range", 3)]),
        ("seal removed", [("chain", 3), ("chain", 3), ("range", 3)]),
        ("another key", [("chain", 2), ("key", 2), ("chain", 3)]),
    ],
)
def test_each_break_in_the_chain_is_named(tamper: str, expected: list[tuple[str, int]]) -> None:
    entries = chain((1, 10), (11, 20), (21, 30))
    if tamper == "edited digest":
        entries[1] = replace(entries[1], digest="0" * 64)
        entries[2] = replace(entries[2], prev_digest="0" * 64)  # relinked: only the digest gives it away
    elif tamper == "edited range":
        entries[1] = replace(entries[1], to_id=25)
    elif tamper == "seal removed":
        del entries[1]
    elif tamper == "another key":
        entries[1] = chain((1, 10), (11, 20), key=SealKey("x" * 40))[1]
    findings, _ = check_chain(KEY, entries)
    assert sorted(kinds(findings)) == sorted(expected)


def test_a_wrong_key_is_one_clear_finding() -> None:
    findings, segments = check_chain(SealKey("w" * 40), chain((1, 10)))
    assert kinds(findings) == [("key", None)]
    assert "AUDIT_SEAL_KEY is not the key of these seals" in findings[0].message
    assert segments == []


def test_a_newer_format_is_refused() -> None:
    entries = chain((1, 10))
    with pytest.raises(SealFormatTooNew, match="newer than this kpi-export"):
        check_chain(KEY, [replace(entries[0], version=2)])


def test_rows_changed_deleted_and_inserted_are_named() -> None:
    entries = chain((1, 10), (11, 20))
    _, segments = check_chain(KEY, entries)
    check = RowCheck(KEY, segments)
    rows = [row(i) for i in range(1, 21) if i not in (3, 10, 20)]  # 3 deleted, and the last of each seal
    rows[4] = row(6, ip="203.0.113.0")
    found = [f for r in rows for f in check.feed(r)] + check.finish()
    assert [(f.kind, f.id_export) for f in found] == [
        ("deleted", 3),
        ("changed", 6),
        ("deleted", 10),
        ("deleted", 20),
    ]
    assert check.rows_checked == 17


def test_a_row_inside_a_seal_that_it_does_not_list_is_inserted() -> None:
    entries = [
        new_entry(
            KEY,
            seq=1,
            kind="seal",
            from_id=1,
            to_id=8,
            rows=[(i, KEY.row_mac(row(i))) for i in (1, 2, 5)],
            sealed_at=WHEN,
            actor="t",
            detail={},
            prev_digest=None,
        )
    ]
    _, segments = check_chain(KEY, entries)
    check = RowCheck(KEY, segments)
    found = [f for i in (1, 2, 3, 5, 9) for f in check.feed(row(i))] + check.finish()
    assert [(f.kind, f.id_export) for f in found] == [("inserted", 3)]  # 9 is past every seal: not sealed yet


def test_an_entry_edited_out_of_shape_is_a_finding_not_a_crash() -> None:
    """Hostile seal rows: ids far beyond the MACs stored (no list of two billion ids is built), no MACs."""
    entries = chain((1, 10))
    huge = replace(entries[0], row_ids="1-2000000000")
    findings, segments = check_chain(KEY, [huge])
    assert kinds(findings) == [("digest", 1)]
    check = RowCheck(KEY, segments)
    assert [f.kind for f in check.feed(row(1))] == ["inserted"]  # its rows match nothing
    with pytest.raises(ValueError, match="more than 10 ids"):
        huge.ids()
    findings, _ = check_chain(KEY, [replace(entries[0], row_macs=b"")])
    assert kinds(findings) == [("digest", 1)]


def test_seals_missing_from_the_middle_are_named_singular_or_plural() -> None:
    entries = chain((1, 2), (3, 4), (5, 6), (7, 8), (9, 10))
    one = [f.message for f in check_chain(KEY, [entries[0], *entries[2:]])[0] if f.kind == "chain"]
    two = [f.message for f in check_chain(KEY, [entries[0], *entries[3:]])[0] if f.kind == "chain"]
    assert "seal 2 missing: the chain is cut before seal 3" in one
    assert "seals 2–3 missing: the chain is cut before seal 4" in two
