"""deploy/prometheus and deploy/grafana: the rules load and each alert fires on its series (promtool), every
alert has its runbook, the Kubernetes copy holds the same rules, and every query uses only metric names the
worker exports."""

from __future__ import annotations

import re
import subprocess

import pytest
import yaml

from kpi_export.runtime.metrics import WorkerMetrics
from tests.deploy_files import DEPLOY, the
from tests.docs import Page, code_blocks
from tests.promql import metric_names, panel_queries, variable_names, variable_queries
from tests.services import require_tool

RULES = DEPLOY / "prometheus" / "kpi-export-rules.yaml"
RULE_TESTS = DEPLOY / "prometheus" / "kpi-export-rules.test.yaml"


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


def test_a_rule_reads_only_recordings_made_before_it_in_its_own_group() -> None:
    """Rules of one group run in order at one time; a recording from another group (or later in this one)
    would be read as the previous evaluation left it (promtool's tests then flake)."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    recorded = {str(rule["record"]) for group in groups for rule in group["rules"] if "record" in rule}
    for group in groups:
        made: set[str] = set()
        for rule in group["rules"]:
            read = metric_names(str(rule["expr"])) & recorded
            assert read <= made, (rule.get("alert") or rule.get("record"), read - made)
            if "record" in rule:
                made.add(str(rule["record"]))


def test_every_alert_says_what_and_links_its_runbook_on_the_alerts_page() -> None:
    page = "docs/operating/alerts.md"
    sections = Page.of("operating/alerts.md").anchors()
    for rule in alerts():
        annotations = rule["annotations"]
        assert isinstance(annotations, dict) and annotations["summary"] and annotations["description"]
        link = str(annotations["runbook_url"])
        assert link.startswith(f"{page}#") and link.removeprefix(f"{page}#") in sections, link


def test_the_kubernetes_prometheusrule_holds_the_same_rules() -> None:
    assert the("PrometheusRule")["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]


# A matcher on the job label: job="…", job=~"…", job!="…", job!~"…".
JOB_MATCHER = re.compile(r'\bjob\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def job_matches(operator: str, value: str, job: str) -> bool:
    """Whether Prometheus' matcher `job<operator>"<value>"` keeps a series of `job` (regexes are anchored)."""
    if operator in ("=~", "!~"):
        return (re.fullmatch(value, job) is not None) == (operator == "=~")
    return (job == value) == (operator == "=")


def test_the_alerts_select_the_podmonitors_job_and_not_annotation_discoverys() -> None:
    """The Operator names a PodMonitor's job <namespace>/<name>; annotation discovery's job is kubernetes-pods,
    unless it is relabelled as the deployment page says."""
    podmonitor = the("PodMonitor")["metadata"]["name"]
    operator_jobs = [f"{namespace}/{podmonitor}" for namespace in ("default", "monitoring", "kpi-export")]
    relabelled = {
        rule["replacement"]
        for block in code_blocks(Page.of("production/deployment.md").section("### Kubernetes"), "yaml")
        for rule in yaml.safe_load(block)
        if isinstance(rule, dict) and rule.get("target_label") == "job"
    }
    assert relabelled == {"kpi-export-worker"}
    expressions = [str(rule["expr"]) for rule in rule_list()]
    expressions += [
        str(rule["expr"]) for group in the("PrometheusRule")["spec"]["groups"] for rule in group["rules"]
    ]
    matchers = [matcher for expression in expressions for matcher in JOB_MATCHER.findall(expression)]
    assert len(matchers) >= 4  # KpiExportWorkerDown and KpiExportNoWorkerUp, in both copies
    for operator, value in matchers:
        for job in [*operator_jobs, *relabelled]:
            assert job_matches(operator, value, job), (operator, value, job)
        assert not job_matches(operator, value, "kubernetes-pods"), (operator, value)


SERIES_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gauge": ("",),
    "info": ("_info",),
}


def worker_series() -> dict[str, set[str]]:
    """The series names of each metric family a worker's /metrics serves (its registry), by family, sealing
    on."""
    metrics = WorkerMetrics("q")
    metrics.watch_seals()  # the series a worker adds with AUDIT_SEAL_KEY set
    return {
        family.name: {family.name + suffix for suffix in SERIES_SUFFIXES.get(family.type, ("",))}
        for family in metrics.registry.collect()
    }


def exported_names() -> set[str]:
    """Every series name a worker's /metrics can have, with Prometheus' own `up`."""
    return {"up"}.union(*worker_series().values())


def test_every_query_uses_only_names_the_worker_exports_or_the_rules_record() -> None:
    exported = exported_names()
    recorded = {str(rule["record"]) for rule in rule_list() if "record" in rule}
    queries = [query for _, query in panel_queries()] + [str(rule["expr"]) for rule in rule_list()]
    used = set().union(*(metric_names(query) for query in queries))
    used |= set().union(*(variable_names(query) for query in variable_queries().values()))
    assert {"kpi_export_jobs_total", "kpi_export_job_duration_seconds_bucket"} <= used
    assert used <= exported | recorded, used - exported - recorded


def test_every_metric_of_the_worker_has_a_panel() -> None:
    shown = set().union(*(metric_names(query) for _, query in panel_queries()))
    for family, series in sorted(worker_series().items()):
        if family.startswith("kpi_export_"):
            assert series & shown, f"{family} has no panel"


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('sum(rate(a_total{job=~"$job"}[$__rate_interval]))', {"a_total"}),
        ("a + b - c * d / e", {"a", "b", "c", "d", "e"}),
        ("a >= 1 and b != 2 or c unless d", {"a", "b", "c", "d"}),
        ("max(x, y) offset 5m", {"x", "y"}),
        ("rate(a[5m]) / on (queue) group_left (state) b", {"a", "b"}),
        ("histogram_quantile(0.99, sum by (le) (rate(h_bucket[1m]))) > 1e3", {"h_bucket"}),
        ("sum without (instance) (a) > bool 0", {"a"}),
        ('queue:x:rate5m{outcome="failed, or not"} > 0.05', {"queue:x:rate5m"}),
        ("topk(5, up == 0)", {"up"}),
    ],
)
def test_metric_names_are_found_wherever_they_stand(expression: str, names: set[str]) -> None:
    assert metric_names(expression) == names


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("label_values(kpi_export_jobs_total, job)", {"kpi_export_jobs_total"}),
        ('label_values(a_total{job=~"$job"}, instance)', {"a_total"}),
        ("label_values(job)", set()),
    ],
)
def test_a_variables_metric_is_found(query: str, names: set[str]) -> None:
    assert variable_names(query) == names


def test_the_dashboard_has_job_and_instance_variables() -> None:
    assert {"job", "instance"} <= set(variable_queries())
    assert all('instance=~"$instance"' in query for _, query in panel_queries())
