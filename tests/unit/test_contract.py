"""The job contract of SPEC.md, one row per case."""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpi_export.contract import (
    FILTERS_MAX_BYTES,
    JOB_DATA_MAX_BYTES,
    USUARIO_ID_ERROR,
    AuditEntry,
    decode_job_data,
    idempotency_key,
    parse_filters,
    parse_format,
    parse_ip,
    parse_job_data,
    parse_usuario_id,
)
from kpi_export.errors import InvalidJobData

# --- usuarioId -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (42, 42),
        (1, 1),
        (2147483647, 2147483647),
        (42.0, 42),
        ("42", 42),
        ("  42 ", 42),
        ("007", 7),
        ("\t42\n", 42),
    ],
)
def test_usuario_id_accepted(value: object, expected: int) -> None:
    assert parse_usuario_id(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        # the faults of the Node original
        True,
        False,
        [7],
        "0x1A",
        "1e3",
        -5,
        1.5,
        "0.5",
        # out of range, empty, other types
        0,
        "0",
        2147483648,
        "2147483648",
        2147483647.5,
        float("nan"),
        float("inf"),
        "",
        "   ",
        "+5",
        "-5",
        "4 2",
        "1_000",
        "٤٢",  # Arabic-Indic digits are digits to str.isdigit(), not to the contract
        "\x1c42\x1f",  # str.strip() would remove these separators; only ASCII whitespace is "spaces"
        "\u200342",
        "9" * 100_000,
        None,
        {"id": 1},
    ],
)
def test_usuario_id_rejected_with_the_exact_message(value: object) -> None:
    with pytest.raises(InvalidJobData) as caught:
        parse_usuario_id(value)
    assert str(caught.value) == USUARIO_ID_ERROR == "usuarioId inválido en job.data"


def test_missing_usuario_id_fails_the_whole_job() -> None:
    with pytest.raises(InvalidJobData, match="^usuarioId inválido en job.data$"):
        parse_job_data({"ip": "1.2.3.4"})


# --- ip --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        (" 203.0.113.7 ", "203.0.113.7"),
        ("2001:DB8:0:0::1", "2001:db8::1"),
        ("::1", "::1"),
        ("203.0.113.7:51234", "203.0.113.7"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("203.0.113.7, 10.0.0.1, 10.0.0.2", "203.0.113.7"),
        ("2001:db8::1,10.0.0.1", "2001:db8::1"),
        ("::ffff:1.2.3.4", "1.2.3.4"),
        ("::FFFF:203.0.113.7", "203.0.113.7"),
        ("fe80::1%eth0", "fe80::1"),  # the zone id is dropped
        ("::ffff:1.2.3.4%x", "1.2.3.4"),
        ("203.0.113.7, " + ", ".join(["10.0.0.1"] * 500), "203.0.113.7"),  # a long proxy chain
    ],
)
def test_ip_canonical(value: str, expected: str) -> None:
    assert parse_ip(value) == (expected, None)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "unknown",
        "localhost",
        "999.1.1.1",
        "01.2.3.4",
        "1.2.3",
        "1.2.3.4:99999",
        "1.2.3.4:port",
        "[2001:db8::1",
        "[2001:db8::1]x",
        "1.2.3.4\nINFO forged line",
        "fe80::1%\x00",
        "fe80::1%eth0\nINFO forged line",
        "fe80::1%" + "x" * 33,
        "fe80::1%",
        "1" * 2000,
    ],
)
def test_ip_not_an_address_is_null_with_a_warning(value: str) -> None:
    address, warning = parse_ip(value)
    assert address is None
    assert warning is not None and "not an IP address" in warning


@pytest.mark.parametrize("value", [None, 1234, ["1.2.3.4"], {"ip": "1.2.3.4"}, True])
def test_ip_missing_or_not_text_is_null_with_a_warning(value: object) -> None:
    address, warning = parse_ip(value)
    assert address is None
    assert warning


