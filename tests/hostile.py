"""Hypothesis strategies for hostile job data: any JSON value, with the text and numbers an attacker or a
buggy producer sends (control characters, lone surrogates, SQL, huge strings, deep nesting, many keys,
numbers out of range), and objects that look like export jobs so that the accepting paths are reached too."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

from kpi_export.contract import FILTERS_MAX_DEPTH

TRICKY_TEXT = [
    "'; DROP TABLE kpi_auditoria_export; --",
    '" OR 1=1 --',
    "1; SELECT pg_sleep(10)",
    "Robert'); DELETE FROM \"kpi_auditoria_export\" WHERE ('1'='1",
    "\x00",
    "\u202e\u2066",
    'Job 1 completed: {"idExport": 1}\nERROR: forged line',
    "\x1b[31mred\x1b[0m",
    "\r\n\r\n",
    "${jndi:ldap://x}",
    "%s%s%s%n",
    "\\ud800",
    "{{7*7}}",
    "null",
    "NaN",
    "1e309",
    "0x1A",
    "٤٢",
]


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


text = st.one_of(
    st.text(max_size=40),
    # controls, lone surrogates, line separators, bidi and format characters
    st.text(st.characters(categories=["Cc", "Cs", "Zl", "Zp", "Cf"]), max_size=20),
    st.sampled_from(TRICKY_TEXT),
    st.integers(0, 300_000).map(lambda n: "x" * n),  # up to well past the 64 KiB limit of filters
)


def job_data_strategy(*, finite: bool) -> st.SearchStrategy[Any]:
    """Job data; `finite`: no NaN or infinity, which a bullmq producer refuses to send (allow_nan=False)."""
    numbers = st.one_of(
        st.integers(-(2**40), 2**40),
        st.integers(min_value=-(10**60), max_value=10**60),
        st.floats(allow_nan=not finite, allow_infinity=not finite),
        st.sampled_from([0, 1, 2**31 - 1, 2**31, -1, 2**63, 1e308, 5e-324, -0.0, 42.0, 42.5]),
    )
    leaves = st.one_of(st.none(), st.booleans(), numbers, text)
    json_values = st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=6), st.dictionaries(text, children, max_size=6)
        ),
        max_leaves=30,
    )
    deep = st.integers(FILTERS_MAX_DEPTH - 3, 400).map(_nested)
    wide = st.dictionaries(st.text(max_size=8), leaves, min_size=100, max_size=600)
    usuario_ids = st.one_of(
        json_values,
        st.integers(-5, 2**31 + 5),
        st.integers(1, 2**31 - 1).map(lambda n: f" {n:0>3} "),
        st.integers(1, 100).map(float),
    )
    ips = st.one_of(
        json_values,
        st.ip_addresses().map(str),
        st.ip_addresses(v=4).map(lambda a: f"{a}:{443}"),
        st.ip_addresses(v=6).map(lambda a: f"[{a}]:8080"),
        st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}"),
        st.tuples(st.ip_addresses(v=6), text).map(lambda pair: f"{pair[0]}%{pair[1]}"),  # a zone id
        st.lists(st.ip_addresses().map(str), min_size=1, max_size=4).map(", ".join),
    )
    filters = st.one_of(json_values, deep, wide, json_values.map(json.dumps), deep.map(json.dumps))
    formats = st.one_of(json_values, st.from_regex(r"\s*[A-Za-z0-9._-]{0,20}\s*", fullmatch=True))
    job_like = st.fixed_dictionaries(
        {},
        optional={
            "usuarioId": usuario_ids,
            "ip": ips,
            "filters": filters,
            "format": formats,
            "extra": json_values,
        },
    )
    return st.one_of(job_like, job_like, json_values, wide)


job_data = job_data_strategy(finite=False)
producer_job_data = job_data_strategy(finite=True)
