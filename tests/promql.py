"""The metric names a PromQL expression reads, and the queries of deploy/grafana's dashboard, for the tests that
hold the dashboard and the rules to the names the worker exports."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.deploy_files import DEPLOY

DASHBOARD = DEPLOY / "grafana" / "kpi-export-worker.json"

# Words of PromQL that are not metric names (binary operators, modifiers, number literals).
_KEYWORDS = {"and", "or", "unless", "bool", "atan2", "group_left", "group_right", "offset", "inf", "nan"}
_IDENTIFIER = re.compile(r"(?<![\w.:$])[A-Za-z_:][A-Za-z0-9_:]*")
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*\w+\s*\)\s*$", re.DOTALL)


def metric_names(expression: str) -> set[str]:
    """Every name the expression selects: an identifier that is neither a function or aggregation (those are
    followed by a parenthesis), a keyword, a label nor a duration."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\boffset\s+-?\w+", " ", text)
    return {
        match.group()
        for match in _IDENTIFIER.finditer(text)
        if match.group() not in _KEYWORDS and not text[match.end() :].lstrip().startswith("(")
    }


def variable_names(query: str) -> set[str]:
    """The metric names of a Grafana variable's query: `label_values(selector, label)` reads the selector's
    metric; `label_values(label)` none."""
    found = _LABEL_VALUES.match(query)
    return metric_names(found.group(1)) if found else set()


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panel_queries() -> list[tuple[str, str]]:
    """(panel title, query) of every panel, rows' nested panels included."""
    panels = [
        panel
        for top in dashboard()["panels"]
        for panel in [top, *top.get("panels", [])]
        if panel.get("type") != "row"
    ]
    return [(panel["title"], target["expr"]) for panel in panels for target in panel["targets"]]


def variable_queries() -> dict[str, str]:
    """The query of each query-type variable, by the variable's name."""
    return {
        variable["name"]: variable["query"]["query"]
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    }