@pytest.mark.parametrize(
    ("value", "what"),
    [
        (1234, "a number"),
        (1.5, "a number"),
        (True, "a boolean"),
        (["1.2.3.4"], "an array"),
        ({}, "an object"),
    ],
)
def test_a_warning_names_the_type_as_json_does(value: object, what: str) -> None:
    assert parse_ip(value)[1] == f"ip in job.data is {what}, not a string; stored as null"
    if not isinstance(value, list | dict):
        assert parse_filters(value)[1] == f"filters in job.data is {what}; stored as {{}}"


def test_missing_ip_still_succeeds() -> None:
    entry = parse_job_data({"usuarioId": 1})
    assert entry.ip is None
    assert entry.warnings == ("ip missing in job.data; stored as null",)


# --- filters ---------------------------------------------------------------------------------------------

FILTERS = {"desde": "2026-01-01", "hasta": "2026-03-31", "area": "ventas", "kpis": ["margen", "ventas"]}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (FILTERS, FILTERS),
        ([1, "dos", {"tres": 3}], [1, "dos", {"tres": 3}]),
        ({}, {}),
        ([], []),
        (json.dumps(FILTERS), FILTERS),
        ("[1, 2]", [1, 2]),
        (None, {}),
    ],
)
def test_filters_accepted(value: object, expected: object) -> None:
    assert parse_filters(value) == (expected, None)


@pytest.mark.parametrize("value", [42, 4.2, True, "not json", "42", '"text"', "null", "true"])
def test_filters_of_another_type_are_empty_with_a_warning(value: object) -> None:
    filters, warning = parse_filters(value)
    assert filters == {}
    assert warning


def test_filters_missing_is_empty_without_warning() -> None:
    assert parse_job_data({"usuarioId": 1, "ip": "1.2.3.4"}).warnings == ()


def _nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_filters_at_the_limits_are_accepted() -> None:
    assert parse_filters(_nested(32))[0] == _nested(32)
    big = {"x": "a" * (FILTERS_MAX_BYTES - len('{"x":""}'))}
    assert parse_filters(big)[0] == big


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (_nested(33), "anidado a más de 32 niveles"),
        (json.dumps(_nested(33)), "anidado a más de 32 niveles"),
        ("[" * 100_000 + "]" * 100_000, "más de 65536 bytes"),
        ("[" * 30_000 + "]" * 30_000, "anidado a más de 32 niveles"),
        ({"x": "a" * FILTERS_MAX_BYTES}, "más de 65536 bytes"),
        ({"x": "é" * (FILTERS_MAX_BYTES // 2)}, "más de 65536 bytes"),  # bytes, not characters
        (json.dumps({"x": "a" * FILTERS_MAX_BYTES}), "más de 65536 bytes"),
        ({"x": float("nan")}, "NaN"),
        ({"x": "nul\x00"}, "NUL"),
        ({"nul\x00": 1}, "NUL"),
        ({"x": "\ud800"}, "Unicode"),
    ],
)
def test_filters_too_large_deep_or_unstorable_fail_for_good(value: object, reason: str) -> None:
    with pytest.raises(InvalidJobData) as caught:
        parse_filters(value)
    assert reason in str(caught.value)
    assert str(caught.value).startswith("filters inválido en job.data")


# --- format ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("xlsx", "xlsx"),
        (" XLSX ", "xlsx"),
        ("Csv", "csv"),
        ("tar.gz", "tar.gz"),
        ("my_format-2", "my_format-2"),
        ("a" * 16, "a" * 16),
        (None, "csv"),
        ("", "csv"),
        ("   ", "csv"),
    ],
)
def test_format_accepted(value: object, expected: str) -> None:
    assert parse_format(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("a" * 17, "más de 16 caracteres"),
        ("xlsx; drop", "solo se admiten"),
        ("pdf/../../x", "solo se admiten"),
        ("ñ", "solo se admiten"),
        ("x\ny", "solo se admiten"),
        ("\u212aml", "solo se admiten"),  # KELVIN SIGN lowers to "k"
        ("\x1ccsv", "solo se admiten"),
        (5, "debe ser texto"),
        (["csv"], "debe ser texto"),
    ],
)
def test_format_invalid_fails_for_good(value: object, reason: str) -> None:
    with pytest.raises(InvalidJobData) as caught:
        parse_format(value)
    assert reason in str(caught.value)


