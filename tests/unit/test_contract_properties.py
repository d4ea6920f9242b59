"""Properties of the job contract over arbitrary, hostile job data (hypothesis): every input ends as a
normalised entry or as InvalidJobData with one of the contract's fixed reasons; nothing else, and no part of
the data in a reason or a warning."""

from __future__ import annotations

import ipaddress
import json
import re
from typing import Any

from hypothesis import HealthCheck, given, settings

from kpi_export.contract import (
    FILTERS_MAX_BYTES,
    FILTERS_MAX_DEPTH,
    FORMAT_MAX_LENGTH,
    JOB_DATA_MAX_BYTES,
    USUARIO_ID_MAX,
    decode_job_data,
    parse_job_data,
)
from kpi_export.errors import InvalidJobData
from tests.hostile import job_data

REASONS = {
    "usuarioId inválido en job.data",
    "job.data inválido: se esperaba un objeto JSON",
    f"filters inválido en job.data: ocupa más de {FILTERS_MAX_BYTES} bytes como JSON",
    f"filters inválido en job.data: anidado a más de {FILTERS_MAX_DEPTH} niveles",
    "filters inválido en job.data: contiene NaN o Infinity",
    "filters inválido en job.data: contiene el carácter NUL",
    "filters inválido en job.data: contiene texto que no es Unicode válido",
    "format inválido en job.data: debe ser texto",
    f"format inválido en job.data: más de {FORMAT_MAX_LENGTH} caracteres",
    "format inválido en job.data: solo se admiten a-z, 0-9, '.', '_' y '-'",
    f"job.data inválido: ocupa más de {JOB_DATA_MAX_BYTES} bytes",
}
WARNINGS = re.compile(
    r"ip missing in job\.data; stored as null"
    r"|ip in job\.data is (a number|a boolean|an array|an object), not a string; stored as null"
    r"|ip in job\.data is not an IP address; stored as null"
    r"|filters in job\.data is a string that is not JSON; stored as \{\}"
    r"|filters in job\.data is a string holding neither an object nor an array; stored as \{\}"
    r"|filters in job\.data is (a number|a boolean); stored as \{\}"
)
FORMAT = re.compile(rf"[a-z0-9._-]{{1,{FORMAT_MAX_LENGTH}}}")


def depth(value: Any) -> int:
    stack, deepest = [(value, 1)], 0
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def walk_text(value: Any) -> list[str]:
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            found.append(item)
        elif isinstance(item, dict):
            found.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(job_data)
def test_any_job_data_gives_a_normalised_entry_or_a_fixed_reason(data: Any) -> None:
    try:
        entry = parse_job_data(data)
    except InvalidJobData as exc:
        assert str(exc) in REASONS
        return
    assert 1 <= entry.usuario_id <= USUARIO_ID_MAX and type(entry.usuario_id) is int
    if entry.ip is not None:
        assert entry.ip.isprintable() and len(entry.ip) <= 64  # stored and shown as it is
        address = ipaddress.ip_address(entry.ip.split("%")[0])
        assert entry.ip.split("%")[0] == str(address)
        assert not (isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped)
    assert isinstance(entry.filters, dict | list)
    encoded = json.dumps(entry.filters, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert len(encoded) <= FILTERS_MAX_BYTES + 1024  # the limit is on the compact form
    assert depth(entry.filters) <= FILTERS_MAX_DEPTH
    assert all("\x00" not in text for text in walk_text(entry.filters))
    assert FORMAT.fullmatch(entry.format)
    assert all(WARNINGS.fullmatch(warning) for warning in entry.warnings)
    assert parse_job_data(data) == entry  # no hidden state


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(job_data)
def test_job_data_through_its_json_text_ends_the_same_way(data: Any) -> None:
    """What the worker sees: the text a producer stored, decoded, then the contract."""

    def outcome(value: Any) -> object:
        try:
            return parse_job_data(value)
        except InvalidJobData as exc:
            return str(exc)

    text = json.dumps(data)
    try:
        decoded = decode_job_data(text)
    except InvalidJobData as exc:
        assert str(exc) == f"job.data inválido: ocupa más de {JOB_DATA_MAX_BYTES} bytes"
        return
    expected = outcome(data)
    got = outcome(decoded)
    if isinstance(expected, str) or isinstance(got, str):
        assert got == expected
    else:
        assert got == expected or _nan_in(data)  # NaN != NaN, the only difference a round trip makes


def _nan_in(value: Any) -> bool:
    return "NaN" in json.dumps(value)
