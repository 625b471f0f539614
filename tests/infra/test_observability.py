"""infra/observability: the alert rules pass promtool, each alert is proven to fire by a
promtool unit test, and every PromQL expression (rules and dashboards) names only metrics
the engine really exports."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from .tools import OBSERVABILITY_DIR, promtool

# The modules that define the engine's metrics (grep Counter(/Gauge(/Histogram().
METRIC_MODULES = (
    "streams.metrics",
    "query_api.metrics",
    "query_api.hotcache",
    "adapters.drift",
    "projections.quarantine",
)
# Prometheus's own series for every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("_count", "_sum", "_created"),
}
PROMQL_WORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
     "bool", "offset", "inf", "nan",
     # aggregation operators, which may put `by (...)` before their parenthesis
     "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
     "bottomk", "topk", "quantile"}
)  # fmt: skip


def exported_series() -> frozenset[str]:
    """Every series name the engine's registry can expose, labelled children or not."""
    for module in METRIC_MODULES:
        importlib.import_module(module)
    names = set(PROMETHEUS_SERIES)
    for family in REGISTRY.collect():
        if family.name.startswith("leadscore_"):
            names.update(family.name + s for s in SUFFIXES[family.type])
    return frozenset(names)


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, labels, keywords or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, format strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges: [5m], [$__rate_interval]
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r"\1", text)
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((OBSERVABILITY_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs(path: Path) -> list[str]:
    exprs = []
    for panel in json.loads(path.read_text())["panels"]:
        exprs.extend(t["expr"] for t in panel.get("targets", []))
    return exprs


def _promtool(*args: str, cwd: Path = OBSERVABILITY_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_metric_names_are_found_in_promql() -> None:
    """The extractor itself: a wrong name is found, functions and labels are not."""
    expr = (
        "histogram_quantile(0.99, sum by (le, route) (rate(leadscore_api_request_seconds_bucket"
        '{route=~"/leads.*"}[$__rate_interval]))) > 0.5 and on(job) up{job="x"} == 0'
    )
    assert metric_names(expr) == {"leadscore_api_request_seconds_bucket", "up"}
    assert metric_names("sum(rate(leadscore_lead_event_total[5m]))") == {
        "leadscore_lead_event_total"
    }
    assert "leadscore_lead_event_total" not in exported_series()


def test_exported_series_are_the_engines() -> None:
    series = exported_series()
    for name in (
        "leadscore_lead_events_total",
        "leadscore_dead_letters_total",
        "leadscore_model_psi",
        "leadscore_webhook_deliveries_total",
        "leadscore_batch_seconds_bucket",
        "leadscore_api_request_seconds_bucket",
        "leadscore_api_requests_total",
        "leadscore_consumer_lag_messages",
        "leadscore_projection_lag_positions",
        "leadscore_score_latency_seconds_bucket",
        "leadscore_store_lock_held_seconds_sum",
        "leadscore_store_lock_wait_seconds_sum",
        "leadscore_gc_pause_seconds_bucket",
    ):
        assert name in series


def test_rules_pass_promtool_check() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


def test_scrape_config_passes_promtool_check() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_alert_fires_in_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
    tests = yaml.safe_load((OBSERVABILITY_DIR / "alerts_test.yml").read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    alerts = {rule["alert"] for rule in _alert_rules()}
    assert alerts - fired == set(), f"alerts no unit test makes fire: {alerts - fired}"


def test_unit_tests_fail_when_a_threshold_changes(tmp_path: Path) -> None:
    """The unit tests bite: PSI > 0.5 instead of > 0.25 leaves the drift case unfired."""
    for name in ("alerts.yml", "alerts_test.yml"):
        shutil.copy(OBSERVABILITY_DIR / name, tmp_path / name)
    rules = tmp_path / "alerts.yml"
    text = rules.read_text()
    assert "(leadscore_model_psi) > 0.25" in text
    rules.write_text(text.replace("(leadscore_model_psi) > 0.25", "(leadscore_model_psi) > 0.5"))
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0
    assert "LeadscoreModelDrift" in result.stdout + result.stderr


def test_alert_rules_use_only_exported_metrics() -> None:
    exported = exported_series()
    for rule in _alert_rules():
        unknown = metric_names(rule["expr"]) - exported
        assert not unknown, f"{rule['alert']} uses metrics the engine does not export: {unknown}"


DASHBOARDS = sorted((OBSERVABILITY_DIR / "dashboards").glob("*.json"))


def test_there_are_dashboards() -> None:
    assert {p.stem for p in DASHBOARDS} >= {"pipeline", "api", "models"}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_queries_use_only_exported_metrics(path: Path) -> None:
    dashboard = json.loads(path.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    exprs = _dashboard_exprs(path)
    assert exprs, "a dashboard without queries"
    exported = exported_series()
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        assert names <= exported, f"{path.name}: {names - exported} not exported, in {expr!r}"