# --- the whole job ---------------------------------------------------------------------------------------


def test_the_example_job_of_the_spec() -> None:
    data = {"usuarioId": 42, "ip": "203.0.113.7", "filters": FILTERS, "format": "xlsx", "other": "ignored"}
    assert parse_job_data(data) == AuditEntry(42, "203.0.113.7", FILTERS, "xlsx")


@pytest.mark.parametrize("data", [None, [], "text", 42, [{"usuarioId": 1}]])
def test_data_that_is_not_an_object_fails_for_good(data: object) -> None:
    with pytest.raises(InvalidJobData, match="se esperaba un objeto JSON"):
        parse_job_data(data)


# --- job.data's text as stored in Redis -------------------------------------------------------------------


def test_job_data_text_is_decoded() -> None:
    assert decode_job_data('{"usuarioId": 7, "x": "\\ud800"}') == {"usuarioId": 7, "x": "\ud800"}
    limit = '{"x":"' + "a" * (JOB_DATA_MAX_BYTES - len('{"x":""}')) + '"}'
    assert len(limit.encode()) == JOB_DATA_MAX_BYTES
    assert decode_job_data(limit) == {"x": "a" * (JOB_DATA_MAX_BYTES - 8)}


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "job.data inválido: no es JSON"),
        ("", "job.data inválido: no es JSON"),
        ('{"usuarioId": 1} trailing', "job.data inválido: no es JSON"),
        ("[" * 100_000 + "]" * 100_000, "job.data inválido: anidado a demasiados niveles para leerlo"),
        ('{"x": ' + "9" * 5000 + "}", "job.data inválido: contiene un número demasiado largo"),
        (
            '{"x":"' + "a" * JOB_DATA_MAX_BYTES + '"}',
            f"job.data inválido: ocupa más de {JOB_DATA_MAX_BYTES} bytes",
        ),
        ('{"x":"' + "é" * (JOB_DATA_MAX_BYTES // 2) + '"}', "ocupa más de"),  # bytes, not characters
        # b'{"ip": "\xff"}' read from Redis with errors="surrogateescape"
        (b'{"ip": "\xff"}'.decode("utf-8", "surrogateescape"), "job.data inválido: no es texto UTF-8 válido"),
    ],
)
def test_job_data_text_that_cannot_be_decoded_fails_for_good(text: str, reason: str) -> None:
    with pytest.raises(InvalidJobData) as caught:
        decode_job_data(text)
    assert str(caught.value).startswith("job.data inválido: ")
    assert reason in str(caught.value)


def test_idempotency_key_is_stable_and_distinguishes_queue_id_and_creation_time() -> None:
    key = idempotency_key("bull:kpi-export-queue", "12", 1764000000000)
    assert key == idempotency_key("bull:kpi-export-queue", "12", 1764000000000)
    assert len(key) == 64
    others = {
        idempotency_key("bull:other-queue", "12", 1764000000000),
        idempotency_key("bull:kpi-export-queue", "13", 1764000000000),
        idempotency_key("bull:kpi-export-queue", "12", 1764000000001),  # the id reused by a new job
        idempotency_key("bull:kpi-export-queue", "1", 21764000000000),  # no ambiguity in the join
    }
    assert key not in others and len(others) == 4


@given(st.text(alphabet="0123456789.", max_size=20))
def test_the_ipv4_fast_path_agrees_with_ipaddress(text: str) -> None:
    try:
        expected: str | None = str(ipaddress.ip_address(text))
    except ValueError:
        expected = None
    assert parse_ip(text)[0] == expected


@given(st.tuples(*[st.integers(0, 255)] * 4))
def test_every_dotted_quad_is_its_own_canonical_text(octets: tuple[int, ...]) -> None:
    text = ".".join(map(str, octets))
    assert parse_ip(text) == (text, None)
