"""deploy/prometheus and deploy/grafana: the rules load and each alert fires on its series (promtool), every
alert has its runbook, the Kubernetes copy holds the same rules, and every query uses only metric names the
worker exports."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from kpi_export.runtime.metrics import WorkerMetrics
from tests.deploy_files import DEPLOY
from tests.services import require_tool

RULES = DEPLOY / "prometheus" / "kpi-export-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "kpi-export-rules.test.yaml"
PROMETHEUS_RULE = DEPLOY / "kubernetes" / "prometheusrule.yaml"
DASHBOARD = DEPLOY / "grafana" / "kpi-export-worker.json"
README = DEPLOY.parent / "README.md"
# A metric name in PromQL: a word followed by a selector, a range or a closing parenthesis, not a function.
NAME = re.compile(r"\b([a-z_][a-z0-9_:]*)\s*(?=\{|\[|\)|$|\s*(?:==|>|<|/|\*|and\b|or\b))")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "and", "or", "unless", "le", "bool", "offset"}


def rule_list() -> list[dict[str, object]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def alerts() -> list[dict[str, object]]:
    return [rule for rule in rule_list() if "alert" in rule]


def test_promtool_checks_the_rules_and_runs_their_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in alerts()} == tested


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_says_what_and_links_its_runbook_in_the_readme() -> None:
    anchors = {slug(line.lstrip("#")) for line in README.read_text().splitlines() if line.startswith("#")}
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"] and annotations["description"]
        link = str(annotations["runbook_url"])
        assert link.startswith("README.md#") and link.removeprefix("README.md#") in anchors, link


def test_the_kubernetes_prometheusrule_holds_the_same_rules() -> None:
    document = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert document["kind"] == "PrometheusRule"
    assert document["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    assert "prometheusrule.yaml" in kustomization["resources"]


SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def exported_names() -> set[str]:
    """Every series name a worker's /metrics can have (the registry it serves), with Prometheus' own `up`."""
    names = {"up"}
    for family in WorkerMetrics("q").registry.collect():
        names |= {family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
    return names


def query_names(expression: str) -> set[str]:
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    without_durations = re.sub(r"\[[^\]]*\]", "[]", without_labels)
    without_groupings = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", " ", without_durations)
    return {name for name in NAME.findall(without_groupings) if name not in PROMQL_WORDS}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_every_query_uses_only_names_the_worker_exports_or_the_rules_record() -> None:
    exported = exported_names()
    recorded = {str(rule["record"]) for rule in rule_list() if "record" in rule}
    queries = dashboard_queries() + [str(rule["expr"]) for rule in rule_list()]
    used = set().union(*(query_names(query) for query in queries))
    assert used, queries
    assert used <= exported | recorded, used - exported - recorded
    assert {"kpi_export_jobs_total", "kpi_export_job_duration_seconds_bucket"} <= used


@pytest.mark.parametrize("renamed", ["kpi_export_jobs_totals", "kpi_export_jobs_in_flight_now"])
def test_a_renamed_metric_would_be_found(renamed: str) -> None:
    assert renamed in query_names(f'sum(rate({renamed}{{job=~"$job"}}[5m]))')
    assert renamed not in exported_names()


def test_the_dashboard_has_job_and_instance_variables() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = {variable["name"] for variable in dashboard["templating"]["list"]}
    assert {"job", "instance"} <= names
    assert all('instance=~"$instance"' in query for query in dashboard_queries())
