"""deploy/grafana/dashboards/kairos.json: every PromQL expression parses (a real
Prometheus is asked) and names only series Kairos exports or its rules record."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kairos.server.metrics.prometheus import PrometheusMetrics
from kairos_testing.prometheus import QueryError, metric_names, running_prometheus

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "deploy/grafana/dashboards/kairos.json").read_text())
RULE_FILES = sorted((ROOT / "deploy/prometheus/rules").glob("*.yml"))

# Grafana variables, replaced by values a plain Prometheus accepts.
VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".*"}
# Panels the issue asks for, by a word of their title.
REQUIRED = ["Throughput", "p99", "Queue time vs compute", "Batch size", "GEMV / GEMM",
            "SLO attainment", "Refusals", "Model states"]


def panels(items: list[dict]) -> Iterator[dict]:
    for panel in items:
        yield panel
        yield from panels(panel.get("panels", []))


def expressions() -> list[str]:
    return [target["expr"] for panel in panels(DASHBOARD["panels"])
            for target in panel.get("targets", []) if target.get("expr")]


def substitute(expr: str) -> str:
    for name, value in VARIABLES.items():
        expr = expr.replace("${" + name[1:] + "}", value).replace(name, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def known_names() -> set[str]:
    recorded = {rule["record"] for path in RULE_FILES
                for group in yaml.safe_load(path.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    return PrometheusMetrics().exported_names() | recorded


def test_rules_name_only_exported_series() -> None:
    known = known_names() | {"up"}
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            for rule in group["rules"]:
                unknown = metric_names(rule["expr"]) - known
                assert not unknown, f"{path.name}: {rule['expr']} names unknown {unknown}"


def test_metric_names_lexer() -> None:
    expr = ('histogram_quantile(0.99, sum by (model, le) (rate(kairos_x_bucket{a="b(c)"}[5m])))'
            " / ignoring (path) group_left sum(kairos:y:rate5m offset 1h) > 1e3 and up")
    assert metric_names(expr) == {"kairos_x_bucket", "kairos:y:rate5m", "up"}


def test_dashboard_has_the_panels_the_issue_asks_for() -> None:
    titles = [panel.get("title", "") for panel in panels(DASHBOARD["panels"])]
    for word in REQUIRED:
        assert any(word in title for title in titles), f"no panel about {word}: {titles}"
    assert DASHBOARD["uid"] and len({p["id"] for p in panels(DASHBOARD["panels"])}) == len(titles)


def test_expressions_name_only_exported_series() -> None:
    known = known_names()
    for expr in expressions():
        unknown = metric_names(expr) - known
        assert not unknown, f"{expr}\nnames series Kairos does not export: {unknown}"
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            metric = re.match(r"label_values\((\w+),", variable["definition"]).group(1)
            assert metric in known


@pytest.fixture(scope="module")
def prometheus():
    with running_prometheus() as prom:
        yield prom


def test_expressions_parse(prometheus) -> None:
    exprs = expressions()
    assert len(exprs) >= 10
    for expr in exprs:
        try:
            prometheus.query(substitute(expr))
        except QueryError as error:
            pytest.fail(f"{expr}\ndoes not parse: {error}")
    with pytest.raises(QueryError):  # the check can fail
        prometheus.query("sum(rate(kairos_requests_total[1m])")
